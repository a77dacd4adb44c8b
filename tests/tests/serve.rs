//! `rmaptrace serve`: the metrics as a real Prometheus server sees them, and
//! the exposition as promtool reads it. Each test starts its own daemon (and
//! Prometheus) on free loopback ports and creates its own cgroup.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rmaptrace_tests::{bin, require_root, temp_json, work_dir};

/// A child killed (and reaped) when the test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: the daemon then detaches its programs in order.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory made for the test, removed at its end.
struct TestCgroup {
    dir: PathBuf,
    /// Its path as /proc/PID/cgroup shows it.
    path: String,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = info
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| left.split(' ').nth(4).unwrap().to_string())
            })
            .expect(
                "no cgroup2 mount in /proc/self/mountinfo: this test needs the cgroup v2 hierarchy",
            );
        let leaf = format!("rmaptrace-test-{name}-{}", std::process::id());
        let dir = Path::new(&root).join(&leaf);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup {
            dir,
            path: format!("/{leaf}"),
        }
    }

    /// Runs `program args` inside the cgroup (the shell moves itself in,
    /// then execs it) and waits for it.
    fn run(&self, program: &Path, args: &[&str]) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{} {args:?} failed", program.display());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP GET on loopback; the body when the status is 200.
fn get(port: u16, target: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    // Prometheus answers queries chunked; a chunk's size line is hex alone.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(unchunk(body));
    }
    Some(body.to_string())
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts `rmaptrace serve` on a free port; returns when /metrics answers.
fn start_serve(extra: &[&str]) -> (Running, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(bin())
        .args(["serve", "--listen", &listen])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let serve = Running(child);
    answers(port, "/metrics", Duration::from_secs(30), "rmaptrace serve");
    (serve, port)
}

/// Waits until `target` on `port` answers 200; fails the test after `within`.
fn answers(port: u16, target: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while get(port, target).is_none() {
        assert!(
            Instant::now() < deadline,
            "{what} did not answer {target} on port {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of an instant query that gives one number, None for no series.
fn query(port: u16, promql: &str) -> Option<f64> {
    let body = get(port, &format!("/api/v1/query?query={}", urlencode(promql)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{promql}: {body}");
    let result = v["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql} gave {} series", result.len());
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Polls a query until it gives `want` (or the time is up); the last value.
fn wait_for_value(port: u16, promql: &str, want: f64, within: Duration) -> Option<f64> {
    let deadline = Instant::now() + within;
    loop {
        let v = query(port, promql);
        if v == Some(want) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn prometheus_binary() -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file());
    found
        .expect("prometheus is not installed: run `cargo xtask deps` (Debian's prometheus package)")
}

/// A Prometheus server scraping `target_port` every second, with its own
/// storage; returns when it is ready.
fn start_prometheus(target_port: u16) -> (Running, u16) {
    let dir = work_dir().join(format!("prometheus-{target_port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rmaptrace\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prometheus = Running(child);
    answers(port, "/-/ready", Duration::from_secs(60), "Prometheus");
    (prometheus, port)
}

/// The workload maps shared anonymous memory and writes each page once:
/// exactly one shmem fault per page (tests/src/expect.rs), and nothing else
/// in the process is shmem. Its cgroup is new, so the series starts there.
#[test]
fn prometheus_sees_a_cgroup_s_shmem_faults_rise_by_exactly_the_pages_written() {
    require_root();
    let cg = TestCgroup::new("prom");
    // Every process of the machine is counted; room for every cgroup on it.
    let (_serve, serve_port) = start_serve(&["--top", "500"]);
    let (_prometheus, prom_port) = start_prometheus(serve_port);
    assert_eq!(
        wait_for_value(
            prom_port,
            r#"up{job="rmaptrace"}"#,
            1.0,
            Duration::from_secs(30)
        ),
        Some(1.0),
        "Prometheus could not scrape rmaptrace serve"
    );
    let series = format!(
        r#"sum(rmaptrace_faults_total{{cgroup="{}",kind="shmem"}})"#,
        cg.path
    );
    assert_eq!(
        query(prom_port, &series),
        None,
        "a new cgroup has no faults yet"
    );

    cg.run(&bin(), &["workload", "shared-anon", "--pages", "300"]);
    let first = wait_for_value(prom_port, &series, 300.0, Duration::from_secs(20));
    assert_eq!(first, Some(300.0), "after 300 pages: {series}");

    cg.run(&bin(), &["workload", "shared-anon", "--pages", "200"]);
    let second = wait_for_value(prom_port, &series, 500.0, Duration::from_secs(20));
    assert_eq!(second, Some(500.0), "after 200 more pages: {series}");

    // Scraped again and again, it stays exact (nothing credited twice).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(query(prom_port, &series), Some(500.0));
    let by_path = format!(
        r#"sum(rmaptrace_faults_total{{cgroup="{}",kind="shmem",handler="shmem_fault",path="do_shared_fault",major="false"}})"#,
        cg.path
    );
    assert_eq!(query(prom_port, &by_path), Some(500.0));
    let latency =
        r#"sum(rmaptrace_fault_latency_seconds_count{kind="shmem",handler="shmem_fault"})"#;
    let period = query(prom_port, "rmaptrace_latency_sample_period").unwrap_or(1.0);
    let timed = query(prom_port, latency);
    if period <= 1.0 {
        assert!(
            timed.is_some_and(|n| n >= 500.0),
            "every traced fault has a latency sample"
        );
    } else {
        // Minor faults timed one in `period` per CPU: a sample of them.
        assert!(
            timed.is_some_and(|n| n >= 1.0),
            "sampled latency: {timed:?} samples of 500 faults, 1 in {period}"
        );
    }
}

/// Several process names in one cgroup, `--top 2`: at most two names get a
/// label of their own, the rest are `other`, the exposition passes promtool,
/// and the series add up to exactly what the same trace exported.
#[test]
fn names_beyond_top_are_other_and_the_series_add_up_to_the_export() {
    require_root();
    let cg = TestCgroup::new("top");
    let dir = work_dir().join("top-names");
    std::fs::create_dir_all(&dir).unwrap();
    let mut programs = Vec::new();
    for name in ["alpha", "bravo", "charlie", "delta"] {
        let p = dir.join(name);
        std::fs::copy("/bin/true", &p).unwrap();
        programs.push(p);
    }
    let json = temp_json("serve-top");
    let cgroup_arg = cg.dir.to_str().unwrap().to_string();
    let (serve, port) = start_serve(&[
        "--top",
        "2",
        "--cgroup",
        &cgroup_arg,
        "--json",
        json.to_str().unwrap(),
    ]);
    for p in &programs {
        cg.run(p, &[]);
    }
    // Retired within about a second of their exit.
    std::thread::sleep(Duration::from_secs(3));
    let text = get(port, "/metrics").expect("/metrics");

    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run `cargo xtask deps` (Debian's prometheus package)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let label = |line: &str, name: &str| -> String {
        let at = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[at..].split('"').next().unwrap().to_string()
    };
    let faults: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rmaptrace_faults_total{"))
        .collect();
    let comms: std::collections::BTreeSet<String> =
        faults.iter().map(|l| label(l, "comm")).collect();
    let own: Vec<&String> = comms.iter().filter(|c| *c != "other").collect();
    assert_eq!(own.len(), 2, "two names of their own: {comms:?}");
    assert!(comms.contains("other"), "the rest is `other`: {comms:?}");
    assert!(faults.iter().all(|l| label(l, "cgroup") == cg.path));
    let served: u64 = faults
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();

    drop(serve);
    let export = rmaptrace_tests::read_export(&json);
    let summary = export.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let exported = summary["totals"]["faults"]["total"].as_u64().unwrap();
    assert_eq!(
        served, exported,
        "the series' sum against the export's total"
    );
    let processes = rmaptrace_tests::processes(&export);
    assert_eq!(
        processes.len(),
        4,
        "the four programs, each traced from its exec"
    );
    for p in processes {
        assert_eq!(p["cgroup"], cg.path.as_str(), "{p}");
        assert!(p["faults"]["total"].as_u64().unwrap() > 0);
    }
}

/// A followed cgroup removed while the daemon runs (its container stopped):
/// the daemon goes on serving.
#[test]
fn a_followed_cgroup_removed_mid_trace_leaves_the_daemon_serving() {
    require_root();
    let cg = TestCgroup::new("gone");
    let cgroup_arg = cg.dir.to_str().unwrap().to_string();
    let (_serve, port) = start_serve(&["--cgroup", &cgroup_arg]);
    std::fs::remove_dir(&cg.dir).unwrap();
    // Several ticks look for processes moved into it.
    std::thread::sleep(Duration::from_secs(2));
    let text = get(port, "/metrics").expect("/metrics after the cgroup was removed");
    assert!(text.contains("rmaptrace_build_info{"), "{text}");
}

#[test]
fn a_bad_listen_address_or_cgroup_fails_before_loading() {
    let out = Command::new(bin())
        .args(["serve", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen nowhere") && err.contains("127.0.0.1:9436"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    require_root();
    let out = Command::new(bin())
        .args(["serve", "--cgroup", "/no/such/cgroup/rmaptrace"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cgroup /no/such/cgroup/rmaptrace"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A port already taken: one line naming --listen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose another --listen"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// deploy/ as shipped: the scrape config loads the alerting rules, the rules
/// pass their own unit tests, the dashboard is JSON that queries only metrics
/// the daemon serves.
#[test]
fn the_deploy_files_pass_promtool_and_name_served_metrics() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "rmaptrace-alerts.yml"],
        vec!["test", "rules", "rmaptrace-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&deploy)
            .output()
            .expect(
                "promtool is not installed: run `cargo xtask deps` (Debian's prometheus package)",
            );
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let served = [
        "rmaptrace_faults_total",
        "rmaptrace_fault_latency_seconds_bucket",
        "rmaptrace_fault_latency_seconds_sum",
        "rmaptrace_fault_latency_seconds_count",
        "rmaptrace_unseen_faults_total",
        "rmaptrace_events_lost_total",
        "rmaptrace_table_full_total",
        "rmaptrace_processes_followed",
        "rmaptrace_build_info",
    ];
    for file in ["grafana-dashboard.json", "rmaptrace-alerts.yml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("rmaptrace_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Metric names, not the job or dashboard names around them.
            if name.ends_with("_total")
                || name.contains("_seconds")
                || name.ends_with("_info")
                || name.ends_with("_followed")
            {
                assert!(
                    served.contains(&name.as_str()),
                    "{file} queries {name}, which serve does not serve"
                );
            }
            rest = &rest[at + name.len().max(1)..];
        }
    }
}
