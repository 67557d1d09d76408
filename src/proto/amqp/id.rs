//! Class and method ids of AMQP 0-9-1 as RabbitMQ speaks it: the spec's methods plus RabbitMQ's
//! extensions (exchange.bind/unbind, basic.nack, confirm, connection.blocked/unblocked and
//! update-secret) and the deprecated access class, which `amq-protocol` still decodes.
//!
//! The session dispatches on these pairs (from [`Frame::class_method`](super::Frame::class_method))
//! before deciding whether a payload deserves a peek, a full decode, or neither.

use std::fmt;

macro_rules! methods {
    ($($constant:ident = ($class:literal, $method:literal) $name:literal,)*) => {
        $(pub const $constant: (u16, u16) = ($class, $method);)*

        /// Every method tether knows, with its name as the spec spells it.
        pub const ALL: &[((u16, u16), &str)] = &[$((($class, $method), $name),)*];

        /// The spec's name for a method, `None` for an id no class defines.
        pub fn name(id: (u16, u16)) -> Option<&'static str> {
            match id {
                $(($class, $method) => Some($name),)*
                _ => None,
            }
        }
    };
}

methods! {
    CONNECTION_START = (10, 10) "connection.start",
    CONNECTION_START_OK = (10, 11) "connection.start-ok",
    CONNECTION_SECURE = (10, 20) "connection.secure",
    CONNECTION_SECURE_OK = (10, 21) "connection.secure-ok",
    CONNECTION_TUNE = (10, 30) "connection.tune",
    CONNECTION_TUNE_OK = (10, 31) "connection.tune-ok",
    CONNECTION_OPEN = (10, 40) "connection.open",
    CONNECTION_OPEN_OK = (10, 41) "connection.open-ok",
    CONNECTION_CLOSE = (10, 50) "connection.close",
    CONNECTION_CLOSE_OK = (10, 51) "connection.close-ok",
    CONNECTION_BLOCKED = (10, 60) "connection.blocked",
    CONNECTION_UNBLOCKED = (10, 61) "connection.unblocked",
    CONNECTION_UPDATE_SECRET = (10, 70) "connection.update-secret",
    CONNECTION_UPDATE_SECRET_OK = (10, 71) "connection.update-secret-ok",

    CHANNEL_OPEN = (20, 10) "channel.open",
    CHANNEL_OPEN_OK = (20, 11) "channel.open-ok",
    CHANNEL_FLOW = (20, 20) "channel.flow",
    CHANNEL_FLOW_OK = (20, 21) "channel.flow-ok",
    CHANNEL_CLOSE = (20, 40) "channel.close",
    CHANNEL_CLOSE_OK = (20, 41) "channel.close-ok",

    ACCESS_REQUEST = (30, 10) "access.request",
    ACCESS_REQUEST_OK = (30, 11) "access.request-ok",

    EXCHANGE_DECLARE = (40, 10) "exchange.declare",
    EXCHANGE_DECLARE_OK = (40, 11) "exchange.declare-ok",
    EXCHANGE_DELETE = (40, 20) "exchange.delete",
    EXCHANGE_DELETE_OK = (40, 21) "exchange.delete-ok",
    EXCHANGE_BIND = (40, 30) "exchange.bind",
    EXCHANGE_BIND_OK = (40, 31) "exchange.bind-ok",
    EXCHANGE_UNBIND = (40, 40) "exchange.unbind",
    // Not 41: RabbitMQ's extension numbers it 51.
    EXCHANGE_UNBIND_OK = (40, 51) "exchange.unbind-ok",

    QUEUE_DECLARE = (50, 10) "queue.declare",
    QUEUE_DECLARE_OK = (50, 11) "queue.declare-ok",
    QUEUE_BIND = (50, 20) "queue.bind",
    QUEUE_BIND_OK = (50, 21) "queue.bind-ok",
    QUEUE_PURGE = (50, 30) "queue.purge",
    QUEUE_PURGE_OK = (50, 31) "queue.purge-ok",
    QUEUE_DELETE = (50, 40) "queue.delete",
    QUEUE_DELETE_OK = (50, 41) "queue.delete-ok",
    QUEUE_UNBIND = (50, 50) "queue.unbind",
    QUEUE_UNBIND_OK = (50, 51) "queue.unbind-ok",

    BASIC_QOS = (60, 10) "basic.qos",
    BASIC_QOS_OK = (60, 11) "basic.qos-ok",
    BASIC_CONSUME = (60, 20) "basic.consume",
    BASIC_CONSUME_OK = (60, 21) "basic.consume-ok",
    BASIC_CANCEL = (60, 30) "basic.cancel",
    BASIC_CANCEL_OK = (60, 31) "basic.cancel-ok",
    BASIC_PUBLISH = (60, 40) "basic.publish",
    BASIC_RETURN = (60, 50) "basic.return",
    BASIC_DELIVER = (60, 60) "basic.deliver",
    BASIC_GET = (60, 70) "basic.get",
    BASIC_GET_OK = (60, 71) "basic.get-ok",
    BASIC_GET_EMPTY = (60, 72) "basic.get-empty",
    BASIC_ACK = (60, 80) "basic.ack",
    BASIC_REJECT = (60, 90) "basic.reject",
    BASIC_RECOVER_ASYNC = (60, 100) "basic.recover-async",
    BASIC_RECOVER = (60, 110) "basic.recover",
    BASIC_RECOVER_OK = (60, 111) "basic.recover-ok",
    BASIC_NACK = (60, 120) "basic.nack",

    CONFIRM_SELECT = (85, 10) "confirm.select",
    CONFIRM_SELECT_OK = (85, 11) "confirm.select-ok",

    TX_SELECT = (90, 10) "tx.select",
    TX_SELECT_OK = (90, 11) "tx.select-ok",
    TX_COMMIT = (90, 20) "tx.commit",
    TX_COMMIT_OK = (90, 21) "tx.commit-ok",
    TX_ROLLBACK = (90, 30) "tx.rollback",
    TX_ROLLBACK_OK = (90, 31) "tx.rollback-ok",
}

/// The class of basic.*, the only one whose methods carry content.
pub const BASIC_CLASS: u16 = 60;

pub fn is_known(id: (u16, u16)) -> bool {
    name(id).is_some()
}

/// Displays a method id as its name (`basic.deliver`), or as `method 60.999` when no class
/// defines it: for logs and close reasons, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodName(pub (u16, u16));

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "method {}.{}", self.0.0, self.0.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_and_names_are_unique() {
        let ids: HashSet<_> = ALL.iter().map(|(id, _)| *id).collect();
        let names: HashSet<_> = ALL.iter().map(|(_, name)| *name).collect();
        assert_eq!(ids.len(), ALL.len());
        assert_eq!(names.len(), ALL.len());
        assert_eq!(ALL.len(), 66);
    }

    #[test]
    fn names_methods() {
        assert_eq!(name(CONFIRM_SELECT), Some("confirm.select"));
        assert_eq!(name((85, 11)), Some("confirm.select-ok"));
        assert_eq!(name(CONNECTION_BLOCKED), Some("connection.blocked"));
        assert_eq!(name((40, 41)), None);
        assert!(is_known(BASIC_NACK));
        assert!(!is_known((60, 0)));
        assert_eq!(MethodName(BASIC_DELIVER).to_string(), "basic.deliver");
        assert_eq!(MethodName((70, 1)).to_string(), "method 70.1");
    }
}
