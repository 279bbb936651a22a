//! Error policy.
//!
//! - Each library module has its own `thiserror` enum (`snapshot::SnapshotError`,
//!   `store::StoreError`, `restore::RestoreError`, ...) whose variants say what failed, on
//!   what, and what to do next. A variant wrapping another error shows its message and keeps
//!   it as `source`, so that the policy below sees the whole chain.
//! - Only the binary (`main.rs`) uses a catch-all error type; [`exit_code`] maps any error chain to the
//!   process exit code: 2 when the chain holds a [`UsageError`] or a
//!   [`crate::config::ConfigError`] (bad flag, bad config key: the message names it), else 1.

use std::error::Error;

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

/// `err` and its sources, outermost first.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

/// Process exit code for a command error: 2 for usage/config errors, 1 otherwise.
pub fn exit_code(err: &(dyn Error + 'static)) -> i32 {
    let usage = chain(err).any(|e| e.is::<UsageError>() || e.is::<crate::config::ConfigError>());
    if usage {
        2
    } else {
        1
    }
}

/// The message of `err` and of each source that adds something: a source whose text the
/// message before it already includes (variants print their source) is left out, so each
/// cause is said once. Parts are joined with `: `.
pub fn report(err: &(dyn Error + 'static)) -> String {
    with_causes(&err.to_string(), err.source(), &[])
}

/// `head`, then the message of `source` and of each of its sources, as [`report`] joins them
/// (each cause once), leaving out the messages in `skip` (wrappers that say nothing, like
/// tonic's "transport error"). For errors whose own message is replaced by `head`.
pub fn with_causes(head: &str, source: Option<&(dyn Error + 'static)>, skip: &[&str]) -> String {
    let mut out = head.to_string();
    for e in source.into_iter().flat_map(chain) {
        let m = e.to_string();
        if !skip.contains(&m.as_str()) && !out.contains(&m) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("{0}")]
        Usage(#[from] UsageError),
        #[error("reading x: {0}")]
        Io(#[from] std::io::Error),
    }

    #[test]
    fn codes_and_reports_follow_the_chain() {
        let u = Outer::from(UsageError::new("--name: bad"));
        assert_eq!(exit_code(&u), 2);
        assert_eq!(report(&u), "--name: bad");
        let io = Outer::from(std::io::Error::other("denied"));
        assert_eq!(exit_code(&io), 1);
        assert_eq!(report(&io), "reading x: denied");
    }
}
