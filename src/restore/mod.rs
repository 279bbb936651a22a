//! Placeholder: owned by the restore helper.

pub mod db;
