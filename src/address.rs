//! Where a node endpoint lives: `host:port`, with the host an IP literal or a name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// A node endpoint's address as configured or discovered. Names are resolved when a connection
/// is made, so a static node written as `rabbit-a:5672` follows its DNS record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl Address {
    pub fn port(&self) -> u16 {
        match self {
            Address::Ip(addr) => addr.port(),
            Address::Name { port, .. } => *port,
        }
    }

    /// The socket addresses to try, resolving a name with the system resolver.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Address::Ip(addr) => Ok(vec![*addr]),
            Address::Name { host, port } => Ok(tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .collect()),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Ip(addr)
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Address::Ip(addr));
        }
        let expected = || format!("expected an address \"host:port\", got {text:?}");
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid_name || host.parse::<IpAddr>().is_ok() {
            return Err(expected());
        }
        Ok(Address::Name {
            host: host.to_string(),
            port,
        })
    }
}

/// Read from config as the same `host:port` text [`FromStr`] takes.
impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(addr) => addr.fmt(f),
            Address::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_and_name_forms() {
        assert_eq!(
            "127.0.0.1:5672".parse::<Address>(),
            Ok(Address::Ip("127.0.0.1:5672".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:5672".parse::<Address>().map(|a| a.to_string()),
            Ok("[::1]:5672".to_string())
        );
        assert_eq!(
            "rabbit-a:5672".parse::<Address>(),
            Ok(Address::Name {
                host: "rabbit-a".into(),
                port: 5672
            })
        );
        for bad in [
            "rabbit-a",
            "rabbit-a:",
            ":5672",
            "a b:1",
            "host:70000",
            "::1:5672x",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad} should be rejected");
        }
    }
}
