//! Kernel code addresses (fault handlers, mmap handlers) as small numbers: a
//! process with 200k mappings holds two per mapping, and a whole system has a
//! few dozen distinct ones. Interned once for the life of rmaptrace: the table
//! only grows by handlers never seen before (a module loaded again at another
//! address adds its new ones).
use std::{
    collections::HashMap,
    sync::{OnceLock, RwLock},
};

/// An interned kernel code address; the default is none (address 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Code(u32);

#[derive(Default)]
struct Table {
    addrs: Vec<u64>,
    index: HashMap<u64, u32>,
}

fn table() -> &'static RwLock<Table> {
    static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
    TABLE.get_or_init(|| {
        RwLock::new(Table {
            // Index 0 is "none".
            addrs: vec![0],
            index: HashMap::from([(0, 0)]),
        })
    })
}

impl Code {
    pub fn of(addr: u64) -> Code {
        if addr == 0 {
            return Code(0);
        }
        // A poisoned lock only means a panic elsewhere; the table is intact
        // (every write is one push and one insert).
        if let Some(&i) = table()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .index
            .get(&addr)
        {
            return Code(i);
        }
        let mut t = table().write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = t.index.get(&addr) {
            return Code(i);
        }
        let i = u32::try_from(t.addrs.len()).expect("fewer than 4G kernel functions");
        t.addrs.push(addr);
        t.index.insert(addr, i);
        Code(i)
    }

    /// The function that set a mapping up, from its file's `f_op->mmap` and
    /// `f_op->mmap_prepare` as the kernel records carry them: the kernel calls
    /// mmap_prepare instead of mmap when a file has it.
    pub fn of_setup(mmap: u64, mmap_prepare: u64) -> Code {
        Code::of(match mmap_prepare {
            0 => mmap,
            prepare => prepare,
        })
    }

    pub fn addr(self) -> u64 {
        table().read().unwrap_or_else(|e| e.into_inner()).addrs[self.0 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_one_number_for_good() {
        let a = Code::of(0xffff_ffff_8100_1000);
        assert_eq!(Code::of(0xffff_ffff_8100_1000), a);
        assert_ne!(Code::of(0xffff_ffff_8100_2000), a);
        assert_eq!(a.addr(), 0xffff_ffff_8100_1000);
        assert_eq!(Code::of(0), Code::default());
        assert_eq!(Code::default().addr(), 0);
    }
}
