use super::wire::*;
use super::*;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

/// The two fields every command but WireFormatInfo starts with (ActiveMQ's `BaseCommand`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub command_id: i32,
    pub response_required: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    WireFormatInfo(WireFormatInfo),
    ConnectionInfo(ConnectionInfo),
    ConnectionControl(ConnectionControl),
    /// A peer that gets one with `response_required` sends it back without.
    KeepAliveInfo(Header),
    Response {
        header: Header,
        correlation_id: i32,
    },
    /// The broker refused the command `correlation_id` (e.g. a ConnectionInfo it will not
    /// accept). With stack traces off, as tether negotiates, the exception is a class name and
    /// a message.
    ExceptionResponse {
        header: Header,
        correlation_id: i32,
        exception: Option<BrokerException>,
    },
    /// A command type tether has no use for, kept as it came.
    Unknown {
        kind: u8,
        body: Bytes,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerException {
    pub class: Option<String>,
    pub message: Option<String>,
}

/// The first command each side sends: protocol version and options, as a property map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireFormatInfo {
    pub version: i32,
    pub properties: BTreeMap<String, Property>,
}

/// A value in WireFormatInfo's property map. The type matters to a Java peer: it casts
/// durations and `MaxFrameSize` to `Long` and `CacheSize` to `Integer`.
#[derive(Clone, Debug, PartialEq)]
pub enum Property {
    Null,
    Bool(bool),
    Byte(i8),
    Char(u16),
    Short(i16),
    Int(i32),
    Long(i64),
    Double(f64),
    Float(f32),
    String(String),
    Bytes(Vec<u8>),
    Map(BTreeMap<String, Property>),
    List(Vec<Property>),
}

/// Opens a connection on the broker (ActiveMQ's `ConnectionInfo`). Its `Debug` masks the
/// password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub header: Header,
    /// A broker closes the older of two connections with one id, so each must be fresh.
    pub connection_id: Option<String>,
    pub client_id: Option<String>,
    pub password: Option<String>,
    pub user_name: Option<String>,
    pub broker_path: Option<Vec<Option<String>>>,
    pub broker_master_connector: bool,
    /// The broker sends a ConnectionControl right after accepting a manageable connection.
    pub manageable: bool,
    pub client_master: bool,
    /// The broker sends later ConnectionControls (the network changed) only to these.
    pub fault_tolerant: bool,
    /// The broker leaves `rebalance_connection` off in the ConnectionControl it sends on
    /// accepting a connection that says it is a failover reconnect.
    pub failover_reconnect: bool,
    pub client_ip: Option<String>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("header", &self.header)
            .field("connection_id", &self.connection_id)
            .field("client_id", &self.client_id)
            .field("password", &self.password.as_ref().map(|_| "MASKED"))
            .field("user_name", &self.user_name)
            .field("broker_path", &self.broker_path)
            .field("broker_master_connector", &self.broker_master_connector)
            .field("manageable", &self.manageable)
            .field("client_master", &self.client_master)
            .field("fault_tolerant", &self.fault_tolerant)
            .field("failover_reconnect", &self.failover_reconnect)
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

/// What a broker tells its failover clients (ActiveMQ's `ConnectionControl`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionControl {
    pub header: Header,
    pub close: bool,
    pub exit: bool,
    pub fault_tolerant: bool,
    pub resume: bool,
    pub suspend: bool,
    /// Comma-separated OpenWire URLs: the broker itself and the peers its bridges reach.
    pub connected_brokers: Option<String>,
    /// A broker the client is asked to move to.
    pub reconnect_to: Option<String>,
    /// The client is asked to reconnect so that clients spread over the network.
    pub rebalance_connection: bool,
    pub token: Option<Vec<u8>>,
}

impl Command {
    pub fn kind(&self) -> u8 {
        match self {
            Command::WireFormatInfo(_) => kind::WIRE_FORMAT_INFO,
            Command::ConnectionInfo(_) => kind::CONNECTION_INFO,
            Command::ConnectionControl(_) => kind::CONNECTION_CONTROL,
            Command::KeepAliveInfo(_) => kind::KEEP_ALIVE_INFO,
            Command::Response { .. } => kind::RESPONSE,
            Command::ExceptionResponse { .. } => kind::EXCEPTION_RESPONSE,
            Command::Unknown { kind, .. } => *kind,
        }
    }

    /// Appends the command as one frame. On error `dst` is left as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), OpenWireError> {
        let start = dst.len();
        dst.put_i32(0);
        dst.put_u8(self.kind());
        if let Err(error) = self.encode_body(dst) {
            dst.truncate(start);
            return Err(error);
        }
        let size = dst.len() - start - 4;
        let Ok(announced) = i32::try_from(size) else {
            dst.truncate(start);
            return Err(OpenWireError::TooLong {
                field: "frame",
                length: size,
            });
        };
        dst[start..start + 4].copy_from_slice(&announced.to_be_bytes());
        Ok(())
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), OpenWireError> {
        match self {
            Command::WireFormatInfo(info) => {
                dst.put_slice(&MAGIC);
                dst.put_i32(info.version);
                let mut map = BytesMut::new();
                put_property_map(&mut map, &info.properties)?;
                put_byte_array(dst, Some(&map), "WireFormatInfo properties")?;
            }
            Command::ConnectionInfo(info) => {
                put_header(dst, info.header);
                put_nested_id(dst, kind::CONNECTION_ID, info.connection_id.as_deref())?;
                put_string(dst, info.client_id.as_deref(), "clientId")?;
                put_string(dst, info.password.as_deref(), "password")?;
                put_string(dst, info.user_name.as_deref(), "userName")?;
                match &info.broker_path {
                    None => dst.put_u8(0),
                    Some(path) => {
                        dst.put_u8(1);
                        let count =
                            i16::try_from(path.len()).map_err(|_| OpenWireError::TooLong {
                                field: "brokerPath",
                                length: path.len(),
                            })?;
                        dst.put_i16(count);
                        for id in path {
                            put_nested_id(dst, kind::BROKER_ID, id.as_deref())?;
                        }
                    }
                }
                for flag in [
                    info.broker_master_connector,
                    info.manageable,
                    info.client_master,
                    info.fault_tolerant,
                    info.failover_reconnect,
                ] {
                    dst.put_u8(flag.into());
                }
                put_string(dst, info.client_ip.as_deref(), "clientIp")?;
            }
            Command::ConnectionControl(control) => {
                put_header(dst, control.header);
                for flag in [
                    control.close,
                    control.exit,
                    control.fault_tolerant,
                    control.resume,
                    control.suspend,
                ] {
                    dst.put_u8(flag.into());
                }
                put_string(
                    dst,
                    control.connected_brokers.as_deref(),
                    "connectedBrokers",
                )?;
                put_string(dst, control.reconnect_to.as_deref(), "reconnectTo")?;
                dst.put_u8(control.rebalance_connection.into());
                put_byte_array(dst, control.token.as_deref(), "token")?;
            }
            Command::KeepAliveInfo(header) => put_header(dst, *header),
            Command::Response {
                header,
                correlation_id,
            } => {
                put_header(dst, *header);
                dst.put_i32(*correlation_id);
            }
            Command::ExceptionResponse {
                header,
                correlation_id,
                exception,
            } => {
                put_header(dst, *header);
                dst.put_i32(*correlation_id);
                match exception {
                    None => dst.put_u8(0),
                    Some(e) => {
                        dst.put_u8(1);
                        put_string(dst, e.class.as_deref(), "exception class")?;
                        put_string(dst, e.message.as_deref(), "exception message")?;
                    }
                }
            }
            Command::Unknown { body, .. } => dst.put_slice(body),
        }
        Ok(())
    }

    /// The command of type `kind` whose body (the frame after its type byte) is `body`.
    pub fn decode(kind: u8, body: Bytes) -> Result<Command, OpenWireError> {
        let command = match kind {
            kind::WIRE_FORMAT_INFO => {
                let mut r = Reader::new(&body, "WireFormatInfo");
                let magic = r.take(MAGIC.len(), "magic")?;
                if magic != MAGIC {
                    return Err(OpenWireError::BadMagic(magic.escape_ascii().to_string()));
                }
                let version = r.i32("version")?;
                let properties = match r.byte_array("properties")? {
                    None => BTreeMap::new(),
                    Some(map) => {
                        let mut map = Reader::new(map, "WireFormatInfo properties");
                        map.property_map(0)?
                    }
                };
                Command::WireFormatInfo(WireFormatInfo {
                    version,
                    properties,
                })
            }
            kind::CONNECTION_INFO => {
                let mut r = Reader::new(&body, "ConnectionInfo");
                let header = r.header()?;
                let connection_id = r.nested_id(kind::CONNECTION_ID, "connectionId")?;
                let client_id = r.string("clientId")?;
                let password = r.string("password")?;
                let user_name = r.string("userName")?;
                let broker_path = if r.bool("brokerPath")? {
                    let count = r.i16("brokerPath")?;
                    // A negative count reads as none, as Java's array of that size would fail.
                    let mut path = Vec::new();
                    for _ in 0..count.max(0) {
                        path.push(r.nested_id(kind::BROKER_ID, "brokerPath")?);
                    }
                    Some(path)
                } else {
                    None
                };
                Command::ConnectionInfo(ConnectionInfo {
                    header,
                    connection_id,
                    client_id,
                    password,
                    user_name,
                    broker_path,
                    broker_master_connector: r.bool("brokerMasterConnector")?,
                    manageable: r.bool("manageable")?,
                    client_master: r.bool("clientMaster")?,
                    fault_tolerant: r.bool("faultTolerant")?,
                    failover_reconnect: r.bool("failoverReconnect")?,
                    client_ip: r.string("clientIp")?,
                })
            }
            kind::CONNECTION_CONTROL => {
                let mut r = Reader::new(&body, "ConnectionControl");
                Command::ConnectionControl(ConnectionControl {
                    header: r.header()?,
                    close: r.bool("close")?,
                    exit: r.bool("exit")?,
                    fault_tolerant: r.bool("faultTolerant")?,
                    resume: r.bool("resume")?,
                    suspend: r.bool("suspend")?,
                    connected_brokers: r.string("connectedBrokers")?,
                    reconnect_to: r.string("reconnectTo")?,
                    rebalance_connection: r.bool("rebalanceConnection")?,
                    token: r.byte_array("token")?.map(<[u8]>::to_vec),
                })
            }
            kind::KEEP_ALIVE_INFO => {
                Command::KeepAliveInfo(Reader::new(&body, "KeepAliveInfo").header()?)
            }
            kind::RESPONSE => {
                let mut r = Reader::new(&body, "Response");
                Command::Response {
                    header: r.header()?,
                    correlation_id: r.i32("correlationId")?,
                }
            }
            kind::EXCEPTION_RESPONSE => {
                let mut r = Reader::new(&body, "ExceptionResponse");
                let header = r.header()?;
                let correlation_id = r.i32("correlationId")?;
                let exception = if r.bool("exception")? {
                    Some(BrokerException {
                        class: r.string("exception class")?,
                        message: r.string("exception message")?,
                    })
                } else {
                    None
                };
                Command::ExceptionResponse {
                    header,
                    correlation_id,
                    exception,
                }
            }
            kind => Command::Unknown { kind, body },
        };
        Ok(command)
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_masks_the_password() {
        let info = ConnectionInfo {
            user_name: Some("admin".into()),
            password: Some("s3cret-pass".into()),
            ..ConnectionInfo::default()
        };
        let shown = format!("{info:?}");
        assert!(!shown.contains("s3cret-pass"), "{shown}");
        assert!(
            shown.contains("MASKED") && shown.contains("admin"),
            "{shown}"
        );
    }
}
