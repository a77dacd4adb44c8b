//! rmaptrace's kernel side: small programs that record what userspace cannot see.
//!
//! | file        | hooks                                              | job |
//! |-------------|----------------------------------------------------|-----|
//! | `fault_tp.rs` | `exceptions:page_fault_{user,kernel}` (tp_btf), perf `PAGE_FAULTS_{MIN,MAJ}`, `mmap_lock` writes | the tracepoint backend: fault entry, completion, latency, VMA cache |
//! | `count_at_entry.rs` | `exceptions:page_fault_{user,kernel}` (tp_btf), perf `PAGE_FAULTS_MAJ`, sampled `PAGE_FAULTS_MIN`, `mmap_lock:mmap_lock_acquire_returned` | the tracepoint backend's default on 6.4+: counts at the entry, settles at the completion or the thread's next fault, places a fault whose VMA was being changed once it holds mmap_lock |
//! | `fault_kfunc.rs` | fentry/fexit or kprobe/kretprobe on `handle_mm_fault`, `__do_fault`, `do_*` | the kernel-function backends: counts, observed paths, handler time |
//! | `aggregate.rs` | (called by both backends) | per-VMA counts, latency histograms, per-process totals, fault records |
//! | `vma.rs`    | `bpf_find_vma` callback                            | describe the faulting VMA from BTF offsets |
//! | `life.rs`   | (called when a VMA is looked up), `kmem:kmem_cache_free` (tp_btf) | number mapping lifetimes; forget a VMA struct when it is freed |
//! | `mmap.rs`   | `syscalls:sys_{enter,exit}_{mmap,munmap,mremap}`, `raw_syscalls` (32-bit) | where each mapping came from |
//! | `anon_vma.rs` | fexit or kprobe/kretprobe on `__anon_vma_prepare`, `anon_vma_fork`, `anon_vma_clone` | when each VMA's anon_vma was made, and by what |
//! | `prefill.rs` | fentry/fexit or kprobe/kretprobe on `remap_pfn_range`, `vm_insert_page(s)` | pages an mmap handler installs itself |
//! | `stacks.rs` | (called by `aggregate.rs` with `--stacks`)        | the user stack of each counted fault, counted per row |
//! | `task.rs`   | `sched_process_{fork,exec,exit}` (tp_btf)          | follow children, names, the kernel's own fault counters |
//!
//! Everything that can be decided in userspace is: these programs only count and copy.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod aggregate;
#[cfg(target_arch = "bpf")]
mod anon_vma;
#[cfg(target_arch = "bpf")]
mod count_at_entry;
#[cfg(target_arch = "bpf")]
mod fault_kfunc;
#[cfg(target_arch = "bpf")]
mod fault_tp;
#[cfg(target_arch = "bpf")]
mod life;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod mmap;
#[cfg(target_arch = "bpf")]
mod prefill;
#[cfg(target_arch = "bpf")]
mod stacks;
#[cfg(target_arch = "bpf")]
mod task;
#[cfg(target_arch = "bpf")]
mod vma;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// On the host this crate is only a build dependency of `rmaptrace` (see its build.rs).
#[cfg(not(target_arch = "bpf"))]
fn main() {}
