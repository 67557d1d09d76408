//! Reading AMQP's primitive types out of a payload in place, and running `amq-protocol`'s
//! generators into a buffer. The reader checks every length against what is left before it
//! slices, so that a peek at any payload ends in a value or an error, never a panic.

use super::MethodError;
use amq_protocol::frame::{GenError, SerializeFn, WriteContext};
use bytes::Bytes;

/// A cursor over a method or content header payload.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Offset of the next unread byte from the start of the payload.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MethodError> {
        let rest = &self.bytes[self.at..];
        let taken = rest.get(..n).ok_or(MethodError::Truncated)?;
        self.at += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MethodError> {
        self.take(N)?.try_into().map_err(|_| MethodError::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MethodError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MethodError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MethodError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MethodError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A class and method id pair.
    pub(crate) fn id(&mut self) -> Result<(u16, u16), MethodError> {
        Ok((self.u16()?, self.u16()?))
    }

    /// A short string: one length octet, then that many bytes of UTF-8.
    pub(crate) fn short_str(&mut self) -> Result<&'a str, MethodError> {
        let length = self.u8()?;
        let bytes = self.take(usize::from(length))?;
        std::str::from_utf8(bytes).map_err(|_| MethodError::malformed("short string is not UTF-8"))
    }

    /// Skips a short string without looking at its bytes.
    pub(crate) fn skip_short_str(&mut self) -> Result<(), MethodError> {
        let length = self.u8()?;
        self.take(usize::from(length)).map(drop)
    }

    /// Skips anything with a 4-byte length in front: a long string, a field table, an array.
    pub(crate) fn skip_long(&mut self) -> Result<(), MethodError> {
        let length = self.u32()?;
        let length = usize::try_from(length).map_err(|_| MethodError::Truncated)?;
        self.take(length).map(drop)
    }

    /// The payload must end here: trailing bytes are as malformed to `amq-protocol` (which
    /// parses a whole frame payload) as to any broker.
    pub(crate) fn finish(&self) -> Result<(), MethodError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(MethodError::malformed("bytes after the last argument"))
        }
    }
}

/// Runs an `amq-protocol` generator into a fresh buffer sized for `capacity`.
pub(crate) fn generate<F>(capacity: usize, generator: F) -> Bytes
where
    F: SerializeFn<Vec<u8>>,
{
    match generator(WriteContext::from(Vec::with_capacity(capacity))) {
        Ok(written) => Bytes::from(written.into_inner().0),
        // A `Vec` grows as needed and its `Write` never fails, and the length prefixes
        // amq-protocol writes back always fit: there is no error left to report.
        Err(error) => unreachable_generation(error),
    }
}

#[cold]
fn unreachable_generation(error: GenError) -> ! {
    panic!("amq-protocol failed to write into a Vec: {error:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_primitives_big_endian() {
        let bytes = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8(), Ok(1));
        assert_eq!(reader.u16(), Ok(2));
        assert_eq!(reader.u32(), Ok(3));
        assert_eq!(reader.u64(), Ok(4));
        assert_eq!(reader.position(), 15);
        assert!(reader.finish().is_err());
        assert_eq!(reader.u8(), Ok(9));
        assert_eq!(reader.finish(), Ok(()));
        assert_eq!(reader.u8(), Err(MethodError::Truncated));
    }

    #[test]
    fn short_strings_are_checked() {
        assert_eq!(Reader::new(b"\x03abc").short_str(), Ok("abc"));
        assert_eq!(Reader::new(b"\x00").short_str(), Ok(""));
        assert_eq!(
            Reader::new(b"\x04abc").short_str(),
            Err(MethodError::Truncated)
        );
        assert!(matches!(
            Reader::new(b"\x01\xff").short_str(),
            Err(MethodError::Malformed(_))
        ));
        let mut reader = Reader::new(b"\x01\xff\x00\x00\x00\x01x");
        assert_eq!(reader.skip_short_str(), Ok(()));
        assert_eq!(reader.skip_long(), Ok(()));
        assert_eq!(reader.finish(), Ok(()));
        assert_eq!(
            Reader::new(b"\xff\xff\xff\xff").skip_long(),
            Err(MethodError::Truncated)
        );
    }

    #[test]
    fn a_failed_read_consumes_nothing() {
        let mut reader = Reader::new(b"\x00\x01\x02");
        assert_eq!(reader.u32(), Err(MethodError::Truncated));
        assert_eq!(reader.u16(), Ok(1));
    }
}
