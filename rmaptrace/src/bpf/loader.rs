//! Loads the eBPF object with this kernel's offsets and attaches what the plan allows.
use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, PerfEvent, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use rmaptrace_common::{Config, KernelOffsets, COMM_LEN};

use super::plan::{Attached, HookKind, TRACEPOINT_BACKEND};
use crate::kernel::{btf::KernelBtf, tracefs};

pub struct LoadOptions {
    pub trace_all: bool,
    pub fault_events: bool,
    pub match_comms: bool,
    pub ring_bytes: u32,
}

pub struct Probes {
    ebpf: Ebpf,
    pub plan: Vec<Attached>,
}

/// Offsets of the syscall tracepoint records, from tracefs.
fn syscall_offsets(o: &mut KernelOffsets) -> Result<()> {
    tracefs::ensure_mounted()?;
    o.syscall_args = tracefs::tracepoint_field_offset("syscalls", "sys_enter_mmap", "addr")?;
    o.syscall_ret = tracefs::tracepoint_field_offset("syscalls", "sys_exit_mmap", "ret")?;
    Ok(())
}

impl Probes {
    pub fn load(kbtf: &KernelBtf, opts: &LoadOptions) -> Result<Self> {
        if super::EBPF_OBJECT.is_empty() {
            bail!("this rmaptrace was built without its eBPF programs: run `cargo xtask deps`, then rebuild");
        }
        let mut offsets = kbtf.kernel_offsets()?;
        let syscalls_ok = syscall_offsets(&mut offsets);
        let config = Config {
            trace_all: opts.trace_all as u8,
            fault_events: opts.fault_events as u8,
            match_comms: opts.match_comms as u8,
            _pad: 0,
            self_tgid: std::process::id(),
        };
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(super::EBPF_OBJECT)
            .context("loading the eBPF object")?;

        let cpus = aya::util::online_cpus()
            .map_err(|(_, e)| e)
            .context("listing CPUs")?;
        // Test hook: programs listed here are left unattached, so the integration
        // tests can show that counts really come from the probes.
        let disabled = std::env::var("RMAPTRACE_DISABLE_PROGRAMS").unwrap_or_default();
        let disabled: Vec<&str> = disabled.split(',').filter(|s| !s.is_empty()).collect();
        let mut plan = Vec::new();
        for point in TRACEPOINT_BACKEND {
            if disabled.contains(&point.program) {
                plan.push(Attached {
                    program: point.program,
                    hook: point.hook,
                    kind: point.kind,
                    purpose: point.purpose,
                    attached: false,
                    reason: Some("disabled by RMAPTRACE_DISABLE_PROGRAMS".into()),
                });
                continue;
            }
            let result = if point.kind == HookKind::Tracepoint && syscalls_ok.is_err() {
                Err(anyhow::anyhow!(
                    "{:#}",
                    syscalls_ok.as_ref().expect_err("checked")
                ))
            } else {
                attach(
                    &mut ebpf,
                    &btf,
                    point.program,
                    point.kind,
                    point.hook,
                    &cpus,
                )
            };
            let reason = result.err().map(|e| short_reason(&format!("{e:#}")));
            if let (Some(r), true) = (&reason, point.required) {
                bail!("cannot attach {} to {}: {r}", point.program, point.hook);
            }
            if let Some(r) = &reason {
                log::warn!("{} off: {r}", point.program);
            }
            plan.push(Attached {
                program: point.program,
                hook: point.hook,
                kind: point.kind,
                purpose: point.purpose,
                attached: reason.is_none(),
                reason,
            });
        }
        Ok(Self { ebpf, plan })
    }

    /// Adds a process to the traced set (`traced::YES` or `traced::CHILDREN_ONLY`).
    pub fn trace_pid(&mut self, tgid: u32, mode: u8) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut("TRACED").context("TRACED map")?)?;
        traced.insert(tgid, mode, 0)?;
        Ok(())
    }

    pub fn untrace_pid(&mut self, tgid: u32) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut("TRACED").context("TRACED map")?)?;
        let _ = traced.remove(&tgid);
        Ok(())
    }

    pub fn add_comm(&mut self, name: &str) -> Result<()> {
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(self.ebpf.map_mut("COMMS").context("COMMS map")?)?;
        comms.insert(comm_key(name), 1, 0)?;
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
}

/// A verifier rejection is hundreds of lines; keep the error and the verifier's
/// last word, which is the one that says what it refused.
fn short_reason(err: &str) -> String {
    let Some((head, log)) = err.split_once("Verifier output:") else {
        return err.to_string();
    };
    let last = log
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.is_empty())
        .last()
        .unwrap_or("");
    format!("{} verifier: {last}", head.trim().trim_end_matches('.'))
}

/// The kernel truncates comm to 15 bytes plus NUL.
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    for (d, s) in key.iter_mut().zip(name.bytes().take(COMM_LEN - 1)) {
        *d = s;
    }
    key
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    kind: HookKind,
    hook: &str,
    cpus: &[u32],
) -> Result<()> {
    let prog = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?;
    let (group, name) = hook.split_once('/').unwrap_or(("", hook));
    match kind {
        HookKind::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into()?;
            p.load(name, btf)?;
            p.attach()?;
        }
        HookKind::Tracepoint => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load()?;
            p.attach(group, name)?;
        }
        HookKind::PerfSoftware => {
            let event = match hook {
                "page-faults-min" => SoftwareEvent::PageFaultsMin,
                "page-faults-maj" => SoftwareEvent::PageFaultsMaj,
                other => bail!("unknown perf event {other}"),
            };
            let p: &mut PerfEvent = prog.try_into()?;
            p.load()?;
            for &cpu in cpus {
                p.attach(
                    PerfEventConfig::Software(event),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(1),
                    false,
                )
                .with_context(|| format!("perf_event_open on cpu {cpu}"))?;
            }
        }
    }
    Ok(())
}
