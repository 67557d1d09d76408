//! Frame headers as a list, not a map: a proxy must forward them in the order they came and keep
//! repeated entries, which STOMP allows and resolves as "the first one wins". Frames carry a
//! handful of headers, so a linear search beats hashing.

/// Header names and values, unescaped, in wire order.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Headers(Vec<(String, String)>);

/// A frame printed with `{:?}` (in a log line, a panic, a test failure) shows no passcode.
impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if name == "passcode" {
                    "MASKED"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            }))
            .finish()
    }
}

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// The first value for `name`: a repeated header's later entries are ignored (spec).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value for `name`, first (the one in force) first.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Gives `name` the single value `value`: the first entry is changed in place, so the header
    /// keeps its position, and any repeats are dropped. Appends when `name` is absent.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                self.0[first].1 = value;
                let mut index = 0;
                self.0.retain(|(n, _)| {
                    let keep = index <= first || *n != name;
                    index += 1;
                    keep
                });
            }
            None => self.0.push((name, value)),
        }
    }

    /// Adds an entry at the end even if `name` is already there (where it stays in force).
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Removes every entry for `name` and returns the value that was in force.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let first = self.0.iter().position(|(n, _)| n == name)?;
        let (_, value) = self.0.remove(first);
        self.0.retain(|(n, _)| n != name);
        Some(value)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of entries, repeats included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(entries: I) -> Headers {
        Headers(
            entries
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")]
            .into_iter()
            .collect()
    }

    fn names(headers: &Headers) -> Vec<(&str, &str)> {
        headers.iter().collect()
    }

    #[test]
    fn first_repeated_entry_wins() {
        let headers = sample();
        assert_eq!(headers.get("a"), Some("1"));
        assert_eq!(headers.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(headers.get("missing"), None);
        assert!(headers.contains("c"));
    }

    #[test]
    fn set_replaces_in_place_and_drops_repeats() {
        let mut headers = sample();
        headers.set("a", "9");
        assert_eq!(names(&headers), [("a", "9"), ("b", "2"), ("c", "4")]);
        headers.set("d", "5");
        assert_eq!(headers.iter().last(), Some(("d", "5")));
    }

    #[test]
    fn append_keeps_the_first_in_force() {
        let mut headers = sample();
        headers.append("b", "7");
        assert_eq!(headers.get("b"), Some("2"));
        assert_eq!(headers.len(), 5);
    }

    #[test]
    fn remove_takes_every_entry() {
        let mut headers = sample();
        assert_eq!(headers.remove("a").as_deref(), Some("1"));
        assert_eq!(names(&headers), [("b", "2"), ("c", "4")]);
        assert_eq!(headers.remove("a"), None);
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_masks_the_passcode() {
        let mut headers = Headers::new();
        headers.set("login", "guest");
        headers.set("passcode", "s3cret-pass");
        let shown = format!("{headers:?}");
        assert!(!shown.contains("s3cret-pass"), "{shown}");
        assert!(
            shown.contains("MASKED") && shown.contains("guest"),
            "{shown}"
        );
    }
}
