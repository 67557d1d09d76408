//! The STOMP version a leg negotiated. It matters to the codec only through header escaping,
//! which 1.0 lacks, 1.1 introduces and 1.2 extends with `\r`.

use super::StompError;
use std::fmt;
use std::str::FromStr;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// Oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The highest version in a CONNECT frame's `accept-version` header (`"1.0,1.1,1.2"`) that
    /// is also in `supported`. A missing header means the client speaks only 1.0 (spec);
    /// versions this crate does not know are skipped, not errors, as later specs may add some.
    pub fn highest_accepted(
        accept_version: Option<&str>,
        supported: &[Version],
    ) -> Option<Version> {
        let Some(list) = accept_version else {
            return supported.contains(&Version::V1_0).then_some(Version::V1_0);
        };
        list.split(',')
            .filter_map(|item| item.trim().parse::<Version>().ok())
            .filter(|version| supported.contains(version))
            .max()
    }
}

impl FromStr for Version {
    type Err = StompError;

    fn from_str(text: &str) -> Result<Version, StompError> {
        Version::ALL
            .into_iter()
            .find(|version| version.as_str() == text)
            .ok_or_else(|| StompError::UnsupportedVersion(text.to_owned()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for version in Version::ALL {
            assert_eq!(version.as_str().parse::<Version>().ok(), Some(version));
        }
        let error = "2.0".parse::<Version>().err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("unsupported STOMP version 2.0"));
    }

    #[test]
    fn picks_the_highest_common_version() {
        let all = &Version::ALL;
        assert_eq!(
            Version::highest_accepted(Some("1.0,1.1,1.2"), all),
            Some(Version::V1_2)
        );
        assert_eq!(
            Version::highest_accepted(Some("1.2, 1.0"), all),
            Some(Version::V1_2)
        );
        assert_eq!(
            Version::highest_accepted(Some("1.1,9.9"), all),
            Some(Version::V1_1)
        );
        assert_eq!(
            Version::highest_accepted(Some("1.2"), &[Version::V1_0, Version::V1_1]),
            None
        );
        assert_eq!(Version::highest_accepted(Some(""), all), None);
    }

    #[test]
    fn no_accept_version_means_1_0() {
        assert_eq!(
            Version::highest_accepted(None, &Version::ALL),
            Some(Version::V1_0)
        );
        assert_eq!(Version::highest_accepted(None, &[Version::V1_2]), None);
    }
}
