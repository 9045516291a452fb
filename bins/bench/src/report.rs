//! One JSON line per scenario: on stdout, and appended to the results file.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::env::Versions;
use crate::verify::Violations;

/// A scenario's result.
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    pub(crate) name: &'static str,
    pub(crate) quick: bool,
    /// Seconds since the Unix epoch when the scenario started.
    pub(crate) started_at: u64,
    pub(crate) parameters: Value,
    pub(crate) figures: Value,
    pub(crate) violations: Violations,
    /// No violation and no error.
    pub(crate) ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) versions: Versions,
    pub(crate) machine: Value,
}

/// The start time to put in a [`Record`].
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes records.
#[derive(Debug)]
pub(crate) struct Reporter {
    out: PathBuf,
}

impl Reporter {
    pub(crate) fn new(out: PathBuf) -> anyhow::Result<Self> {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self { out })
    }

    pub(crate) fn emit(&self, record: &Record) -> anyhow::Result<()> {
        let line = serde_json::to_string(record)?;
        println!("{line}");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out)
            .with_context(|| format!("opening {}", self.out.display()))?;
        writeln!(file, "{line}").with_context(|| format!("writing {}", self.out.display()))?;
        Ok(())
    }
}

/// A latency histogram in microseconds, up to an hour.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds that hdrhistogram accepts")
}

/// p50, p99, p99.9 and max of a microsecond histogram, in milliseconds.
pub(crate) fn percentiles_ms(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": ms(h.mean().round() as u64),
    })
}

/// Rounds to `digits` decimals, for readable JSON.
pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10_f64.powi(digits);
    (value * scale).round() / scale
}

/// The median of some runs.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let p = percentiles_ms(&h);
        assert_eq!(p["count"], 1000);
        assert!((p["p50"].as_f64().unwrap() - 5.0).abs() < 0.01);
        assert!((p["max"].as_f64().unwrap() - 10.0).abs() < 0.01);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
