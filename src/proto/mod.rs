//! Wire codecs for the broker protocols that protocol-aware sessions terminate on both legs.
//!
//! - [`stomp`]: STOMP 1.0 to 1.2 frames, headers unescaped per leg version.
//! - [`amqp`]: AMQP 0-9-1 frames with zero-copy payloads, in-place peeks at the methods every
//!   message goes through, and full method decoding via `amq-protocol` for the rest.
//! - [`openwire`]: the few ActiveMQ OpenWire commands the ActiveMQ discovery source reads and
//!   writes (loose encoding).

pub mod amqp;
pub mod openwire;
pub mod stomp;

use bytes::{Buf, Bytes, BytesMut};

/// Below this, a frame's payload is copied out of the read buffer rather than shared with it.
/// A shared payload keeps the whole read it came in alive (up to 64 KiB), and sessions keep
/// small frames for their whole life (a STOMP CONNECT or SUBSCRIBE, AMQP methods kept for
/// replay); a copy of a few hundred bytes costs less than that.
pub const SHARE_FROM: usize = 512;

/// The next `len` bytes of `src` as a payload: shared with the read buffer when big, copied
/// when small (see [`SHARE_FROM`]).
pub fn cut(src: &mut BytesMut, len: usize) -> Bytes {
    if len >= SHARE_FROM {
        return src.split_to(len).freeze();
    }
    let payload = Bytes::copy_from_slice(&src[..len]);
    src.advance(len);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_are_copied_and_big_ones_shared() {
        let mut src = BytesMut::from(&[7u8; 2000][..]);
        let base = src.as_ptr();
        let small = cut(&mut src, 10);
        assert_ne!(small.as_ptr(), base, "copied");
        let big = cut(&mut src, SHARE_FROM);
        assert_eq!(big.as_ptr(), base.wrapping_add(10), "shared");
        assert!(cut(&mut src, 0).is_empty());
        assert_eq!(src.len(), 2000 - 10 - SHARE_FROM);
    }
}
