//! How session state crosses to a new process: serde helpers for what does not derive it.
//!
//! The hand-over format is JSON (readable, and a field added later takes its default when an
//! older process wrote the state), with three conventions:
//! - bytes are base64 strings;
//! - AMQP methods are their wire encoding (amq-protocol's own types have no serde), so the new
//!   process decodes them with the same parser that reads them off a socket;
//! - an `Instant` is the signed number of milliseconds from the moment the state was written,
//!   because monotonic clocks mean nothing in another process (they agree on one host, but the
//!   offset keeps the format independent of that).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{Duration, Instant};

fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    STANDARD.decode(text.as_bytes()).map_err(D::Error::custom)
}

/// `bytes::Bytes` (and anything that derefs to `[u8]`) as base64.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer, B: AsRef<[u8]>>(bytes: &B, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes.as_ref()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, B: From<Vec<u8>>>(d: D) -> Result<B, D::Error> {
        decode(d).map(B::from)
    }
}

/// Base64 bytes as a value of its own, for containers of bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        decode(d).map(Blob)
    }
}

/// A point in time, as milliseconds from when the state was written (negative: before).
#[derive(Clone, Copy, Debug)]
pub struct Moment(pub Instant);

impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let now = Instant::now();
        let ms = match self.0.checked_duration_since(now) {
            Some(ahead) => ahead.as_millis() as i64,
            None => -(now.duration_since(self.0).as_millis() as i64),
        };
        s.serialize_i64(ms)
    }
}

impl<'de> Deserialize<'de> for Moment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Moment, D::Error> {
        let ms = i64::deserialize(d)?;
        let now = Instant::now();
        let offset = Duration::from_millis(ms.unsigned_abs());
        let at = match ms >= 0 {
            true => now + offset,
            // A moment from before this process started is as good as its start.
            false => now.checked_sub(offset).unwrap_or(now),
        };
        Ok(Moment(at))
    }
}

/// `Option<(Instant, T)>` fields.
pub mod instant_pair {
    use super::*;

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &Option<(Instant, T)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().map(|(at, t)| (Moment(*at), t)).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<(Instant, T)>, D::Error> {
        let value: Option<(Moment, T)> = Option::deserialize(d)?;
        Ok(value.map(|(at, t)| (at.0, t)))
    }
}

/// `VecDeque<(Instant, T)>` fields.
pub mod instant_queue {
    use super::*;
    use std::collections::VecDeque;

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &VecDeque<(Instant, T)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|(at, t)| (Moment(*at), t)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<VecDeque<(Instant, T)>, D::Error> {
        let value: Vec<(Moment, T)> = Vec::deserialize(d)?;
        Ok(value.into_iter().map(|(at, t)| (at.0, t)).collect())
    }
}

/// A duration in milliseconds.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An optional duration in milliseconds.
pub mod opt_millis {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        value.map(|d| d.as_millis() as u64).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// For the format fixtures' tests: whether `written` keeps everything `fixture` holds (fields
/// added by later builds, with their defaults, may come on top).
#[cfg(test)]
pub fn preserves(written: &serde_json::Value, fixture: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (written, fixture) {
        (Value::Object(written), Value::Object(fixture)) => fixture
            .iter()
            .all(|(key, value)| written.get(key).is_some_and(|w| preserves(w, value))),
        (Value::Array(written), Value::Array(fixture)) => {
            written.len() == fixture.len()
                && written.iter().zip(fixture).all(|(w, f)| preserves(w, f))
        }
        _ => written == fixture,
    }
}
