//! What kind of memory a VMA is, decided the way mm/ decides which code serves it.
use super::snapshot::Vma;
pub use rmaptrace_common::vm_flags::*;
use serde::Serialize;

const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;
const S_IFREG: u16 = 0o100000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `vm_ops == NULL`: heap, stack, private anonymous, private /dev/zero.
    Anon,
    /// shmem/tmpfs: shared anonymous, memfd, SysV shm.
    Shmem,
    /// Page-cache backed regular files.
    File,
    /// Any other `vm_ops->fault` provider or a VM_IO/VM_PFNMAP/VM_MIXEDMAP mapping.
    Driver,
    /// `[vdso]`, `[vvar]`, uprobes: special mappings without a file.
    Special,
    Hugetlb,
    /// The VMA could not be looked up at fault time.
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Anon => "anon",
            Kind::Shmem => "shmem",
            Kind::File => "file",
            Kind::Driver => "driver",
            Kind::Special => "special",
            Kind::Hugetlb => "hugetlb",
            Kind::Unknown => "unknown",
        }
    }
}

/// Classifies a VMA from what the kernel said about it and the name of its
/// `vm_ops->fault` handler (None when the handler is absent or unnamed).
pub fn classify(info: &Vma, handler: Option<&str>) -> Kind {
    if info.vm_flags & VM_HUGETLB != 0 {
        return Kind::Hugetlb;
    }
    // The kernel's own test (vma_is_anonymous): private /dev/zero lands here too,
    // with vm_file still set.
    if !info.has_ops {
        return Kind::Anon;
    }
    match handler {
        Some("shmem_fault" | "shm_fault") => return Kind::Shmem,
        Some("special_mapping_fault" | "vvar_fault" | "vdso_fault") => return Kind::Special,
        Some(h) if h == "filemap_fault" || h.ends_with("_filemap_fault") => return Kind::File,
        _ => {}
    }
    if info.vm_flags & (VM_IO | VM_PFNMAP | VM_MIXEDMAP) != 0 {
        return Kind::Driver;
    }
    if !info.has_file() {
        return Kind::Special;
    }
    if info.i_mode() & S_IFMT == S_IFCHR {
        return Kind::Driver;
    }
    match handler {
        // A regular file whose filesystem has no fault handler of its own name.
        None if info.i_mode() & S_IFMT == S_IFREG => Kind::File,
        // secretmem_fault, kvm_vcpu_fault, a module's handler...
        _ => Kind::Driver,
    }
}

/// `rw-p` style permissions from vm_flags, as in /proc/PID/maps.
pub fn prot_string(vm_flags: u64) -> String {
    let mut s = String::with_capacity(4);
    s.push(if vm_flags & VM_READ != 0 { 'r' } else { '-' });
    s.push(if vm_flags & VM_WRITE != 0 { 'w' } else { '-' });
    s.push(if vm_flags & VM_EXEC != 0 { 'x' } else { '-' });
    s.push(if vm_flags & VM_SHARED != 0 { 's' } else { 'p' });
    s
}

/// The device number of a char-device mapping, as `major:minor`.
pub fn char_device(info: &Vma) -> Option<String> {
    if info.i_mode() & S_IFMT == S_IFCHR {
        // The kernel's internal dev_t: 12 bits major, 20 bits minor.
        Some(format!("{}:{}", info.rdev() >> 20, info.rdev() & 0xfffff))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{FileMeta, MappedFile};

    fn vma(vm_ops: u64, file: u64, i_mode: u16, vm_flags: u64) -> Vma {
        Vma {
            has_ops: vm_ops != 0,
            file: (file != 0).then(|| {
                MappedFile::new(FileMeta {
                    i_mode,
                    ..Default::default()
                })
            }),
            vm_flags,
            ..Default::default()
        }
    }

    #[test]
    fn anonymous_is_vm_ops_null_even_with_a_file() {
        assert_eq!(
            classify(&vma(0, 0, 0, VM_READ | VM_WRITE), None),
            Kind::Anon
        );
        // private /dev/zero: vm_file stays set, vm_ops cleared
        assert_eq!(classify(&vma(0, 1, S_IFCHR, 0), None), Kind::Anon);
    }

    #[test]
    fn handlers_decide_the_common_kinds() {
        let reg = vma(1, 1, S_IFREG | 0o644, VM_SHARED);
        assert_eq!(classify(&reg, Some("shmem_fault")), Kind::Shmem);
        assert_eq!(classify(&reg, Some("shm_fault")), Kind::Shmem);
        assert_eq!(classify(&reg, Some("filemap_fault")), Kind::File);
        assert_eq!(classify(&reg, Some("xfs_filemap_fault")), Kind::File);
        assert_eq!(classify(&reg, Some("secretmem_fault")), Kind::Driver);
        assert_eq!(classify(&reg, None), Kind::File);
        assert_eq!(
            classify(&vma(1, 0, 0, 0), Some("special_mapping_fault")),
            Kind::Special
        );
        assert_eq!(classify(&vma(1, 0, 0, 0), None), Kind::Special);
    }

    #[test]
    fn drivers_by_handler_flags_or_char_device() {
        // KVM vCPU: an anon inode, no S_IFCHR bit, named handler
        assert_eq!(
            classify(&vma(1, 1, 0, VM_SHARED), Some("kvm_vcpu_fault")),
            Kind::Driver
        );
        // remap_pfn_range: no handler, VM_IO|VM_PFNMAP
        assert_eq!(
            classify(&vma(1, 1, S_IFCHR, VM_IO | VM_PFNMAP), None),
            Kind::Driver
        );
        assert_eq!(
            classify(&vma(1, 1, S_IFCHR, 0), Some("rmapdemo_fault")),
            Kind::Driver
        );
        assert_eq!(
            classify(&vma(1, 1, S_IFREG, VM_HUGETLB), None),
            Kind::Hugetlb
        );
    }

    #[test]
    fn prot_and_device() {
        assert_eq!(prot_string(VM_READ | VM_WRITE), "rw-p");
        assert_eq!(prot_string(VM_READ | VM_EXEC | VM_SHARED), "r-xs");
        let dev = Vma {
            file: Some(MappedFile::new(FileMeta {
                i_mode: S_IFCHR,
                rdev: (10 << 20) | 232,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(char_device(&dev).as_deref(), Some("10:232"));
        assert_eq!(char_device(&Vma::default()), None);
    }
}
