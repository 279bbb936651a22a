//! Progress on a terminal for long work (bytes, rate, ETA); silent when stderr is not a TTY
//! or progress is off, so logs and CI output stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte counter shown as a progress bar, or nothing.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar labelled `what`; `total` bytes when known (shows ETA), else a spinner with rate.
    pub fn bytes(enabled: bool, what: &str, total: Option<u64>) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = match total.filter(|t| *t > 0) {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                    .expect("static template"),
            ),
        };
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    /// Adds `n` bytes.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
