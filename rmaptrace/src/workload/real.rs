//! Workloads shaped like the programs that make fault attribution hard: threads
//! mapping and unmapping beside each other, a mapping replaced at the same address,
//! heap and stack growth, VMA splits, MAP_FIXED replacements racing faults, exited
//! threads, exec from a threaded process. Each reports where its mappings are, and
//! their fault counts are fixed, so the tests can check the exact row of each.
use super::{check, report, write_pages, PAGE};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::{
    ffi::CString,
    hint::black_box,
    io::{BufRead, Write},
    ptr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PRIVATE_ANON: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
const SHARED_ANON: i32 = libc::MAP_SHARED | libc::MAP_ANONYMOUS;

fn hex(addr: usize) -> String {
    format!("{addr:#x}")
}

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Maps anonymous memory over `[addr, addr + pages)` with MAP_FIXED, without huge
/// pages (one fault per 4 KiB page is the contract).
fn fixed(addr: usize, pages: usize, flags: i32) -> Result<usize> {
    let len = pages * PAGE;
    let p = unsafe { libc::mmap(addr as *mut _, len, RW, flags | libc::MAP_FIXED, -1, 0) };
    if p == libc::MAP_FAILED {
        bail!("mmap MAP_FIXED at {}: {}", hex(addr), os_err());
    }
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    Ok(p as usize)
}

/// `pages` fresh anonymous pages between two PROT_NONE guard pages. The kernel merges
/// a new anonymous VMA into an adjacent one with the same flags (another thread's
/// region, a thread stack: glibc's MAP_STACK is VM_NOHUGEPAGE too), and the mapping
/// would then not start at the address reported; the guards rule that out.
fn isolated(pages: usize, flags: i32) -> Result<usize> {
    fixed(super::guarded(pages)?, pages, flags)
}

fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a workload thread panicked"))?
}

pub fn run(scenario: &str, pages: usize) -> Result<()> {
    match scenario {
        "threads-churn" => threads_churn(scenario, pages),
        "threads-own-maps" => threads_own_maps(scenario, pages),
        "remap-same-address" => remap_same_address(scenario, pages),
        "heap-growth" => heap_growth(scenario, pages),
        "stack-growth" => stack_growth(scenario, pages),
        "mprotect-split" | "mbind-split" => split(scenario, pages),
        "split-written" => split_written(scenario, pages),
        "populate-race" => populate_race(scenario, pages),
        "dead-threads" => dead_threads(scenario, pages),
        "exec-threads" => exec_threads(pages),
        "fork-storm" => fork_storm(scenario, pages),
        "mmap-churn" => mmap_churn(scenario, pages),
        "buffer-churn" => buffer_churn(scenario, pages),
        other => bail!("{other} is not one of the real-world scenarios"),
    }
}

const CHURN_WORKERS: usize = 32;

/// 32 threads fault in their slices of one region while another thread maps and
/// unmaps small regions beside it: the VMA tree changes under every fault.
fn threads_churn(scenario: &str, pages: usize) -> Result<()> {
    if pages == 0 || !pages.is_multiple_of(CHURN_WORKERS) {
        bail!("--pages must be a positive multiple of {CHURN_WORKERS}");
    }
    let addr = isolated(pages, PRIVATE_ANON)?;
    let done = Arc::new(AtomicBool::new(false));
    let iterations = Arc::new(AtomicU64::new(0));
    let churn = {
        let (done, iterations) = (done.clone(), iterations.clone());
        thread::spawn(move || -> Result<()> {
            loop {
                // No MADV_NOHUGEPAGE: the flags then differ from the region's, so
                // these never merge into it.
                let q = unsafe { libc::mmap(ptr::null_mut(), 4 * PAGE, RW, PRIVATE_ANON, -1, 0) };
                if q == libc::MAP_FAILED {
                    bail!("mmap: {}", os_err());
                }
                unsafe {
                    ptr::write_volatile(q as *mut u8, 1);
                    libc::munmap(q, 4 * PAGE);
                }
                iterations.fetch_add(1, Ordering::Relaxed);
                if done.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
        })
    };
    // The churn is under way before the first worker faults.
    while iterations.load(Ordering::Relaxed) == 0 && !churn.is_finished() {
        thread::yield_now();
    }
    let slice = pages / CHURN_WORKERS;
    let workers: Vec<_> = (0..CHURN_WORKERS)
        .map(|i| {
            let start = addr + i * slice * PAGE;
            thread::spawn(move || -> Result<()> {
                write_pages(start as *mut u8, slice);
                Ok(())
            })
        })
        .collect();
    for w in workers {
        join(w)?;
    }
    done.store(true, Ordering::Release);
    join(churn)?;
    report(
        scenario,
        pages,
        addr as *mut u8,
        json!({"churn_iterations": iterations.load(Ordering::Relaxed), "threads": CHURN_WORKERS}),
    );
    Ok(())
}

const OWN_MAPS_THREADS: usize = 64;

/// 64 threads map and fault in a region each, all at once.
fn threads_own_maps(scenario: &str, pages: usize) -> Result<()> {
    let start = Arc::new(Barrier::new(OWN_MAPS_THREADS));
    let threads: Vec<_> = (0..OWN_MAPS_THREADS)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || -> Result<usize> {
                start.wait();
                let p = isolated(pages, PRIVATE_ANON)?;
                write_pages(p as *mut u8, pages);
                Ok(p)
            })
        })
        .collect();
    let mut addrs = Vec::new();
    for t in threads {
        addrs.push(join(t)?);
    }
    let hexes: Vec<String> = addrs.iter().map(|a| hex(*a)).collect();
    report(
        scenario,
        pages,
        addrs[0] as *mut u8,
        json!({"addrs": hexes}),
    );
    Ok(())
}

/// A file of `pages` pages on a disk filesystem, kept linked so that /proc and the
/// kernel's dentry both name it.
fn named_scratch_file(suffix: &str, pages: usize) -> Result<(i32, String)> {
    let dir = std::env::var("RMAPTRACE_SCRATCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("scratch dir {dir}"))?;
    let path = format!(
        "{}/rmaptrace-workload-{}-{suffix}",
        dir.display(),
        std::process::id()
    );
    let c = CString::new(path.clone())?;
    let fd = check(
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            )
        },
        "creating a scratch file",
    )?;
    check(
        unsafe { libc::ftruncate(fd, (pages * PAGE) as i64) },
        "ftruncate",
    )?;
    Ok((fd, path))
}

/// File A mapped, written, unmapped; file B mapped at the very same address and
/// written: two mappings, one address.
fn remap_same_address(scenario: &str, pages: usize) -> Result<()> {
    let len = pages * PAGE;
    let (fd_a, file_a) = named_scratch_file("a", pages)?;
    let (fd_b, file_b) = named_scratch_file("b", pages)?;
    let a = unsafe { libc::mmap(ptr::null_mut(), len, RW, libc::MAP_SHARED, fd_a, 0) };
    if a == libc::MAP_FAILED {
        bail!("mmap {file_a}: {}", os_err());
    }
    unsafe { libc::madvise(a, len, libc::MADV_NOHUGEPAGE) };
    write_pages(a as *mut u8, pages);
    unsafe { libc::munmap(a, len) };
    let b = unsafe {
        libc::mmap(
            a,
            len,
            RW,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            fd_b,
            0,
        )
    };
    if b == libc::MAP_FAILED {
        bail!("mmap {file_b} at {}: {}", hex(a as usize), os_err());
    }
    if b != a {
        // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a mere hint.
        bail!(
            "mmap {file_b}: wanted {}, the kernel chose {}",
            hex(a as usize),
            hex(b as usize)
        );
    }
    unsafe { libc::madvise(b, len, libc::MADV_NOHUGEPAGE) };
    write_pages(b as *mut u8, pages);
    for (fd, path) in [(fd_a, &file_a), (fd_b, &file_b)] {
        let c = CString::new(path.as_str())?;
        unsafe {
            libc::close(fd);
            libc::unlink(c.as_ptr());
        }
    }
    report(
        scenario,
        pages,
        a as *mut u8,
        json!({"file_a": file_a, "file_b": file_b}),
    );
    Ok(())
}

/// The brk heap grown one page at a time, each new page written at once. Through
/// libc's sbrk, not the raw syscall: glibc caches the break, and its malloc would
/// otherwise move it back over these pages. (musl's sbrk cannot grow the heap.)
fn heap_growth(scenario: &str, pages: usize) -> Result<()> {
    let failed = usize::MAX; // sbrk's (void *)-1
    let heap_start = unsafe { libc::sbrk(0) } as usize;
    if !heap_start.is_multiple_of(PAGE) {
        // Page-align the break first, so that each sbrk below adds exactly one page.
        let pad = PAGE - heap_start % PAGE;
        if unsafe { libc::sbrk(pad as libc::intptr_t) } as usize == failed {
            bail!("sbrk: {}", os_err());
        }
    }
    let mut first = 0;
    for i in 0..pages {
        let p = unsafe { libc::sbrk(PAGE as libc::intptr_t) } as usize;
        if p == failed {
            bail!("sbrk: {}", os_err());
        }
        if i == 0 {
            first = p;
        }
        unsafe { ptr::write_volatile(p as *mut u8, 1) };
    }
    let end = unsafe { libc::sbrk(0) } as usize;
    report(
        scenario,
        pages,
        first as *mut u8,
        json!({"heap_start_brk": hex(heap_start), "end": hex(end)}),
    );
    Ok(())
}

/// One 4 KiB frame per level: the main thread's stack grows by a page per call.
#[inline(never)]
fn recurse(depth: usize) -> usize {
    let mut frame = [depth as u8; PAGE];
    black_box(&mut frame);
    if depth <= 1 {
        return frame.as_ptr() as usize;
    }
    let deepest = recurse(depth - 1);
    // Used after the call: no tail call, the frame stays live below.
    black_box(&frame);
    deepest
}

fn stack_growth(scenario: &str, depth: usize) -> Result<()> {
    if depth == 0 {
        bail!("--pages (the depth) must be positive");
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    check(
        unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) },
        "getrlimit",
    )?;
    // A frame is the array plus a little; keep a margin for what is already there.
    let need = depth as u64 * (PAGE as u64 + 256) + (256 << 10);
    if lim.rlim_cur != libc::RLIM_INFINITY && need > lim.rlim_cur {
        bail!(
            "a depth of {depth} needs about {need} bytes of stack, RLIMIT_STACK is {}",
            lim.rlim_cur
        );
    }
    let deepest = recurse(depth);
    report(scenario, depth, deepest as *mut u8, json!({"depth": depth}));
    Ok(())
}

/// N+1 pages; the first one changed (mprotect or mbind) so the kernel splits the
/// VMA into 1 + N pages before any fault.
fn split(scenario: &str, pages: usize) -> Result<()> {
    let addr = isolated(pages + 1, PRIVATE_ANON)?;
    if scenario == "mprotect-split" {
        check(
            unsafe { libc::mprotect(addr as *mut _, PAGE, libc::PROT_READ) },
            "mprotect",
        )?;
        unsafe { ptr::read_volatile(addr as *const u8) };
        write_pages((addr + PAGE) as *mut u8, pages);
    } else {
        const MPOL_BIND: libc::c_long = 2;
        let nodemask: libc::c_ulong = 1; // node 0
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                addr,
                PAGE,
                MPOL_BIND,
                &nodemask as *const libc::c_ulong,
                64 as libc::c_ulong,
                0 as libc::c_uint,
            )
        };
        if r != 0 {
            bail!("mbind (needs CONFIG_NUMA): {}", os_err());
        }
        write_pages(addr as *mut u8, pages + 1);
    }
    report(
        scenario,
        pages,
        addr as *mut u8,
        json!({"split_at": hex(addr + PAGE)}),
    );
    Ok(())
}

/// N+1 pages written (the first write makes their anon_vma), then split after
/// the first by mprotect: the kernel gives the last N a VMA struct of their
/// own, with the anon_vma copied (anon_vma_clone). Those N pages are dropped
/// and written again: N faults on a VMA whose anon_vma a fault made before
/// it existed.
fn split_written(scenario: &str, pages: usize) -> Result<()> {
    let addr = isolated(pages + 1, PRIVATE_ANON)?;
    write_pages(addr as *mut u8, pages + 1);
    check(
        unsafe { libc::mprotect(addr as *mut _, PAGE, libc::PROT_READ) },
        "mprotect",
    )?;
    let rest = addr + PAGE;
    check(
        unsafe { libc::madvise(rest as *mut _, pages * PAGE, libc::MADV_DONTNEED) },
        "madvise(MADV_DONTNEED)",
    )?;
    write_pages(rest as *mut u8, pages);
    report(
        scenario,
        pages,
        addr as *mut u8,
        json!({"split_at": hex(rest)}),
    );
    Ok(())
}

const REPLACEMENTS: usize = 300;

/// A reader faults on a region while the main thread keeps replacing it in place
/// with MAP_FIXED, private-populated and shared in turn: every fault must land in
/// the mapping that was there at that instant.
fn populate_race(scenario: &str, pages: usize) -> Result<()> {
    let addr = isolated(pages, SHARED_ANON)?;
    write_pages(addr as *mut u8, pages);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<u64> {
            let mut passes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                super::read_pages(addr as *mut u8, pages);
                passes += 1;
            }
            Ok(passes)
        })
    };
    let started = Instant::now();
    let mut replacements = 0;
    let mut result = Ok(());
    while replacements < REPLACEMENTS {
        let flags = if replacements % 2 == 0 {
            PRIVATE_ANON | libc::MAP_POPULATE
        } else {
            SHARED_ANON
        };
        if let Err(e) = fixed(addr, pages, flags) {
            result = Err(e);
            break;
        }
        replacements += 1;
        thread::sleep(Duration::from_millis(1));
    }
    let rest = Duration::from_secs(1).saturating_sub(started.elapsed());
    thread::sleep(rest);
    stop.store(true, Ordering::Relaxed);
    let passes = join(reader)?;
    result?;
    report(
        scenario,
        pages,
        addr as *mut u8,
        json!({"replacements": replacements, "reader_passes": passes}),
    );
    Ok(())
}

/// Pages of each mapping of the churn, and how many cycles between pauses.
const CHURN_PAGES: usize = 4;
const CHURN_BURST: usize = 8;

/// A server's buffer churn, `cycles` times at one address: map 4 pages, write
/// 2, make the last one PROT_NONE (a split: the first lifetime ends), write the
/// third, and map the range away (PROT_NONE over it: the second lifetime
/// ends). 3 faults and 2 lifetimes a cycle, paced at about 8000 cycles a
/// second, so that a lifetime table the tests make small holds a tick's worth.
/// Guard pages around the range keep it from merging with anything.
fn mmap_churn(scenario: &str, cycles: usize) -> Result<()> {
    let addr = isolated(CHURN_PAGES, PRIVATE_ANON)?;
    for i in 0..cycles {
        let p = fixed(addr, CHURN_PAGES, PRIVATE_ANON)?;
        write_pages(p as *mut u8, 2);
        // SAFETY: the last page of the mapping just made, no reference into it.
        let last = unsafe {
            libc::mprotect(
                (p + (CHURN_PAGES - 1) * PAGE) as *mut _,
                PAGE,
                libc::PROT_NONE,
            )
        };
        check(last, "mprotect")?;
        write_pages((p + 2 * PAGE) as *mut u8, 1);
        // SAFETY: MAP_FIXED over this workload's own range, nothing refers to it.
        let away = unsafe {
            libc::mmap(
                p as *mut _,
                CHURN_PAGES * PAGE,
                libc::PROT_NONE,
                PRIVATE_ANON | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if away == libc::MAP_FAILED {
            bail!("mmap PROT_NONE over {}: {}", hex(p), os_err());
        }
        if i % CHURN_BURST == CHURN_BURST - 1 {
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    report(
        scenario,
        CHURN_PAGES,
        addr as *mut u8,
        json!({"cycles": cycles, "faults_per_cycle": 3, "lifetimes_per_cycle": 2}),
    );
    Ok(())
}

const BUFFER_PAGES: usize = 32;

/// A server's large-buffer churn, `cycles` times at one address: map 32
/// pages, write them all, map the range away; about 200 cycles a second, so
/// that each tick of a trace sees many buffers come and go, each one row of
/// 32 faults.
fn buffer_churn(scenario: &str, cycles: usize) -> Result<()> {
    let addr = isolated(BUFFER_PAGES, PRIVATE_ANON)?;
    for _ in 0..cycles {
        let p = fixed(addr, BUFFER_PAGES, PRIVATE_ANON)?;
        write_pages(p as *mut u8, BUFFER_PAGES);
        fixed(addr, BUFFER_PAGES, PRIVATE_ANON | libc::MAP_NORESERVE)?;
        thread::sleep(std::time::Duration::from_millis(5));
    }
    report(
        scenario,
        BUFFER_PAGES,
        addr as *mut u8,
        json!({"cycles": cycles, "faults_per_cycle": BUFFER_PAGES}),
    );
    Ok(())
}

const DEAD_THREADS: usize = 4;
const DEAD_THREAD_PAGES: usize = 250;

/// Threads fault and exit before a tracer attaches; then the process waits for a
/// line on stdin and faults in N pages of a region mapped before the report.
fn dead_threads(scenario: &str, pages: usize) -> Result<()> {
    let threads: Vec<_> = (0..DEAD_THREADS)
        .map(|_| {
            thread::spawn(|| -> Result<()> {
                let p = isolated(DEAD_THREAD_PAGES, PRIVATE_ANON)?;
                write_pages(p as *mut u8, DEAD_THREAD_PAGES);
                Ok(())
            })
        })
        .collect();
    for t in threads {
        join(t)?;
    }
    let addr = isolated(pages, PRIVATE_ANON)?;
    report(
        scenario,
        pages,
        addr as *mut u8,
        json!({"dead_threads": DEAD_THREADS, "dead_thread_pages": DEAD_THREAD_PAGES}),
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    write_pages(addr as *mut u8, pages);
    Ok(())
}

const EXEC_THREADS: usize = 3;
const EXEC_THREAD_PAGES: usize = 1000;

/// Threads fault and keep running while the main thread execs a copy of this
/// binary (named by RMAPTRACE_EXEC_NAME, so a tracer can follow it with --comm)
/// as `workload anon-write`, which prints the report.
fn exec_threads(pages: usize) -> Result<()> {
    let name = std::env::var("RMAPTRACE_EXEC_NAME")
        .context("exec-threads needs RMAPTRACE_EXEC_NAME (the name to exec as)")?;
    if name.is_empty() || name.len() > 15 || name.contains('/') {
        bail!("RMAPTRACE_EXEC_NAME must be a file name of 1 to 15 bytes (a comm)");
    }
    let copy = format!("/var/tmp/{name}");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy("/proc/self/exe", &copy).with_context(|| format!("copying myself to {copy}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o700))?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..EXEC_THREADS {
        let tx = tx.clone();
        thread::spawn(move || {
            let r = isolated(EXEC_THREAD_PAGES, PRIVATE_ANON).map(|p| {
                write_pages(p as *mut u8, EXEC_THREAD_PAGES);
            });
            let _ = tx.send(r);
            // Still alive when the exec comes: the kernel has to kill it.
            loop {
                thread::park();
            }
        });
    }
    for _ in 0..EXEC_THREADS {
        rx.recv()??;
    }
    thread::sleep(Duration::from_millis(100));
    let path = CString::new(copy.clone())?;
    let args: Vec<CString> = [name.as_str(), "workload", "anon-write", "--pages"]
        .iter()
        .map(|s| CString::new(*s))
        .chain([CString::new(pages.to_string())])
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(ptr::null());
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    bail!("execv {copy}: {}", os_err())
}

/// `children` short processes, one at a time and at most one every 2 ms, so a
/// tracer sees a bounded number exit between two of its ticks whatever the
/// machine's speed. Each writes one fresh page and exits.
fn fork_storm(scenario: &str, children: usize) -> Result<()> {
    for _ in 0..children {
        // SAFETY: the child only maps, writes and exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            let code = match super::map(PAGE, RW, PRIVATE_ANON, -1) {
                Ok(p) => {
                    write_pages(p, 1);
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leaves the forked child without running the parent's exit code.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("a fork-storm child failed: status {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    report(scenario, children, std::ptr::null_mut(), json!({}));
    Ok(())
}
