//! Placeholder: owned by the restore helper.
