//! Progress bars on stderr, only when stderr is a terminal: stdout carries the JSON lines alone.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar, or nothing when stderr is not a terminal.
#[derive(Clone, Debug)]
pub(crate) struct Progress(ProgressBar);

impl Progress {
    /// A bar counting to `len`, labelled `what`.
    pub(crate) fn bar(what: &str, len: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new(len);
        let style = ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {human_pos}/{human_len} {per_sec:>12} {elapsed:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(bar)
    }

    /// A counter without a known end, labelled `what`.
    pub(crate) fn counter(what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::no_length();
        let style = ProgressStyle::with_template(
            "{prefix:>24} {spinner} {human_pos} {per_sec:>12} {elapsed:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(bar)
    }

    pub(crate) fn inc(&self, delta: u64) {
        self.0.inc(delta);
    }

    pub(crate) fn set(&self, position: u64) {
        self.0.set_position(position);
    }

    pub(crate) fn done(&self) {
        self.0.finish_and_clear();
    }
}
