//! Everything that touches the eBPF object: which programs this kernel can run
//! (`plan`), loading and attaching them (`loader`), decoding ring buffer records
//! (`events`) and reading the in-kernel aggregates (`snapshot`, whole tables
//! at a time with `batch`).
mod batch;
pub mod events;
pub mod loader;
pub mod plan;
pub mod snapshot;
pub mod stacks;

/// The eBPF object built by build.rs; empty when built without the eBPF toolchain.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rmaptrace"));
