//! Loads the eBPF object with this kernel's offsets and attaches what the plan
//! allows: for each kernel function fentry, else kprobe, and the tracepoint
//! backend when handle_mm_fault cannot be probed at all.
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, ProgramArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, FEntry, FExit, KProbe, PerfEvent, Program, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use rmaptrace_common::{Config, KernelOffsets, COMM_LEN};

use super::plan::{
    attempt_failed, choose, count_at_entry, counting_order, sub_order, Backend, EntryCountingNeeds,
    HookPoint, KfuncPoint, Mechanism, Offer, Plan, PlanRow, Rejection, Role, ALWAYS, KFUNC_POINTS,
    TRACEPOINT_COUNTING, TRACEPOINT_COUNTING_AT_ENTRY,
};
use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms, tracefs};

pub struct LoadOptions {
    pub backend: Backend,
    pub trace_all: bool,
    pub fault_events: bool,
    pub match_comms: bool,
    /// Add processes that exec or fork inside a `--cgroup` subtree.
    pub match_cgroups: bool,
    /// Swap is on: anonymous memory can fault major.
    pub anon_swaps: bool,
    pub ring_bytes: u32,
    /// Frames of each fault's user stack to record (`--stacks`); None: none.
    pub stack_depth: Option<u32>,
}

/// What the load needs from the kernel's BTF, read by btf-rs and kept small: the
/// parsed BTF itself is tens of MiB, and aya parses it again to load, so the two
/// must not be alive at once.
pub struct KernelFacts {
    pub offsets: KernelOffsets,
    /// The functions of KFUNC_POINTS that have a BTF FUNC (are not inlined away).
    pub btf_functions: Vec<&'static str>,
}

impl KernelFacts {
    pub fn read(btf_path: &std::path::Path) -> Result<Self> {
        let kbtf = KernelBtf::from_file(btf_path)?;
        Ok(Self {
            offsets: kbtf.kernel_offsets()?,
            btf_functions: KFUNC_POINTS
                .iter()
                .map(|p| p.function)
                .filter(|f| kbtf.has_function(f))
                .collect(),
        })
    }
}

pub struct Probes {
    ebpf: Ebpf,
    pub plan: Plan,
    /// How many lifetimes the lifetime table (`VMAS`) holds.
    pub lifetime_capacity: u32,
    /// Frames per stack in the stack table (1 without `--stacks`).
    pub stack_depth: u32,
}

/// Offsets of the syscall tracepoint records, from tracefs.
/// The fault handlers whose faults are major only from swap (shmem's, and
/// SysV shm's in front of it), for the entry to skip the clock where swap was
/// off; 0 (a file's rule: always timed) where kallsyms does not name them.
fn swap_backed_faults(symbols: &Kallsyms) -> [u64; 2] {
    ["shmem_fault", "shm_fault"].map(|name| symbols.kernel_function(name).unwrap_or(0))
}

fn syscall_offsets(o: &mut KernelOffsets) -> Result<()> {
    tracefs::ensure_mounted()?;
    o.syscall_args = tracefs::tracepoint_field_offset("syscalls", "sys_enter_mmap", "addr")?;
    o.syscall_ret = tracefs::tracepoint_field_offset("syscalls", "sys_exit_mmap", "ret")?;
    Ok(())
}

/// Offsets of the `raw_syscalls` records, for 32-bit callers' mapping calls.
fn raw_syscall_offsets(o: &mut KernelOffsets) -> Result<()> {
    if o.task_ti_status == 0 {
        bail!(
            "this kernel keeps no thread_info in task_struct: 32-bit syscalls cannot be told apart"
        );
    }
    let f = |event, field| tracefs::tracepoint_field_offset("raw_syscalls", event, field);
    o.raw_enter_id = f("sys_enter", "id")?;
    o.raw_enter_args = f("sys_enter", "args")?;
    o.raw_exit_id = f("sys_exit", "id")?;
    o.raw_exit_ret = f("sys_exit", "ret")?;
    Ok(())
}

/// Offsets of the `mmap_lock` records (the same in all three events).
fn mmap_lock_offsets(o: &mut KernelOffsets) -> Result<()> {
    let f = |field| tracefs::tracepoint_field_offset("mmap_lock", "mmap_lock_released", field);
    o.mmap_lock_mm = f("mm")?;
    o.mmap_lock_write = f("write")?;
    Ok(())
}

/// The offset of `success` in `mmap_lock_acquire_returned` records, after
/// `mmap_lock_offsets`.
fn mmap_lock_acquire_offsets(o: &mut KernelOffsets, common: &Result<()>) -> Result<()> {
    if let Err(e) = common {
        bail!("{e:#}");
    }
    o.mmap_lock_success =
        tracefs::tracepoint_field_offset("mmap_lock", "mmap_lock_acquire_returned", "success")?;
    Ok(())
}

/// Test hook: programs listed in RMAPTRACE_DISABLE_PROGRAMS are left unattached, so
/// the integration tests can show that counts really come from the probes.
fn disabled_programs() -> Vec<String> {
    std::env::var("RMAPTRACE_DISABLE_PROGRAMS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The errno under an error (aya's load and attach errors carry the syscall's).
fn errno(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
}

/// A verifier rejection is hundreds of lines; keep the error and the verifier's
/// last word, which is the one that says what it refused.
fn short_reason(err: &anyhow::Error) -> String {
    let err = format!("{err:#}");
    let Some((head, log)) = err.split_once("Verifier output:") else {
        return err;
    };
    let last = log
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.is_empty())
        .last()
        .unwrap_or("");
    let head = head.trim().trim_end_matches('.');
    if last.is_empty() || last.starts_with(':') {
        return head.to_string();
    }
    format!("{head} verifier: {last}")
}

/// A program switched off by RMAPTRACE_DISABLE_PROGRAMS: never an error that
/// stops the run, even for a required hook.
#[derive(Debug)]
struct Disabled;

impl std::fmt::Display for Disabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disabled by RMAPTRACE_DISABLE_PROGRAMS")
    }
}

impl std::error::Error for Disabled {}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: &'a Btf,
    facts: &'a KernelFacts,
    symbols: &'a Kallsyms,
    cpus: Vec<u32>,
    disabled: Vec<String>,
    /// The kprobe PMU exists (CONFIG_KPROBES).
    kprobe_pmu: bool,
}

impl Attacher<'_> {
    fn check_disabled(&self, program: &str) -> Result<()> {
        if self.disabled.iter().any(|d| d == program) {
            return Err(Disabled.into());
        }
        Ok(())
    }

    fn hook(&mut self, point: &HookPoint) -> Result<()> {
        self.check_disabled(point.program)?;
        let prog = self
            .ebpf
            .program_mut(point.program)
            .with_context(|| format!("program {} missing from the object", point.program))?;
        load_program(prog, point.mechanism, point.hook, self.btf)?;
        let (group, name) = point.hook.split_once('/').unwrap_or(("", point.hook));
        match point.mechanism {
            Mechanism::TpBtf => <&mut BtfTracePoint>::try_from(prog)?.attach().map(drop)?,
            Mechanism::RawTp => <&mut RawTracePoint>::try_from(prog)?
                .attach(name)
                .map(drop)?,
            Mechanism::Tracepoint => <&mut TracePoint>::try_from(prog)?
                .attach(group, name)
                .map(drop)?,
            Mechanism::PerfSoftware => {
                let event = match point.hook {
                    "page-faults-min" => SoftwareEvent::PageFaultsMin,
                    "page-faults-maj" => SoftwareEvent::PageFaultsMaj,
                    other => bail!("unknown perf event {other}"),
                };
                let p: &mut PerfEvent = prog.try_into()?;
                for &cpu in &self.cpus {
                    p.attach(
                        PerfEventConfig::Software(event),
                        PerfEventScope::AllProcessesOneCpu { cpu },
                        SamplePolicy::Period(super::plan::sample_period(point.program)),
                        false,
                    )
                    .with_context(|| format!("perf_event_open on cpu {cpu}"))?;
                }
            }
            Mechanism::Fentry | Mechanism::Kprobe => bail!("not a fixed hook"),
        }
        Ok(())
    }

    /// Loads the programs of `loads` (program, mechanism, hook) that are
    /// not switched off, from a thread per CPU: the kernel verifies
    /// privileged programs in parallel, and verifying the fault entry
    /// programs is most of the start-up. Attaching stays one at a time, in
    /// `hook`. A program that fails to load here is loaded again there,
    /// which reports why.
    fn preload(&mut self, loads: &[(&'static str, Mechanism, &'static str)]) {
        let btf = self.btf;
        let disabled = &self.disabled;
        let wanted = |name: &str| {
            loads
                .iter()
                .copied()
                .find(|&(program, ..)| program == name && !disabled.iter().any(|d| d == name))
        };
        let programs: Vec<_> = self
            .ebpf
            .programs_mut()
            .filter_map(|(name, prog)| Some((wanted(name)?, prog)))
            .collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(programs.len());
        let queue = std::sync::Mutex::new(programs);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    // Taken out of the lock before the load: loads overlap.
                    let next = queue.lock().map_or(None, |mut q| q.pop());
                    let Some(((program, mechanism, hook), prog)) = next else {
                        break;
                    };
                    if let Err(e) = load_program(prog, mechanism, hook, btf) {
                        log::debug!("preloading {program}: {e:#}");
                    }
                });
            }
        });
    }

    /// Loads and attaches one program of a kernel function's entry or exit.
    fn kfunc_program(
        &mut self,
        program: &str,
        function: &str,
        mech: Mechanism,
        exit: bool,
    ) -> Result<()> {
        self.check_disabled(program)?;
        let prog = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the object"))?;
        match (mech, exit) {
            (Mechanism::Fentry, false) => {
                let p: &mut FEntry = prog.try_into()?;
                p.load(function, self.btf)?;
                p.attach()?;
            }
            (Mechanism::Fentry, true) => {
                let p: &mut FExit = prog.try_into()?;
                p.load(function, self.btf)?;
                p.attach()?;
            }
            (_, _) => {
                let p: &mut KProbe = prog.try_into()?;
                p.load()?;
                p.attach(function, 0)?;
            }
        }
        Ok(())
    }

    /// Detaches and unloads an entry program whose exit half failed.
    fn unload(&mut self, program: &str) {
        let Some(p) = self.ebpf.program_mut(program) else {
            return;
        };
        if let Ok(p) = <&mut FEntry>::try_from(&mut *p) {
            let _ = p.unload();
        } else if let Ok(p) = <&mut KProbe>::try_from(p) {
            let _ = p.unload();
        }
    }

    /// Loads and attaches one mechanism's programs for a kernel function (entry
    /// and, where there is one, exit); the plan has checked that the kernel has
    /// the function.
    fn attach_kfunc(&mut self, point: &KfuncPoint, mech: Mechanism) -> Result<Vec<&'static str>> {
        let (entry, exit) = match mech {
            Mechanism::Fentry => (point.fentry, point.fexit),
            _ => (point.kprobe, point.kretprobe),
        };
        if entry.is_empty() {
            let exit = exit.expect("a point has an entry or an exit program");
            self.kfunc_program(exit, point.function, mech, true)?;
            return Ok(vec![exit]);
        }
        self.kfunc_program(entry, point.function, mech, false)?;
        if let Some(exit) = exit {
            if let Err(e) = self.kfunc_program(exit, point.function, mech, true) {
                self.unload(entry);
                return Err(e);
            }
            return Ok(vec![entry, exit]);
        }
        Ok(vec![entry])
    }

    /// The plan's row for a kernel function: the policy (plan::choose) over
    /// what this kernel offers, with real loads and attaches.
    fn kfunc_row(&mut self, point: &KfuncPoint, order: &[Mechanism]) -> PlanRow {
        let offer = Offer {
            btf_function: self.facts.btf_functions.contains(&point.function),
            symbols: self.symbols.count(point.function) as usize,
            kprobe_pmu: self.kprobe_pmu,
        };
        let exit_only = point.fentry.is_empty();
        choose(point, order, &offer, |mech| {
            self.attach_kfunc(point, mech).map_err(|e| {
                attempt_failed(point.function, mech, exit_only, errno(&e))
                    .unwrap_or_else(|| short_reason(&e))
            })
        })
    }

    /// Puts the tracepoint backend's tail-called programs (`tail_programs`)
    /// into the TAILS array (index 0 counts, index 1 looks the VMA up), loaded
    /// if `preload` did not, before the completion programs that call them
    /// are attached.
    fn load_tails(&mut self, lock_seq: bool) -> Result<()> {
        let mut fds = Vec::new();
        for name in tail_programs(lock_seq) {
            let prog = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?;
            load_program(prog, Mechanism::PerfSoftware, "", self.btf)
                .with_context(|| format!("loading {name}"))?;
            fds.push(prog.fd()?.try_clone()?);
        }
        let mut tails: ProgramArray<_> =
            ProgramArray::try_from(self.ebpf.map_mut("TAILS").context("TAILS map")?)?;
        for (i, fd) in fds.iter().enumerate() {
            tails.set(i as u32, fd, 0)?;
        }
        Ok(())
    }

    /// `mmap_lock_write` on every write acquire and release of mmap_lock: where
    /// VMAs have no vm_lock_seq, the VMA cache is valid only while no write
    /// happened, and it cannot work without this hook.
    fn mmap_lock_row(&mut self, offsets_ok: &Result<()>) -> Result<PlanRow> {
        let mut row = PlanRow {
            point: "mmap_lock/mmap_lock_{acquire_returned,released}".into(),
            purpose: "invalidate the per-thread VMA caches on every change of a process's VMAs",
            chosen: None,
            programs: vec!["mmap_lock_write"],
            rejected: Vec::new(),
        };
        let result = (|| -> Result<()> {
            if let Err(e) = offsets_ok {
                bail!("{e:#}");
            }
            let prog = self
                .ebpf
                .program_mut("mmap_lock_write")
                .context("program mmap_lock_write missing from the object")?;
            let p: &mut TracePoint = prog.try_into()?;
            p.load()?;
            for event in ["mmap_lock_acquire_returned", "mmap_lock_released"] {
                p.attach("mmap_lock", event)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => row.chosen = Some(Mechanism::Tracepoint),
            Err(e) => bail!(
                "cannot attach mmap_lock_write to the mmap_lock tracepoints ({}): without them (or vm_lock_seq, Linux 6.4+) faults cannot be attributed to their mapping",
                short_reason(&e)
            ),
        }
        Ok(row)
    }

    /// The plan's rows of fixed hooks, each with whether the offsets its
    /// record needs were read.
    fn hook_rows(
        &mut self,
        hooks: &[(HookPoint, &Result<()>)],
        rows: &mut Vec<PlanRow>,
    ) -> Result<()> {
        for (point, offsets_ok) in hooks {
            match offsets_ok {
                Err(e) if lacks_offsets(point, offsets_ok) => rows.push(without_offsets(point, e)),
                _ => rows.push(self.hook_row(point)?),
            }
        }
        Ok(())
    }

    fn hook_row(&mut self, point: &HookPoint) -> Result<PlanRow> {
        let mut row = PlanRow {
            point: point.hook.to_string(),
            purpose: point.purpose,
            chosen: None,
            programs: vec![point.program],
            rejected: Vec::new(),
        };
        match self.hook(point) {
            Ok(()) => row.chosen = Some(point.mechanism),
            Err(e) => {
                let reason = short_reason(&e);
                if point.required && e.downcast_ref::<Disabled>().is_none() {
                    bail!(
                        "cannot attach {} to {}: {reason}",
                        point.program,
                        point.hook
                    );
                }
                log::warn!("{} off: {reason}", point.program);
                row.rejected.push(Rejection {
                    mechanism: point.mechanism,
                    reason,
                });
            }
        }
        Ok(row)
    }
}

/// Loads a program of a fixed hook (`hook`, the tracepoint a BTF one
/// attaches to) for its mechanism, unless it is loaded already (by
/// `Attacher::preload`).
fn load_program(prog: &mut Program, mechanism: Mechanism, hook: &str, btf: &Btf) -> Result<()> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    let (_, name) = hook.split_once('/').unwrap_or(("", hook));
    match mechanism {
        Mechanism::TpBtf => <&mut BtfTracePoint>::try_from(prog)?.load(name, btf)?,
        Mechanism::RawTp => <&mut RawTracePoint>::try_from(prog)?.load()?,
        Mechanism::Tracepoint => <&mut TracePoint>::try_from(prog)?.load()?,
        Mechanism::PerfSoftware => <&mut PerfEvent>::try_from(prog)?.load()?,
        Mechanism::Fentry | Mechanism::Kprobe => bail!("not a fixed hook"),
    }
    Ok(())
}

/// The tracepoint completion's tail-called programs, counting first: the
/// lookup's flavour validates cached VMAs by their lock sequence where VMAs
/// have one.
fn tail_programs(lock_seq: bool) -> [&'static str; 2] {
    let lookup = if lock_seq {
        "fault_lookup_tail_vls"
    } else {
        "fault_lookup_tail"
    };
    ["fault_record_tail", lookup]
}

/// A tracepoint program cannot load where its record's field offsets (from
/// tracefs) could not be read.
fn lacks_offsets(point: &HookPoint, offsets_ok: &Result<()>) -> bool {
    point.mechanism == Mechanism::Tracepoint && offsets_ok.is_err()
}

/// The row of a tracepoint program left unattached because its record's
/// field offsets could not be read (`e` says why).
fn without_offsets(point: &HookPoint, e: &anyhow::Error) -> PlanRow {
    PlanRow {
        point: point.hook.to_string(),
        purpose: point.purpose,
        chosen: None,
        programs: vec![point.program],
        rejected: vec![Rejection {
            mechanism: point.mechanism,
            reason: short_reason(&anyhow!("{e:#}")),
        }],
    }
}

/// Whether a read fault on private anonymous memory maps the zero page
/// (THP's huge zero page included): a kernel without THP always does.
fn zero_page_on_read() -> bool {
    std::fs::read("/sys/kernel/mm/transparent_hugepage/use_zero_page")
        .map(|v| v.trim_ascii() != b"0")
        .unwrap_or(true)
}

impl Probes {
    pub fn load(facts: &KernelFacts, symbols: &Kallsyms, opts: &LoadOptions) -> Result<Self> {
        if super::EBPF_OBJECT.is_empty() {
            bail!("this rmaptrace was built without its eBPF programs: run `cargo xtask deps`, then rebuild");
        }
        let mut offsets = facts.offsets;
        // Test hook: validate cached VMAs as kernels before 6.4 must (by mmap_lock
        // write generations), so this path runs on any kernel's tests.
        if std::env::var_os("RMAPTRACE_NO_VM_LOCK_SEQ").is_some() {
            offsets.has_vm_lock_seq = 0;
            offsets.mm_mt_root = 0;
        }
        let syscalls_ok = syscall_offsets(&mut offsets);
        let raw_ok = raw_syscall_offsets(&mut offsets);
        let mmap_lock_ok = mmap_lock_offsets(&mut offsets);
        let mmap_lock_acquire_ok = mmap_lock_acquire_offsets(&mut offsets, &mmap_lock_ok);
        let at_entry = count_at_entry(EntryCountingNeeds {
            vm_lock_seq: offsets.has_vm_lock_seq != 0,
            maple_tree: offsets.mm_mt_root != 0,
            stacks: opts.stack_depth.is_some(),
            zero_page_on_read: zero_page_on_read(),
            forced_off: std::env::var_os("RMAPTRACE_COUNT_AT_COMPLETION").is_some(),
        });
        // Only counting at the entry uses the fast slots: elsewhere their
        // tables hold one entry (a per-CPU array's entries are allocations
        // of their own, each CPU's).
        let fast_slots = if at_entry.is_ok() {
            rmaptrace_common::FAST_SLOTS
        } else {
            1
        };
        let config = Config {
            trace_all: opts.trace_all as u8,
            fault_events: opts.fault_events as u8,
            match_comms: opts.match_comms as u8,
            stacks: opts.stack_depth.is_some() as u8,
            match_cgroups: opts.match_cgroups as u8,
            anon_swaps: opts.anon_swaps as u8,
            _pad: [0; 2],
            self_tgid: std::process::id(),
            fast_slots_per_cpu: fast_slots_per_cpu(),
        };
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let (fault_rows, vma_rows) = table_sizes();
        // Without --stacks the stack tables hold one entry: their memory is
        // the kernel's, taken at load.
        let (object, (stack_entries, stack_rows)) = match opts.stack_depth {
            Some(depth) => (
                std::borrow::Cow::Owned(super::stacks::with_stack_depth(
                    super::EBPF_OBJECT,
                    depth,
                )?),
                stack_table_sizes(),
            ),
            None => (std::borrow::Cow::Borrowed(super::EBPF_OBJECT), (1, 1)),
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .override_global("SWAP_BACKED_FAULTS", &swap_backed_faults(symbols), true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("FAULTS", fault_rows)
            .map_max_entries("ROW_FAST", fast_slots)
            .map_max_entries("ROW_SLOT", fast_slots)
            .map_max_entries("SLOTS_FREE", fast_slots)
            .map_max_entries("VMAS", vma_rows)
            .map_max_entries("TRACED", traced_rows())
            .map_max_entries("STACKS", stack_entries)
            .map_max_entries("STACK_COUNTS", stack_rows)
            .load(&object)
            .context("loading the eBPF object")?;

        let mut a = Attacher {
            ebpf: &mut ebpf,
            btf: &btf,
            facts,
            symbols,
            cpus: aya::util::online_cpus()
                .map_err(|(_, e)| e)
                .context("listing CPUs")?,
            disabled: disabled_programs(),
            kprobe_pmu: std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
        };
        let order = counting_order(opts.backend);

        let mut rows = Vec::new();
        let count_point = KFUNC_POINTS
            .iter()
            .find(|p| p.role == Role::Count)
            .expect("a counting point");
        let count_row = a.kfunc_row(count_point, order);
        let counting = count_row.chosen;
        if counting.is_none() && !order.is_empty() && opts.backend != Backend::Auto {
            let why = count_row
                .rejected
                .last()
                .map(|r| r.reason.clone())
                .unwrap_or_default();
            bail!(
                "--backend {}: handle_mm_fault cannot be probed on this kernel ({why}): use --backend auto",
                format!("{:?}", opts.backend).to_lowercase()
            );
        }
        rows.push(count_row);
        let sub_order = sub_order(counting);
        for point in KFUNC_POINTS.iter().filter(|p| p.role != Role::Count) {
            let mut row = a.kfunc_row(point, &sub_order);
            if counting.is_none() {
                row.rejected.push(Rejection {
                    mechanism: Mechanism::Fentry,
                    reason: "not attached: faults are counted on tracepoints".into(),
                });
            }
            rows.push(row);
        }
        // The fixed hooks to attach, each with the offsets its record needs
        // (a tracepoint's fields, from tracefs).
        let mut hooks: Vec<(HookPoint, &Result<()>)> = Vec::new();
        // The tracepoint backend counting at the completion (6.1-6.3, --stacks).
        let at_completion = counting.is_none() && at_entry.is_err();
        if counting.is_none() && at_entry.is_ok() {
            for point in TRACEPOINT_COUNTING_AT_ENTRY {
                hooks.push((*point, &mmap_lock_acquire_ok));
            }
        } else if at_completion {
            for point in TRACEPOINT_COUNTING {
                // The completion flavour that validates cached VMAs by their
                // vm_lock_seq, where VMAs have one.
                let program = match point.program {
                    "fault_done_minor" if offsets.has_vm_lock_seq != 0 => "fault_done_minor_vls",
                    "fault_done_major" if offsets.has_vm_lock_seq != 0 => "fault_done_major_vls",
                    other => other,
                };
                hooks.push((HookPoint { program, ..*point }, &Ok(())));
            }
        }
        let always: Vec<(HookPoint, &Result<()>)> = ALWAYS
            .iter()
            .map(|point| {
                let offsets_ok = if point.hook.starts_with("raw_syscalls/") {
                    &raw_ok
                } else {
                    &syscalls_ok
                };
                (*point, offsets_ok)
            })
            .collect();
        // The completion programs tail-call into the lookup and the counting:
        // those two go into their program array before they are attached.
        let tails = at_completion
            .then(|| tail_programs(offsets.has_vm_lock_seq != 0))
            .into_iter()
            .flatten()
            .map(|program| (program, Mechanism::PerfSoftware, ""));
        let loadable: Vec<_> = hooks
            .iter()
            .chain(&always)
            .filter(|(point, offsets_ok)| !lacks_offsets(point, offsets_ok))
            .map(|(point, _)| (point.program, point.mechanism, point.hook))
            .chain(tails)
            .collect();
        a.preload(&loadable);
        if at_completion {
            a.load_tails(offsets.has_vm_lock_seq != 0)
                .context("loading the tracepoint backend's lookup and counting programs")?;
        }
        a.hook_rows(&hooks, &mut rows)?;
        if at_completion && offsets.has_vm_lock_seq == 0 {
            rows.push(a.mmap_lock_row(&mmap_lock_ok)?);
        }
        a.hook_rows(&always, &mut rows)?;
        let plan = Plan {
            vma_lookup: super::plan::vma_lookup(
                counting.is_none(),
                offsets.mm_mt_root != 0,
                offsets.has_vm_lock_seq != 0,
            ),
            backend: counting.map(Mechanism::name).unwrap_or("tracepoint"),
            counted_at: match (counting, at_entry) {
                (Some(_), _) => "handle_mm_fault",
                (None, Ok(())) => "entry",
                (None, Err(_)) => "completion",
            },
            completion_because: at_entry.err().filter(|_| counting.is_none()),
            latency_sample_period: match (counting, at_entry) {
                (None, Ok(())) => super::plan::MINOR_LATENCY_SAMPLE_PERIOD,
                _ => 1,
            },
            paths: if counting.is_some() {
                "observed"
            } else {
                "derived"
            },
            rows,
        };
        Ok(Self {
            ebpf,
            plan,
            lifetime_capacity: vma_rows,
            stack_depth: opts
                .stack_depth
                .unwrap_or(rmaptrace_common::MAX_STACK_DEPTH),
        })
    }

    /// Adds a process to the traced set (`traced::YES` or `traced::CHILDREN_ONLY`).
    pub fn trace_pid(&mut self, tgid: u32, mode: u8) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut("TRACED").context("TRACED map")?)?;
        traced.insert(tgid, mode, 0)?;
        // The programs remember processes found untraced until this changes.
        let mut gen: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("TRACED_GEN").context("TRACED_GEN map")?)?;
        let next = gen.get(&0, 0)?.wrapping_add(1);
        gen.set(0, next, 0)?;
        Ok(())
    }

    pub fn untrace_pid(&mut self, tgid: u32) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut("TRACED").context("TRACED map")?)?;
        let _ = traced.remove(&tgid);
        Ok(())
    }

    /// How many processes the programs follow: entries leave the table in the
    /// kernel when a process's last thread exits, so none are missed.
    pub fn followed(&self) -> Result<usize> {
        Ok(self.followed_pids()?.len())
    }

    /// The processes the programs follow (see [`followed_in`]).
    pub fn followed_pids(&self) -> Result<Vec<u32>> {
        let traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map("TRACED").context("TRACED map")?)?;
        Ok(followed_in(&traced))
    }

    /// Signals every process the programs follow.
    pub fn signal_followed(&self, sig: i32) -> Result<()> {
        signal_each(self.followed_pids()?, sig);
        Ok(())
    }

    /// The kernel id of the traced table, for [`signal_followed_by_id`].
    pub fn traced_map_id(&self) -> Result<u32> {
        let map = self.ebpf.map("TRACED").context("TRACED map")?;
        let aya::maps::Map::HashMap(data) = map else {
            bail!("TRACED is not a hash map");
        };
        Ok(data.info()?.id())
    }

    pub fn add_comm(&mut self, name: &str) -> Result<()> {
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(self.ebpf.map_mut("COMMS").context("COMMS map")?)?;
        comms.insert(comm_key(name), 1, 0)?;
        Ok(())
    }

    /// Follows the cgroup v2 subtree whose root has this id (its directory's
    /// inode): processes that exec or fork in it from now on are traced.
    pub fn add_cgroup(&mut self, id: u64) -> Result<()> {
        let mut cgroups: HashMap<_, u64, u8> =
            HashMap::try_from(self.ebpf.map_mut("CGROUPS").context("CGROUPS map")?)?;
        cgroups.insert(id, 1, 0)?;
        Ok(())
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(
            self.ebpf.take_map("EVENTS").context("EVENTS map")?,
        )?)
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Detaches and unloads every program, keeping the maps: the counts and the
    /// per-thread kernel counters then stay as they were at one instant, so the
    /// final snapshot compares like with like.
    pub fn stop(&mut self) {
        std::thread::scope(|s| self.detach_in(s));
    }

    /// Detaches every program, one after another on a thread of `scope`, so
    /// that the caller's work overlaps the detach. One at a time on purpose:
    /// each detach patches the kernel's text (a tracepoint's static key) and
    /// then waits for an RCU grace period; patches made back to back, while
    /// other CPUs run through the patched sites, crashed 6.12 guests with an
    /// int3 Oops (a kernel race in x86's text_poke), and the waits between
    /// them rule that out.
    pub fn detach_in<'scope>(&'scope mut self, scope: &'scope std::thread::Scope<'scope, '_>) {
        use aya::programs::Program;
        let programs = self.ebpf.programs_mut();
        scope.spawn(move || {
            for (_, prog) in programs {
                let _ = match prog {
                    Program::TracePoint(p) => p.unload(),
                    Program::BtfTracePoint(p) => p.unload(),
                    Program::RawTracePoint(p) => p.unload(),
                    Program::PerfEvent(p) => p.unload(),
                    Program::FEntry(p) => p.unload(),
                    Program::FExit(p) => p.unload(),
                    Program::KProbe(p) => p.unload(),
                    _ => Ok(()),
                };
            }
        });
    }
}

/// Every way out detaches one program at a time, errors and `rmaptrace probe`
/// included: dropped all at once, the programs' back-to-back text patches
/// crashed a 6.12 guest (an int3 Oops in kernel_clone, at sched_process_fork's
/// site, as init forked). After `stop` there is nothing left to detach.
impl Drop for Probes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sizes of the preallocated aggregate tables. The per-CPU fault table costs
/// value size × CPUs per row, so its rows come from a fixed memory budget (128 MiB:
/// 131072 rows up to 2 CPUs, fewer beyond; overflow is counted per process); the VMA
/// table holds 128Ki VMAs (about 20 MiB of kernel memory).
fn table_sizes() -> (u32, u32) {
    const FAULT_TABLE_BUDGET: usize = 128 << 20;
    let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
    let row = std::mem::size_of::<rmaptrace_common::FaultStats>() * cpus;
    let fault_rows = (FAULT_TABLE_BUDGET / row).clamp(4096, 131072) as u32;
    // Test hooks: small tables, to show that the rows of exited processes and
    // of ended mappings are freed as a trace goes on.
    let from_env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        from_env("RMAPTRACE_FAULT_ENTRIES", fault_rows),
        from_env("RMAPTRACE_VMA_ENTRIES", 131072),
    )
}

/// Fast slots each CPU numbers: the table shared out. RMAPTRACE_FAST_SLOTS_PER_CPU
/// (a test hook) makes it small, so that a test can show slots freed with
/// their rows taken again.
fn fast_slots_per_cpu() -> u32 {
    let share = rmaptrace_common::FAST_SLOTS / aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    std::env::var("RMAPTRACE_FAST_SLOTS_PER_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(share, |n: u32| n.min(share))
}

/// Processes followed at once. RMAPTRACE_TRACED_ENTRIES (a test hook) makes it
/// small, so that a test can show a fork storm longer than the table is followed
/// to its end: entries leave with their process.
/// Distinct stacks (the kernel's table: one stack per hash slot, so it is
/// kept well above the stacks a trace holds at once; a stack whose slot is
/// taken is lost, and counted) and (row, stack) counts.
fn stack_table_sizes() -> (u32, u32) {
    (32768, 65536)
}

fn traced_rows() -> u32 {
    std::env::var("RMAPTRACE_TRACED_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16384)
}

/// A name as the kernel keeps it in `task_struct.comm`, NUL-padded.
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let kept = rmaptrace_common::comm_prefix(name.as_bytes());
    key[..kept.len()].copy_from_slice(kept);
    key
}

/// Signals every process the traced table (found by its kernel id) follows,
/// without a `Probes`: a panic hook's way to stop a command's tree when the
/// session's own state is being unwound.
pub fn signal_followed_by_id(traced_map_id: u32, sig: i32) {
    let Ok(data) = MapData::from_id(traced_map_id) else {
        return;
    };
    let Ok(traced) = HashMap::<_, u32, u8>::try_from(aya::maps::Map::HashMap(data)) else {
        return;
    };
    signal_each(followed_in(&traced), sig);
}

/// The processes a traced table follows (a command's whole tree, daemons
/// included), rmaptrace itself never among them.
fn followed_in<T: std::borrow::Borrow<MapData>>(traced: &HashMap<T, u32, u8>) -> Vec<u32> {
    let me = std::process::id();
    traced
        .iter()
        .filter_map(|r| r.ok())
        .filter(|&(pid, mode)| mode == rmaptrace_common::traced::YES && pid != me)
        .map(|(pid, _)| pid)
        .collect()
}

fn signal_each(pids: Vec<u32>, sig: i32) {
    // A shell told to hang up must get it before its children can die of
    // it: seeing them die first, it would exit as if nothing happened.
    use crate::kernel::procfs::{ancestors_first, LiveProc, ProcSource};
    let procfs = LiveProc::default();
    for pid in ancestors_first(pids, |p| procfs.stat(p).map(|s| s.ppid)) {
        // SAFETY: kill(2) on a pid the kernel lists as traced.
        unsafe { libc::kill(pid as i32, sig) };
    }
}
