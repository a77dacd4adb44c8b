//! Names kernel text addresses from /proc/kallsyms, modules included, so a VMA's
//! `vm_ops->fault` pointer becomes `shmem_fault` or `kvm_vcpu_fault [kvm]`.
//! A handler's address is taken for the ops table, so it always has a symbol.
use std::collections::HashMap;
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// Module name for symbols of loadable modules, None for vmlinux.
    pub module: Option<String>,
}

#[derive(Default)]
pub struct Kallsyms {
    /// Text symbols sorted by address.
    text: Vec<(u64, Symbol)>,
    /// How often each name occurs: kallsyms has duplicates (two `do_fault` in
    /// Debian's 6.1, one an IOMMU driver's), and a kprobe by name must be unique.
    name_count: HashMap<String, u32>,
}

impl Kallsyms {
    pub fn load() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/kallsyms")?))
    }

    pub fn parse(text: &str) -> Self {
        let mut syms = Self::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            *syms.name_count.entry(name.to_string()).or_default() += 1;
            syms.text.push((
                addr,
                Symbol {
                    name: name.to_string(),
                    module,
                },
            ));
        }
        syms.text.sort_by_key(|(a, _)| *a);
        syms
    }

    /// Whether kallsyms is readable with real addresses (kptr_restrict zeroes them).
    pub fn has_addresses(&self) -> bool {
        self.text.iter().any(|(a, _)| *a != 0)
    }

    /// The symbol that starts exactly at `addr`: function pointers point at starts.
    pub fn exact(&self, addr: u64) -> Option<&Symbol> {
        if addr == 0 {
            return None;
        }
        let i = self.text.partition_point(|(a, _)| *a < addr);
        self.text.get(i).filter(|(a, _)| *a == addr).map(|(_, s)| s)
    }

    /// How many text symbols carry this name (0: absent or inlined everywhere).
    pub fn count(&self, name: &str) -> u32 {
        self.name_count.get(name).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff815a71c0 T filemap_fault
ffffffff815cdc10 t shmem_fault
ffffffff815cdc10 d not_text
ffffffffc0a01000 t rmapdemo_fault\t[rmapdemo]
ffffffff81234000 t do_fault
ffffffffc0b00000 t do_fault\t[amd_iommu]
";

    #[test]
    fn names_handlers_with_their_module() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.exact(0xffffffff815cdc10).unwrap().name, "shmem_fault");
        let demo = k.exact(0xffffffffc0a01000).unwrap();
        assert_eq!(demo.name, "rmapdemo_fault");
        assert_eq!(demo.module.as_deref(), Some("rmapdemo"));
        assert_eq!(k.exact(0xffffffff815a71c1), None, "not a function start");
        assert_eq!(k.exact(0), None);
        assert_eq!(k.count("do_fault"), 2, "ambiguous: not attachable by name");
        assert_eq!(k.count("not_text"), 0);
        assert!(k.has_addresses());
    }
}
