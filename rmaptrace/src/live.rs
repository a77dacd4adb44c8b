//! What runs beside the trace loop of one session: the live screen and the demo
//! driver. session.rs calls in at five points: start, the command's stdio, each
//! tick, the stop arm of its select, and the end.
use std::{
    io::IsTerminal,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use crate::{
    bpf::loader::Probes,
    cli::TraceArgs,
    demo::{self, DemoOpts, Driver},
    kernel::clock::monotonic_ns,
    model::summary::Note,
    model::trace::{Keep, Trace},
    tui::{Ui, Update},
};

pub struct Live {
    ui: Option<Ui>,
    demo: Option<Driver>,
    ui_quit: Option<mpsc::Receiver<()>>,
    demo_done: Option<mpsc::Receiver<()>>,
    title: String,
    notes: Vec<Note>,
    cmd_log: Option<PathBuf>,
    stop_reason: &'static str,
}

/// The live screen needs a terminal to draw on and to read keys from; without one
/// (a pipe, a file, `--json -`) rmaptrace prints the table at the end instead.
pub fn wants_tui(args: &TraceArgs) -> bool {
    !args.no_tui
        && args.json.as_deref() != Some("-")
        && std::io::stdout().is_terminal()
        && std::io::stdin().is_terminal()
}

/// Mappings per process the live screen shows (the busiest; the export has
/// every one). Each refresh holds them beside the kernel tables just read: a
/// process with 200k mappings must stay within the memory goal.
const SCREEN_VMAS: usize = 500;

fn title(args: &TraceArgs, demo: bool) -> String {
    if demo {
        return "rmaptrace demo: every mapping kind, side by side".into();
    }
    if !args.command.is_empty() {
        let words: Vec<String> = args
            .command
            .iter()
            .map(|w| crate::text::from_bytes(std::os::unix::ffi::OsStrExt::as_bytes(w.as_os_str())))
            .collect();
        return crate::text::visible(&format!("rmaptrace -- {}", words.join(" "))).into_owned();
    }
    let mut t = String::from("rmaptrace");
    for p in &args.pids {
        t += &format!(" --pid {p}");
    }
    for c in &args.comms {
        t += &format!(" --comm {c}");
    }
    for c in &args.cgroups {
        t += &format!(
            " --cgroup {}",
            crate::text::shown(std::os::unix::ffi::OsStrExt::as_bytes(c.as_os_str()))
        );
    }
    if args.pids.is_empty() && args.comms.is_empty() && args.cgroups.is_empty() {
        t += ": every process";
    }
    t
}

impl Live {
    pub fn start(args: &TraceArgs, demo: Option<DemoOpts>, probes: &mut Probes) -> Result<Live> {
        let mut live = Live {
            ui: None,
            demo: None,
            ui_quit: None,
            demo_done: None,
            title: title(args, demo.is_some()),
            notes: Vec::new(),
            cmd_log: None,
            stop_reason: "",
        };
        if let Some(opts) = demo {
            // Every child of rmaptrace is traced from its first instruction, as
            // for `-- CMD`, for as long as the demo runs.
            probes.trace_pid(std::process::id(), rmaptrace_common::traced::CHILDREN_ONLY)?;
            let (tx, rx) = mpsc::channel(1);
            live.demo = Some(Driver::start(opts, demo::launch_self()?, tx));
            live.demo_done = Some(rx);
        }
        if wants_tui(args) {
            let (tx, rx) = mpsc::channel(1);
            live.ui = Some(Ui::start(tx)?);
            live.ui_quit = Some(rx);
        }
        Ok(live)
    }

    /// Whether something shows the trace while it runs (the screen, the demo).
    pub fn shows_data(&self) -> bool {
        self.ui.is_some() || self.demo.is_some()
    }

    pub fn used_tui(&self) -> bool {
        self.ui.is_some()
    }

    /// Under the live screen the command cannot share the terminal: it reads
    /// nothing and its output goes to a file, named on screen and at the end.
    pub fn command_stdio(&mut self, cmd: &mut Command) -> Result<()> {
        if self.ui.is_none() {
            return Ok(());
        }
        // A private directory: the name cannot be predicted and planted.
        let path = crate::files::private_dir("rmaptrace-")
            .map(|d| d.join("output.log"))
            .context("creating a directory for the command's output")?;
        let out = crate::files::create_new(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        self.notes.push(Note {
            text: format!("the command's output goes to {}", path.display()),
            ok: true,
        });
        self.cmd_log = Some(path);
        Ok(())
    }

    pub fn on_tick(&mut self, trace: &mut Trace) {
        if let Some(d) = &self.demo {
            for pid in d.take_new_pids() {
                trace.add_target(pid);
            }
        }
        let Some(ui) = &self.ui else {
            return;
        };
        let mut notes = self.notes.clone();
        let mut labels = Default::default();
        if let Some(d) = &self.demo {
            notes.extend(d.notes());
            labels = d.labels();
        }
        // The screen shows names chosen by the traced processes: escaped.
        // The busiest mappings of each process: describing all of a process
        // with 200k of them every refresh would stall the trace.
        let mut summary = trace.summary_with(monotonic_ns(), Keep(SCREEN_VMAS), &mut |_, _| {});
        summary.escape_for_terminal();
        ui.publish(Update {
            summary,
            notes,
            labels,
            title: self.title.clone(),
        });
    }

    /// Resolves when the session should end on our side: the screen was closed
    /// (q, Ctrl-C, or it failed) or the demo ran all its rounds.
    pub async fn stopped(&mut self) {
        let (ui, demo) = (&mut self.ui_quit, &mut self.demo_done);
        let ui = async {
            match ui {
                Some(rx) => {
                    rx.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let demo = async {
            match demo {
                Some(rx) => {
                    rx.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        self.stop_reason = tokio::select! {
            _ = ui => "the live screen was closed",
            _ = demo => "the demo ran all its rounds",
        };
    }

    /// Why [`Live::stopped`] resolved.
    pub fn stop_reason(&self) -> &'static str {
        self.stop_reason
    }

    /// Stops the demo's children and gives the terminal back.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(mut d) = self.demo.take() {
            d.stop();
        }
        let result = match &mut self.ui {
            Some(ui) => ui.finish(),
            None => Ok(()),
        };
        if let Some(p) = &self.cmd_log {
            eprintln!("rmaptrace: the command's output is in {}", p.display());
        }
        result
    }
}
