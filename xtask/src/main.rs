//! `cargo xtask`: the project's build, install and test entry points.
//!
//! | command    | does |
//! |------------|------|
//! | `deps`     | installs what is missing (the eBPF crate's pinned nightly with rust-src and clippy, bpf-linker on Debian's LLVM 22, QEMU, busybox, the musl target), idempotently |
//! | `build`    | release build, leaves `target/release/rmaptrace` |
//! | `run -- A` | build, then run rmaptrace with A (through sudo when not root) |
//! | `test`     | `lint`, then every test: unit, integration (real eBPF on this kernel), then `vm-test` |
//! | `lint`     | `cargo fmt --check`, clippy -D warnings on the userspace crates and on rmaptrace-ebpf (pinned nightly) |
//! | `vm-test`  | rmaptrace and the rmapdemo driver in QEMU guests (Debian's 6.1 and 6.12 kernels), checked from here |
//! | `bench`    | cost per fault against untraced and a bpftrace one-liner; long traces, 200k VMAs, 200 forks (`--sections`; `versus`: the default mode against the one-liner alone, more rounds; `events`: the default mode against `--events` alone); target/bench/*.json |
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

mod bench;
mod bench_long;
mod deps;
mod guest_check;
mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "rmaptrace build and test tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need; present things are skipped.
    Deps,
    /// Release build of rmaptrace with its eBPF programs.
    Build,
    /// Build, then run rmaptrace with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test (after `lint`).
    Test,
    /// rustfmt and clippy (-D warnings) on every crate, the eBPF one included.
    Lint,
    /// Run rmaptrace and the rmapdemo driver in QEMU guests and check the results.
    VmTest {
        /// Guest kernels to boot, comma-separated (default: 6.1 and 6.12).
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Backends to run, comma-separated (`default` runs without --backend).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        /// Scenarios to run, comma-separated (default: every one the guest can run).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Give up on the guest after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// One rmaptrace per scenario (isolated, ~15 s each under TCG) instead of one per backend.
        #[arg(long)]
        isolate: bool,
        /// Check target/vm/serial-KERNEL.log again without booting (same --kernels/--backends/--scenarios).
        #[arg(long)]
        recheck: bool,
    },
    /// Cost per fault of rmaptrace against untraced runs and a bpftrace one-liner.
    Bench {
        /// Faults per workload run.
        #[arg(long, default_value_t = 1 << 20)]
        faults: u64,
        /// Rounds: in each, every workload runs untraced before and after each
        /// traced mode, and ratios are taken within the round.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Sections to run: `faults` (cost per fault, every mode), `versus`
        /// (the default mode and the one-liner only: more rounds in the same
        /// time; not by default), `events` (the default mode and `--events`
        /// only, likewise), `threads` (cost per
        /// fault with 1, 4, 16 and all cores' threads faulting at once), `long`
        /// (a 60 s process churn, 200k VMAs, 200 forks); all by default.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["faults".to_string(), "threads".to_string(), "long".to_string()])]
        sections: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it, and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    // bpf-linker is installed by `deps` into cargo's bin dir, which may not be on PATH yet.
    c.env("PATH", deps::path_with_cargo_bin());
    c
}

pub fn build() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "rmaptrace"]))?;
    Ok(workspace_root().join("target/release/rmaptrace"))
}

/// The style and lint gates, as the README asks of every change: rustfmt over
/// the workspace, clippy on the userspace crates and on the eBPF crate (its
/// own target, with its pinned nightly).
fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .args(["clippy", "--release", "--all-targets"])
        .args([
            "-p",
            "rmaptrace",
            "-p",
            "rmaptrace-common",
            "-p",
            "xtask",
            "-p",
            "rmaptrace-tests",
        ])
        .args(["--", "-D", "warnings"]))?;
    let toolchain = deps::ebpf_toolchain()?;
    run(Command::new("rustup")
        .args(["run", &toolchain, "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root().join("rmaptrace-ebpf"))
        .env("PATH", deps::path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO"))
}

fn test() -> Result<()> {
    let started = Instant::now();
    lint()?;
    eprintln!(
        "xtask: formatting and lints clean after {:.0?}",
        started.elapsed()
    );
    let bin = build()?;
    run(cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "rmaptrace-ebpf",
        ])
        .env("RMAPTRACE_BIN", &bin))?;
    eprintln!("xtask: host tests passed in {:.0?}", started.elapsed());
    vm::vm_test(&vm::Options::default())?;
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Deps => deps::install(),
        Task::Build => build().map(|_| ()),
        Task::Run { args } => {
            deps::install()?;
            let bin = build()?;
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let status = cmd.args(&args).status().context("starting rmaptrace")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => {
            deps::install()?;
            test()
        }
        Task::Lint => {
            deps::install()?;
            lint()
        }
        Task::VmTest {
            kernels,
            backends,
            scenarios,
            timeout_secs,
            isolate,
            recheck,
        } => {
            deps::install()?;
            let mut opts = vm::Options::default();
            if !kernels.is_empty() {
                opts.kernels = kernels;
            }
            if !backends.is_empty() {
                opts.backends = backends;
            }
            if !scenarios.is_empty() {
                opts.scenarios = scenarios;
            }
            opts.isolate = isolate;
            opts.recheck = recheck;
            if let Some(t) = timeout_secs {
                opts.timeout = std::time::Duration::from_secs(t);
            }
            vm::vm_test(&opts)
        }
        Task::Bench {
            faults,
            reps,
            sections,
        } => {
            deps::install()?;
            bench::run(faults, reps, &sections)
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
