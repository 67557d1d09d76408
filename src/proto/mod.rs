//! Wire codecs for the broker protocols that protocol-aware sessions terminate on both legs.

pub mod stomp;
