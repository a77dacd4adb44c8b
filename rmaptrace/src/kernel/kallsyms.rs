//! Names kernel text addresses from /proc/kallsyms, modules included, so a VMA's
//! `vm_ops->fault` pointer becomes `shmem_fault` or `kvm_vcpu_fault [kvm]`.
//! A handler's address is taken for the ops table, so it always has a symbol.
//!
//! Only function symbols are kept, in one name buffer with a 16-byte entry each:
//! a 6.x kernel has over 100k of them, and a String per name cost 16 MB for as
//! long as the trace runs.
use std::io::BufRead;

/// A function symbol: its name and, for a loadable module's, the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub name: &'a str,
    /// Module name for symbols of loadable modules, None for vmlinux.
    pub module: Option<&'a str>,
}

/// Where a name lies in the name buffer, and its module (an index into the
/// module list, NO_MODULE for vmlinux).
#[derive(Clone, Copy)]
struct Entry {
    addr: u64,
    name_at: u32,
    name_len: u16,
    module: u16,
}

const NO_MODULE: u16 = u16::MAX;

#[derive(Default)]
pub struct Kallsyms {
    /// Function symbols sorted by address.
    text: Vec<Entry>,
    names: String,
    modules: Vec<String>,
    /// Whether the file showed real addresses (kptr_restrict zeroes them).
    readable: bool,
}

impl Kallsyms {
    pub fn load() -> std::io::Result<Self> {
        Self::read(Self::open()?)
    }

    /// Only the symbols at `wanted` (sorted): a trace names the few handlers
    /// it meets and keeps nothing else, where the whole table is ~5 MB.
    pub fn load_only(wanted: &[u64]) -> std::io::Result<Self> {
        Self::read_only(Self::open()?, wanted)
    }

    fn open() -> std::io::Result<impl BufRead> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Ok(std::io::BufReader::with_capacity(1 << 16, file))
    }

    /// Parses kallsyms line by line, as bytes (the whole file is ~10 MB).
    pub fn read(input: impl BufRead) -> std::io::Result<Self> {
        Self::read_with(input, |_| true)
    }

    /// [`Self::read`], keeping only the symbols at `wanted` (sorted).
    pub fn read_only(input: impl BufRead, wanted: &[u64]) -> std::io::Result<Self> {
        Self::read_with(input, |addr| wanted.binary_search(&addr).is_ok())
    }

    fn read_with(mut input: impl BufRead, keep: impl Fn(u64) -> bool) -> std::io::Result<Self> {
        let mut syms = Self::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            syms.add_line(&line, &keep);
        }
        syms.text.sort_by_key(|e| e.addr);
        syms.text.shrink_to_fit();
        syms.names.shrink_to_fit();
        Ok(syms)
    }

    #[cfg(test)]
    pub fn parse(text: &str) -> Self {
        Self::read(text.as_bytes()).expect("reading from memory")
    }

    fn add_line(&mut self, line: &[u8], keep: impl Fn(u64) -> bool) {
        let mut it = line
            .split(|c| c.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            return;
        };
        if !matches!(kind, b"t" | b"T" | b"w" | b"W") {
            return;
        }
        let (Ok(addr), Ok(name)) = (
            std::str::from_utf8(addr).map(|a| u64::from_str_radix(a, 16)),
            std::str::from_utf8(name),
        ) else {
            return;
        };
        let Ok(addr) = addr else { return };
        self.readable |= addr != 0;
        if !keep(addr) {
            return;
        }
        let (Ok(name_at), Ok(name_len)) =
            (u32::try_from(self.names.len()), u16::try_from(name.len()))
        else {
            return;
        };
        let module = match it.next().map(|m| m.strip_prefix(b"[").unwrap_or(m)) {
            Some(m) => {
                let m = String::from_utf8_lossy(m.strip_suffix(b"]").unwrap_or(m));
                match self.modules.iter().rposition(|known| *known == m) {
                    Some(i) => i as u16,
                    None if self.modules.len() < NO_MODULE as usize => {
                        self.modules.push(m.into_owned());
                        (self.modules.len() - 1) as u16
                    }
                    None => return,
                }
            }
            None => NO_MODULE,
        };
        self.names.push_str(name);
        self.text.push(Entry {
            addr,
            name_at,
            name_len,
            module,
        });
    }

    fn symbol(&self, e: &Entry) -> Symbol<'_> {
        let at = e.name_at as usize;
        Symbol {
            name: &self.names[at..at + e.name_len as usize],
            module: self.modules.get(e.module as usize).map(String::as_str),
        }
    }

    /// Whether kallsyms is readable with real addresses (kptr_restrict zeroes them).
    pub fn has_addresses(&self) -> bool {
        self.readable
    }

    /// The same readability, without the symbols: what a trace starts from
    /// once the probes, which needed them all, are attached.
    pub fn emptied(self) -> Self {
        Self {
            readable: self.readable,
            ..Self::default()
        }
    }

    /// The addresses of the symbols held, in order.
    pub fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.text.iter().map(|e| e.addr)
    }

    /// The symbol that starts exactly at `addr`: function pointers point at starts.
    pub fn exact(&self, addr: u64) -> Option<Symbol<'_>> {
        if addr == 0 {
            return None;
        }
        let i = self.text.partition_point(|e| e.addr < addr);
        self.text
            .get(i)
            .filter(|e| e.addr == addr)
            .map(|e| self.symbol(e))
    }

    /// The address of the kernel's (not a module's) function of this name,
    /// where it is the only one and kallsyms shows addresses.
    pub fn kernel_function(&self, name: &str) -> Option<u64> {
        let mut found = self.text.iter().filter(|e| self.symbol(e).name == name);
        match (found.next(), found.next()) {
            (Some(e), None) if e.module == NO_MODULE && e.addr != 0 => Some(e.addr),
            _ => None,
        }
    }

    /// How many text symbols carry this name (0: absent or inlined everywhere):
    /// kallsyms has duplicates (two `do_fault` in Debian's 6.1, one an IOMMU
    /// driver's), and a kprobe by name must be unique. Asked only while
    /// choosing the probes, so a scan is cheaper than an index kept all along.
    pub fn count(&self, name: &str) -> u32 {
        self.text
            .iter()
            .filter(|e| self.symbol(e).name == name)
            .count() as u32
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
        assert_eq!(k.exact(0xffffffff815cdc10).unwrap().module, None);
        let demo = k.exact(0xffffffffc0a01000).unwrap();
        assert_eq!(demo.name, "rmapdemo_fault");
        assert_eq!(demo.module, Some("rmapdemo"));
        assert_eq!(k.exact(0xffffffff815a71c1), None, "not a function start");
        assert_eq!(k.exact(0), None);
        assert_eq!(k.count("do_fault"), 2, "ambiguous: not attachable by name");
        assert_eq!(k.count("not_text"), 0);
        assert!(k.has_addresses());
    }

    #[test]
    fn finds_a_kernel_function_only_where_its_name_is_unambiguous() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.kernel_function("shmem_fault"), Some(0xffffffff815cdc10));
        assert_eq!(k.kernel_function("do_fault"), None, "two of them");
        assert_eq!(k.kernel_function("rmapdemo_fault"), None, "a module's");
        assert_eq!(k.kernel_function("not_text"), None);
        let hidden = Kallsyms::parse("0000000000000000 T shmem_fault\n");
        assert_eq!(hidden.kernel_function("shmem_fault"), None);
    }

    #[test]
    fn keeps_only_the_wanted_symbols() {
        let k = Kallsyms::read_only(SAMPLE.as_bytes(), &[0xffffffff815cdc10, 0xffffffffc0a01000])
            .unwrap();
        assert_eq!(
            k.addresses().collect::<Vec<_>>(),
            [0xffffffff815cdc10, 0xffffffffc0a01000]
        );
        assert_eq!(
            k.exact(0xffffffffc0a01000).unwrap().module,
            Some("rmapdemo")
        );
        assert_eq!(k.exact(0xffffffff815a71c0), None, "not wanted");
        assert!(
            k.emptied().has_addresses(),
            "readability outlives the symbols"
        );
        let hidden = Kallsyms::parse("0000000000000000 T filemap_fault\n");
        assert!(!hidden.has_addresses());
    }
}
