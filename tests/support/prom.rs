//! Reads values out of Prometheus text exposition.

/// The value of the series `name` whose labels include every pair of `labels`, summed over the
/// series that match (so leaving a label out adds up across it).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name)
        .filter(|(series_labels, _)| {
            labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value)
        // An empty sum of floats is -0.0.
        .fold(0.0, |sum, value| sum + value)
}

/// Every series of metric `name`: its label text and its value.
pub fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (String, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let (labels, value) = rest.split_once('}')?;
            (labels.to_string(), value)
        } else if rest.starts_with(' ') {
            (String::new(), rest)
        } else {
            return None;
        };
        Some((labels, value.trim().parse().ok()?))
    })
}
