//! One run of rmaptrace: check the inputs, load and attach, follow the targets,
//! stream records, and on every way out (command exit, Ctrl-C, SIGTERM, --duration)
//! drain the ring buffer and write the summary.
use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use std::{
    os::{
        fd::AsFd,
        unix::{ffi::OsStrExt, process::ExitStatusExt},
    },
    path::Path,
    time::Duration,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use rmaptrace_common::{comm_prefix, counter};

use crate::{
    bpf::{
        events::{decode, Kept},
        loader::{KernelFacts, LoadOptions, Probes},
        plan::Backend,
    },
    cli::{DemoArgs, ServeArgs, TraceArgs},
    export::{
        call_sites::CallSiteFiles,
        json::{Header, JsonExport, FORMAT_VERSION},
        outputs::Outputs,
        table::{self, TABLE_PROCESSES, TABLE_VMAS},
    },
    kernel::{
        btf::VMLINUX_BTF,
        clock::monotonic_ns,
        kallsyms::Kallsyms,
        procfs::{LiveProc, ProcSource},
    },
    model::{
        event::Event,
        stacks::CallStacks,
        trace::{collect_due, Keep, Trace},
    },
};
use crate::{demo::DemoOpts, live::Live};

/// Root and BTF: what every command that loads programs needs first.
fn check_privileges_and_btf() -> Result<()> {
    let missing = crate::kernel::caps::missing_for_tracing(crate::kernel::caps::effective());
    if !missing.is_empty() {
        bail!(
            "missing {}: run it with sudo, or grant CAP_BPF and CAP_PERFMON (and CAP_SYSLOG to name fault handlers): setcap cap_bpf,cap_perfmon,cap_syslog+ep rmaptrace",
            missing.join(" and ")
        );
    }
    let btf = btf_path();
    if !Path::new(&btf).exists() {
        bail!("this kernel has no BTF ({btf} is missing): boot a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    Ok(())
}

/// `rmaptrace probe`: build the attach plan for real (load and attach), print it.
pub fn probe(backend: Backend) -> Result<i32> {
    check_privileges_and_btf()?;
    let facts = KernelFacts::read(Path::new(&btf_path()))?;
    let symbols = Kallsyms::load().context("reading /proc/kallsyms")?;
    let probes = Probes::load(
        &facts,
        &symbols,
        &LoadOptions {
            backend,
            trace_all: false,
            fault_events: false,
            match_comms: false,
            match_cgroups: false,
            anon_swaps: swap_in_use(),
            ring_bytes: 1 << 20,
            stack_depth: None,
        },
    )?;
    print!("kernel {}\n{}", kernel_release(), probes.plan.render());
    Ok(0)
}

/// The command after `--` cannot run: rmaptrace exits as a shell would (127
/// not found, 126 not executable), so scripts see the same status either way.
#[derive(Debug)]
pub struct CommandCannotRun {
    pub code: i32,
    message: String,
}

impl std::fmt::Display for CommandCannotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandCannotRun {}

/// Names the kernel's comm table holds.
const MAX_COMMS: usize = rmaptrace_common::MAX_COMMS as usize;
/// The largest ring buffer: the kernel maps it twice into rmaptrace.
const MAX_RING_MIB: u32 = 1024;
const MAX_DURATION_S: f64 = 1e9;

/// The cgroup v2 subtrees `--cgroup` follows: each root's directory and id.
type CgroupRoots = Vec<(std::path::PathBuf, u64)>;

/// Checks that need nothing attached, in the order a user would fix them.
/// Returns the `--cgroup` subtrees, resolved once here.
fn preflight(args: &TraceArgs, procfs: &dyn ProcSource) -> Result<CgroupRoots> {
    check_privileges_and_btf()?;
    for &pid in &args.pids {
        if !procfs.alive(pid) {
            bail!("no running process with pid {pid}: check it with `ps -p {pid}`");
        }
        if procfs.stat(pid).is_some_and(|s| s.kernel_thread) {
            bail!("pid {pid} is a kernel thread: it has no user memory to fault on; give a user process's pid");
        }
    }
    if args.comms.iter().any(|c| c.is_empty()) {
        bail!("--comm needs a process name, as `ps -o comm` shows it");
    }
    if args.comms.len() > MAX_COMMS {
        bail!(
            "at most {MAX_COMMS} --comm names, not {}: trace fewer names at once",
            args.comms.len()
        );
    }
    if let Some(cmd) = args.command.first() {
        let shown = crate::text::shown(cmd.as_bytes());
        let cannot_run =
            |code, message| -> anyhow::Error { CommandCannotRun { code, message }.into() };
        match which(cmd) {
            None => {
                return Err(cannot_run(
                    127,
                    format!(
                        "command not found: {shown}: give a path or a program on PATH after `--`"
                    ),
                ))
            }
            Some(p) if !is_executable(&p) => {
                return Err(cannot_run(
                    126,
                    format!(
                    "{shown} is not executable: check its mode (chmod +x) and its mount (noexec)"
                ),
                ))
            }
            Some(_) => {}
        }
    }
    let cgroups = followed_cgroups(&args.cgroups)?;
    if args.events && args.json.is_none() {
        bail!("--events writes one JSON record per fault: add --json PATH");
    }
    if args
        .stack_depth()
        .is_some_and(|d| !(1..=rmaptrace_common::MAX_STACK_DEPTH).contains(&d))
    {
        bail!(
            "--stack-depth must be from 1 to {} frames (the kernel walks no more), not {}",
            rmaptrace_common::MAX_STACK_DEPTH,
            args.stack_depth
        );
    }
    if !args.ring_mib.is_power_of_two() || args.ring_mib > MAX_RING_MIB {
        bail!(
            "--ring-mib must be a power of two from 1 to {MAX_RING_MIB}, not {}",
            args.ring_mib
        );
    }
    if let Some(d) = args.duration {
        if !(d > 0.0 && d <= MAX_DURATION_S) {
            bail!("--duration must be a number of seconds above 0 and at most {MAX_DURATION_S:e} (about 30 years), not {d}");
        }
    }
    Ok(cgroups)
}

/// The cgroup v2 directories `--cgroup` names, with their ids; one clear
/// error for the first that is not one.
fn followed_cgroups(asked: &[std::path::PathBuf]) -> Result<CgroupRoots> {
    use crate::kernel::cgroup;
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    let Some(tree) = cgroup::CgroupTree::of_this_system() else {
        bail!("--cgroup needs the cgroup v2 hierarchy, and none is mounted: mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or trace by --comm or --pid");
    };
    let root = tree.root();
    if asked.len() > rmaptrace_common::MAX_CGROUPS as usize {
        bail!(
            "at most {} --cgroup paths, not {}: trace a common parent instead",
            rmaptrace_common::MAX_CGROUPS,
            asked.len()
        );
    }
    let mut found = Vec::new();
    for a in asked {
        let shown = crate::text::shown(a.as_os_str().as_bytes());
        let (dir, id) = cgroup::resolve(root, a).map_err(|e| {
            anyhow::anyhow!(
                "--cgroup {shown}: no cgroup v2 directory there ({e}): give a path under {} (as /proc/PID/cgroup's `0::` line shows it)",
                root.display()
            )
        })?;
        let level = dir.strip_prefix(root).map_or(0, |r| r.components().count());
        if level == 0 {
            bail!("--cgroup {shown} is the root of the hierarchy: that is every process; leave --cgroup out to trace them all");
        }
        if level > rmaptrace_common::MAX_CGROUP_LEVEL as usize {
            bail!(
                "--cgroup {shown} is {level} levels deep, more than the {} rmaptrace follows: give an ancestor",
                rmaptrace_common::MAX_CGROUP_LEVEL
            );
        }
        found.push((dir, id));
    }
    Ok(found)
}

/// The kernel BTF file; RMAPTRACE_BTF overrides it so the missing-BTF error can be tested.
fn btf_path() -> String {
    std::env::var("RMAPTRACE_BTF").unwrap_or_else(|_| VMLINUX_BTF.to_string())
}

fn which(cmd: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Path::new(cmd).is_file().then(|| cmd.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn run(args: TraceArgs) -> Result<i32> {
    run_with(args, None, None)
}

/// `rmaptrace demo`: the same session, tracing the demo's own children.
pub fn run_demo(d: &DemoArgs) -> Result<i32> {
    let args = d.trace_args();
    // On the live screen the scenarios loop until quit; without it, one round.
    let live = crate::live::wants_tui(&args);
    let demo = DemoOpts {
        pages: d.pages,
        rounds: d.rounds.or(if live { None } else { Some(1) }),
        pause: std::time::Duration::from_millis(d.pause_ms),
    };
    run_with(args, Some(demo), None)
}

/// `rmaptrace serve`: the same session, every process (or --comm, --cgroup)
/// counted into metrics served over HTTP until stopped.
pub fn run_serve(s: &ServeArgs) -> Result<i32> {
    let addr: std::net::SocketAddr = s.listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "--listen {}: not an address and port: give one like 127.0.0.1:9436 or [::]:9436",
            crate::text::visible(&s.listen)
        )
    })?;
    if s.top == 0 {
        bail!("--top must be at least 1 (names beyond it are counted as `other`)");
    }
    run_with(
        s.trace_args(),
        None,
        Some(ServeOpts {
            listen: addr,
            top: s.top,
        }),
    )
}

/// What `serve` adds to a session.
struct ServeOpts {
    listen: std::net::SocketAddr,
    top: usize,
}

fn run_with(args: TraceArgs, demo: Option<DemoOpts>, serve: Option<ServeOpts>) -> Result<i32> {
    let started = std::time::Instant::now();
    let procfs = LiveProc::default();
    let cgroups = preflight(&args, &procfs)?;
    // Bound before anything is loaded: a taken port fails first.
    let serve = serve
        .map(|o| {
            std::net::TcpListener::bind(o.listen)
                .map(|l| (l, o.top))
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {}: {e}: choose another --listen address (is another rmaptrace serve running?)", o.listen))
        })
        .transpose()?;
    // Opened before anything is attached: an unwritable path fails first.
    let json = args.json.as_deref().map(JsonExport::create).transpose()?;
    let call_sites = CallSiteFiles::create(args.folded.as_deref(), args.flamegraph.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(trace(args, cgroups, json, call_sites, demo, serve, started))
}

fn drain(ring: &mut RingBuf<MapData>, trace: &mut Trace, out: &mut Outputs) {
    while let Some(item) = ring.next() {
        if let Some(ev) = decode(&item) {
            apply(ev, trace, out);
        }
    }
}

/// One event into the model, and its record (if it makes one) to the export.
fn apply(ev: Event, trace: &mut Trace, out: &mut Outputs) {
    if let Some(rec) = trace.on_event(ev) {
        out.record(&rec);
    }
}

/// Reads what the kernel is (BTF, symbols), loads the programs and attaches
/// what the plan allows.
fn attach(
    args: &TraceArgs,
    trace_all: bool,
    started: std::time::Instant,
) -> Result<(Probes, Kallsyms)> {
    let facts = KernelFacts::read(Path::new(&btf_path()))?;
    // btf-rs's parse is freed; return it before aya parses the BTF again.
    release_freed_memory();
    log::info!("kernel BTF parsed after {:?}", started.elapsed());
    let symbols = Kallsyms::load().context("reading /proc/kallsyms")?;
    log::info!("kallsyms read after {:?}", started.elapsed());
    let probes = Probes::load(
        &facts,
        &symbols,
        &LoadOptions {
            backend: args.backend,
            trace_all,
            fault_events: args.events,
            match_comms: !args.comms.is_empty(),
            match_cgroups: !args.cgroups.is_empty(),
            anon_swaps: swap_in_use(),
            ring_bytes: args.ring_mib << 20,
            stack_depth: args.stack_depth(),
        },
    )?;
    log::info!("attached after {:?}", started.elapsed());
    // aya's parsed BTF is freed with the load; hand that memory back too.
    release_freed_memory();
    if !symbols.has_addresses() {
        use crate::kernel::caps::{effective, has, CAP_SYSLOG};
        if has(effective(), CAP_SYSLOG) {
            log::warn!("/proc/kallsyms shows no addresses (kernel.kptr_restrict=2): fault handlers are shown as addresses");
        } else {
            log::warn!("no CAP_SYSLOG, so /proc/kallsyms shows no addresses: fault handlers are shown as addresses (grant CAP_SYSLOG to name them)");
        }
    }
    Ok((probes, symbols))
}

/// Follows the processes named by --pid, and those running now whose name
/// --comm gives (later ones are matched in the kernel at exec).
fn add_targets(
    args: &TraceArgs,
    cgroups: &CgroupRoots,
    probes: &mut Probes,
    trace: &mut Trace,
) -> Result<()> {
    for &pid in &args.pids {
        probes.trace_pid(pid, rmaptrace_common::traced::YES)?;
        trace.add_target(pid);
        note_mappings(trace, pid);
    }
    for &(_, id) in cgroups {
        probes.add_cgroup(id)?;
    }
    join_cgroups(cgroups, probes, trace)?;
    if args.comms.is_empty() {
        return Ok(());
    }
    let procfs = LiveProc::default();
    for comm in &args.comms {
        probes.add_comm(comm)?;
    }
    for pid in procfs.pids() {
        let Some(stat) = procfs.stat(pid) else {
            continue;
        };
        if args
            .comms
            .iter()
            .any(|c| crate::text::from_bytes(comm_prefix(c.as_bytes())) == stat.comm)
        {
            probes.trace_pid(pid, rmaptrace_common::traced::YES)?;
            trace.add_target(pid);
            note_mappings(trace, pid);
        }
    }
    Ok(())
}

/// Follows the processes in the `--cgroup` subtrees that are not followed
/// yet: at the start, and at each tick for those moved in since (the kernel
/// picks up those that exec or fork there).
/// A subtree removed since (its container stopped) has no processes left to
/// find.
fn join_cgroups(cgroups: &CgroupRoots, probes: &mut Probes, trace: &mut Trace) -> Result<()> {
    if cgroups.is_empty() {
        return Ok(());
    }
    let followed: std::collections::HashSet<u32> = probes.followed_pids()?.into_iter().collect();
    let me = std::process::id();
    for (dir, _) in cgroups {
        for pid in crate::kernel::cgroup::processes_below(dir) {
            if pid != me && !followed.contains(&pid) {
                probes.trace_pid(pid, rmaptrace_common::traced::YES)?;
                trace.add_target(pid);
                note_mappings(trace, pid);
            }
        }
    }
    Ok(())
}

/// With `--stacks`, what a process traced from now on maps is noted at once:
/// it may exit before any of its stacks is read.
fn note_mappings(trace: &mut Trace, pid: u32) {
    if let Some(s) = trace.call_stacks() {
        s.namer().mapped_code(pid);
    }
}

/// Starts `-- CMD`, followed from its first instruction: rmaptrace marks itself
/// "children only" before the fork, so the fork hook adds the child in-kernel.
/// Returns its pid and the guard that stops its tree if rmaptrace panics.
fn spawn_command(
    args: &TraceArgs,
    probes: &mut Probes,
    trace: &mut Trace,
    live: &mut Live,
) -> Result<Option<(u32, TreeGuard)>> {
    let Some((program, rest)) = args.command.split_first() else {
        return Ok(None);
    };
    let me = std::process::id();
    probes.trace_pid(me, rmaptrace_common::traced::CHILDREN_ONLY)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    live.command_stdio(&mut cmd)?;
    if args.json.as_deref() == Some("-") && !live.used_tui() {
        // stdout carries the NDJSON stream: the command writes to stderr.
        cmd.stdout(std::io::stderr().as_fd().try_clone_to_owned()?);
    }
    // Its status must be ours to collect, whatever our parent ignores.
    // SAFETY: resetting a signal's disposition to the default.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", crate::text::shown(program.as_bytes())));
    probes.untrace_pid(me)?;
    let child = child?;
    trace.add_target(child.id());
    let guard = TreeGuard::arm(probes.traced_map_id()?);
    // std's Child is dropped without waiting; it is reaped with wait4.
    Ok(Some((child.id(), guard)))
}

/// The end's table: on stdout when nothing else uses it, else on stderr; after
/// the live screen or a daemon's run, one line (the screen or the metrics
/// showed the rest).
fn report(
    args: &TraceArgs,
    summary: &crate::model::summary::Summary,
    end_reason: &str,
    brief: Option<&str>,
) {
    if let Some(rest) = brief {
        eprintln!(
            "rmaptrace: {end_reason}: {} faults in {} processes over {:.1}s{}",
            summary.totals.faults.total,
            summary.totals.processes,
            summary.duration_ns as f64 / 1e9,
            if args.json.is_some() {
                "; the full summary is in the JSON export"
            } else {
                rest
            }
        );
        return;
    }
    let text = table::render(summary, TABLE_PROCESSES, TABLE_VMAS);
    if args.command.is_empty() && args.json.as_deref() != Some("-") {
        // Not print!: a closed stdout (`| head`) is not a reason to panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    } else {
        eprint!("{text}");
    }
}

async fn trace(
    args: TraceArgs,
    cgroups: CgroupRoots,
    json: Option<JsonExport>,
    call_sites: Option<CallSiteFiles>,
    demo: Option<DemoOpts>,
    serve: Option<(std::net::TcpListener, usize)>,
    started: std::time::Instant,
) -> Result<i32> {
    let trace_all = args.pids.is_empty()
        && args.comms.is_empty()
        && args.cgroups.is_empty()
        && args.command.is_empty()
        && demo.is_none();
    let (mut probes, symbols) = attach(&args, trace_all, started)?;
    let start = monotonic_ns();
    // The trace names the handlers it meets as it meets them (a read of
    // /proc/kallsyms keeping only those): the table the probes needed goes.
    let mut trace = Trace::new(symbols.emptied(), Box::new(LiveProc::default()), start);
    release_freed_memory();
    let limits = probes.plan.limits();
    trace.set_limits(limits.clone());
    trace.set_latency_sample_period(probes.plan.latency_sample_period);
    trace.set_backend(probes.plan.backend, probes.plan.paths);
    trace.set_prefill_observed(crate::bpf::plan::prefill_observed(&probes.plan.rows));

    if let Some(depth) = args.stack_depth() {
        trace.set_call_stacks(CallStacks::new(
            Box::new(crate::symbols::ProcessNamer::default()),
            depth,
        ));
    }
    add_targets(&args, &cgroups, &mut probes, &mut trace)?;
    trace.set_swap_in_use(swap_in_use());

    // Before the header says rmaptrace is attached: from then on a signal
    // ends the trace with its summary, never kills it outright.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut out = Outputs::new(json, call_sites);
    let mut scrapes = match serve {
        Some((listener, top)) => {
            out.count_metrics(top);
            let addr = listener.local_addr()?;
            let rx = crate::export::http::serve(listener)?;
            eprintln!("rmaptrace: serving metrics at http://{addr}/metrics");
            Some(rx)
        }
        None => None,
    };
    let kernel = kernel_release();
    let build = crate::export::prometheus::BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        kernel: &kernel,
        backend: probes.plan.backend,
        latency_sample_period: probes.plan.latency_sample_period,
    };
    out.start(&Header {
        kind: "header",
        format: FORMAT_VERSION,
        version: env!("CARGO_PKG_VERSION"),
        kernel: kernel.clone(),
        backend: serde_json::to_value(&probes.plan)?,
        limits: &limits,
        start_ts_ns: start,
    })?;

    // Live screen and demo (after the attach, so errors before it print plainly).
    let mut live = Live::start(&args, demo, &mut probes)?;

    let (mut child_pid, tree_guard) =
        match spawn_command(&args, &mut probes, &mut trace, &mut live)? {
            Some((pid, guard)) => (Some(pid), Some(guard)),
            None => (None, None),
        };

    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(probes.take_ring()?) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let deadline = args.duration.map(Duration::from_secs_f64);
    let sleep = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(sleep);
    let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel::<i32>();
    if let Some(pid) = child_pid {
        std::thread::spawn(move || {
            let _ = exit_tx.send(wait_for(pid));
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // Fault records do not wake rmaptrace until an eighth of the ring is
    // unread (one wake-up per fault cost more than the rest of the reading):
    // they are read on this timer.
    let mut events_tick = tokio::time::interval(Duration::from_millis(50));
    events_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    // `--pid` and `-- CMD` follow the whole tree: the trace ends when the last
    // process of it exits, children that outlive the command (daemons) included.
    let follows_tree = args.comms.is_empty()
        && args.cgroups.is_empty()
        && (!args.pids.is_empty() || child_pid.is_some());
    let mut exit_code = 0;
    let mut stop_child = None;
    let mut pacer = Pacer::new();
    let mut group_exits = 0;
    let mut internal_error = false;
    let mut lost_at_sweep = 0;
    let mut ticks = TickState::default();
    let end_reason: String = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if let Err(e) = guarded(|| drain(guard.get_inner_mut(), &mut trace, &mut out)) {
                    stop_child = Some(libc::SIGTERM);
                    internal_error = true;
                    break e;
                }
                guard.clear_ready();
                // The tree's last exit ends the trace now, not at the next tick.
                if follows_tree && child_pid.is_none() && trace.group_exits() != group_exits {
                    group_exits = trace.group_exits();
                    if probes.followed()? == 0 {
                        break "all traced processes exited".into();
                    }
                }
            }
            _ = events_tick.tick(), if args.events => {
                if let Err(e) = guarded(|| drain(ring.get_mut(), &mut trace, &mut out)) {
                    stop_child = Some(libc::SIGTERM);
                    internal_error = true;
                    break e;
                }
            }
            _ = tick.tick() => {
                let step = guarded(|| -> Result<()> {
                    // Test hook: a bug in the session itself, mid-trace (2 s in,
                    // and once RMAPTRACE_TEST_PANIC_FILE exists, if set: the
                    // test's command says when its tree is up).
                    if started.elapsed() > Duration::from_secs(2)
                        && std::env::var_os("RMAPTRACE_TEST_PANIC").is_some_and(|v| v == "session")
                        && std::env::var_os("RMAPTRACE_TEST_PANIC_FILE")
                            .is_none_or(|f| Path::new(&f).exists())
                    {
                        panic!("RMAPTRACE_TEST_PANIC=session");
                    }
                    // The kernel tables are read to retire processes that exited
                    // (every tick: that keeps the tables small) and for the screen
                    // (paced); nothing else needs them while the trace runs.
                    // Exits may have been lost with other events: look for
                    // processes that ended unseen, or their rows stay for ever.
                    let lost = probes.counter(counter::EVENTS_LOST)?;
                    let sweep = lost != lost_at_sweep;
                    lost_at_sweep = lost;
                    // Mappings that ended in running processes: collected
                    // once enough ended, or their lifetimes fill the table.
                    ticks.due = ticks.check(&probes, &trace)?;
                    let watched = live.shows_data() || scrapes.is_some();
                    if sweep || ticks.due || trace.has_exited() || (watched && pacer.due()) {
                        let started_tick = std::time::Instant::now();
                        tick_tables(&mut probes, ring.get_mut(), &mut trace, &mut out, &mut live, sweep, &mut ticks)?;
                        pacer.took(started_tick.elapsed());
                    } else {
                        // New stacks have their process's mappings noted
                        // while it runs, whether or not the tables are due.
                        read_call_stacks(&probes, &mut trace)?;
                    }
                    join_cgroups(&cgroups, &mut probes, &mut trace)?;
                    out.settle_metrics();
                    Ok(())
                });
                match step {
                    Ok(r) => r?,
                    Err(e) => {
                        stop_child = Some(libc::SIGTERM);
                        internal_error = true;
                        break e;
                    }
                }
                out.flush();
                if let Some(e) = &out.failed {
                    stop_child = Some(libc::SIGTERM);
                    break format!("the JSON export failed ({e})");
                }
                if follows_tree && child_pid.is_none() && probes.followed()? == 0 {
                    break "all traced processes exited".into();
                }
            }
            Some(reply) = next_scrape(&mut scrapes) => {
                match guarded(|| metrics_text(&trace, &mut out, &build)) {
                    Ok(body) => { let _ = reply.send(body); }
                    Err(e) => {
                        internal_error = true;
                        break e;
                    }
                }
            }
            _ = sigint.recv() => { stop_child = Some(libc::SIGINT); break "interrupted (SIGINT)".into(); }
            _ = sigterm.recv() => { stop_child = Some(libc::SIGTERM); break "terminated (SIGTERM)".into(); }
            _ = sighup.recv() => { stop_child = Some(libc::SIGHUP); break "hung up (SIGHUP)".into(); }
            _ = live.stopped() => { stop_child = Some(libc::SIGTERM); break live.stop_reason().into(); }
            _ = &mut sleep => { stop_child = Some(libc::SIGTERM); break "--duration reached".into(); }
            code = &mut exit_rx, if child_pid.is_some() => {
                exit_code = code.unwrap_or(1);
                child_pid = None;
                // Children it left behind are followed until they exit too.
                if probes.followed()? == 0 {
                    break "all traced processes exited".into();
                }
            }
        }
    };
    // The terminal is given back before anything else is printed.
    let live_result = live.finish();
    // What the screen's thread held (its own malloc arena) goes back before
    // the end's tables are read and summarised, the trace's peak.
    release_freed_memory();
    // Stopping early: the command's whole tree (grandchildren and daemons
    // included) gets the signal, and a grace period in which its events are
    // still read; what is left then is killed. The status is the command's own.
    if let (false, Some(sig)) = (args.command.is_empty(), stop_child) {
        let rx = child_pid.map(|_| &mut exit_rx);
        if let Some(code) = stop_tree(sig, &mut probes, &mut ring, &mut trace, &mut out, rx).await?
        {
            exit_code = code;
        }
    }

    drop(tree_guard);

    // Everything the programs sent so far, then the programs stopped: the final
    // snapshot's counts and kernel counters are then of one instant.
    let ending = std::time::Instant::now();
    drain(ring.get_mut(), &mut trace, &mut out);
    trace.release_snapshot();
    // The call sites as read after the detach (`--stacks`).
    let end_stacks = std::cell::Cell::new(None);
    let mut ring = Some(ring);
    let mut finish = |snap: crate::model::snapshot::Snapshot| {
        if let Some(mut r) = ring.take() {
            drain(r.get_mut(), &mut trace, &mut out);
            // Nothing can send any more (the programs are detached, or no
            // process is followed): the ring's pages, mapped twice, are
            // given back before the summary is built, the trace's peak.
            drop(r);
        }
        for rec in trace.take_held_faults() {
            out.record(&rec);
        }
        trace.set_snapshot(snap);
        if let (Some(read), Some(stacks)) = (end_stacks.take(), trace.call_stacks()) {
            let read: crate::bpf::stacks::StackRead = read;
            stacks.update(read.counts, read.traces);
        }
        log::debug!("end: tables read by {:?}", ending.elapsed());
        if swap_in_use() {
            trace.set_swap_in_use(true);
        }
        // Every process still traced goes to the export, each mapping
        // described as it is written; the table keeps the busiest of each.
        let mut summary = trace.summary_with(monotonic_ns(), Keep(TABLE_VMAS), &mut |p, vmas| {
            out.process(p, vmas)
        });
        summary.end_reason = Some(end_reason.clone());
        log::debug!("end: summarised and written by {:?}", ending.elapsed());
        out.write(|j| j.write_streamed(&summary));
        out.flush();
        let call_sites = out.finish_call_sites();
        log::debug!("end: written by {:?}", ending.elapsed());
        (summary, call_sites)
    };
    // Where no process is followed any more and none can join (a tree is
    // followed, not names), nothing changes the tables: the summary is made
    // while the programs detach (a few RCU grace periods each, one after
    // another in the kernel).
    // Call sites are read after the detach, beside the tables, so that the
    // two agree.
    let (summary, call_sites) =
        if follows_tree && probes.followed()? == 0 && args.stack_depth().is_none() {
            probes.stop_then(finish)?
        } else {
            probes.stop();
            let snap = probes.snapshot()?;
            if args.stack_depth().is_some() {
                // Every stack read again: the model is the closure's until it ends.
                end_stacks.set(Some(probes.read_stacks(|_| false)?));
            }
            finish(snap)
        };
    log::debug!("end: programs detached by {:?}", ending.elapsed());
    let brief = if scrapes.is_some() {
        Some("")
    } else if live.used_tui() {
        Some("; --no-tui prints the full table")
    } else {
        None
    };
    report(&args, &summary, &end_reason, brief);
    live_result?;
    call_sites?;
    if internal_error {
        bail!("{end_reason}: the trace was stopped and its summary written; please report this with the output of `RUST_BACKTRACE=1`");
    }
    if let Some(e) = out.failed {
        bail!("the JSON export failed ({e}); the trace was stopped and its table printed: free space or fix the reader of --json, then run again");
    }
    Ok(exit_code)
}

/// The next scrape waiting for its body; never, when not serving.
async fn next_scrape(
    scrapes: &mut Option<tokio::sync::mpsc::Receiver<crate::export::http::Scrape>>,
) -> Option<crate::export::http::Scrape> {
    match scrapes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The metrics as of the latest tables: every running process credited what
/// it counted since the last scrape (those that exited were credited when
/// retired), then the exposition.
fn metrics_text(
    trace: &Trace,
    out: &mut Outputs,
    build: &crate::export::prometheus::BuildInfo<'_>,
) -> String {
    let summary = trace.summary_with(monotonic_ns(), Keep(0), &mut |p, vmas| out.running(p, vmas));
    out.settle_metrics();
    let Some(m) = out.metrics() else {
        return String::new();
    };
    crate::export::prometheus::render(m, &summary.counters, build)
}

/// One tick's work on the kernel tables: read them, find processes that exited
/// unseen (`sweep`: after events were lost), retire the processes that exited
/// (their records to the export, their rows freed), refresh the screen.
fn tick_tables(
    probes: &mut Probes,
    ring: &mut RingBuf<MapData>,
    trace: &mut Trace,
    out: &mut Outputs,
    live: &mut Live,
    sweep: bool,
    ticks: &mut TickState,
) -> Result<()> {
    let started = std::time::Instant::now();
    trace.release_snapshot();
    // What the programs sent so far is applied before the tables are read.
    drain(ring, trace, out);
    let read_ns = monotonic_ns();
    // The ring buffer is read while the tables are, its events kept for after
    // them: the model takes the tables as of before those events.
    let mut later = Kept::default();
    let snap = probes.snapshot_beside(|| {
        let mut any = false;
        while let Some(item) = ring.next() {
            later.push(&item);
            any = true;
        }
        if !any {
            std::thread::sleep(Duration::from_millis(2));
        }
    })?;
    let rows = (snap.faults.len(), snap.vmas.len());
    trace.set_snapshot(snap);
    read_call_stacks(probes, trace)?;
    let read = started.elapsed();
    if sweep {
        let n = trace.mark_unseen_exits(monotonic_ns());
        log::debug!("events were lost: {n} processes had exited unseen");
    }
    // Processes that ended go to the export; their kernel rows are freed.
    let settled_ns = std::mem::replace(&mut ticks.last_read_ns, read_ns);
    let mut gone = trace.retire_exited_into(&mut |p, vmas| out.process(p, vmas), settled_ns);
    let retired: Vec<u32> = gone.iter().filter(|g| g.whole).map(|g| g.pid).collect();
    for rec in trace.take_held_faults_of(&retired) {
        out.record(&rec);
    }
    if ticks.due {
        let ended = trace.collect_ended_into(&mut |pid, comm, vmas| out.mappings(pid, comm, vmas));
        log::debug!(
            "collected the ended mappings of {} running processes",
            ended.len()
        );
        ticks.collected(probes, trace)?;
        gone.extend(ended);
    }
    let written = started.elapsed();
    let forgotten = probes.forget(&gone)?;
    forget_call_stacks(probes, trace, &gone)?;
    ticks.freed += forgotten.lifetimes;
    if !forgotten.late.is_empty() {
        log::debug!(
            "faults counted on collected lifetimes since: {:?}",
            forgotten.late
        );
    }
    trace.count_late(&forgotten.late);
    // The events that came meanwhile, before the screen's summary: the ring
    // buffer is read on this thread, and a process mapping fast fills it in
    // well under a second.
    for ev in later.iter().filter_map(decode) {
        apply(ev, trace, out);
    }
    drop(later);
    drain(ring, trace, out);
    // Each tick's tables come and go in sizes that vary: give the freed
    // memory back so that a long trace's RSS stays flat.
    release_freed_memory();
    log::debug!(
        "tick: read {} fault rows, {} lifetimes in {read:?}; retired and written {} by {written:?}, freed by {:?}",
        rows.0, rows.1, gone.len(), started.elapsed()
    );
    live.on_tick(trace);
    log::debug!("model: {}", trace.held());
    Ok(())
}

/// The kernel's per-stack counts into the model (`--stacks`), the frames of
/// stacks not read before with them.
fn read_call_stacks(probes: &Probes, trace: &mut Trace) -> Result<()> {
    let Some(stacks) = trace.call_stacks() else {
        return Ok(());
    };
    let read = probes.read_stacks(|id| stacks.knows(id))?;
    stacks.update(read.counts, read.traces);
    Ok(())
}

/// Frees the per-stack counts of what was retired (summarised and written),
/// and the stacks nothing counted uses any more.
fn forget_call_stacks(
    probes: &Probes,
    trace: &mut Trace,
    gone: &[crate::model::trace::Retired],
) -> Result<()> {
    let Some(stacks) = trace.call_stacks() else {
        return Ok(());
    };
    for g in gone {
        let lives: Vec<u64> = g.lives.iter().map(|(life, _)| *life).collect();
        let (keys, ids) = stacks.retire(g.pid, (!g.whole).then_some(&lives[..]));
        probes.forget_stacks(&keys, &ids)?;
    }
    Ok(())
}

/// What the table ticks keep from one to the next: when the ended mappings of
/// running processes are collected (counts of what ended: unmapping calls
/// seen, lifetimes the kernel saw split; and of lifetimes freed, against the
/// kernel's count of lifetimes stored), and when the tables were last read.
#[derive(Default)]
struct TickState {
    ends_at_last: u64,
    freed: u64,
    due: bool,
    /// When the previous tick's tables were read (processes that exited
    /// before are retired).
    last_read_ns: u64,
}

impl TickState {
    fn ends(probes: &Probes, trace: &Trace) -> Result<u64> {
        Ok(trace.unmaps_seen() + probes.counter(counter::LIFE_SPLIT)?)
    }

    fn check(&self, probes: &Probes, trace: &Trace) -> Result<bool> {
        let ended = Self::ends(probes, trace)?.saturating_sub(self.ends_at_last);
        let held = probes
            .counter(counter::LIFE_STARTED)?
            .saturating_sub(self.freed);
        Ok(collect_due(ended, held, probes.lifetime_capacity.into()))
    }

    fn collected(&mut self, probes: &Probes, trace: &Trace) -> Result<()> {
        self.ends_at_last = Self::ends(probes, trace)?;
        Ok(())
    }
}

/// Runs one step of the loop, turning a panic in it (a bug in rmaptrace) into
/// an end reason: the trace then ends the way every other stop does, with its
/// summary, labelled.
fn guarded<T>(step: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        format!("internal error ({msg})")
    })
}

/// While a command runs, a panic on the session's thread kills the command's
/// tree (what the kernel's traced table follows): the session's own stop
/// cannot run while its state unwinds, and the command must not run on
/// untraced. Disarmed when the session stops the tree itself.
struct TreeGuard(());

static TREE: std::sync::Mutex<Option<(u32, std::thread::ThreadId)>> = std::sync::Mutex::new(None);
static TREE_HOOK: std::sync::Once = std::sync::Once::new();

impl TreeGuard {
    fn arm(traced_map_id: u32) -> TreeGuard {
        TREE_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let armed = TREE.lock().ok().and_then(|mut t| {
                    t.take_if(|(_, thread)| *thread == std::thread::current().id())
                });
                if let Some((map, _)) = armed {
                    crate::bpf::loader::signal_followed_by_id(map, libc::SIGKILL);
                }
                previous(info);
            }));
        });
        if let Ok(mut t) = TREE.lock() {
            *t = Some((traced_map_id, std::thread::current().id()));
        }
        TreeGuard(())
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if let Ok(mut t) = TREE.lock() {
                *t = None;
            }
        }
    }
}

/// How long a stopped command's tree has to exit after the signal, before
/// what is left of it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Signals every process the programs follow (the command's whole tree), keeps
/// reading their events while they exit, and kills what is left after
/// [`STOP_GRACE`]. Returns the command's status when `child` is still to be
/// collected.
async fn stop_tree(
    sig: i32,
    probes: &mut Probes,
    ring: &mut AsyncFd<RingBuf<MapData>>,
    trace: &mut Trace,
    out: &mut Outputs,
    mut child: Option<&mut tokio::sync::oneshot::Receiver<i32>>,
) -> Result<Option<i32>> {
    probes.signal_followed(sig)?;
    let mut code = None;
    let mut deadline = tokio::time::Instant::now() + STOP_GRACE;
    let mut killed = false;
    loop {
        let child_done = child.is_none() || code.is_some();
        if child_done && probes.followed()? == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            if killed {
                log::warn!("the command's tree did not exit after SIGKILL");
                break;
            }
            log::warn!("the command's tree outlived {STOP_GRACE:?} after the signal: killing it");
            probes.signal_followed(libc::SIGKILL)?;
            killed = true;
            deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        }
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), trace, out);
                guard.clear_ready();
            }
            c = async { child.as_mut().expect("checked").await }, if !child_done => {
                code = Some(c.unwrap_or(1));
            }
            // Fault records wake nobody below a threshold (see `events_tick`).
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(100))) => {
                drain(ring.get_mut(), trace, out);
            }
        }
    }
    Ok(code)
}

/// Hands memory freed by the BTF parsers back to the system (glibc keeps it
/// otherwise); the static musl build for the guest has no malloc_trim.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether any swap device or file is active (/proc/swaps lists more than its
/// header): derived paths of anonymous faults depend on it.
fn swap_in_use() -> bool {
    std::fs::read("/proc/swaps")
        .map(|b| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count() > 1)
        .unwrap_or(false)
}

/// Reading the kernel tables and building the screen's summary take time in
/// proportion to the rows (a process with 200k mappings: half a second): a
/// refresh that took long is repeated less often, so that the screen takes at
/// most a tenth of a core and the ring buffer, read on the same thread, keeps up.
struct Pacer {
    next: std::time::Instant,
}

impl Pacer {
    fn new() -> Self {
        Self {
            next: std::time::Instant::now(),
        }
    }

    fn due(&self) -> bool {
        std::time::Instant::now() >= self.next
    }

    fn took(&mut self, read: Duration) {
        self.next = std::time::Instant::now() + read * 9;
    }
}

/// Reaps the command and returns a shell-style exit code (128+N for signal N).
fn wait_for(pid: u32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to write.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let st = std::process::ExitStatus::from_raw(status);
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}
