//! Where mappings come from: mmap, munmap and mremap of traced processes, as the
//! syscall tracepoints see them. Entry and exit are sent as separate records and
//! paired by thread id in userspace, which keeps these programs free of state.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext,
};
use rmaptrace_common::{counter, event_kind, EventHeader, SyscallEvent};

use crate::maps::{bump, offsets, traced_current, EVENTS};

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MMAP_ENTER, true);
    0
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MMAP_EXIT, false);
    0
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    send(&ctx, event_kind::MUNMAP, true);
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
        header: EventHeader {
            kind,
            tgid,
            tid,
            _pad: 0,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
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
