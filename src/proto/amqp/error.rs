//! Why a method or content header payload was refused, worded to go into the `reply-text` of the
//! connection.close tether sends before it drops the peer, with the reply code to send with it.

use super::id::MethodName;

/// The reply codes of the spec (section 1.2 of the XML), for connection.close and channel.close.
pub mod reply {
    pub const SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// The payload ends before the arguments (or properties) it announces.
    #[error("payload ends before its arguments do")]
    Truncated,
    /// The arguments are all there but make no sense: a short string that is not UTF-8, bytes
    /// after the last argument, an unknown field-table type, tables nested too deep.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A class and method id pair that AMQP 0-9-1 (with RabbitMQ's extensions) does not define.
    #[error("unknown method {0}.{1}")]
    Unknown(u16, u16),
    /// A peek was handed another method than the one it reads, e.g. a basic.get-ok given to
    /// [`peek_deliver`](super::peek_deliver). The session dispatched on the wrong id.
    #[error("{} where {expected} was expected", MethodName(*.found))]
    Unexpected {
        expected: &'static str,
        found: (u16, u16),
    },
}

impl MethodError {
    /// The code for the connection.close that answers this error: 502 SYNTAX_ERROR for a
    /// payload that does not parse, 540 NOT_IMPLEMENTED for a method tether does not know (it
    /// may well exist somewhere, tether just cannot relay what it cannot read), and
    /// 503 COMMAND_INVALID for a method where another one belonged.
    pub fn reply_code(&self) -> u16 {
        match self {
            MethodError::Truncated | MethodError::Malformed(_) => reply::SYNTAX_ERROR,
            MethodError::Unknown(..) => reply::NOT_IMPLEMENTED,
            MethodError::Unexpected { .. } => reply::COMMAND_INVALID,
        }
    }

    pub(crate) fn malformed(what: &str) -> MethodError {
        MethodError::Malformed(what.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_well_in_a_close() {
        let unexpected = MethodError::Unexpected {
            expected: "basic.deliver",
            found: (60, 71),
        };
        assert_eq!(
            unexpected.to_string(),
            "basic.get-ok where basic.deliver was expected"
        );
        assert_eq!(
            MethodError::Unknown(60, 999).to_string(),
            "unknown method 60.999"
        );
        assert_eq!(
            MethodError::malformed("short string is not UTF-8").to_string(),
            "malformed payload: short string is not UTF-8"
        );
    }

    #[test]
    fn reply_codes() {
        assert_eq!(MethodError::Truncated.reply_code(), 502);
        assert_eq!(MethodError::malformed("x").reply_code(), 502);
        assert_eq!(MethodError::Unknown(1, 2).reply_code(), 540);
        let unexpected = MethodError::Unexpected {
            expected: "basic.ack",
            found: (60, 40),
        };
        assert_eq!(unexpected.reply_code(), 503);
    }
}
