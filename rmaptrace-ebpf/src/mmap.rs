//! Where mappings come from: mmap, munmap and mremap of traced processes, as the
//! syscall tracepoints see them (and `raw_syscalls` for 32-bit callers, which
//! the per-syscall tracepoints skip). Entry and exit are sent as separate records
//! and paired by thread id in userspace, which keeps these programs free of state.
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{fexit, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use rmaptrace_common::{counter, event_kind, EventHeader, MmapExitEvent, SyscallEvent};

use crate::{
    maps::{bump, event_header, off, traced_current, EVENTS},
    vma,
};

pub(crate) fn scratch() -> Option<*mut MmapExitEvent> {
    MMAP_SCRATCH.get_ptr_mut(0)
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    if let Some((_, tid)) = traced_current() {
        crate::prefill::start(tid);
    }
    send(&ctx, event_kind::MMAP_ENTER, true);
    0
}

/// Scratch space for the mmap exit record: too large for the 512-byte stack, and
/// bpf_find_vma's context must be on the stack, so the walk writes here.
#[map]
static MMAP_SCRATCH: PerCpuArray<MmapExitEvent> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = traced_current() else {
        return 0;
    };
    if off!(ready) == 0 {
        return 0;
    }
    // SAFETY: the offset of `ret` in this tracepoint's record, from tracefs.
    let ret = unsafe { ctx.read_at::<u64>(off!(syscall_ret) as usize) }.unwrap_or(0);
    mmap_returned(tgid, tid, ret);
    // What its setup record did not take (most mappings have none).
    crate::prefill::forget(tid);
    0
}

/// An mmap returned `ret`: the record of its result and the mapped file's path.
/// The syscall's arguments came in its entry record.
#[inline(always)]
fn mmap_returned(tgid: u32, tid: u32, ret: u64) {
    let Some(ev) = start_record(event_header(event_kind::MMAP_EXIT, tgid, tid), ret, 0, 0, 0)
    else {
        return;
    };
    // The helper's callback writes the path into the same scratch record: no
    // reference to it is held across the call.
    if (ret as i64) >= 0 {
        vma::mapped_file_path(ret);
    }
    send_record(ev);
}

/// Sends the record built in this CPU's scratch slot, as much of its path as
/// was filled.
#[inline(always)]
fn send_record(ev: *const MmapExitEvent) {
    // SAFETY: this CPU's scratch record, complete; no reference to it is live.
    let depth = unsafe { (*ev).depth } as usize;
    let len = MmapExitEvent::sent_len(depth);
    // SAFETY: `len` is at most the record's size: these bytes are the record's.
    let bytes = unsafe { core::slice::from_raw_parts(ev.cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}

// i386 syscall numbers (arch/x86/entry/syscalls/syscall_32.tbl), used by 32-bit
// processes and by `int $0x80` from 64-bit ones.
const NR32_OLD_MMAP: i64 = 90;
const NR32_MUNMAP: i64 = 91;
const NR32_MREMAP: i64 = 163;
const NR32_MMAP2: i64 = 192;
/// x86 `thread_info.status` bit: the syscall in progress is a 32-bit one.
const TS_COMPAT: u32 = 0x0002;

/// The 32-bit mapping call of a traced process a `raw_syscalls` record at
/// `ctx` is about, as (syscall number, tgid, tid); the number is at `id_off`.
#[inline(always)]
fn compat_mapping_call(ctx: &TracePointContext, id_off: u32) -> Option<(i64, u32, u32)> {
    // SAFETY: offsets of this tracepoint's record, from its tracefs format.
    let id = unsafe { ctx.read_at::<i64>(id_off as usize) }.unwrap_or(-1);
    if id != NR32_OLD_MMAP && id != NR32_MUNMAP && id != NR32_MREMAP && id != NR32_MMAP2 {
        return None;
    }
    if off!(ready) == 0 || !in_compat_syscall() {
        return None;
    }
    let (tgid, tid) = traced_current()?;
    Some((id, tgid, tid))
}

#[inline(always)]
fn in_compat_syscall() -> bool {
    crate::maps::current_task_field::<u32>(off!(task_ti_status)) & TS_COMPAT != 0
}

/// `raw_syscalls:sys_enter`, for 32-bit mmap, mmap2, munmap and mremap: sent as
/// the records of their 64-bit equivalents.
#[tracepoint]
pub fn raw_sys_enter(ctx: TracePointContext) -> u32 {
    let Some((id, tgid, tid)) = compat_mapping_call(&ctx, off!(raw_enter_id)) else {
        return 0;
    };
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        // SAFETY: as above; 32-bit arguments are the low halves.
        *a = unsafe { ctx.read_at::<u64>(off!(raw_enter_args) as usize + i * 8) }.unwrap_or(0)
            & 0xffff_ffff;
    }
    let kind = match id {
        NR32_OLD_MMAP => {
            // old_mmap(struct mmap_arg_struct __user *): six u32s in user memory.
            // SAFETY: bpf_probe_read_user checks the read.
            let Ok(user) = (unsafe { bpf_probe_read_user(args[0] as *const [u32; 6]) }) else {
                return 0;
            };
            for (a, u) in args.iter_mut().zip(user.iter()) {
                *a = *u as u64;
            }
            event_kind::MMAP_ENTER
        }
        NR32_MMAP2 => {
            args[5] <<= 12; // mmap2 takes its offset in pages
            event_kind::MMAP_ENTER
        }
        NR32_MUNMAP => event_kind::MUNMAP,
        _ => event_kind::MREMAP_ENTER,
    };
    let ev = SyscallEvent {
        header: event_header(kind, tgid, tid),
        args,
    };
    if EVENTS.output::<SyscallEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
    0
}

/// `raw_syscalls:sys_exit`, for the 32-bit calls `raw_sys_enter` reported.
#[tracepoint]
pub fn raw_sys_exit(ctx: TracePointContext) -> u32 {
    let Some((id, tgid, tid)) = compat_mapping_call(&ctx, off!(raw_exit_id)) else {
        return 0;
    };
    // SAFETY: the offset of `ret` in this tracepoint's record, from tracefs.
    let ret = unsafe { ctx.read_at::<u64>(off!(raw_exit_ret) as usize) }.unwrap_or(0);
    if id == NR32_MREMAP || id == NR32_MUNMAP {
        let kind = if id == NR32_MUNMAP {
            event_kind::MUNMAP_EXIT
        } else {
            event_kind::MREMAP_EXIT
        };
        let mut ev = SyscallEvent {
            header: event_header(kind, tgid, tid),
            args: [0; 6],
        };
        ev.args[0] = ret;
        if EVENTS.output::<SyscallEvent>(&ev, 0).is_err() {
            bump(counter::EVENTS_LOST);
        }
    } else {
        mmap_returned(tgid, tid, ret);
    }
    0
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MUNMAP, true);
    0
}

/// `do_mmap(file, addr, len, prot, flags, ...)` returned: its first five
/// arguments are the same in every signature since 5.4 (8 or 9 in all). Mappings
/// made by mmap syscalls are reported by the syscall records instead; userspace
/// keeps these for the ones made inside the kernel, like execve's.
#[fexit]
pub fn do_mmap_fexit(ctx: FExitContext) -> i32 {
    let Some((tgid, tid)) = traced_current() else {
        return 0;
    };
    let Ok(ret) = ctx.ret::<u64>() else {
        return 0;
    };
    if (ret as i64) < 0 {
        return 0;
    }
    let header = event_header(event_kind::KERNEL_MMAP, tgid, tid);
    let Some(ev) = start_record(header, ret, ctx.arg(2), ctx.arg(3), ctx.arg(4)) else {
        return 0;
    };
    // SAFETY: this CPU's scratch record, reached through this one reference.
    vma::walk_file(ctx.arg(0), unsafe { &mut *ev });
    send_record(ev);
    0
}

/// The mmap record being built in this CPU's scratch slot, path still empty.
/// A raw pointer: the path walk of bpf_find_vma's callback writes the same slot.
#[inline(always)]
fn start_record(
    header: EventHeader,
    ret: u64,
    len: u64,
    prot: u64,
    flags: u64,
) -> Option<*mut MmapExitEvent> {
    let ev = MMAP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; no reference to it is live.
    unsafe {
        (*ev).header = header;
        (*ev).ret = ret;
        (*ev).len = len;
        (*ev).prot = prot;
        (*ev).flags = flags;
        (*ev).depth = 0;
        (*ev).truncated = 0;
    }
    Some(ev)
}

/// do_mmap's arguments at entry, for the kretprobe flavour (a kretprobe has no
/// arguments). Deleted at return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DoMmapArgs {
    file: u64,
    len: u64,
    prot: u64,
    flags: u64,
}

#[map]
static DO_MMAP_ARGS: HashMap<u32, DoMmapArgs> = HashMap::with_max_entries(16384, 0);

/// The thread ends: a do_mmap call it had in progress never returns.
#[inline(always)]
pub fn forget(tid: u32) {
    let _ = DO_MMAP_ARGS.remove(tid);
}

#[kprobe]
pub fn do_mmap_kprobe(ctx: ProbeContext) -> u32 {
    let Some((_, tid)) = traced_current() else {
        return 0;
    };
    let args = DoMmapArgs {
        file: ctx.arg(0).unwrap_or(0),
        len: ctx.arg(2).unwrap_or(0),
        prot: ctx.arg(3).unwrap_or(0),
        flags: ctx.arg(4).unwrap_or(0),
    };
    if DO_MMAP_ARGS.insert(tid, args, 0).is_err() {
        bump(counter::MMAP_ARGS_FULL);
    }
    0
}

#[kretprobe]
pub fn do_mmap_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = traced_current() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { DO_MMAP_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = DO_MMAP_ARGS.remove(tid);
    let ret: u64 = ctx.ret();
    if (ret as i64) < 0 {
        return 0;
    }
    let header = event_header(event_kind::KERNEL_MMAP, tgid, tid);
    let Some(ev) = start_record(header, ret, args.len, args.prot, args.flags) else {
        return 0;
    };
    // SAFETY: this CPU's scratch record, reached through this one reference.
    vma::walk_file(args.file, unsafe { &mut *ev });
    send_record(ev);
    0
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MUNMAP_EXIT, false);
    0
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MREMAP_ENTER, true);
    0
}

#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MREMAP_EXIT, false);
    0
}

#[inline(always)]
fn send(ctx: &TracePointContext, kind: u32, enter: bool) {
    let Some((tgid, tid)) = traced_current() else {
        return;
    };
    if off!(ready) == 0 {
        return;
    }
    let mut ev = SyscallEvent {
        header: event_header(kind, tgid, tid),
        args: [0; 6],
    };
    // SAFETY: offsets of this tracepoint's record, from its tracefs format;
    // read_at checks each read.
    unsafe {
        if enter {
            let args = off!(syscall_args) as usize;
            for i in 0..6 {
                ev.args[i] = ctx.read_at::<u64>(args + i * 8).unwrap_or(0);
            }
        } else {
            ev.args[0] = ctx.read_at::<u64>(off!(syscall_ret) as usize).unwrap_or(0);
        }
    }
    if EVENTS.output::<SyscallEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}
