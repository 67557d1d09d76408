//! The bundled broker clusters: the `tether-lab` crate (shared with the benchmarks), driven
//! through `scripts/cluster`. A test binary brings the lab up once (see [`super::suite`]); tests
//! that break a node hold a [`Heal`] guard so the node is brought back even when they fail.

#[allow(unused_imports)]
pub use tether_lab::{Heal, Lab, ports, run, tls_file};
