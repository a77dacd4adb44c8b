//! `cargo xtask vm-test`: rmaptrace inside QEMU guests running Debian's 6.1 and
//! 6.12 cloud kernels, where kprobes, fentry and loadable modules work (they do
//! not on the development machine). Each guest runs every backend x scenario,
//! loads the rmapdemo driver (built for its kernel), and prints its results on
//! the serial console; this side checks them against the exact per-VMA answers
//! and prints one line per kernel, backend and scenario.
//!
//! Everything downloaded or built lives under `target/vm/` and is reused: a second
//! run downloads nothing and rebuilds only what changed.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{cargo, run, workspace_root};

/// Debian bookworm's cloud kernels (name, ABI): BTF, kprobes, fentry, tracefs,
/// 8250 console, unforced module signatures, and small enough to boot quickly
/// under TCG. 6.1 has no per-VMA locks; 6.12 has them, and the fexit trampoline
/// that takes do_mmap's arguments.
pub const KERNELS: &[(&str, &str)] = &[
    ("6.1", "6.1.0-56-cloud-amd64"),
    ("6.12", "6.12.117+deb12-cloud-amd64"),
];

/// Backends the guest runs, each a value for `rmaptrace --backend`; `default`
/// runs without the flag (rmaptrace picks: fentry on this kernel). Adding a
/// backend is one entry here.
pub const BACKENDS: &[&str] = &["tracepoint", "fentry", "kprobe"];

/// Scenarios the guest runs. Not `kvm-vcpu`: TCG has no VMX for a nested KVM.
const SCENARIOS: &[&str] = &[
    "anon-write",
    "anon-read-write",
    "read-into",
    "failed-faults",
    "shared-anon",
    "dev-zero-private",
    "file-private-write",
    "file-shared-write",
    "fork-cow",
    "memfd-secret",
    "populate",
    "driver-pfn",
    "driver-pages",
    "driver-vmf",
    "driver-fault",
    "bpf-map-mmap",
    // Mapping lifetimes and VMA lookups under concurrent mapping changes.
    "mprotect-split",
    "split-written",
    "mbind-split",
    "remap-same-address",
    "stack-growth",
    "threads-own-maps",
    "threads-churn",
    "mmap-churn",
    // A 32-bit process (tests/programs/memfd32.c), not an rmaptrace workload.
    "compat32",
];

/// rmapdemo's buffer size caps the driver scenarios; every scenario uses the same N.
const PAGES: usize = 64;

pub struct Options {
    /// Kernel names (KERNELS) to boot.
    pub kernels: Vec<String>,
    pub backends: Vec<String>,
    pub scenarios: Vec<String>,
    pub timeout: Duration,
    /// One rmaptrace per scenario instead of one per backend (slower, isolated).
    pub isolate: bool,
    /// Check the last run's serial log again instead of booting (after editing the
    /// expectations).
    pub recheck: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernels: KERNELS.iter().map(|(name, _)| name.to_string()).collect(),
            backends: BACKENDS.iter().map(|s| s.to_string()).collect(),
            scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
            // Measured on 2 busy cores: boot 3 s, 7-20 s per backend (76 s when
            // the 6.1 verifier gives up on a program). The margin covers a loaded
            // CI machine and --isolate (about 4 minutes per backend).
            timeout: Duration::from_secs(900),
            isolate: false,
            recheck: false,
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn vm_dir() -> PathBuf {
    target_dir().join("vm")
}

fn apt_get() -> Command {
    let mut c = if crate::is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// A kernel's image, downloaded once and unpacked under target/vm/kernel.
fn kernel(abi: &str) -> Result<PathBuf> {
    let vmlinuz = vm_dir().join(format!("kernel/boot/vmlinuz-{abi}"));
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let dl = vm_dir().join("dl");
    fs::create_dir_all(&dl)?;
    let pkg = format!("linux-image-{abi}");
    let find_deb = || -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(&dl)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            }))
    };
    if find_deb()?.is_none() {
        // The _apt sandbox user cannot write into target/; root downloads instead.
        run(apt_get()
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &pkg])
            .current_dir(&dl))?;
    }
    let deb = find_deb()?.with_context(|| {
        format!(
            "apt-get download {pkg} left no .deb in {}: check the Debian mirror in /etc/apt/sources.list",
            dl.display()
        )
    })?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(vm_dir().join("kernel")))?;
    if !vmlinuz.is_file() {
        bail!("{} has no {}", deb.display(), vmlinuz.display());
    }
    Ok(vmlinuz)
}

/// Debian's headers for a guest kernel, installed on this machine (they go to
/// /usr/src and do not touch the running kernel).
fn headers(abi: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/usr/src/linux-headers-{abi}"));
    if dir.join("Makefile").is_file() {
        return Ok(dir);
    }
    let pkg = format!("linux-headers-{abi}");
    eprintln!("xtask vm: installing {pkg} (to build rmapdemo.ko for the guest)");
    if run(apt_get().args(["install", "-y", "-qq", "--no-install-recommends", &pkg])).is_err() {
        run(apt_get().args(["update", "-qq"]))?;
        run(apt_get().args(["install", "-y", "-qq", "--no-install-recommends", &pkg]))?;
    }
    Ok(dir)
}

/// Writes `data` to `path` only when it differs, so make and cargo see no change.
fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    if fs::read(path).ok().as_deref() != Some(data) {
        fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Builds rmapdemo.ko for one kernel out of the source tree, so `driver/`
/// stays clean.
fn module(kdir: &Path, kernel: &str) -> Result<PathBuf> {
    let src = workspace_root().join("driver/rmapdemo");
    let build = vm_dir().join(format!("rmapdemo-{kernel}"));
    fs::create_dir_all(&build)?;
    for f in ["rmapdemo.c", "Makefile"] {
        let data = fs::read(src.join(f)).with_context(|| format!("reading driver/rmapdemo/{f}"))?;
        write_if_changed(&build.join(f), &data)?;
    }
    run(Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&build)
        .arg(format!("KDIR={}", kdir.display())))?;
    Ok(build.join("rmapdemo.ko"))
}

/// tests/programs/memfd32.c as a static 32-bit program: a 32-bit process's
/// mappings, made with the i386 syscalls, traced on every backend.
fn compat32_program() -> Result<PathBuf> {
    let src = workspace_root().join("tests/programs/memfd32.c");
    let exe = vm_dir().join("memfd32");
    run(Command::new("gcc")
        .args(["-m32", "-static", "-O1", "-o"])
        .arg(&exe)
        .arg(&src))
    .context("building the 32-bit test program: run `cargo xtask deps` (gcc-multilib)")?;
    Ok(exe)
}

/// tests/programs/callsites.c, static, with frame pointers: the guest's
/// call sites check (`--stacks`).
fn callsites_program() -> Result<PathBuf> {
    let src = workspace_root().join("tests/programs/callsites.c");
    let exe = vm_dir().join("callsites");
    run(Command::new("gcc")
        .args(["-static", "-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src))
    .context("building the call sites test program: run `cargo xtask deps` (gcc)")?;
    Ok(exe)
}

/// Static rmaptrace (with its eBPF object) for the guest's musl-free userland.
fn rmaptrace_static() -> Result<PathBuf> {
    const TARGET: &str = "x86_64-unknown-linux-musl";
    run(cargo().args(["build", "--release", "--target", TARGET, "-p", "rmaptrace"]))?;
    let bin = target_dir().join(TARGET).join("release/rmaptrace");
    // Release keeps debug info (debug = 1); the initramfs does not need it.
    let stripped = vm_dir().join("rmaptrace");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&bin)
        .arg(&stripped))?;
    Ok(stripped)
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as initramfs.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so the archive is reproducible
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, src: &Path) -> Result<()> {
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.entry(name, 0o100000 | mode, (0, 0), &data);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The C programs the guest runs besides rmaptrace's own workloads.
struct TestPrograms {
    compat32: PathBuf,
    callsites: PathBuf,
}

fn initramfs(
    opts: &Options,
    kernel: &str,
    rmaptrace: &Path,
    ko: &Path,
    programs: &TestPrograms,
) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: run `cargo xtask deps` (it installs busybox-static)");
    }
    let conf = format!(
        "BACKENDS=\"{}\"\nSCENARIOS=\"{}\"\nPAGES={PAGES}\nISOLATE={}\n",
        opts.backends.join(" "),
        opts.scenarios.join(" "),
        u8::from(opts.isolate)
    );
    let mut c = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "var", "var/tmp"] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init before anything can mount devtmpfs.
    c.entry("dev/console", 0o020600, (5, 1), &[]);
    // RMAPTRACE_VM_INIT swaps in another init script, for experiments in the guest.
    let init = std::env::var_os("RMAPTRACE_VM_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("tests/guest/init.sh"));
    c.file("init", 0o755, &init)?;
    c.file("bin/busybox", 0o755, busybox)?;
    c.file("rmaptrace", 0o755, rmaptrace)?;
    c.file("rmapdemo.ko", 0o644, ko)?;
    c.file("memfd32", 0o755, &programs.compat32)?;
    c.file("callsites", 0o755, &programs.callsites)?;
    c.entry("guest.conf", 0o100644, (0, 0), conf.as_bytes());
    let path = vm_dir().join(format!("initramfs-{kernel}.cpio"));
    fs::write(&path, c.finish())?;
    Ok(path)
}

fn serial_log(kernel: &str) -> PathBuf {
    vm_dir().join(format!("serial-{kernel}.log"))
}

/// Boots the guest and returns its serial log once it prints RMAPTRACE-DONE.
fn boot(kernel: &Path, initrd: &Path, timeout: Duration, log_path: &Path) -> Result<Vec<String>> {
    let mut log = fs::File::create(log_path)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "1G", "-smp", "2"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            // secretmem is off by default before 6.5; panic=-1 with -no-reboot turns
            // a guest panic into a QEMU exit instead of a hang.
            "console=ttyS0 panic=-1 oops=panic secretmem.enable=1 quiet",
            "-nographic",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context(
            "starting qemu-system-x86_64: run `cargo xtask deps` (it installs qemu-system-x86)",
        )?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut done = false;
    while !done {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                progress(&line, started);
                done = line.starts_with("RMAPTRACE-DONE");
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the guest did not finish within {timeout:?} (TCG on a busy machine?): see {}",
                    log_path.display()
                );
            }
            // QEMU exited (panic with -no-reboot, or poweroff) before DONE.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // poweroff -f normally ends QEMU; do not wait on a guest that ignores it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if !done {
        let why = lines
            .iter()
            .find(|l| l.contains("Kernel panic") || l.contains("BUG:") || l.contains("Oops"))
            .map(|l| format!(" ({})", l.trim()))
            .unwrap_or_default();
        bail!(
            "the guest stopped before RMAPTRACE-DONE{why}: see {}",
            log_path.display()
        );
    }
    Ok(lines)
}

fn progress(line: &str, started: Instant) {
    let t = started.elapsed().as_secs();
    if let Some(rest) = line.strip_prefix("RMAPTRACE-RUN ") {
        if let Ok(v) = serde_json::from_str::<Value>(rest) {
            let secs = v["t1"].as_f64().unwrap_or(0.0) - v["t0"].as_f64().unwrap_or(0.0);
            eprintln!(
                "xtask vm: [{t:>4}s] rmaptrace {} ran {} in {secs:.0}s (rc {})",
                v["backend"].as_str().unwrap_or("?"),
                v["scenarios"],
                v["rc"]
            );
        }
    } else if line.starts_with("RMAPTRACE-BOOT") || line.starts_with("RMAPTRACE-INSMOD") {
        eprintln!("xtask vm: [{t:>4}s] {line}");
    }
}

/// Echoes what `rmaptrace probe` found in the guest kernel: the reader sees which
/// hooks the backends had to work with.
fn show_probe(lines: &[String]) {
    let Some(begin) = lines.iter().position(|l| l == "RMAPTRACE-PROBE-BEGIN") else {
        return;
    };
    let Some(len) = lines[begin..]
        .iter()
        .position(|l| l.starts_with("RMAPTRACE-PROBE-END"))
    else {
        return;
    };
    let end = &lines[begin + len];
    if end.ends_with("rc=0") {
        for l in &lines[begin + 1..begin + len] {
            eprintln!("guest probe: {l}");
        }
    } else {
        eprintln!("xtask vm: `rmaptrace probe` is not available in this build ({end})");
    }
}

pub fn vm_test(opts: &Options) -> Result<()> {
    let kernels: Vec<(&str, &str)> = KERNELS
        .iter()
        .copied()
        .filter(|(name, _)| opts.kernels.iter().any(|k| k == name))
        .collect();
    if kernels.len() != opts.kernels.len() {
        let known: Vec<&str> = KERNELS.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown kernel in {:?}: choose among {known:?}",
            opts.kernels
        );
    }
    let mut failures = 0;
    if opts.recheck {
        for (name, _) in &kernels {
            let log = serial_log(name);
            let text = fs::read_to_string(&log).with_context(|| {
                format!("reading {}: run `cargo xtask vm-test` first", log.display())
            })?;
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            failures += crate::guest_check::check(&lines, opts, PAGES, name)?;
        }
    } else {
        fs::create_dir_all(vm_dir())?;
        let rmaptrace = rmaptrace_static()?;
        let programs = TestPrograms {
            compat32: compat32_program()?,
            callsites: callsites_program()?,
        };
        for (name, abi) in &kernels {
            let started = Instant::now();
            let kernel = kernel(abi)?;
            let ko = module(&headers(abi)?, name)?;
            let initrd = initramfs(opts, name, &rmaptrace, &ko, &programs)?;
            let prepared = started.elapsed();
            eprintln!("xtask vm: booting Linux {abi}");
            let log = serial_log(name);
            let lines = boot(&kernel, &initrd, opts.timeout, &log)?;
            let booted = started.elapsed() - prepared;
            show_probe(&lines);
            failures += crate::guest_check::check(&lines, opts, PAGES, name)?;
            eprintln!(
                "xtask vm: {name}: prepare {prepared:.0?}, guest {booted:.0?}; serial log in {}",
                log.display()
            );
        }
    }
    if failures > 0 {
        bail!("{failures} guest check(s) failed (details above)");
    }
    Ok(())
}
