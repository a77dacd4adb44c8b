//! Checks the guest's serial log: the exact answer for each scenario's mapping on
//! each backend (the table shared with the host tests, rmaptrace_tests::expect),
//! the driver's three modes, and no kernel or verifier trouble.
use anyhow::{Context, Result};
use rmaptrace_tests::expect::check_result;
use serde_json::Value;

use crate::vm::Options;

/// Lines that mean the kernel or the eBPF loader went wrong, whatever the results.
fn trouble(line: &str) -> bool {
    const MARKS: &[&str] = &[
        "Oops",
        "BUG:",
        "Kernel panic",
        "general protection fault",
        "Call Trace:",
        "WARNING: CPU:",
    ];
    !line.starts_with("RMAPTRACE-RUN ")
        && (MARKS.iter().any(|m| line.contains(m))
            || line.to_ascii_lowercase().contains("verifier"))
}

/// (major, minor) of a kernel name such as "6.12".
fn version(kernel: &str) -> (u32, u32) {
    let mut parts = kernel.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The checks of one guest that passed and failed.
#[derive(Default)]
struct Tally {
    passes: usize,
    failures: usize,
}

impl Tally {
    /// Prints `what`'s PASS or FAIL line and counts it.
    fn record(&mut self, kernel: &str, what: &str, outcome: Result<()>) {
        match outcome {
            Ok(()) => {
                eprintln!("PASS {kernel} {what}");
                self.passes += 1;
            }
            Err(e) => {
                eprintln!("FAIL {kernel} {what}: {e:#}");
                self.failures += 1;
            }
        }
    }
}

/// Prints one line per backend x scenario of guest `kernel` and returns how
/// many checks failed.
pub fn check(lines: &[String], opts: &Options, n: usize, kernel: &str) -> Result<usize> {
    let mut t = Tally::default();
    for l in lines.iter().filter(|l| trouble(l)) {
        eprintln!("FAIL {kernel} serial log: {l}");
        t.failures += 1;
    }
    match lines.iter().find(|l| l.starts_with("RMAPTRACE-INSMOD")) {
        Some(l) if l.ends_with(" ok") => {}
        _ => {
            eprintln!("FAIL {kernel} insmod rmapdemo.ko (see the serial log)");
            t.failures += 1;
        }
    }
    // `rmaptrace probe` with no flag: on this kernel every mechanism loads, so the
    // plan must choose fentry, the preferred one.
    let probe: Vec<&String> = lines
        .iter()
        .skip_while(|l| *l != "RMAPTRACE-PROBE-BEGIN")
        .take_while(|l| !l.starts_with("RMAPTRACE-PROBE-END"))
        .collect();
    if probe
        .iter()
        .any(|l| l.starts_with("backend: fentry (fault paths observed)"))
    {
        eprintln!("PASS {kernel} probe chooses fentry");
        t.passes += 1;
    } else {
        eprintln!("FAIL {kernel} probe does not choose fentry: {probe:?}");
        t.failures += 1;
    }
    // do_mmap has more than six arguments: its trampoline (fentry) takes them
    // from 6.5 on; before, the plan must fall back to a kprobe and say why.
    let want = if version(kernel) >= (6, 5) {
        "fentry"
    } else {
        "kprobe"
    };
    let do_mmap = probe.iter().find(|l| l.starts_with("do_mmap "));
    if do_mmap.is_some_and(|l| l.split_whitespace().nth(1) == Some(want)) {
        eprintln!("PASS {kernel} probe hooks do_mmap with {want}");
        t.passes += 1;
    } else {
        eprintln!("FAIL {kernel} probe should hook do_mmap with {want}: {do_mmap:?}");
        t.failures += 1;
    }
    let (mut reports, mut runs) = (Vec::new(), Vec::new());
    for l in lines {
        let (list, json) = if let Some(j) = l.strip_prefix("RMAPTRACE-REPORT ") {
            (&mut reports, j)
        } else if let Some(j) = l.strip_prefix("RMAPTRACE-RUN ") {
            (&mut runs, j)
        } else {
            continue;
        };
        match serde_json::from_str::<Value>(json) {
            Ok(v) => list.push(v),
            Err(e) => {
                eprintln!("FAIL {kernel} unreadable guest line ({e}): {l}");
                t.failures += 1;
            }
        }
    }
    for b in &opts.backends {
        for s in &opts.scenarios {
            let r = reports
                .iter()
                .find(|r| r["backend"] == b.as_str() && r["scenario"] == s.as_str());
            let run = runs.iter().find(|r| {
                r["backend"] == b.as_str()
                    && r["scenarios"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == s.as_str()))
            });
            // `default`: show which backend rmaptrace chose.
            let label = match run.and_then(|r| r["header"]["backend"]["backend"].as_str()) {
                Some(name) if name != b => format!("{b}({name})"),
                _ => b.clone(),
            };
            let forced = run.and_then(|r| r["header"]["backend"]["backend"].as_str());
            let outcome = match (r, run) {
                // --backend B must run B, not fall back silently.
                (Some(_), Some(_)) if b != "default" && forced != Some(b.as_str()) => Err(
                    anyhow::anyhow!("asked for backend {b}, the plan chose {forced:?}"),
                ),
                (Some(r), Some(run)) => check_result(r, run, n as u64),
                _ => Err(anyhow::anyhow!("no result from the guest")),
            };
            t.record(kernel, &format!("{label} {s}"), outcome);
        }
    }
    // Runs of their own after the scenarios, on the default backend.
    let own_runs: [(&str, OwnRun); 3] = [
        ("call-sites", check_call_sites),
        ("cgroup", check_cgroup),
        ("unseen-frees", check_unseen_frees),
    ];
    for (name, check) in own_runs {
        t.record(kernel, &format!("default {name}"), check(lines));
    }
    // The plain closing line CI reads, like cargo test's own.
    println!("guest {kernel}: {} passed, {} failed", t.passes, t.failures);
    Ok(t.failures)
}

/// A check of a guest run made apart from the scenarios, on its output lines.
type OwnRun = fn(&[String]) -> Result<()>;

/// The result line `tag` of such a run, which exited 0 (`what` names the run).
fn own_result(lines: &[String], tag: &str, what: &str) -> Result<Value> {
    let result = lines
        .iter()
        .find_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
        .with_context(|| format!("no {what} result from the guest"))?;
    let result: Value = serde_json::from_str(result)?;
    if result["rc"] != 0 {
        anyhow::bail!("rmaptrace {what} failed: {result}");
    }
    Ok(result)
}

/// `--stacks` in the guest (tests/programs/callsites.c): each function right
/// above its own kind of mapping in the folded stacks, with exactly the pages
/// it touched.
fn check_call_sites(lines: &[String]) -> Result<()> {
    let result = own_result(lines, "RMAPTRACE-STACKS", "--folded")?;
    let report = &result["report"];
    let folded: Vec<(&str, u64)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("RMAPTRACE-FOLDED "))
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((stack, n.parse().ok()?))
        })
        .collect();
    for (function, kind, pages) in [
        ("touch_anon", "anon", "anon_pages"),
        ("touch_shared", "shmem", "shared_pages"),
        ("write_file_copy", "file", "file_pages"),
    ] {
        let want = report[pages]
            .as_u64()
            .with_context(|| format!("no {pages} in the report: {report}"))?;
        let leaf = format!(";main;{function};[{kind} ");
        let got: u64 = folded
            .iter()
            .filter(|(stack, _)| stack.contains(&leaf))
            .map(|(_, n)| n)
            .sum();
        if got != want {
            anyhow::bail!(
                "{function} above its {kind} mapping: {got} faults, want {want}: {folded:?}"
            );
        }
    }
    Ok(())
}

/// `anon-then-shared` with the VMA free hook off (RMAPTRACE_DISABLE_PROGRAMS=
/// kmem_cache_free), as when its program misses a run: the slab hands each
/// freed private VMA struct, whose anon_vma the hooks saw made, to a new
/// shared mapping. Each of the 64 shared mappings has its one fault and no
/// anon_vma: what was seen made for the struct's earlier VMA is not the new
/// one's.
fn check_unseen_frees(lines: &[String]) -> Result<()> {
    let result = own_result(lines, "RMAPTRACE-UNSEEN-FREES", "with kmem_cache_free off")?;
    let shared: Vec<&Value> = result["processes"]
        .as_array()
        .context("no processes in the unseen-frees result")?
        .iter()
        .flat_map(shared_writable)
        .collect();
    let wrong: Vec<&&Value> = shared
        .iter()
        .filter(|v| v["faults"] != 1 || !v["setup"]["anon_vma"].is_null())
        .collect();
    if shared.len() != 64 || !wrong.is_empty() {
        anyhow::bail!(
            "want 64 shared mappings of 1 fault each without an anon_vma, got {}; not so: {wrong:?}",
            shared.len()
        );
    }
    Ok(())
}

/// The writable shared memory mappings (shmem, `rw-s`) of process record `p`.
fn shared_writable(p: &Value) -> impl Iterator<Item = &Value> {
    p["vmas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["kind"] == "shmem" && v["prot"] == "rw-s")
}

/// `--cgroup /rmt` in the guest: only the scenario that moved into
/// /rmt/inner and exec'd is traced, its shared mapping with exactly its 64
/// pages and the record with its cgroup's path; the one run outside (32
/// pages) is not. (The guest's root file system is tmpfs: the program's own
/// text is shmem too, so the mapping is found by its protection.)
fn check_cgroup(lines: &[String]) -> Result<()> {
    let result = own_result(lines, "RMAPTRACE-CGROUP", "--cgroup")?;
    let processes = result["processes"]
        .as_array()
        .context("no processes in the --cgroup result")?;
    let shared_pages = |p: &Value| -> Vec<u64> {
        shared_writable(p)
            .filter_map(|v| v["faults"].as_u64())
            .collect()
    };
    let seen: Vec<(&Value, Vec<u64>)> = processes
        .iter()
        .map(|p| (&p["cgroup"], shared_pages(p)))
        .collect();
    match &seen[..] {
        [(cgroup, pages)] if *cgroup == "/rmt/inner" && pages[..] == [64] => Ok(()),
        _ => anyhow::bail!(
            "want one process in /rmt/inner with one shared mapping of 64 faults, got (cgroup, shared mappings' faults) {seen:?}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_numerically() {
        assert!(version("6.12") >= (6, 5));
        assert!(version("6.1") < (6, 5));
    }

    #[test]
    fn kernel_trouble_is_caught_outside_result_lines() {
        assert!(trouble("[ 3.1] BUG: kernel NULL pointer dereference"));
        assert!(trouble(
            "Error: the BPF_PROG_LOAD syscall failed. Verifier output: ..."
        ));
        assert!(!trouble(
            "RMAPTRACE-RUN {\"summary\":\"BUG: in a file name\"}"
        ));
    }
}
