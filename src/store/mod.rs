//! Placeholder: owned by the store helper.
