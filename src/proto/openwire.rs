//! OpenWire, ActiveMQ's native protocol: the few commands that tether's ActiveMQ discovery
//! source needs to hold a connection to a broker and read its ConnectionControl updates.
//!
//! Only the loose encoding with the marshal cache off is spoken. tether's [`WireFormatInfo`]
//! asks for exactly that, and as both sides' flags are ANDed the broker falls in line;
//! [`Negotiated::unsupported`] says when it did not. Versions 9 to 12 lay out every command
//! here the same way, so any of them will do.
//!
//! # Layout
//!
//! - Frame: int32 (big-endian) size, then `size` bytes: the command type byte and its body.
//! - [`Command`]: the commands tether reads or writes. Any other type is kept whole as
//!   [`Command::Unknown`], so a stream is skipped frame by frame without knowing every type.
//! - [`OpenWireCodec`]: tokio-util codec; the announced size is capped before any buffering.
//! - [`WireFormatInfo::negotiate`]: what the two sides settle on.
//!
//! A body may go on after the fields decoded here (a newer broker adding a field): the rest is
//! ignored. A body that ends before them is an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::codec::{Decoder, Encoder};

/// The first 8 bytes of every WireFormatInfo body.
pub const MAGIC: [u8; 8] = *b"ActiveMQ";
/// The newest OpenWire version (ActiveMQ 5.15 and later), the one tether offers.
pub const VERSION: i32 = 12;
/// The oldest version whose ConnectionInfo and ConnectionControl have every field read here.
pub const MIN_VERSION: i32 = 9;
/// A discovery connection carries a handful of small commands; nothing near this is expected.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// Command type bytes (ActiveMQ's `CommandTypes`).
pub mod kind {
    pub const WIRE_FORMAT_INFO: u8 = 1;
    pub const CONNECTION_INFO: u8 = 3;
    pub const KEEP_ALIVE_INFO: u8 = 10;
    pub const CONNECTION_CONTROL: u8 = 18;
    pub const RESPONSE: u8 = 30;
    pub const EXCEPTION_RESPONSE: u8 = 31;
    pub const CONNECTION_ID: u8 = 120;
    pub const BROKER_ID: u8 = 124;
}

/// Type tags of the values in WireFormatInfo's property map (ActiveMQ's `MarshallingSupport`).
mod tag {
    pub const NULL: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const BYTE: u8 = 2;
    pub const CHAR: u8 = 3;
    pub const SHORT: u8 = 4;
    pub const INT: u8 = 5;
    pub const LONG: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const FLOAT: u8 = 8;
    pub const STRING: u8 = 9;
    pub const BYTES: u8 = 10;
    pub const MAP: u8 = 11;
    pub const LIST: u8 = 12;
    pub const BIG_STRING: u8 = 13;
}

/// Maps and lists inside WireFormatInfo properties nest no deeper than this; brokers send none.
const MAX_PROPERTY_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum OpenWireError {
    #[error("frame of {size} bytes is over the {max}-byte limit")]
    FrameTooLarge { size: u64, max: usize },
    #[error("frame size {0} leaves no room for a command type")]
    BadFrameSize(i32),
    #[error("{command} ends inside {field}")]
    Truncated {
        command: &'static str,
        field: &'static str,
    },
    #[error("{command}: {field} has a negative length ({length})")]
    NegativeLength {
        command: &'static str,
        field: &'static str,
        length: i32,
    },
    #[error("{command}: {field} is not modified UTF-8")]
    BadString {
        command: &'static str,
        field: &'static str,
    },
    #[error("WireFormatInfo magic is \"{0}\", not \"ActiveMQ\"")]
    BadMagic(String),
    #[error("WireFormatInfo property of unknown type {0}")]
    UnknownPropertyType(u8),
    #[error("WireFormatInfo properties nest deeper than {MAX_PROPERTY_DEPTH}")]
    PropertiesTooDeep,
    #[error("{command}: {field} is a nested object of type {found}, expected {expected}")]
    UnexpectedNested {
        command: &'static str,
        field: &'static str,
        found: u8,
        expected: u8,
    },
    /// Raised by the encoder: tether built a command the wire cannot carry.
    #[error("cannot encode {field}: {length} bytes is over what the field can hold")]
    TooLong { field: &'static str, length: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

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

/// Opens a connection on the broker (ActiveMQ's `ConnectionInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// Splits a byte stream into [`Command`]s and writes them back. After a decode error the
/// stream is out of step: drop the connection.
#[derive(Clone, Copy, Debug)]
pub struct OpenWireCodec {
    max_frame_size: usize,
}

impl OpenWireCodec {
    pub fn new(max_frame_size: usize) -> OpenWireCodec {
        OpenWireCodec { max_frame_size }
    }
}

impl Default for OpenWireCodec {
    fn default() -> OpenWireCodec {
        OpenWireCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for OpenWireCodec {
    type Item = Command;
    type Error = OpenWireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, OpenWireError> {
        let Some(prefix) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let announced = i32::from_be_bytes(*prefix);
        let size = usize::try_from(announced)
            .ok()
            .filter(|&size| size >= 1)
            .ok_or(OpenWireError::BadFrameSize(announced))?;
        if size > self.max_frame_size {
            return Err(OpenWireError::FrameTooLarge {
                size: size as u64,
                max: self.max_frame_size,
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(size).freeze();
        let kind = frame.get_u8();
        Command::decode(kind, frame).map(Some)
    }
}

impl Encoder<&Command> for OpenWireCodec {
    type Error = OpenWireError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), OpenWireError> {
        command.encode(dst)
    }
}

/// Reads one command's fields, naming the field that ran short.
struct Reader<'a> {
    rest: &'a [u8],
    command: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], command: &'static str) -> Reader<'a> {
        Reader {
            rest: bytes,
            command,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], OpenWireError> {
        if self.rest.len() < n {
            return Err(OpenWireError::Truncated {
                command: self.command,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], OpenWireError> {
        let bytes = self.take(N, field)?;
        // `take` returned exactly N bytes.
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, OpenWireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Java's `readBoolean`: any byte but 0 is true.
    fn bool(&mut self, field: &'static str) -> Result<bool, OpenWireError> {
        Ok(self.u8(field)? != 0)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, OpenWireError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, OpenWireError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, OpenWireError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, OpenWireError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn header(&mut self) -> Result<Header, OpenWireError> {
        Ok(Header {
            command_id: self.i32("commandId")?,
            response_required: self.bool("responseRequired")?,
        })
    }

    /// An int32 length, then that many bytes.
    fn sized(&mut self, field: &'static str) -> Result<&'a [u8], OpenWireError> {
        let length = self.i32(field)?;
        let n = usize::try_from(length).map_err(|_| OpenWireError::NegativeLength {
            command: self.command,
            field,
            length,
        })?;
        self.take(n, field)
    }

    /// A u16 length, then that many bytes of modified UTF-8 (Java's `readUTF`).
    fn utf(&mut self, field: &'static str) -> Result<String, OpenWireError> {
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        decode_java_utf(bytes).ok_or(OpenWireError::BadString {
            command: self.command,
            field,
        })
    }

    fn string(&mut self, field: &'static str) -> Result<Option<String>, OpenWireError> {
        if self.bool(field)? {
            self.utf(field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn byte_array(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, OpenWireError> {
        if self.bool(field)? {
            self.sized(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A nested ConnectionId or BrokerId (cache off): present flag, type byte, string value.
    fn nested_id(
        &mut self,
        expected: u8,
        field: &'static str,
    ) -> Result<Option<String>, OpenWireError> {
        if !self.bool(field)? {
            return Ok(None);
        }
        let found = self.u8(field)?;
        if found != expected {
            return Err(OpenWireError::UnexpectedNested {
                command: self.command,
                field,
                found,
                expected,
            });
        }
        self.string(field)
    }

    /// An int32 count (-1 for none), then each key as modified UTF-8 and its tagged value.
    fn property_map(&mut self, depth: usize) -> Result<BTreeMap<String, Property>, OpenWireError> {
        if depth > MAX_PROPERTY_DEPTH {
            return Err(OpenWireError::PropertiesTooDeep);
        }
        let count = self.i32("property count")?;
        let mut map = BTreeMap::new();
        // Nothing is reserved for the count: every entry must first arrive in the frame.
        for _ in 0..count.max(0) {
            let key = self.utf("property name")?;
            let value = self.property(depth)?;
            map.insert(key, value);
        }
        Ok(map)
    }

    fn property(&mut self, depth: usize) -> Result<Property, OpenWireError> {
        let field = "property value";
        let value = match self.u8(field)? {
            tag::NULL => Property::Null,
            tag::BOOL => Property::Bool(self.bool(field)?),
            tag::BYTE => Property::Byte(i8::from_be_bytes(self.array(field)?)),
            tag::CHAR => Property::Char(self.u16(field)?),
            tag::SHORT => Property::Short(self.i16(field)?),
            tag::INT => Property::Int(self.i32(field)?),
            tag::LONG => Property::Long(self.i64(field)?),
            tag::DOUBLE => Property::Double(f64::from_be_bytes(self.array(field)?)),
            tag::FLOAT => Property::Float(f32::from_be_bytes(self.array(field)?)),
            tag::STRING => Property::String(self.utf(field)?),
            tag::BIG_STRING => {
                let bytes = self.sized(field)?;
                Property::String(decode_java_utf(bytes).ok_or(OpenWireError::BadString {
                    command: self.command,
                    field,
                })?)
            }
            tag::BYTES => Property::Bytes(self.sized(field)?.to_vec()),
            tag::MAP => Property::Map(self.property_map(depth + 1)?),
            tag::LIST => {
                if depth + 1 > MAX_PROPERTY_DEPTH {
                    return Err(OpenWireError::PropertiesTooDeep);
                }
                let count = self.i32("list length")?;
                let mut list = Vec::new();
                for _ in 0..count.max(0) {
                    list.push(self.property(depth + 1)?);
                }
                Property::List(list)
            }
            other => return Err(OpenWireError::UnknownPropertyType(other)),
        };
        Ok(value)
    }
}

fn put_header(dst: &mut BytesMut, header: Header) {
    dst.put_i32(header.command_id);
    dst.put_u8(header.response_required.into());
}

/// A u16 length, then `text` as modified UTF-8 (Java's `writeUTF`).
fn put_utf(dst: &mut BytesMut, text: &str, field: &'static str) -> Result<(), OpenWireError> {
    let encoded = encode_java_utf(text);
    let length = u16::try_from(encoded.len()).map_err(|_| OpenWireError::TooLong {
        field,
        length: encoded.len(),
    })?;
    dst.put_u16(length);
    dst.put_slice(&encoded);
    Ok(())
}

fn put_string(
    dst: &mut BytesMut,
    text: Option<&str>,
    field: &'static str,
) -> Result<(), OpenWireError> {
    dst.put_u8(text.is_some().into());
    match text {
        Some(text) => put_utf(dst, text, field),
        None => Ok(()),
    }
}

fn put_sized(dst: &mut BytesMut, bytes: &[u8], field: &'static str) -> Result<(), OpenWireError> {
    let length = i32::try_from(bytes.len()).map_err(|_| OpenWireError::TooLong {
        field,
        length: bytes.len(),
    })?;
    dst.put_i32(length);
    dst.put_slice(bytes);
    Ok(())
}

fn put_byte_array(
    dst: &mut BytesMut,
    bytes: Option<&[u8]>,
    field: &'static str,
) -> Result<(), OpenWireError> {
    dst.put_u8(bytes.is_some().into());
    match bytes {
        Some(bytes) => put_sized(dst, bytes, field),
        None => Ok(()),
    }
}

fn put_nested_id(dst: &mut BytesMut, kind: u8, value: Option<&str>) -> Result<(), OpenWireError> {
    dst.put_u8(value.is_some().into());
    if let Some(value) = value {
        dst.put_u8(kind);
        put_string(dst, Some(value), "id")?;
    }
    Ok(())
}

fn put_property_map(
    dst: &mut BytesMut,
    map: &BTreeMap<String, Property>,
) -> Result<(), OpenWireError> {
    let count = i32::try_from(map.len()).map_err(|_| OpenWireError::TooLong {
        field: "property map",
        length: map.len(),
    })?;
    dst.put_i32(count);
    for (key, value) in map {
        put_utf(dst, key, "property name")?;
        put_property(dst, value)?;
    }
    Ok(())
}

fn put_property(dst: &mut BytesMut, value: &Property) -> Result<(), OpenWireError> {
    match value {
        Property::Null => dst.put_u8(tag::NULL),
        Property::Bool(v) => {
            dst.put_u8(tag::BOOL);
            dst.put_u8((*v).into());
        }
        Property::Byte(v) => {
            dst.put_u8(tag::BYTE);
            dst.put_i8(*v);
        }
        Property::Char(v) => {
            dst.put_u8(tag::CHAR);
            dst.put_u16(*v);
        }
        Property::Short(v) => {
            dst.put_u8(tag::SHORT);
            dst.put_i16(*v);
        }
        Property::Int(v) => {
            dst.put_u8(tag::INT);
            dst.put_i32(*v);
        }
        Property::Long(v) => {
            dst.put_u8(tag::LONG);
            dst.put_i64(*v);
        }
        Property::Double(v) => {
            dst.put_u8(tag::DOUBLE);
            dst.put_f64(*v);
        }
        Property::Float(v) => {
            dst.put_u8(tag::FLOAT);
            dst.put_f32(*v);
        }
        Property::String(v) => {
            let encoded = encode_java_utf(v);
            // As ActiveMQ does: a string too long for a u16 length goes with an int32 one.
            if let Ok(length) = u16::try_from(encoded.len()) {
                dst.put_u8(tag::STRING);
                dst.put_u16(length);
                dst.put_slice(&encoded);
            } else {
                dst.put_u8(tag::BIG_STRING);
                put_sized(dst, &encoded, "property value")?;
            }
        }
        Property::Bytes(v) => {
            dst.put_u8(tag::BYTES);
            put_sized(dst, v, "property value")?;
        }
        Property::Map(map) => {
            dst.put_u8(tag::MAP);
            put_property_map(dst, map)?;
        }
        Property::List(list) => {
            dst.put_u8(tag::LIST);
            let count = i32::try_from(list.len()).map_err(|_| OpenWireError::TooLong {
                field: "property list",
                length: list.len(),
            })?;
            dst.put_i32(count);
            for item in list {
                put_property(dst, item)?;
            }
        }
    }
    Ok(())
}

/// Java's modified UTF-8: UTF-16 code units each written as UTF-8, NUL as two bytes. So a
/// character outside the BMP is two 3-byte surrogates, not one 4-byte sequence.
pub fn encode_java_utf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for unit in text.encode_utf16() {
        match unit {
            0x0001..=0x007f => out.push(unit as u8),
            0x0000 | 0x0080..=0x07ff => {
                out.push(0xc0 | (unit >> 6) as u8);
                out.push(0x80 | (unit & 0x3f) as u8);
            }
            _ => {
                out.push(0xe0 | (unit >> 12) as u8);
                out.push(0x80 | ((unit >> 6) & 0x3f) as u8);
                out.push(0x80 | (unit & 0x3f) as u8);
            }
        }
    }
    out
}

/// Reads what [`encode_java_utf`] writes, and plain UTF-8 too (the two agree but for NUL and
/// characters outside the BMP). `None` for bytes that are neither, or unpaired surrogates.
pub fn decode_java_utf(bytes: &[u8]) -> Option<String> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Some(text.to_owned());
    }
    let continuation = |b: Option<&u8>| {
        b.filter(|&&b| b & 0xc0 == 0x80)
            .map(|&b| u16::from(b & 0x3f))
    };
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&lead) = bytes.get(i) {
        let lead16 = u16::from(lead);
        match lead {
            0x00..=0x7f => {
                units.push(lead16);
                i += 1;
            }
            0xc0..=0xdf => {
                let b1 = continuation(bytes.get(i + 1))?;
                units.push((lead16 & 0x1f) << 6 | b1);
                i += 2;
            }
            0xe0..=0xef => {
                let b1 = continuation(bytes.get(i + 1))?;
                let b2 = continuation(bytes.get(i + 2))?;
                units.push((lead16 & 0x0f) << 12 | b1 << 6 | b2);
                i += 3;
            }
            _ => return None,
        }
    }
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests;
