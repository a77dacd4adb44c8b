//! Attribution: turns what the probes counted into processes, VMAs, mapping kinds,
//! fault handlers and kernel paths. No kernel access here: every input is handed in,
//! so all of it runs in unit tests.
pub mod code;
pub mod event;
pub mod flags;
pub mod kind;
pub mod metrics;
pub mod origins;
pub mod path;
pub mod small_map;
pub mod snapshot;
pub mod stacks;
pub mod summary;
pub mod syscalls;
pub mod trace;
