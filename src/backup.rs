//! The pipeline of one backup (placeholder until the pipeline lands).
