//! Client ↔ node queue names, in one place.
//!
//! A queue the client declared with an empty name gets a name from the node (`amq.gen-...`). The
//! client goes on using that name; after a failover the queue is declared again and gets a new
//! one, which RabbitMQ will not let a client choose (the `amq.` prefix is reserved). So every
//! name the client uses is translated to the current node's on the way up (queue methods,
//! consume, get, a publish's routing key on the default exchange and its reply-to), and back on
//! the way down (a delivery's routing key). Before the first failover there is nothing to
//! translate, and every function here returns at once.

use crate::proto::amqp::{Frame, content, method};
use amq_protocol::protocol::{AMQPClass, basic, queue};
use amq_protocol::types::ShortString;
use bytes::Bytes;
use std::collections::HashMap;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueNames {
    /// Server-named queues whose name on the current node differs: client name → node name.
    to_node: HashMap<String, String>,
    /// ... and back.
    to_client: HashMap<String, String>,
}

impl QueueNames {
    /// The session moves to another node: server-named queues will get new names.
    pub fn failover(&mut self) {
        self.to_node.clear();
        self.to_client.clear();
    }

    /// The current node named the client's server-named queue `client_name` `node_name`.
    pub fn renamed(&mut self, client_name: &str, node_name: &str) {
        if client_name != node_name {
            self.to_node
                .insert(client_name.to_owned(), node_name.to_owned());
            self.to_client
                .insert(node_name.to_owned(), client_name.to_owned());
        }
    }

    /// The client deleted the queue it names `client_name`.
    pub fn forget(&mut self, client_name: &str) {
        if let Some(node_name) = self.to_node.remove(client_name) {
            self.to_client.remove(&node_name);
        }
    }

    /// Whether any name needs translating (none does before the first failover).
    pub fn any(&self) -> bool {
        !self.to_node.is_empty()
    }

    /// The current node's name for a queue the client names `name`.
    pub fn node_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_node.get(name).map_or(name, String::as_str)
    }

    /// The client's name for a queue the current node names `name`.
    pub fn client_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.to_client.get(name).map_or(name, String::as_str)
    }

    /// A client request with the queue it names replaced by the node's name, if that differs.
    pub fn request_for_node(&self, method: &AMQPClass) -> Option<AMQPClass> {
        if !self.any() {
            return None;
        }
        let rename = |name: &ShortString| -> Option<ShortString> {
            let node = self.node_name(name.as_str());
            (node != name.as_str()).then(|| node.into())
        };
        let mut method = method.clone();
        let changed = match &mut method {
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => {
                rename(&m.queue).map(|n| m.queue = n)
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Purge(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Queue(queue::AMQPMethod::Delete(m)) => rename(&m.queue).map(|n| m.queue = n),
            AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => {
                rename(&m.queue).map(|n| m.queue = n)
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(m)) => rename(&m.queue).map(|n| m.queue = n),
            _ => None,
        };
        changed.map(|_| method)
    }

    /// A publish as the current node must see it: a server-named queue used as routing key on
    /// the default exchange, or as reply-to, gets the node's name.
    pub fn publish_for_node(&self, mut frames: Vec<Frame>) -> Vec<Frame> {
        if !self.any() || frames.is_empty() {
            return frames;
        }
        if let Some(payload) =
            with_routing_key(&frames[0].payload, |key| self.node_name(key).to_owned())
        {
            frames[0] = Frame::method(frames[0].channel, payload);
        }
        if let Some(header) = frames.get(1)
            && let Ok(Some(reply_to)) = content::reply_to(&header.payload)
        {
            let node_name = self.node_name(reply_to).to_owned();
            if node_name != reply_to
                && let Ok((peek, mut properties)) = content::decode_properties(&header.payload)
            {
                properties = properties.with_reply_to(node_name.into());
                frames[1] = Frame::header(
                    header.channel,
                    content::encode_header(peek.class_id, peek.body_size, &properties),
                );
            }
        }
        frames
    }

    /// A delivery, get-ok or return's method payload with the routing key in the client's
    /// names, if it goes through the default exchange and names a renamed queue.
    pub fn delivery_for_client(&self, payload: &[u8]) -> Option<Bytes> {
        if !self.any() {
            return None;
        }
        with_routing_key(payload, |key| self.client_name(key).to_owned())
    }
}

/// The content method (publish, deliver, get-ok, return) with the routing key translated, if it
/// goes through the default exchange (where the routing key is a queue name) and `translate`
/// changes it.
fn with_routing_key(payload: &[u8], translate: impl Fn(&str) -> String) -> Option<Bytes> {
    let mut decoded = method::decode(payload).ok()?;
    let (exchange, key) = match &mut decoded {
        AMQPClass::Basic(basic::AMQPMethod::Publish(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::GetOk(m)) => (&m.exchange, &mut m.routing_key),
        AMQPClass::Basic(basic::AMQPMethod::Return(m)) => (&m.exchange, &mut m.routing_key),
        _ => return None,
    };
    if !exchange.as_str().is_empty() {
        return None;
    }
    let translated = translate(key.as_str());
    if translated == key.as_str() {
        return None;
    }
    // Both names came as short strings, so the translation fits one.
    *key = translated.into();
    Some(method::encode(&decoded))
}

#[cfg(test)]
mod tests;
