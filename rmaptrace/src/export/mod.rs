//! Outputs of a trace: the NDJSON export and the end-of-trace table.
pub mod json;
pub mod table;
