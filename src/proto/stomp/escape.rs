//! Header escaping. 1.0 has none, so a 1.0 header can hold neither a line feed nor (in its name)
//! a colon. 1.1 escapes line feed, colon and backslash; 1.2 adds carriage return, because 1.2
//! lets a line end in CRLF. [`Escaping`] is decided once per frame from the leg's version and
//! the command, since handshake frames are never escaped.

use super::{Command, StompError, Version};
use bytes::{BufMut, BytesMut};

/// How one frame's headers are written on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// Bytes as they are: STOMP 1.0, and CONNECT/STOMP/CONNECTED in every version.
    Raw,
    /// `\n`, `\c`, `\\`.
    V1_1,
    /// `\n`, `\c`, `\\`, `\r`.
    V1_2,
}

impl Escaping {
    pub(crate) fn of(version: Version, command: Command) -> Escaping {
        if !command.escapes_headers() {
            return Escaping::Raw;
        }
        match version {
            Version::V1_0 => Escaping::Raw,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }

    /// A header name or value as read from the wire (end of line already cut off). 1.0 values
    /// are kept as they are, leading and trailing blanks included: some 1.0 brokers trimmed
    /// them, others did not, and a proxy must not decide for the receiver.
    pub(crate) fn unescape(self, wire: &[u8]) -> Result<String, StompError> {
        let text = std::str::from_utf8(wire).map_err(|_| StompError::NotUtf8)?;
        if self == Escaping::Raw || memchr::memchr(b'\\', wire).is_none() {
            return Ok(text.to_owned());
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('c') => out.push(':'),
                Some('\\') => out.push('\\'),
                Some('r') if self == Escaping::V1_2 => out.push('\r'),
                Some(other) => return Err(StompError::InvalidEscape(other)),
                None => return Err(StompError::DanglingEscape),
            }
        }
        Ok(out)
    }

    /// Writes one header line without its end of line, or fails without writing anything
    /// useful (the caller rolls `dst` back) when this escaping cannot carry the header.
    pub(crate) fn write_header(
        self,
        name: &str,
        value: &str,
        version: Version,
        dst: &mut BytesMut,
    ) -> Result<(), StompError> {
        let refuse = |reason| StompError::Unencodable {
            name: name.to_owned(),
            version,
            reason,
        };
        match self {
            Escaping::Raw => {
                if name.contains('\n') || value.contains('\n') {
                    return Err(refuse("a line feed cannot be escaped"));
                }
                if name.contains(':') {
                    return Err(refuse("a colon in a header name cannot be escaped"));
                }
                if value.ends_with('\r') {
                    return Err(refuse(
                        "a value ending in a carriage return cannot be escaped",
                    ));
                }
                dst.put_slice(name.as_bytes());
                dst.put_u8(b':');
                dst.put_slice(value.as_bytes());
            }
            Escaping::V1_1 | Escaping::V1_2 => {
                // 1.1 cannot escape CR; one inside a value is sent raw, but one at its very end
                // would read back as part of a CRLF line ending.
                if self == Escaping::V1_1 && value.ends_with('\r') {
                    return Err(refuse(
                        "a value ending in a carriage return cannot be escaped",
                    ));
                }
                self.put_escaped(name, dst);
                dst.put_u8(b':');
                self.put_escaped(value, dst);
            }
        }
        Ok(())
    }

    fn put_escaped(self, text: &str, dst: &mut BytesMut) {
        let mut rest = text.as_bytes();
        // Copy runs of plain bytes whole; every special byte is ASCII, so UTF-8 is untouched.
        while let Some(at) = rest.iter().position(|&b| self.needs_escape(b)) {
            dst.put_slice(&rest[..at]);
            dst.put_slice(match rest[at] {
                b'\n' => b"\\n",
                b':' => b"\\c",
                b'\\' => b"\\\\",
                _ => b"\\r",
            });
            rest = &rest[at + 1..];
        }
        dst.put_slice(rest);
    }

    fn needs_escape(self, byte: u8) -> bool {
        matches!(byte, b'\n' | b':' | b'\\') || (byte == b'\r' && self == Escaping::V1_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(escaping: Escaping, wire: &str) -> Result<String, String> {
        escaping
            .unescape(wire.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn written(escaping: Escaping, name: &str, value: &str) -> Result<String, String> {
        let mut dst = BytesMut::new();
        escaping
            .write_header(name, value, Version::V1_2, &mut dst)
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&dst).into_owned())
    }

    #[test]
    fn handshake_frames_are_raw_in_every_version() {
        for version in Version::ALL {
            assert_eq!(Escaping::of(version, Command::Connect), Escaping::Raw);
            assert_eq!(Escaping::of(version, Command::Stomp), Escaping::Raw);
            assert_eq!(Escaping::of(version, Command::Connected), Escaping::Raw);
        }
        assert_eq!(Escaping::of(Version::V1_0, Command::Send), Escaping::Raw);
        assert_eq!(Escaping::of(Version::V1_1, Command::Send), Escaping::V1_1);
        assert_eq!(
            Escaping::of(Version::V1_2, Command::Message),
            Escaping::V1_2
        );
    }

    #[test]
    fn raw_keeps_backslashes_and_blanks() {
        assert_eq!(
            unescape(Escaping::Raw, r" a\nb\t\ "),
            Ok(r" a\nb\t\ ".into())
        );
    }

    #[test]
    fn v1_1_unescapes_three_sequences() {
        assert_eq!(
            unescape(Escaping::V1_1, r"a\nb\cc\\d"),
            Ok("a\nb:c\\d".into())
        );
        assert_eq!(
            unescape(Escaping::V1_1, r"a\rb"),
            Err("invalid escape sequence \\r in header".into())
        );
    }

    #[test]
    fn v1_2_adds_carriage_return() {
        assert_eq!(
            unescape(Escaping::V1_2, r"a\rb\n\c\\"),
            Ok("a\rb\n:\\".into())
        );
    }

    #[test]
    fn other_escapes_are_errors() {
        for escaping in [Escaping::V1_1, Escaping::V1_2] {
            assert_eq!(
                unescape(escaping, r"tab\there"),
                Err("invalid escape sequence \\t in header".into())
            );
            assert_eq!(
                unescape(escaping, "end\\"),
                Err("header ends with a lone backslash".into())
            );
            assert_eq!(
                unescape(escaping, r"\é"),
                Err("invalid escape sequence \\é in header".into())
            );
        }
    }

    #[test]
    fn header_bytes_must_be_utf8() {
        for escaping in [Escaping::Raw, Escaping::V1_1, Escaping::V1_2] {
            assert!(matches!(
                escaping.unescape(b"\xff"),
                Err(StompError::NotUtf8)
            ));
        }
        assert_eq!(
            unescape(Escaping::V1_2, "ünï\\ccode"),
            Ok("ünï:code".into())
        );
    }

    #[test]
    fn escapes_per_version() {
        let value = "a:b\nc\\d\re";
        assert_eq!(
            written(Escaping::V1_2, "k:1", value),
            Ok(r"k\c1:a\cb\nc\\d\re".into())
        );
        assert_eq!(
            written(Escaping::V1_1, "k", value),
            Ok("k:a\\cb\\nc\\\\d\re".into())
        );
        assert_eq!(written(Escaping::Raw, "k", "a:b\\c\r"), Err(
            "cannot send header \"k\" to a STOMP 1.2 peer: a value ending in a carriage return \
             cannot be escaped"
                .into()
        ));
        assert_eq!(
            written(Escaping::Raw, "k", "a:b\\c\rd"),
            Ok("k:a:b\\c\rd".into())
        );
    }

    #[test]
    fn raw_refuses_what_it_cannot_carry() {
        assert!(written(Escaping::Raw, "k", "a\nb").is_err());
        assert!(written(Escaping::Raw, "k\n", "v").is_err());
        assert!(written(Escaping::Raw, "k:x", "v").is_err());
        assert!(written(Escaping::V1_1, "k", "v\r").is_err());
        assert_eq!(written(Escaping::V1_2, "k", "v\r"), Ok(r"k:v\r".into()));
    }
}
