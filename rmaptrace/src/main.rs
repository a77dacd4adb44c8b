//! rmaptrace: attributes every page fault of a process to its VMA, mapping kind,
//! fault handler and kernel path.
//!
//! Layout: `kernel/` reads what the running kernel says about itself, `bpf/` loads
//! and talks to the eBPF programs (rmaptrace-ebpf), `model/` does the attribution
//! (no kernel access, unit-tested), `symbols/` names user stack frames from the
//! files a process mapped, `export/` writes JSON, tables and flame graphs, `session`
//! wires them together for one run, `workload/` holds scenarios with known answers.
mod bpf;
mod cli;
mod export;
mod files;
mod kernel;
mod model;
mod session;
mod symbols;
mod text;
mod workload;
// Live screen and demo.
mod demo;
mod live;
mod tui;

use clap::Parser;

fn main() {
    fixed_mmap_threshold();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Workload {
            scenario,
            pages,
            wait,
        }) => {
            if scenario == "list" {
                for (name, what) in workload::SCENARIOS.iter().chain(workload::bench::BENCHES) {
                    println!("{name:<20} {what}");
                }
                Ok(0)
            } else {
                workload::run(&scenario, pages, wait).map(|_| 0)
            }
        }
        Some(cli::Command::Probe { backend }) => session::probe(backend),
        Some(cli::Command::Demo(d)) => session::run_demo(&d),
        Some(cli::Command::Serve(s)) => session::run_serve(&s),
        Some(cli::Command::Report(r)) => export::report::run(&r),
        None => session::run(cli.trace),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line, the cause chain included, naming the fix.
            eprintln!("rmaptrace: {e:#}");
            let code = e
                .downcast_ref::<session::CommandCannotRun>()
                .map_or(1, |c| c.code);
            std::process::exit(code);
        }
    }
}

/// Large blocks (the kernel tables' copies, the mmap history) get their own
/// mappings, returned to the kernel when freed and grown in place. glibc
/// otherwise raises this threshold to the largest block freed so far (the BTF
/// parsed at start), and every later table lands in the heap, whose freed
/// holes stay resident.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
