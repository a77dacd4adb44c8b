//! Builds the eBPF programs (`rmaptrace-ebpf`) with aya-build and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`. Where the eBPF toolchain (nightly rust-src and
//! bpf-linker, installed by `cargo xtask deps`) is missing, or RMAPTRACE_SKIP_EBPF=1,
//! it writes an empty object instead, so `cargo check`, clippy and the unit tests still
//! work; such a binary says at start that it has no programs.
use std::{env, path::PathBuf, process::Command};

/// The pinned nightly the eBPF crate builds with (its rust-toolchain.toml).
fn ebpf_toolchain(ebpf_dir: &std::path::Path) -> anyhow::Result<String> {
    let file = ebpf_dir.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no channel in {}", file.display()))
}

fn toolchain_missing(toolchain: &str) -> Option<String> {
    let linker_found = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !linker_found {
        return Some("bpf-linker is not on PATH".into());
    }
    let nightly = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .output();
    match nightly {
        Ok(out) if out.status.success() => None,
        _ => Some(format!("the {toolchain} toolchain is missing")),
    }
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RMAPTRACE_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("rmaptrace");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../rmaptrace-ebpf").canonicalize()?;
    println!("cargo:rerun-if-changed=../rmaptrace-ebpf/rust-toolchain.toml");
    let toolchain = ebpf_toolchain(&ebpf_dir)?;

    let skip = env::var("RMAPTRACE_SKIP_EBPF").is_ok_and(|v| v == "1");
    let missing = if skip {
        Some("RMAPTRACE_SKIP_EBPF=1".to_string())
    } else {
        toolchain_missing(&toolchain)
    };
    if let Some(reason) = missing {
        println!("cargo:warning=building rmaptrace without its eBPF programs ({reason}); run `cargo xtask deps` for a working binary");
        std::fs::write(&object, [])?;
        return Ok(());
    }

    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed=../rmaptrace-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rmaptrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
