//! Error policy.
//!
//! - Each subsystem has its own `thiserror` enum (`snapshot::SnapshotError`,
//!   `store::StoreError`, ...) whose variants say what failed, on what, and what to do next.
//! - Commands return `anyhow::Result` at the binary edge; [`exit_code`] maps an error to the
//!   process exit code: 2 when the chain holds a [`UsageError`] or a
//!   [`crate::config::ConfigError`] (bad flag, bad config key: the message names it), else 1.

/// A bad command-line flag or flag combination. Exit code 2. The message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// Builds a usage error; `msg` should start with the flag, e.g. `--name: ...`.
    pub fn new(msg: impl Into<String>) -> Self {
        UsageError(msg.into())
    }
}

/// Process exit code for a command error: 2 for usage/config errors, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let usage = err.chain().any(|e| {
        e.downcast_ref::<UsageError>().is_some()
            || e.downcast_ref::<crate::config::ConfigError>().is_some()
    });
    if usage {
        2
    } else {
        1
    }
}
