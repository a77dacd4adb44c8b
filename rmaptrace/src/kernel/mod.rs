//! Readers of what the running kernel tells about itself: BTF, kallsyms, tracefs,
//! /proc and its clock. Each reader parses text or bytes handed to it, so tests feed it fixtures.
pub mod btf;
pub mod caps;
pub mod cgroup;
pub mod clock;
pub mod kallsyms;
pub mod procfs;
pub mod tracefs;
