//! A VMA's `vm_flags` by their names in include/linux/mm.h. They are
//! preprocessor constants, so the kernel's BTF does not carry them; the low 32
//! bits have kept these values since 5.7 (0x800, VM_DENYWRITE until 5.15, is
//! unused since). The high bits depend on the architecture, the version and
//! the configuration (protection keys, shadow stacks, sealing): they are shown
//! as numbers rather than guessed.
const NAMED: [(u64, &str); 31] = [
    (0x1, "VM_READ"),
    (0x2, "VM_WRITE"),
    (0x4, "VM_EXEC"),
    (0x8, "VM_SHARED"),
    (0x10, "VM_MAYREAD"),
    (0x20, "VM_MAYWRITE"),
    (0x40, "VM_MAYEXEC"),
    (0x80, "VM_MAYSHARE"),
    (0x100, "VM_GROWSDOWN"),
    (0x200, "VM_UFFD_MISSING"),
    (0x400, "VM_PFNMAP"),
    (0x1000, "VM_UFFD_WP"),
    (0x2000, "VM_LOCKED"),
    (0x4000, "VM_IO"),
    (0x8000, "VM_SEQ_READ"),
    (0x10000, "VM_RAND_READ"),
    (0x20000, "VM_DONTCOPY"),
    (0x40000, "VM_DONTEXPAND"),
    (0x80000, "VM_LOCKONFAULT"),
    (0x100000, "VM_ACCOUNT"),
    (0x200000, "VM_NORESERVE"),
    (0x400000, "VM_HUGETLB"),
    (0x800000, "VM_SYNC"),
    // VM_ARCH_1: x86's page attribute table mapping (track_pfn_remap).
    (
        0x1000000,
        if cfg!(target_arch = "x86_64") {
            "VM_PAT"
        } else {
            "VM_ARCH_1"
        },
    ),
    (0x2000000, "VM_WIPEONFORK"),
    (0x4000000, "VM_DONTDUMP"),
    (0x8000000, "VM_SOFTDIRTY"),
    (0x10000000, "VM_MIXEDMAP"),
    (0x20000000, "VM_HUGEPAGE"),
    (0x40000000, "VM_NOHUGEPAGE"),
    (0x80000000, "VM_MERGEABLE"),
];

/// The names of the flags set, lowest bit first; a bit without a name here
/// as its value (`0x100000000`).
pub fn names(vm_flags: u64) -> Vec<std::borrow::Cow<'static, str>> {
    let mut out = Vec::new();
    let mut rest = vm_flags;
    for (bit, name) in NAMED {
        if vm_flags & bit != 0 {
            out.push(name.into());
            rest &= !bit;
        }
    }
    while rest != 0 {
        let bit = rest & rest.wrapping_neg();
        out.push(format!("{bit:#x}").into());
        rest &= !bit;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_mapping_reads_as_its_flags() {
        // remap_pfn_range on a MAP_SHARED rw mapping.
        let f = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x80 | 0x400 | 0x4000 | 0x40000 | 0x4000000;
        assert_eq!(
            names(f),
            [
                "VM_READ",
                "VM_WRITE",
                "VM_SHARED",
                "VM_MAYREAD",
                "VM_MAYWRITE",
                "VM_MAYSHARE",
                "VM_PFNMAP",
                "VM_IO",
                "VM_DONTEXPAND",
                "VM_DONTDUMP"
            ]
        );
        assert_eq!(names(0x800 | (1 << 40)), ["0x800", "0x10000000000"]);
        assert!(names(0).is_empty());
    }
}
