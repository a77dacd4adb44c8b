//! Builds the eBPF programs (`rmaptrace-ebpf`) with aya-build and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`. Where the eBPF toolchain (nightly rust-src and
//! bpf-linker, installed by `cargo xtask deps`) is missing, or RMAPTRACE_SKIP_EBPF=1,
//! it writes an empty object instead, so `cargo check`, clippy and the unit tests still
//! work; such a binary says at start that it has no programs.
use std::{env, path::PathBuf, process::Command};

fn toolchain_missing() -> Option<String> {
    let linker_found = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !linker_found {
        return Some("bpf-linker is not on PATH".into());
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    match nightly {
        Ok(out) if out.status.success() => None,
        _ => Some("the nightly toolchain is missing".into()),
    }
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RMAPTRACE_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("rmaptrace");

    let skip = env::var("RMAPTRACE_SKIP_EBPF").is_ok_and(|v| v == "1");
    let missing = if skip {
        Some("RMAPTRACE_SKIP_EBPF=1".to_string())
    } else {
        toolchain_missing()
    };
    if let Some(reason) = missing {
        println!("cargo:warning=building rmaptrace without its eBPF programs ({reason}); run `cargo xtask deps` for a working binary");
        std::fs::write(&object, [])?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../rmaptrace-ebpf").canonicalize()?;
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed=../rmaptrace-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rmaptrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
