//! Parsing option values.

use std::time::Duration;

use anyhow::Context as _;

/// `"1.5"` → 1.5 s.
pub fn seconds(v: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_secs_f64(
        v.parse().with_context(|| format!("{v:?} is not seconds"))?,
    ))
}

/// `"1,4,32"` → `[1, 4, 32]`.
pub fn counts(v: &str) -> anyhow::Result<Vec<usize>> {
    Ok(v.split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()?)
}
