//! User call stacks of counted faults (`--stacks`): the stack is stored once in
//! the kernel's stack table and counted per fault row, so nothing per fault
//! crosses the ring buffer. Userspace reads both and names the frames.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuHashMap, StackTrace},
    programs::tracing::StackIdContext,
};
use rmaptrace_common::{counter, FaultKey, StackKey};

use crate::maps::bump;

/// Stacks by id, frame-pointer walks of the user stack taken by the kernel's
/// perf callchain code. Userspace sizes it, and sets its value size (the
/// depth walked) in the object before loading; a single entry without
/// `--stacks`.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// Faults per (row, stack), per CPU.
#[map]
pub static STACK_COUNTS: PerCpuHashMap<StackKey, u64> = PerCpuHashMap::with_max_entries(1, 0);

/// Counts the current fault's user stack on `row`.
#[inline(always)]
pub fn count<C: StackIdContext>(ctx: &C, row: &FaultKey) {
    const BPF_F_USER_STACK: u64 = 1 << 8;
    // Without BPF_F_REUSE_STACKID: a stack whose hash slot holds another one is
    // lost (and counted), never counted as that other stack.
    let Ok(id) = ctx.get_stackid(&STACKS, BPF_F_USER_STACK) else {
        bump(counter::STACK_LOST);
        return;
    };
    let key = StackKey {
        row: *row,
        stack_id: id as u32,
        _pad: 0,
    };
    let mut n = STACK_COUNTS.get_ptr_mut(key);
    if n.is_none() {
        // On the stack, written there: a constant's address would be one in
        // the object's read-only data, which the helper does not read as 0.
        let mut zero = 0u64;
        // SAFETY: a local, written through its own reference.
        unsafe { core::ptr::write_volatile(&mut zero, 0) };
        // Another CPU may insert the same key meanwhile: either way it is
        // there after this, unless the table is full.
        // The helper must read `zero` where it was written, not a copy the
        // compiler may fold back into a constant.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = STACK_COUNTS.insert(key, &zero, crate::aggregate::BPF_NOEXIST);
        n = STACK_COUNTS.get_ptr_mut(key);
    }
    match n {
        // SAFETY: this CPU's value of the row, reached through this one pointer.
        Some(n) => unsafe { *n += 1 },
        None => bump(counter::STACK_ROWS_FULL),
    }
}
