//! Installs what the build and the tests need, checking first so that a machine
//! that has everything passes through in well under a second.
use anyhow::{bail, Context, Result};
use std::{path::PathBuf, process::Command};

use crate::run;

/// Debian packages: the bpf-linker build needs LLVM 22 (nightly's LLVM); the guest
/// tests need QEMU and a static busybox; the serve test needs Prometheus.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    // cargo xtask bench: the peer anchor, and the kernel's per-program BPF stats.
    "bpftrace",
    "bpftool",
    // cargo xtask vm-test: rmapdemo.ko and the initramfs (vm.rs installs the guest
    // kernel's headers itself, they are tied to its version).
    "make",
    "gcc",
    "binutils",
    // The tests' 32-bit program (tests/programs/memfd32.c): gcc -m32 -static.
    "gcc-multilib",
    // rmaptrace serve: the integration test scrapes it with a real Prometheus
    // server, and deploy/ is checked with promtool (both in this package).
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

/// The nightly the eBPF crate is pinned to (rmaptrace-ebpf/rust-toolchain.toml).
pub fn ebpf_toolchain() -> Result<String> {
    let file = crate::workspace_root().join("rmaptrace-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .with_context(|| format!("no channel in {}", file.display()))
}

fn sysroot(toolchain: &str) -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn sudo(cmd: &str) -> Command {
    let root = crate::is_root();
    let mut c = Command::new(if root { cmd } else { "sudo" });
    if !root {
        c.arg(cmd);
    }
    c
}

pub fn install() -> Result<()> {
    let missing = missing_packages();
    if !missing.is_empty() {
        eprintln!(
            "xtask deps: installing Debian packages {}",
            missing.join(" ")
        );
        run(sudo("apt-get").args(["update", "-qq"]))?;
        run(sudo("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let toolchain = ebpf_toolchain()?;
    let has = |sysroot: &PathBuf| {
        sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
            && sysroot.join("bin/clippy-driver").is_file()
    };
    if !sysroot(&toolchain).is_some_and(|s| has(&s)) {
        eprintln!("xtask deps: installing {toolchain} with rust-src and clippy (the eBPF build and its lint)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))?;
        let s = sysroot(&toolchain).context("the eBPF toolchain is still missing after install")?;
        if !has(&s) {
            bail!("{toolchain} has no rust-src or clippy after install");
        }
    }

    if !cargo_bin().join("bpf-linker").is_file() {
        eprintln!("xtask deps: building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 2 minutes)");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }

    let musl = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("x86_64-unknown-linux-musl"))
        .unwrap_or(false);
    if !musl {
        eprintln!("xtask deps: adding the musl target (static rmaptrace for the guest)");
        run(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    }
    Ok(())
}
