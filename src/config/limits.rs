//! `[limits]`: caps on what all of the process's sessions hold together (see `crate::budget`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sessions of every listener together; by default what the open-file limit allows, two
    /// descriptors per session after 256 kept for the rest.
    pub max_sessions: Option<usize>,
    /// Bytes of unconfirmed publishes kept for replay by every session together.
    #[serde(default = "max_unconfirmed_bytes")]
    pub max_unconfirmed_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_sessions: None,
            max_unconfirmed_bytes: max_unconfirmed_bytes(),
        }
    }
}

fn max_unconfirmed_bytes() -> usize {
    512 * 1024 * 1024
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if self.max_sessions == Some(0) {
            return Err(super::invalid("limits.max_sessions", "must be at least 1"));
        }
        if self.max_unconfirmed_bytes == 0 {
            return Err(super::invalid(
                "limits.max_unconfirmed_bytes",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Gives the process budget these caps.
    pub fn apply(&self) {
        let sessions = self.max_sessions.unwrap_or_else(|| {
            crate::budget::sessions_for_open_files(crate::budget::open_file_limit())
        });
        crate::budget::Budget::process().set(sessions, self.max_unconfirmed_bytes);
    }
}
