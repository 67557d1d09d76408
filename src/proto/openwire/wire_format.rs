use super::*;
use std::time::Duration;

/// What two WireFormatInfos settle on: booleans ANDed, numbers the lesser, a missing key
/// counting as false or 0 (as ActiveMQ's `OpenWireFormat` and `InactivityMonitor` do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: i32,
    pub tight_encoding: bool,
    pub cache: bool,
    pub size_prefix_disabled: bool,
    /// Zero when either side asked for none: neither then watches the other for silence.
    pub max_inactivity: Duration,
    pub max_inactivity_initial_delay: Duration,
    pub max_frame_size: u64,
}

impl Negotiated {
    /// Why this codec cannot speak what was negotiated, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.version < MIN_VERSION {
            Some(format!(
                "OpenWire version {} is older than {MIN_VERSION}",
                self.version
            ))
        } else if self.tight_encoding || self.cache || self.size_prefix_disabled {
            Some("tight encoding, cache or no size prefix negotiated".into())
        } else {
            None
        }
    }
}

impl WireFormatInfo {
    /// What tether offers: the loose encoding without cache, and `max_inactivity` as the
    /// silence after which either side may drop the other (the broker then sends a
    /// KeepAliveInfo every third of it when it has nothing else to say).
    pub fn tether(max_frame_size: usize, max_inactivity: Duration) -> WireFormatInfo {
        let millis = |d: Duration| Property::Long(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let properties = [
            ("TightEncodingEnabled", Property::Bool(false)),
            ("CacheEnabled", Property::Bool(false)),
            ("CacheSize", Property::Int(0)),
            ("SizePrefixDisabled", Property::Bool(false)),
            ("TcpNoDelayEnabled", Property::Bool(true)),
            ("StackTraceEnabled", Property::Bool(false)),
            ("MaxInactivityDuration", millis(max_inactivity)),
            // The broker's first check waits this long; a third of the limit matches its period.
            (
                "MaxInactivityDurationInitalDelay",
                millis(max_inactivity / 3),
            ),
            (
                "MaxFrameSize",
                Property::Long(i64::try_from(max_frame_size).unwrap_or(i64::MAX)),
            ),
            ("ProviderName", Property::String("tether".into())),
            (
                "ProviderVersion",
                Property::String(env!("CARGO_PKG_VERSION").into()),
            ),
        ];
        WireFormatInfo {
            version: VERSION,
            properties: properties
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
        }
    }

    /// A boolean option: anything but a true `Bool` is false.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.properties.get(key), Some(Property::Bool(true)))
    }

    /// A numeric option, of whatever integer type it came as; missing or negative is 0.
    pub fn number(&self, key: &str) -> u64 {
        let value = match self.properties.get(key) {
            Some(Property::Long(v)) => *v,
            Some(Property::Int(v)) => (*v).into(),
            Some(Property::Short(v)) => (*v).into(),
            Some(Property::Byte(v)) => (*v).into(),
            _ => 0,
        };
        u64::try_from(value).unwrap_or(0)
    }

    pub fn negotiate(&self, peer: &WireFormatInfo) -> Negotiated {
        let both = |key: &str| self.flag(key) && peer.flag(key);
        let least = |key: &str| self.number(key).min(peer.number(key));
        Negotiated {
            version: self.version.min(peer.version),
            tight_encoding: both("TightEncodingEnabled"),
            cache: both("CacheEnabled"),
            size_prefix_disabled: both("SizePrefixDisabled"),
            max_inactivity: Duration::from_millis(least("MaxInactivityDuration")),
            max_inactivity_initial_delay: Duration::from_millis(least(
                "MaxInactivityDurationInitalDelay",
            )),
            max_frame_size: least("MaxFrameSize"),
        }
    }
}
