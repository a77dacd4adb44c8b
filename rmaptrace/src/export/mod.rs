//! Outputs of a trace: the NDJSON export, the records written to it as the
//! trace runs, and the end-of-trace table; `report` reads an export back.
pub mod call_sites;
pub mod flamegraph;
pub mod folded;
pub mod http;
pub mod json;
pub mod outputs;
pub mod prometheus;
pub mod report;
pub mod table;
