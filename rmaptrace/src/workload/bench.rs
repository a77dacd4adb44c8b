//! Fault storms for `cargo xtask bench`: each faults a given number of fresh pages
//! in chunks (so memory stays bounded), times itself, and prints
//! `{"bench":…, "faults":N, "ns_per_fault":…}`.
use anyhow::{bail, Result};
use serde_json::json;
use std::time::Instant;

use super::{map, write_pages, PAGE};

/// Pages per chunk: 64 MiB, mapped, touched, unmapped.
const CHUNK: usize = 16384;

pub const BENCHES: &[(&str, &str)] = &[
    (
        "bench-anon",
        "fresh private anonymous pages, written (do_anonymous_page)",
    ),
    (
        "bench-shared",
        "fresh shared anonymous pages, written (shmem_fault)",
    ),
    (
        "bench-file",
        "a private mapping of a cached file, written (filemap_fault, do_cow_fault)",
    ),
    (
        "bench-threads-T",
        "fresh private anonymous pages written by T threads of one process at once; ns_per_fault is per thread (wall time x T / faults)",
    ),
    (
        "bench-vmas",
        "waits for a line on stdin, faults N separate one-page VMAs, waits for another line",
    ),
    (
        "bench-forks",
        "waits for a line on stdin, makes N one-page mappings, forks 200 children that each fault one page and exit",
    ),
];

/// Children of bench-forks.
const FORKS: usize = 200;

fn storm(pages: usize, mut one_chunk: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut left = pages;
    while left > 0 {
        let n = left.min(CHUNK);
        one_chunk(n)?;
        left -= n;
    }
    Ok(start.elapsed().as_nanos() as f64 / pages as f64)
}

pub fn run(name: &str, pages: usize) -> Result<()> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let ns = match name {
        "bench-anon" | "bench-shared" => {
            let flags = if name == "bench-anon" {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
            } else {
                libc::MAP_SHARED | libc::MAP_ANONYMOUS
            };
            storm(pages, |n| {
                let p = map(n * PAGE, rw, flags, -1)?;
                write_pages(p, n);
                unsafe { libc::munmap(p as *mut _, n * PAGE) };
                Ok(())
            })?
        }
        "bench-file" => {
            let (fd, _) = super::scratch_file(CHUNK)?;
            // Warm the page cache so the storm measures faults, not the disk.
            let p = map(CHUNK * PAGE, rw, libc::MAP_SHARED, fd)?;
            write_pages(p, CHUNK);
            unsafe { libc::munmap(p as *mut _, CHUNK * PAGE) };
            let ns = storm(pages, |n| {
                let p = map(n * PAGE, rw, libc::MAP_PRIVATE, fd)?;
                write_pages(p, n);
                unsafe { libc::munmap(p as *mut _, n * PAGE) };
                Ok(())
            })?;
            unsafe { libc::close(fd) };
            ns
        }
        "bench-vmas" => {
            // Lets a tracer attach with --pid before the first mapping.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            // Alternate protections so neighbouring VMAs cannot merge.
            let start = Instant::now();
            for i in 0..pages {
                let prot = if i % 2 == 0 { rw } else { libc::PROT_READ };
                let p = map(PAGE, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)?;
                if i % 2 == 0 {
                    write_pages(p, 1);
                } else {
                    super::read_pages(p, 1);
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / pages as f64;
            println!(
                "{}",
                json!({"bench": name, "faults": pages, "ns_per_fault": ns, "ready": true})
            );
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            return Ok(());
        }
        "bench-forks" => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let mut first = std::ptr::null_mut();
            for i in 0..pages {
                let prot = if i % 2 == 0 { rw } else { libc::PROT_READ };
                let p = map(PAGE, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)?;
                if i == 0 {
                    first = p;
                }
            }
            let start = Instant::now();
            for _ in 0..FORKS {
                // SAFETY: the child only writes a page and exits.
                match unsafe { libc::fork() } {
                    0 => {
                        write_pages(first, 1);
                        unsafe { libc::_exit(0) };
                    }
                    -1 => bail!("fork: {}", std::io::Error::last_os_error()),
                    child => {
                        let mut status = 0;
                        unsafe { libc::waitpid(child, &mut status, 0) };
                    }
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / FORKS as f64;
            println!(
                "{}",
                json!({"bench": name, "mappings": pages, "forks": FORKS, "ns_per_fork": ns, "ready": true})
            );
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            return Ok(());
        }
        other => match other
            .strip_prefix("bench-threads-")
            .map(str::parse::<usize>)
        {
            Some(Ok(threads)) if threads > 0 => return threads_storm(name, pages, threads),
            _ => bail!("unknown bench {other} (bench-threads-T takes a thread count T > 0)"),
        },
    };
    println!(
        "{}",
        json!({"bench": name, "faults": pages, "ns_per_fault": ns})
    );
    Ok(())
}

/// `threads` threads of one process fault `pages` fresh private anonymous pages
/// in all, each its own share in its own chunks, started together. Each thread
/// maps and unmaps its chunks, which takes the mmap_lock: the same with and
/// without a tracer, so the difference is the tracer's.
fn threads_storm(name: &str, pages: usize, threads: usize) -> Result<()> {
    let each = (pages / threads).max(1);
    let start = std::sync::Barrier::new(threads + 1);
    let wall = std::thread::scope(|s| -> Result<std::time::Duration> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    storm(each, |n| {
                        let rw = libc::PROT_READ | libc::PROT_WRITE;
                        let p = map(n * PAGE, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)?;
                        write_pages(p, n);
                        unsafe { libc::munmap(p as *mut _, n * PAGE) };
                        Ok(())
                    })
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for w in workers {
            w.join().expect("a storm thread")?;
        }
        Ok(t0.elapsed())
    })?;
    let faults = each * threads;
    println!(
        "{}",
        json!({
            "bench": name, "faults": faults, "threads": threads,
            "ns_per_fault": wall.as_nanos() as f64 * threads as f64 / faults as f64,
        })
    );
    Ok(())
}
