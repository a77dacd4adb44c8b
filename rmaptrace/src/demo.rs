//! `rmaptrace demo`: runs the built-in workload scenarios over and over as child
//! processes, so every mapping kind and its fault handler shows up on the live
//! screen within seconds. Each child is this binary run as
//! `rmaptrace workload NAME --pages N`; the session traces rmaptrace's children.
//! A scenario that cannot run here (no /dev/kvm, say) is reported and skipped.
use std::{
    collections::BTreeMap,
    io::{self, Read},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::model::summary::Note;

/// One of each kind: anon (first touch, zero page + COW), shmem, file, a driver
/// (KVM), a driver-like special (secretmem), and COW after fork.
pub const SCENARIOS: &[&str] = &[
    "anon-write",
    "anon-read-write",
    "shared-anon",
    "file-shared-write",
    "kvm-vcpu",
    "memfd-secret",
    "fork-cow",
];

#[derive(Clone, Debug)]
pub struct DemoOpts {
    pub pages: usize,
    /// None: until stopped.
    pub rounds: Option<u32>,
    /// Between two scenarios, so each shows as its own burst.
    pub pause: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Running(u32),
    Done(u32),
    Failed(String),
}

#[derive(Default)]
struct State {
    new_pids: Vec<u32>,
    labels: BTreeMap<u32, String>,
    outcomes: BTreeMap<&'static str, Outcome>,
    round: u32,
    finished: bool,
}

/// Starts one scenario; the real one runs this binary, tests pass a fake.
pub type Launch = Box<dyn Fn(&str, usize) -> io::Result<Child> + Send>;

pub fn launch_self() -> Result<Launch, io::Error> {
    let exe = std::env::current_exe()?;
    Ok(Box::new(move |scenario, pages| {
        Command::new(&exe)
            .args(["workload", scenario, "--pages", &pages.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    }))
}

/// The thread that runs the scenarios.
pub struct Driver {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const MAX_LABELS: usize = 512;

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    /// `done` is dropped when the last round has finished.
    pub fn start(opts: DemoOpts, launch: Launch, done: tokio::sync::mpsc::Sender<()>) -> Driver {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _done = done;
            drive(&opts, &*launch, &st, &sp);
            lock(&st).finished = true;
        });
        Driver {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Children started since the last call, for the trace to name as targets.
    pub fn take_new_pids(&self) -> Vec<u32> {
        std::mem::take(&mut lock(&self.state).new_pids)
    }

    pub fn labels(&self) -> BTreeMap<u32, String> {
        lock(&self.state).labels.clone()
    }

    #[cfg(test)]
    pub fn finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// One line for the scenarios that work, one per scenario that does not.
    pub fn notes(&self) -> Vec<Note> {
        let s = lock(&self.state);
        let mut ok = Vec::new();
        let mut running = None;
        let mut failed = Vec::new();
        for name in SCENARIOS {
            match s.outcomes.get(name) {
                Some(Outcome::Done(_)) => ok.push(*name),
                Some(Outcome::Running(pid)) => running = Some(format!("{name} (pid {pid})")),
                Some(Outcome::Failed(why)) => failed.push(Note {
                    text: format!("{name}: cannot run here: {why}"),
                    ok: false,
                }),
                None => {}
            }
        }
        let mut first = format!("round {}", s.round.max(1));
        if let Some(r) = running {
            first += &format!(" · running {r}");
        }
        if !ok.is_empty() {
            first += &format!(" · ran: {}", ok.join(" "));
        }
        let mut notes = vec![Note {
            text: first,
            ok: true,
        }];
        notes.extend(failed);
        notes
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(10);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::SeqCst) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Why a scenario failed, in one line: its own last error line if it said one.
fn failure(status: std::process::ExitStatus, stderr: &str) -> String {
    let said = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("rmaptrace: ").to_string());
    match said {
        Some(s) => format!("{s} ({status})"),
        None => status.to_string(),
    }
}

fn run_one(
    name: &'static str,
    pages: usize,
    launch: &dyn Fn(&str, usize) -> io::Result<Child>,
    st: &Mutex<State>,
    stop: &AtomicBool,
) {
    let mut child = match launch(name, pages) {
        Ok(c) => c,
        Err(e) => {
            lock(st)
                .outcomes
                .insert(name, Outcome::Failed(e.to_string()));
            return;
        }
    };
    let pid = child.id();
    {
        let mut s = lock(st);
        s.new_pids.push(pid);
        s.labels.insert(pid, name.to_string());
        while s.labels.len() > MAX_LABELS {
            s.labels.pop_first();
        }
        s.outcomes.insert(name, Outcome::Running(pid));
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if stop.load(Ordering::SeqCst) => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(e),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let outcome = match status {
        Ok(s) if s.success() => Outcome::Done(pid),
        Ok(s) => Outcome::Failed(failure(s, &stderr)),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    lock(st).outcomes.insert(name, outcome);
}

fn drive(
    opts: &DemoOpts,
    launch: &dyn Fn(&str, usize) -> io::Result<Child>,
    st: &Mutex<State>,
    stop: &AtomicBool,
) {
    let mut round = 0;
    while opts.rounds.is_none_or(|r| round < r) && !stop.load(Ordering::SeqCst) {
        round += 1;
        lock(st).round = round;
        for name in SCENARIOS {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            // A scenario that failed once fails again: do not retry it every round.
            if matches!(lock(st).outcomes.get(name), Some(Outcome::Failed(_))) {
                continue;
            }
            run_one(name, opts.pages, launch, st, stop);
            sleep_unless(stop, opts.pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake scenarios: kvm-vcpu fails like it does without /dev/kvm, the rest exit 0.
    fn fake_launch() -> Launch {
        Box::new(|name, _pages| {
            let script = if name == "kvm-vcpu" {
                "echo 'rmaptrace: opening /dev/kvm: No such file or directory' >&2; exit 1"
            } else {
                "exit 0"
            };
            Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
    }

    #[test]
    fn runs_every_scenario_and_reports_the_ones_that_cannot_run() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let opts = DemoOpts {
            pages: 4,
            rounds: Some(2),
            pause: Duration::ZERO,
        };
        let mut d = Driver::start(opts, fake_launch(), tx);
        // The sender is dropped when both rounds are done.
        assert!(rx.blocking_recv().is_none());
        assert!(d.finished());
        let pids = d.take_new_pids();
        // Two rounds of 6 working scenarios, and kvm-vcpu once (not retried).
        assert_eq!(pids.len(), 13);
        assert!(d.take_new_pids().is_empty());
        let labels = d.labels();
        assert_eq!(labels.len(), 13);
        assert!(labels.values().any(|l| l == "fork-cow"));
        let notes = d.notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0]
            .text
            .starts_with("round 2 · ran: anon-write anon-read-write"));
        assert!(!notes[1].ok);
        assert_eq!(
            notes[1].text,
            "kvm-vcpu: cannot run here: opening /dev/kvm: No such file or directory (exit status: 1)"
        );
        d.stop();
    }

    #[test]
    fn stop_ends_a_running_scenario() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let launch: Launch = Box::new(|_, _| {
            Command::new("sleep")
                .arg("30")
                .stderr(Stdio::piped())
                .spawn()
        });
        let opts = DemoOpts {
            pages: 1,
            rounds: None,
            pause: Duration::ZERO,
        };
        let mut d = Driver::start(opts, launch, tx);
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        d.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(d.notes()[0].text.contains("running anon-write"));
    }
}
