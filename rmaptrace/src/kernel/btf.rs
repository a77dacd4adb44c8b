//! Struct field offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read kernel structs at offsets
//! computed here and passed in as a global. Fields inside anonymous structs and unions
//! (vm_area_struct's vm_start and vm_flags are, since 6.x) are found by descending
//! into unnamed members and adding their offsets.
use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use rmaptrace_common::KernelOffsets;
use std::path::Path;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_file(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).map_err(|e| anyhow!("{e}"))?;
        Ok(Self { btf })
    }

    fn strip(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match ty {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let bt = ty.as_btf_type().expect("chained type");
                    self.btf
                        .resolve_chained_type(bt)
                        .map_err(|e| anyhow!("{e}"))?
                }
                other => return Ok(other),
            };
        }
    }

    fn struct_named(&self, name: &str) -> Result<btf_rs::Struct> {
        for ty in self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("struct {name} is not in the kernel's BTF"))?
        {
            if let Type::Struct(s) = ty {
                if !s.members.is_empty() {
                    return Ok(s);
                }
            }
        }
        bail!("struct {name} is not in the kernel's BTF")
    }

    /// Byte offset of `field` in `st`, searching unnamed members recursively.
    fn find_in(&self, st: &btf_rs::Struct, field: &str) -> Result<Option<(u32, Type)>> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = m.bit_offset();
            if name == field {
                let ty = self
                    .btf
                    .resolve_chained_type(m)
                    .map_err(|e| anyhow!("{e}"))?;
                return Ok(Some((bits / 8, ty)));
            }
            if name.is_empty() {
                let ty = self.strip(
                    self.btf
                        .resolve_chained_type(m)
                        .map_err(|e| anyhow!("{e}"))?,
                )?;
                if let Type::Struct(inner) | Type::Union(inner) = ty {
                    if let Some((off, t)) = self.find_in(&inner, field)? {
                        return Ok(Some((bits / 8 + off, t)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Offset of a dotted path such as `f_path.dentry` inside `struct name`.
    pub fn offset_of(&self, name: &str, path: &str) -> Result<u32> {
        let mut st = self.struct_named(name)?;
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, ty) = self
                .find_in(&st, part)?
                .ok_or_else(|| anyhow!("struct {name} has no field {path} in this kernel"))?;
            total += off;
            if i + 1 < parts.len() {
                match self.strip(ty)? {
                    Type::Struct(s) | Type::Union(s) => st = s,
                    _ => bail!("{name}.{path}: {part} is not a struct"),
                }
            }
        }
        Ok(total)
    }

    /// Value of `member` of `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Result<u32> {
        for ty in self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("enum {name} is not in the kernel's BTF"))?
        {
            if let Type::Enum(e) = ty {
                for m in &e.members {
                    if self.btf.resolve_name(m).ok().as_deref() == Some(member) {
                        return Ok(m.val());
                    }
                }
            }
        }
        bail!("enum {name} has no {member} in this kernel")
    }

    /// Whether the kernel's BTF has a function of that name: fentry needs it, and
    /// a function the compiler inlined everywhere has none.
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|tys| tys.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// Every offset the eBPF programs need; syscall record offsets come from tracefs.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        let o = |s: &str, f: &str| {
            self.offset_of(s, f)
                .with_context(|| format!("reading {s}.{f} from the kernel's BTF"))
        };
        // Per-VMA locks (6.4+) give each VMA a write-lock sequence number.
        let lock_seq = self.offset_of("vm_area_struct", "vm_lock_seq").ok();
        // A seqcount since 6.13, a plain int from 6.4.
        let seqcount = self.offset_of("mm_struct", "mm_lock_seq.sequence").ok();
        let mm_lock_seq = seqcount.or_else(|| self.offset_of("mm_struct", "mm_lock_seq").ok());
        let lock_seq = lock_seq.filter(|_| mm_lock_seq.is_some());
        // The VMA tree (maple tree, 6.1+), walked without mmap_lock: validated by
        // vm_lock_seq where VMAs have it, and stable anyway before 6.4, where a
        // fault completes holding mmap_lock for read.
        let maple = (|| -> Result<[u32; 8]> {
            Ok([
                self.offset_of("mm_struct", "mm_mt.ma_root")?,
                self.offset_of("maple_range_64", "pivot")?,
                self.offset_of("maple_range_64", "slot")?,
                self.offset_of("maple_arange_64", "pivot")?,
                self.offset_of("maple_arange_64", "slot")?,
                self.enum_value("maple_type", "maple_leaf_64")?,
                self.enum_value("maple_type", "maple_range_64")?,
                self.enum_value("maple_type", "maple_arange_64")?,
            ])
        })()
        .ok();
        let [mm_mt_root, mr64_pivot, mr64_slot, ma64_pivot, ma64_slot, maple_leaf_64, maple_range_64, maple_arange_64] =
            maple.unwrap_or([0; 8]);
        // The fault flags and results are enums the BTF names (5.x on); where
        // one is missing, the value it has had since then.
        let from_enum = |name: &'static str| {
            move |member: &str, stable: u32| {
                self.enum_value(name, member).unwrap_or_else(|e| {
                    log::debug!("{e:#}: taking {member} as {stable:#x}");
                    stable
                })
            }
        };
        let (flag, reason) = (from_enum("fault_flag"), from_enum("vm_fault_reason"));
        let vma_size = self.struct_named("vm_area_struct")?.size() as u32;
        let kmem_cache = (|| -> Result<(u32, u32)> {
            Ok((
                self.offset_of("kmem_cache", "object_size")?,
                self.offset_of("kmem_cache", "name")?,
            ))
        })()
        .ok();
        Ok(KernelOffsets {
            vma_vm_mm: o("vm_area_struct", "vm_mm")?,
            // Read either way (see VmaInfo::lock_seq): any valid offset will do.
            vma_vm_lock_seq: lock_seq.map_or_else(|| o("vm_area_struct", "vm_start"), Ok)?,
            has_vm_lock_seq: lock_seq.is_some() as u32,
            mm_lock_seq: mm_lock_seq.unwrap_or(0),
            mm_lock_seqcount: (seqcount.is_some() && lock_seq.is_some()) as u32,
            // 0 (no walk) where the kernel has no maple tree or no vm_lock_seq.
            mm_mt_root,
            mr64_pivot,
            mr64_slot,
            ma64_pivot,
            ma64_slot,
            maple_leaf_64,
            maple_range_64,
            maple_arange_64,
            task_pid: o("task_struct", "pid")?,
            task_signal: o("task_struct", "signal")?,
            signal_live: o("signal_struct", "live")?,
            task_group_leader: o("task_struct", "group_leader")?,
            task_start_time: o("task_struct", "start_time")?,
            task_pagefault_disabled: o("task_struct", "pagefault_disabled")?,
            vma_anon_vma: o("vm_area_struct", "anon_vma")?,
            task_mm: o("task_struct", "mm")?,
            // x86 keeps thread_info inside task_struct; without it, no 32-bit
            // syscall is recognised (the raw_syscalls hooks stay off).
            task_ti_status: self
                .offset_of("task_struct", "thread_info.status")
                .unwrap_or(0),
            mmap_lock_mm: 0,
            mmap_lock_write: 0,
            mmap_lock_success: 0,
            raw_enter_id: 0,
            raw_enter_args: 0,
            raw_exit_id: 0,
            raw_exit_ret: 0,
            vma_vm_start: o("vm_area_struct", "vm_start")?,
            vma_vm_end: o("vm_area_struct", "vm_end")?,
            vma_vm_flags: o("vm_area_struct", "vm_flags")?,
            vma_vm_ops: o("vm_area_struct", "vm_ops")?,
            vma_vm_file: o("vm_area_struct", "vm_file")?,
            vma_vm_pgoff: o("vm_area_struct", "vm_pgoff")?,
            vm_ops_fault: o("vm_operations_struct", "fault")?,
            vm_ops_huge_fault: o("vm_operations_struct", "huge_fault")?,
            file_f_inode: o("file", "f_inode")?,
            file_f_op: o("file", "f_op")?,
            fops_mmap: o("file_operations", "mmap")?,
            fops_mmap_prepare: o("file_operations", "mmap_prepare")
                .or_else(|_| o("file_operations", "mmap"))?,
            file_dentry: o("file", "f_path.dentry")?,
            dentry_name: o("dentry", "d_name.name")?,
            dentry_parent: o("dentry", "d_parent")?,
            file_vfsmount: o("file", "f_path.mnt")?,
            mount_mnt: o("mount", "mnt")?,
            mount_parent: o("mount", "mnt_parent")?,
            mount_mountpoint: o("mount", "mnt_mountpoint")?,
            inode_i_mode: o("inode", "i_mode")?,
            inode_i_rdev: o("inode", "i_rdev")?,
            inode_i_ino: o("inode", "i_ino")?,
            task_tgid: o("task_struct", "tgid")?,
            task_min_flt: o("task_struct", "min_flt")?,
            task_maj_flt: o("task_struct", "maj_flt")?,
            syscall_args: 0,
            syscall_ret: 0,
            fault_flag_write: flag("FAULT_FLAG_WRITE", 1 << 0),
            fault_flag_tried: flag("FAULT_FLAG_TRIED", 1 << 5),
            fault_flag_user: flag("FAULT_FLAG_USER", 1 << 6),
            fault_flag_instruction: flag("FAULT_FLAG_INSTRUCTION", 1 << 8),
            vm_fault_major: reason("VM_FAULT_MAJOR", 0x4),
            vm_fault_retry: reason("VM_FAULT_RETRY", 0x400),
            vm_fault_fallback: reason("VM_FAULT_FALLBACK", 0x800),
            // include/linux/mm_types.h's VM_FAULT_ERROR.
            vm_fault_error: [
                ("VM_FAULT_OOM", 0x1),
                ("VM_FAULT_SIGBUS", 0x2),
                ("VM_FAULT_SIGSEGV", 0x40),
                ("VM_FAULT_HWPOISON", 0x10),
                ("VM_FAULT_HWPOISON_LARGE", 0x20),
                ("VM_FAULT_FALLBACK", 0x800),
            ]
            .iter()
            .fold(0, |all, (name, v)| all | reason(name, *v)),
            // 0 (VMA structs freed go unnoticed) where either is missing.
            vma_size: kmem_cache.map_or(0, |_| vma_size),
            kmem_cache_object_size: kmem_cache.map_or(0, |k| k.0),
            kmem_cache_name: kmem_cache.map_or(0, |k| k.1),
            ready: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Runs against this machine's kernel when it has BTF; the layout itself is not
    // asserted (it differs by kernel), only that the lookups agree with each other.
    #[test]
    fn offsets_from_running_kernel_are_consistent() {
        // Every kernel rmaptrace supports has BTF: without it this fails.
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF))
            .expect("rmaptrace needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF)");
        let o = btf.kernel_offsets().unwrap();
        assert_eq!(o.vma_vm_end, o.vma_vm_start + 8, "vm_end follows vm_start");
        assert!(o.vma_vm_ops > o.vma_vm_end);
        assert!(btf.offset_of("vm_area_struct", "no_such_field").is_err());
        assert!(
            btf.has_function("handle_mm_fault"),
            "exported, never inlined"
        );
        assert!(!btf.has_function("no_such_function_rmaptrace"));
        // Read from the BTF's enums, not taken from constants here.
        assert_eq!(btf.enum_value("fault_flag", "FAULT_FLAG_WRITE").unwrap(), 1);
        assert_eq!(o.fault_flag_write, 1);
        assert_eq!(o.vm_fault_retry, 0x400);
        assert_eq!(o.vm_fault_error, 0x1 | 0x2 | 0x40 | 0x10 | 0x20 | 0x800);
    }
}
