//! Placeholder: owned by the snapshot helper.
