//! Workloads whose fault counts are known in advance: the tests run them under
//! rmaptrace and compare, and `rmaptrace demo` shows them. Each scenario touches N
//! pages of one fresh mapping and prints one JSON line saying where that mapping is.
pub mod bench;
mod real;

use anyhow::{bail, Result};
use serde_json::json;
use std::{ffi::CString, ptr};

pub const PAGE: usize = 4096;

static WAIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Every scenario: name, what it maps, what rmaptrace must show for that VMA.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("anon-write", "private anonymous, write each page: N x do_anonymous_page"),
    ("anon-read-write", "private anonymous, read then write: N x do_anonymous_page (zero page) + N x do_wp_page (COW)"),
    ("shared-anon", "MAP_SHARED|MAP_ANONYMOUS, write: shmem, shmem_fault, N x do_shared_fault"),
    ("failed-faults", "read(2) into each of N read-only private anonymous pages (EFAULT), one write there (SIGSEGV, whose handler makes it writable; the write then succeeds), then N pages written: faults the kernel did not count are not counted, N x do_anonymous_page, and 1 on the read-only mapping"),
    ("read-into", "private anonymous, filled by read(2) one byte a page: the kernel's own writes fault (kernel-mode exceptions), N x do_anonymous_page"),
    ("dev-zero-private", "/dev/zero MAP_PRIVATE, write: anonymous despite vm_file, N x do_anonymous_page"),
    ("file-private-write", "regular file MAP_PRIVATE, write: filemap_fault, N x do_cow_fault"),
    ("file-shared-write", "regular file MAP_SHARED, write: filemap_fault, N x do_shared_fault"),
    ("file-read-cold", "regular file written, synced and dropped from the page cache, MAP_SHARED with MADV_RANDOM (no readahead), read: N major faults where the file is on a disk (minor on tmpfs)"),
    ("fork-cow", "write N pages, fork, child writes them again: N x do_wp_page in the child"),
    ("kvm-vcpu", "mmap of a KVM vCPU fd, read each page: driver, kvm_vcpu_fault"),
    ("memfd-secret", "memfd_secret, write: driver-like, secretmem_fault, N x do_shared_fault"),
    ("populate", "MAP_POPULATE then write: no faults, N faults unseen (get_user_pages)"),
    ("bpf-map-mmap", "a BPF array map with BPF_F_MMAPABLE, mapped MAP_SHARED and written: bpf_map_mmap prefills every page (VM_MIXEDMAP), no faults"),
    ("driver-pfn", "rmapdemo.ko, /dev/rmapdemo_pfn MAP_SHARED, write: remap_pfn_range at mmap, no faults"),
    ("driver-pages", "rmapdemo.ko, /dev/rmapdemo_pages MAP_SHARED, write: vm_insert_pages at mmap, no faults"),
    ("driver-vmf", "rmapdemo.ko, /dev/rmapdemo_vmf MAP_SHARED, write: vmf_insert_pfn for each page at mmap, no faults"),
    ("driver-fault", "rmapdemo.ko, /dev/rmapdemo_fault MAP_SHARED, write: driver, rmapdemo_fault, N x do_shared_fault"),
    ("fork-storm", "N children forked one after another, 2 ms apart, each writing one fresh page and exiting: a long trace of short processes"),
    ("threads-churn", "32 threads write N/32 pages each of one region while a thread maps/unmaps 4 pages in a loop: N faults on the region"),
    ("threads-own-maps", "64 threads each map and write their own N pages: N faults on each of the 64 regions"),
    ("remap-same-address", "file A MAP_SHARED written and unmapped, file B mapped at the same address and written: two rows, N faults each"),
    ("heap-growth", "sbrk one page N times, writing each: one heap row with N faults (plus malloc's)"),
    ("stack-growth", "recursion N deep, 4 KiB frames: one stack row with at least N faults"),
    ("mprotect-split", "N+1 pages, mprotect the first read-only, read it, write the rest: rows of 1 and N faults"),
    ("split-written", "N+1 pages written, mprotect the first read-only, drop the other N and write them again: N faults on a split-off part whose anon_vma came from before the split"),
    ("mbind-split", "N+1 pages, mbind the first to node 0, write all: rows of 1 and N faults"),
    ("anon-then-shared", "N cycles of: a private anonymous page written (its anon_vma made) and unmapped, then a shared anonymous page written and kept: the slab hands the freed VMA structs to the shared mappings, none of which has an anon_vma"),
    ("buffer-churn", "N cycles at one address of: map 32 pages, write them, map them away (5 ms apart): N rows of 32 faults"),
    ("populate-race", "a reader faults on N shared pages while they are replaced in place by MAP_FIXED (populated private, shared in turn) 300 times"),
    ("dead-threads", "4 threads write 250 pages and exit; reports, waits for a line on stdin, then writes N pages"),
    ("exec-threads", "3 threads write 1000 pages, then exec of a copy named $RMAPTRACE_EXEC_NAME as anon-write N (its report)"),
];

fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(ret)
}

pub(crate) fn map(len: usize, prot: i32, flags: i32, fd: i32) -> Result<*mut u8> {
    map_at(ptr::null_mut(), len, prot, flags, fd)
}

/// Fresh private anonymous memory between two PROT_NONE guard pages: next to
/// another anonymous mapping with the same flags the kernel would merge them,
/// and the range would share its neighbour's anon_vma, made by the
/// neighbour's faults before any of its own.
fn map_fresh_anon(len: usize, prot: i32) -> Result<*mut u8> {
    let inner = guarded(len / PAGE)? as *mut libc::c_void;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
    map_at(inner, len, prot, flags, -1)
}

/// Room for `pages` pages between two PROT_NONE guard pages, reserved
/// PROT_NONE: the address of the first, for a MAP_FIXED mapping.
pub(crate) fn guarded(pages: usize) -> Result<usize> {
    let outer = map(
        (pages + 2) * PAGE,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
    )?;
    Ok(outer as usize + PAGE)
}

fn map_at(hint: *mut libc::c_void, len: usize, prot: i32, flags: i32, fd: i32) -> Result<*mut u8> {
    let p = unsafe { libc::mmap(hint, len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    // Keep huge pages out of the count: one fault per 4 KiB page is the contract.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    if WAIT.load(std::sync::atomic::Ordering::Relaxed) {
        // Lets a test attach with --pid between the mmap and the first touch.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    Ok(p as *mut u8)
}

/// The read-only mapping a SIGSEGV handler makes writable.
static READ_ONLY: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

extern "C" fn make_writable(_sig: libc::c_int) {
    use std::sync::atomic::Ordering::Relaxed;
    let (start, len) = (READ_ONLY[0].load(Relaxed), READ_ONLY[1].load(Relaxed));
    // SAFETY: mprotect (async-signal-safe) of the mapping the main thread
    // made; on return the faulting write runs again, and succeeds.
    unsafe {
        libc::mprotect(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
}

/// Writes the first page of the read-only mapping `ro`: the write fails
/// (SIGSEGV, not a fault to the kernel's counters), the handler makes the
/// mapping writable, and the write made again succeeds (one fault).
fn write_after_sigsegv(ro: *mut u8, len: usize) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    READ_ONLY[0].store(ro as usize, Relaxed);
    READ_ONLY[1].store(len, Relaxed);
    // SAFETY: a zeroed sigaction with a plain handler, installed for SIGSEGV
    // and restored once the write is done.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = make_writable as *const () as usize;
        let mut old: libc::sigaction = std::mem::zeroed();
        check(libc::sigaction(libc::SIGSEGV, &act, &mut old), "sigaction")?;
        ptr::write_volatile(ro, 1);
        check(
            libc::sigaction(libc::SIGSEGV, &old, ptr::null_mut()),
            "sigaction",
        )?;
    }
    Ok(())
}

pub(crate) fn write_pages(p: *mut u8, pages: usize) {
    for i in 0..pages {
        unsafe { ptr::write_volatile(p.add(i * PAGE), 1) };
    }
}

pub(crate) fn read_pages(p: *mut u8, pages: usize) -> u64 {
    let mut sum = 0u64;
    for i in 0..pages {
        sum += unsafe { ptr::read_volatile(p.add(i * PAGE)) } as u64;
    }
    sum
}

fn report(scenario: &str, pages: usize, addr: *mut u8, extra: serde_json::Value) {
    let mut v = json!({"scenario": scenario, "pid": std::process::id(), "pages": pages, "addr": format!("{:#x}", addr as usize)});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    println!("{v}");
}

/// A BPF array of `len` bytes that can be mmapped (BPF_F_MMAPABLE): a kernel
/// object whose mmap handler installs every page (remap_vmalloc_range), as a
/// driver's vm_insert_pages does. Needs CAP_BPF.
fn mmapable_bpf_array(len: usize) -> Result<i32> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, map_flags, then fields left zero.
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[
        BPF_MAP_TYPE_ARRAY,
        4,
        PAGE as u32,
        (len / PAGE) as u32,
        BPF_F_MMAPABLE,
    ]);
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    } as i32;
    check(fd, "bpf(BPF_MAP_CREATE, BPF_F_MMAPABLE) (run as root)")
}

/// A file of `pages` pages on a disk filesystem (not tmpfs, which is shmem).
pub(crate) fn scratch_file(pages: usize) -> Result<(i32, String)> {
    let dir = std::env::var("RMAPTRACE_SCRATCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let path = format!("{dir}/rmaptrace-workload-{}", std::process::id());
    let c = CString::new(path.clone())?;
    let fd = check(
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                0o600,
            )
        },
        "creating a scratch file",
    )?;
    unsafe { libc::unlink(c.as_ptr()) };
    check(
        unsafe { libc::ftruncate(fd, (pages * PAGE) as i64) },
        "ftruncate",
    )?;
    Ok((fd, path))
}

// libc::Ioctl: the request is c_ulong on glibc but c_int on musl (the guest build).
const KVM_CREATE_VM: libc::Ioctl = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::Ioctl = 0xAE04;
const KVM_CREATE_VCPU: libc::Ioctl = 0xAE41;
const SYS_MEMFD_SECRET: i64 = 447;

/// The most pages a scenario maps: 64 TiB, half of x86-64's user address
/// space (more would overflow the length computed from it).
const MAX_PAGES: usize = 1 << 34;

pub fn run(scenario: &str, pages: usize, wait: bool) -> Result<()> {
    if pages > MAX_PAGES {
        bail!("--pages must be at most {MAX_PAGES}, not {pages}");
    }
    WAIT.store(wait, std::sync::atomic::Ordering::Relaxed);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let private_anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let len = pages * PAGE;
    match scenario {
        "anon-write" => {
            let p = map_fresh_anon(len, rw)?;
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "anon-read-write" => {
            let p = map_fresh_anon(len, rw)?;
            read_pages(p, pages);
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "read-into" => {
            let (fd, path) = scratch_file(1)?;
            let p = map_fresh_anon(len, rw)?;
            for i in 0..pages {
                // SAFETY: one byte into page i of a mapping of `pages` pages.
                let n = unsafe { libc::pread(fd, p.add(i * PAGE).cast(), 1, 0) };
                check(n as libc::c_int, "pread")?;
            }
            unsafe { libc::close(fd) };
            report(scenario, pages, p, json!({"file": path}));
        }
        "failed-faults" => {
            let (fd, path) = scratch_file(1)?;
            let ro = map_fresh_anon(len, libc::PROT_READ)?;
            for i in 0..pages {
                // SAFETY: one byte into page i of a mapping of `pages` pages;
                // the kernel's write into it fails (read-only).
                let n = unsafe { libc::pread(fd, ro.add(i * PAGE).cast(), 1, 0) };
                if n != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EFAULT) {
                    bail!("pread into read-only memory gave {n}, not EFAULT");
                }
            }
            unsafe { libc::close(fd) };
            write_after_sigsegv(ro, len)?;
            let p = map_fresh_anon(len, rw)?;
            write_pages(p, pages);
            report(
                scenario,
                pages,
                p,
                json!({"file": path, "ro_addr": format!("{:#x}", ro as usize)}),
            );
        }
        "shared-anon" => {
            let p = map(len, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)?;
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "dev-zero-private" => {
            let fd = check(
                unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDWR) },
                "open /dev/zero",
            )?;
            let p = map(len, rw, libc::MAP_PRIVATE, fd)?;
            unsafe { libc::close(fd) };
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "file-read-cold" => {
            let (fd, path) = scratch_file(pages)?;
            let buf = vec![1u8; len];
            // SAFETY: `len` bytes of `buf` written to the file's start.
            let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), len, 0) };
            check(n as libc::c_int, "pwrite")?;
            check(unsafe { libc::fsync(fd) }, "fsync")?;
            // SAFETY: advice on the whole file; written back above, so the
            // kernel drops its pages from the page cache.
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
            let p = map(len, libc::PROT_READ, libc::MAP_SHARED, fd)?;
            unsafe { libc::close(fd) };
            // SAFETY: advice on the mapping just made: no readahead, so each
            // page is read from the disk by its own fault.
            unsafe { libc::madvise(p.cast(), len, libc::MADV_RANDOM) };
            read_pages(p, pages);
            report(scenario, pages, p, json!({"file": path}));
        }
        "anon-then-shared" => {
            let private = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let mut shared = std::ptr::null_mut();
            for _ in 0..pages {
                let p = map(PAGE, rw, private, -1)?;
                write_pages(p, 1);
                unsafe { libc::munmap(p as *mut _, PAGE) };
                shared = map(PAGE, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1)?;
                write_pages(shared, 1);
            }
            report(scenario, pages, shared, json!({}));
        }
        "file-private-write" | "file-shared-write" => {
            let (fd, path) = scratch_file(pages)?;
            let flags = if scenario == "file-shared-write" {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            let p = map(len, rw, flags, fd)?;
            unsafe { libc::close(fd) };
            write_pages(p, pages);
            report(scenario, pages, p, json!({"file": path}));
        }
        "fork-cow" => {
            let p = map(len, rw, private_anon, -1)?;
            write_pages(p, pages);
            let child = unsafe { libc::fork() };
            if child < 0 {
                bail!("fork: {}", std::io::Error::last_os_error());
            }
            if child == 0 {
                write_pages(p, pages);
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            unsafe { libc::waitpid(child, &mut status, 0) };
            report(scenario, pages, p, json!({"child_pid": child}));
        }
        "kvm-vcpu" => {
            let kvm = check(
                unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) },
                "open /dev/kvm",
            )?;
            let vm = check(
                unsafe { libc::ioctl(kvm, KVM_CREATE_VM, 0) },
                "KVM_CREATE_VM",
            )?;
            let vcpu = check(
                unsafe { libc::ioctl(vm, KVM_CREATE_VCPU, 0) },
                "KVM_CREATE_VCPU",
            )?;
            let size = check(
                unsafe { libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0) },
                "KVM_GET_VCPU_MMAP_SIZE",
            )?;
            let n = size as usize / PAGE;
            let p = map(n * PAGE, rw, libc::MAP_SHARED, vcpu)?;
            read_pages(p, n);
            report(scenario, n, p, json!({}));
        }
        "memfd-secret" => {
            let fd = unsafe { libc::syscall(SYS_MEMFD_SECRET, 0) } as i32;
            check(
                fd,
                "memfd_secret (boot with secretmem.enable=1 on older kernels)",
            )?;
            check(unsafe { libc::ftruncate(fd, len as i64) }, "ftruncate")?;
            let p = map(len, rw, libc::MAP_SHARED, fd)?;
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "populate" => {
            let p = map(len, rw, private_anon | libc::MAP_POPULATE, -1)?;
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "bpf-map-mmap" => {
            let fd = mmapable_bpf_array(len)?;
            let p = map(len, rw, libc::MAP_SHARED, fd)?;
            unsafe { libc::close(fd) };
            write_pages(p, pages);
            report(scenario, pages, p, json!({}));
        }
        "driver-pfn" | "driver-pages" | "driver-vmf" | "driver-fault" => {
            // The rmapdemo module (driver/rmapdemo) serves one buffer per mode;
            // its size caps --pages.
            let dev = format!("/dev/rmapdemo_{}", &scenario["driver-".len()..]);
            let c = CString::new(dev.clone())?;
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            check(
                fd,
                &format!("open {dev} (load driver/rmapdemo/rmapdemo.ko first)"),
            )?;
            let p = map(len, rw, libc::MAP_SHARED, fd)?;
            unsafe { libc::close(fd) };
            write_pages(p, pages);
            report(scenario, pages, p, json!({"device": dev}));
        }
        "threads-churn" | "threads-own-maps" | "remap-same-address" | "heap-growth"
        | "stack-growth" | "mprotect-split" | "split-written" | "mbind-split" | "populate-race"
        | "dead-threads" | "exec-threads" | "fork-storm" | "mmap-churn" | "buffer-churn" => {
            real::run(scenario, pages)?
        }
        other if other.starts_with("bench-") => bench::run(other, pages)?,
        other => {
            let names: Vec<&str> = SCENARIOS
                .iter()
                .chain(bench::BENCHES)
                .map(|(n, _)| *n)
                .collect();
            bail!(
                "unknown scenario {other}: choose one of {}",
                names.join(", ")
            );
        }
    }
    Ok(())
}
