use super::*;
use bytes::{BufMut, BytesMut};
use std::collections::BTreeMap;

/// Reads one command's fields, naming the field that ran short.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
    command: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], command: &'static str) -> Reader<'a> {
        Reader {
            rest: bytes,
            command,
        }
    }

    pub(super) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], OpenWireError> {
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

    pub(super) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], OpenWireError> {
        let bytes = self.take(N, field)?;
        // `take` returned exactly N bytes.
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, OpenWireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Java's `readBoolean`: any byte but 0 is true.
    pub(super) fn bool(&mut self, field: &'static str) -> Result<bool, OpenWireError> {
        Ok(self.u8(field)? != 0)
    }

    pub(super) fn i16(&mut self, field: &'static str) -> Result<i16, OpenWireError> {
        self.array(field).map(i16::from_be_bytes)
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, OpenWireError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, OpenWireError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(super) fn i64(&mut self, field: &'static str) -> Result<i64, OpenWireError> {
        self.array(field).map(i64::from_be_bytes)
    }

    pub(super) fn header(&mut self) -> Result<Header, OpenWireError> {
        Ok(Header {
            command_id: self.i32("commandId")?,
            response_required: self.bool("responseRequired")?,
        })
    }

    /// An int32 length, then that many bytes.
    pub(super) fn sized(&mut self, field: &'static str) -> Result<&'a [u8], OpenWireError> {
        let length = self.i32(field)?;
        let n = usize::try_from(length).map_err(|_| OpenWireError::NegativeLength {
            command: self.command,
            field,
            length,
        })?;
        self.take(n, field)
    }

    /// A u16 length, then that many bytes of modified UTF-8 (Java's `readUTF`).
    pub(super) fn utf(&mut self, field: &'static str) -> Result<String, OpenWireError> {
        let length = self.u16(field)?;
        let bytes = self.take(length.into(), field)?;
        decode_java_utf(bytes).ok_or(OpenWireError::BadString {
            command: self.command,
            field,
        })
    }

    pub(super) fn string(&mut self, field: &'static str) -> Result<Option<String>, OpenWireError> {
        if self.bool(field)? {
            self.utf(field).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(super) fn byte_array(
        &mut self,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, OpenWireError> {
        if self.bool(field)? {
            self.sized(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A nested ConnectionId or BrokerId (cache off): present flag, type byte, string value.
    pub(super) fn nested_id(
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
    pub(super) fn property_map(
        &mut self,
        depth: usize,
    ) -> Result<BTreeMap<String, Property>, OpenWireError> {
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

    pub(super) fn property(&mut self, depth: usize) -> Result<Property, OpenWireError> {
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

pub(super) fn put_header(dst: &mut BytesMut, header: Header) {
    dst.put_i32(header.command_id);
    dst.put_u8(header.response_required.into());
}

/// A u16 length, then `text` as modified UTF-8 (Java's `writeUTF`).
pub(super) fn put_utf(
    dst: &mut BytesMut,
    text: &str,
    field: &'static str,
) -> Result<(), OpenWireError> {
    let encoded = encode_java_utf(text);
    let length = u16::try_from(encoded.len()).map_err(|_| OpenWireError::TooLong {
        field,
        length: encoded.len(),
    })?;
    dst.put_u16(length);
    dst.put_slice(&encoded);
    Ok(())
}

pub(super) fn put_string(
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

pub(super) fn put_sized(
    dst: &mut BytesMut,
    bytes: &[u8],
    field: &'static str,
) -> Result<(), OpenWireError> {
    let length = i32::try_from(bytes.len()).map_err(|_| OpenWireError::TooLong {
        field,
        length: bytes.len(),
    })?;
    dst.put_i32(length);
    dst.put_slice(bytes);
    Ok(())
}

pub(super) fn put_byte_array(
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

pub(super) fn put_nested_id(
    dst: &mut BytesMut,
    kind: u8,
    value: Option<&str>,
) -> Result<(), OpenWireError> {
    dst.put_u8(value.is_some().into());
    if let Some(value) = value {
        dst.put_u8(kind);
        put_string(dst, Some(value), "id")?;
    }
    Ok(())
}

pub(super) fn put_property_map(
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

pub(super) fn put_property(dst: &mut BytesMut, value: &Property) -> Result<(), OpenWireError> {
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
