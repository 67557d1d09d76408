//! What an AMQP session declared on its connection: exchanges, queues and bindings, to declare
//! again on a new node. Queues are recorded by the names the client knows; a server-named
//! queue's name on the current node is [`super::names`]' business.

use amq_protocol::protocol::{exchange, queue};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QueueRecord {
    /// The name the client knows.
    pub name: String,
    /// The declaration as the client sent it (an empty name for a server-named queue).
    #[serde(with = "super::serial::wire")]
    pub declare: queue::Declare,
}

impl QueueRecord {
    pub fn server_named(&self) -> bool {
        self.declare.queue.as_str().is_empty()
    }

    /// Lives and dies with its connection: exclusive, auto-delete or server-named.
    fn pins_to_node(&self) -> bool {
        self.server_named() || self.declare.exclusive || self.declare.auto_delete
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Declarations {
    #[serde(with = "super::serial::wires")]
    pub exchanges: Vec<exchange::Declare>,
    #[serde(with = "super::serial::wires")]
    pub exchange_bindings: Vec<exchange::Bind>,
    pub queues: Vec<QueueRecord>,
    #[serde(with = "super::serial::wires")]
    pub queue_bindings: Vec<queue::Bind>,
    /// Whether a queue in `queues` pins the session to its node (kept with `queues`, so that
    /// the session loop, which asks on every turn, does not walk them).
    pinned: bool,
}

impl Declarations {
    pub fn exchange_declared(&mut self, declare: exchange::Declare) {
        if declare.passive {
            return;
        }
        self.exchanges.retain(|e| e.exchange != declare.exchange);
        self.exchanges.push(declare);
    }

    pub fn exchange_deleted(&mut self, name: &str) {
        self.exchanges.retain(|e| e.exchange.as_str() != name);
        self.exchange_bindings
            .retain(|b| b.source.as_str() != name && b.destination.as_str() != name);
        self.queue_bindings.retain(|b| b.exchange.as_str() != name);
    }

    pub fn exchange_bound(&mut self, bind: exchange::Bind) {
        self.exchange_bindings
            .retain(|b| !same_exchange_binding(b, &bind));
        self.exchange_bindings.push(bind);
    }

    pub fn exchange_unbound(&mut self, unbind: &exchange::Unbind) {
        self.exchange_bindings.retain(|b| {
            !(b.destination == unbind.destination
                && b.source == unbind.source
                && b.routing_key == unbind.routing_key
                && b.arguments == unbind.arguments)
        });
    }

    /// A queue.declare the node answered with `name`.
    pub fn queue_declared(&mut self, declare: queue::Declare, name: &str) {
        if declare.passive {
            return;
        }
        self.queues.retain(|q| q.name != name);
        self.queues.push(QueueRecord {
            name: name.to_owned(),
            declare,
        });
        self.pinned = self.queues.iter().any(QueueRecord::pins_to_node);
    }

    /// Forgets a queue the client deleted (by the name it knows), with its bindings.
    pub fn queue_deleted(&mut self, name: &str) {
        self.queues.retain(|q| q.name != name);
        self.pinned = self.queues.iter().any(QueueRecord::pins_to_node);
        self.queue_bindings.retain(|b| b.queue.as_str() != name);
    }

    /// A queue.bind, with the queue as the client names it.
    pub fn queue_bound(&mut self, bind: queue::Bind) {
        self.queue_bindings
            .retain(|b| !same_queue_binding(b, &bind));
        self.queue_bindings.push(bind);
    }

    pub fn queue_unbound(&mut self, unbind: &queue::Unbind) {
        self.queue_bindings.retain(|b| {
            !(b.queue == unbind.queue
                && b.exchange == unbind.exchange
                && b.routing_key == unbind.routing_key
                && b.arguments == unbind.arguments)
        });
    }

    /// Whether the session declared `name` itself (by name, not server-named, and has not
    /// deleted it): a replay can declare it again.
    pub fn declared_queue(&self, name: &str) -> bool {
        self.queues
            .iter()
            .any(|q| q.name == name && !q.server_named())
    }

    /// Whether the session declared a queue that lives and dies with its connection (exclusive,
    /// auto-delete or server-named): moving it on purpose would lose what is in it.
    pub fn pins_to_node(&self) -> bool {
        self.pinned
    }
}

fn same_exchange_binding(a: &exchange::Bind, b: &exchange::Bind) -> bool {
    a.destination == b.destination
        && a.source == b.source
        && a.routing_key == b.routing_key
        && a.arguments == b.arguments
}

fn same_queue_binding(a: &queue::Bind, b: &queue::Bind) -> bool {
    a.queue == b.queue
        && a.exchange == b.exchange
        && a.routing_key == b.routing_key
        && a.arguments == b.arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declare(name: &str) -> queue::Declare {
        queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: true,
            nowait: false,
            arguments: Default::default(),
        }
    }

    fn bind(queue: &str, exchange: &str) -> queue::Bind {
        queue::Bind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: "".into(),
            nowait: false,
            arguments: Default::default(),
        }
    }

    #[test]
    fn server_named_queues_are_recorded_by_the_name_the_client_learned() {
        let mut declarations = Declarations::default();
        declarations.queue_declared(declare(""), "amq.gen-A");
        assert!(declarations.queues[0].server_named());
        assert_eq!(declarations.queues[0].name, "amq.gen-A");
        declarations.queue_bound(bind("amq.gen-A", "fanout"));
        declarations.queue_bound(bind("amq.gen-A", "fanout"));
        assert_eq!(
            declarations.queue_bindings.len(),
            1,
            "the same binding twice is one"
        );

        assert!(declarations.pins_to_node());

        declarations.queue_deleted("amq.gen-A");
        assert!(declarations.queues.is_empty());
        assert!(declarations.queue_bindings.is_empty());
        assert!(!declarations.pins_to_node());
    }

    #[test]
    fn deleting_an_exchange_drops_its_bindings() {
        let mut declarations = Declarations::default();
        declarations.queue_declared(declare("q"), "q");
        declarations.queue_bound(bind("q", "x"));
        declarations.queue_bound(bind("q", "y"));
        declarations.exchange_deleted("x");
        assert_eq!(declarations.queue_bindings.len(), 1);
        assert_eq!(declarations.queue_bindings[0].exchange.as_str(), "y");
    }

    #[test]
    fn passive_declarations_are_not_recorded() {
        let mut declarations = Declarations::default();
        let mut passive = declare("q");
        passive.passive = true;
        declarations.queue_declared(passive, "q");
        assert!(declarations.queues.is_empty());
    }
}
