//! Command line.
use clap::{Args, Parser, Subcommand};

use crate::bpf::plan::Backend;

#[derive(Parser, Debug)]
#[command(
    name = "rmaptrace",
    version,
    about = "Which kernel code serves the page faults of each mapping: anonymous, shmem, file or a driver's vm_ops->fault",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one workload scenario with a known fault count (used by the tests and the demo).
    Workload {
        /// Scenario name; `list` prints them.
        scenario: String,
        #[arg(long, default_value_t = 256)]
        pages: usize,
        /// Map first, then wait for a line on stdin before touching the pages.
        #[arg(long)]
        wait: bool,
    },
    /// Print the attach plan for this kernel (each attach point, the mechanism
    /// chosen, why others were rejected) and exit.
    Probe {
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
    },
    /// Serve Prometheus metrics of the faults of every process (or of
    /// --comm / --cgroup) at http://ADDR/metrics, with no screen: a daemon for
    /// a fleet's monitoring. Runs until SIGTERM or Ctrl-C (or --duration).
    Serve(ServeArgs),
    /// Run the workload scenarios in a loop under the live screen: every mapping
    /// kind and its fault handler side by side. With --no-tui: one round, then the summary.
    Demo(DemoArgs),
    /// Print the end-of-trace table of an NDJSON export (`--json`), or browse
    /// it on the live screen with --tui. Needs no root and no eBPF.
    Report(crate::export::report::ReportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Pages each scenario touches.
    #[arg(long, default_value_t = 256)]
    pub pages: usize,
    /// Rounds of every scenario; default: until quit (live screen) or 1 (--no-tui).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Pause between two scenarios, in milliseconds.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    pub pause_ms: u64,
    /// Write the NDJSON export to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print a summary table at the end instead of the live screen.
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address and port to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9436", value_name = "ADDR")]
    pub listen: String,
    /// Process names and cgroups each keep their own label for at most this
    /// many values (the busiest); the rest are counted as `other`.
    #[arg(long, default_value_t = 50, value_name = "K")]
    pub top: usize,
    /// Trace only processes with this name, including ones started later (repeatable).
    #[arg(short, long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Trace only the processes of this cgroup v2 subtree, present and
    /// future (repeatable; a path in the hierarchy or relative to its root).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<std::path::PathBuf>,
    /// Also write the NDJSON export to PATH (each process once it exits).
    #[arg(long, value_name = "PATH")]
    pub json: Option<String>,
    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// How to hook the fault path: fentry, kprobe, tracepoint, or the best available.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub ring_mib: u32,
}

impl ServeArgs {
    pub fn trace_args(&self) -> TraceArgs {
        TraceArgs {
            comms: self.comms.clone(),
            cgroups: self.cgroups.clone(),
            json: self.json.clone(),
            duration: self.duration,
            no_tui: true,
            backend: self.backend,
            ring_mib: self.ring_mib,
            stack_depth: rmaptrace_common::DEFAULT_STACK_DEPTH,
            ..TraceArgs::default()
        }
    }
}

impl TraceArgs {
    /// Frames of each fault's user stack to record, when stacks are asked for.
    pub fn stack_depth(&self) -> Option<u32> {
        (self.stacks || self.folded.is_some() || self.flamegraph.is_some())
            .then_some(self.stack_depth)
    }
}

impl DemoArgs {
    pub fn trace_args(&self) -> TraceArgs {
        TraceArgs {
            json: self.json.clone(),
            duration: self.duration,
            no_tui: self.no_tui,
            ring_mib: 4,
            stack_depth: rmaptrace_common::DEFAULT_STACK_DEPTH,
            ..TraceArgs::default()
        }
    }
}

#[derive(Args, Debug, Default, Clone)]
pub struct TraceArgs {
    /// Trace this process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes with this name, including ones started later (repeatable).
    #[arg(short, long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Trace the processes of this cgroup v2 subtree, present and future
    /// (repeatable; a path in the hierarchy or relative to its root).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<std::path::PathBuf>,
    /// Write the NDJSON export to PATH, or to stdout with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub json: Option<String>,
    /// Also export one record per fault (needs --json).
    #[arg(long)]
    pub events: bool,
    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Print a summary table at the end instead of the live screen.
    #[arg(long)]
    pub no_tui: bool,
    /// How to hook the fault path: fentry, kprobe, tracepoint, or the best available.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Record the user call stack of every fault (frame-pointer unwinding),
    /// counted in the kernel per mapping and stack: each mapping's top call
    /// sites in the export and on the live screen.
    #[arg(long)]
    pub stacks: bool,
    /// Frames of each stack to record, the leaf first (with --stacks).
    #[arg(long, value_name = "FRAMES", default_value_t = rmaptrace_common::DEFAULT_STACK_DEPTH)]
    pub stack_depth: u32,
    /// Write the call sites as folded stacks (one line per process, stack and
    /// mapping, the mapping as the leaf) for flame graph tools; implies --stacks.
    #[arg(long, value_name = "PATH")]
    pub folded: Option<std::path::PathBuf>,
    /// Write the call sites as an interactive SVG flame graph, the mappings
    /// coloured by kind; implies --stacks.
    #[arg(long, value_name = "PATH.svg")]
    pub flamegraph: Option<std::path::PathBuf>,
    /// Ring buffer size in MiB (a power of two). It is mapped twice into
    /// rmaptrace (records wrap around), so it costs twice this in RSS.
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub ring_mib: u32,
    /// Command to run and trace from its first instruction; rmaptrace exits with its status.
    /// (Taken as bytes: a program's name need not be UTF-8.)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}
