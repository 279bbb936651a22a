//! Placeholder: owned by the daemon helper.
