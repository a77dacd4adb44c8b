//! Where mappings come from: mmap, munmap and mremap of traced processes, as the
//! syscall tracepoints see them. Entry and exit are sent as separate records and
//! paired by thread id in userspace, which keeps these programs free of state.
use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use rmaptrace_common::{counter, event_kind, EventHeader, MmapExitEvent, SyscallEvent};

use crate::{
    maps::{bump, bump_map_gen, event_header, offsets, traced_current, EVENTS},
    vma,
};

pub(crate) fn scratch() -> Option<*mut MmapExitEvent> {
    MMAP_SCRATCH.get_ptr_mut(0)
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
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
    let o = offsets();
    if o.ready == 0 {
        return 0;
    }
    let ret = unsafe { ctx.read_at::<u64>(o.syscall_ret as usize) }.unwrap_or(0);
    bump_map_gen(tgid);
    // The syscall's arguments came in its entry record.
    let Some(ev) = start_record(event_header(event_kind::MMAP_EXIT, tgid, tid), ret, 0, 0, 0)
    else {
        return 0;
    };
    if (ret as i64) >= 0 {
        vma::mapped_file_path(ret);
    }
    if EVENTS.output::<MmapExitEvent>(ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
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
    vma::walk_file(ctx.arg(0), ev);
    if EVENTS.output::<MmapExitEvent>(ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
    0
}

/// The mmap record being built in this CPU's scratch slot, path still empty.
#[inline(always)]
fn start_record(
    header: EventHeader,
    ret: u64,
    len: u64,
    prot: u64,
    flags: u64,
) -> Option<&'static mut MmapExitEvent> {
    let ev = unsafe { &mut *MMAP_SCRATCH.get_ptr_mut(0)? };
    ev.header = header;
    ev.ret = ret;
    ev.len = len;
    ev.prot = prot;
    ev.flags = flags;
    ev.depth = 0;
    ev.truncated = 0;
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
        bump(counter::INFLIGHT_FULL);
    }
    0
}

#[kretprobe]
pub fn do_mmap_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid)) = traced_current() else {
        return 0;
    };
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
    vma::walk_file(args.file, ev);
    if EVENTS.output::<MmapExitEvent>(ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
    0
}

/// Attached to the exit of every syscall that can change a process's mappings
/// (munmap, mremap, mprotect, brk, madvise, mlock...): invalidates the VMA caches.
#[tracepoint]
pub fn sys_exit_map_change(_ctx: TracePointContext) -> u32 {
    if let Some((tgid, _)) = traced_current() {
        bump_map_gen(tgid);
    }
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
    let o = offsets();
    if o.ready == 0 {
        return;
    }
    let mut ev = SyscallEvent {
        header: event_header(kind, tgid, tid),
        args: [0; 6],
    };
    unsafe {
        if enter {
            let args = o.syscall_args as usize;
            for i in 0..6 {
                ev.args[i] = ctx.read_at::<u64>(args + i * 8).unwrap_or(0);
            }
        } else {
            ev.args[0] = ctx.read_at::<u64>(o.syscall_ret as usize).unwrap_or(0);
        }
    }
    if EVENTS.output::<SyscallEvent>(&ev, 0).is_err() {
        bump(counter::EVENTS_LOST);
    }
}
