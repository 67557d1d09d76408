//! AMQP methods in a session's hand-over state (see [`crate::takeover::serial`]): each is its
//! wire encoding, decoded on the other side by the parser that reads them off a socket.

use crate::proto::amqp::method;
use crate::takeover::serial::Blob;
use amq_protocol::protocol::{AMQPClass, basic, connection, exchange, queue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amq-protocol method type that crosses as its wire encoding.
pub trait Method: Sized {
    fn class(&self) -> AMQPClass;
    fn from_class(class: AMQPClass) -> Option<Self>;
}

impl Method for AMQPClass {
    fn class(&self) -> AMQPClass {
        self.clone()
    }
    fn from_class(class: AMQPClass) -> Option<Self> {
        Some(class)
    }
}

macro_rules! methods {
    ($($module:ident :: $ty:ident in $class:ident),* $(,)?) => {$(
        impl Method for $module::$ty {
            fn class(&self) -> AMQPClass {
                AMQPClass::$class($module::AMQPMethod::$ty(self.clone()))
            }
            fn from_class(class: AMQPClass) -> Option<Self> {
                match class {
                    AMQPClass::$class($module::AMQPMethod::$ty(method)) => Some(method),
                    _ => None,
                }
            }
        }
    )*};
}

methods!(
    connection::StartOk in Connection,
    connection::Open in Connection,
    basic::Consume in Basic,
    queue::Declare in Queue,
    queue::Bind in Queue,
    exchange::Declare in Exchange,
    exchange::Bind in Exchange,
);

/// One method as its encoding, in base64.
pub struct Wire<T>(pub T);

impl<T: Method> Serialize for Wire<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Blob(method::encode(&self.0.class()).to_vec()).serialize(s)
    }
}

impl<'de, T: Method> Deserialize<'de> for Wire<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Wire<T>, D::Error> {
        let blob = Blob::deserialize(d)?;
        let class = method::decode(&blob.0).map_err(D::Error::custom)?;
        T::from_class(class)
            .map(Wire)
            .ok_or_else(|| D::Error::custom("not the method expected here"))
    }
}

/// `#[serde(with = "wire")]` for a method field.
pub mod wire {
    use super::*;

    pub fn serialize<S: Serializer, T: Method + Clone>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        Wire(value.clone()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Method>(d: D) -> Result<T, D::Error> {
        Wire::<T>::deserialize(d).map(|w| w.0)
    }
}

/// `#[serde(with = "wires")]` for a list of methods.
pub mod wires {
    use super::*;

    pub fn serialize<S: Serializer, T: Method + Clone>(
        value: &[T],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|m| Wire(m.clone())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Method>(d: D) -> Result<Vec<T>, D::Error> {
        let wires: Vec<Wire<T>> = Vec::deserialize(d)?;
        Ok(wires.into_iter().map(|w| w.0).collect())
    }
}

/// `#[serde(with = "requests")]` for requests awaiting answers: (method, frame as sent).
pub mod requests {
    use super::*;
    use crate::proto::amqp::Frame;
    use std::collections::VecDeque;

    pub fn serialize<S: Serializer>(
        value: &VecDeque<(AMQPClass, Frame)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|(m, f)| (Wire(m.clone()), f)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<VecDeque<(AMQPClass, Frame)>, D::Error> {
        let wires: Vec<(Wire<AMQPClass>, Frame)> = Vec::deserialize(d)?;
        Ok(wires.into_iter().map(|(w, f)| (w.0, f)).collect())
    }
}
