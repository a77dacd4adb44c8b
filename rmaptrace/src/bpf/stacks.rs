//! The user stacks of `--stacks`: the depth the kernel walks, set in the
//! object before it is loaded, and the reads and frees of the stack tables
//! (rmaptrace-ebpf's `stacks.rs` fills them).
use std::os::fd::RawFd;

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};
use rmaptrace_common::StackKey;

use super::{batch, loader::Probes};

/// Offset of `value_size` in the object's legacy map definitions
/// (`bpf_map_def`: type, key_size, value_size, ...).
const VALUE_SIZE_AT: usize = 8;

/// `object` with the stack table's value size set to `depth` frames: the
/// kernel walks at most that many (the cost of a stack is its depth), and
/// aya sets only a map's entry count at load.
pub fn with_stack_depth(object: &[u8], depth: u32) -> Result<Vec<u8>> {
    let file = object::File::parse(object).context("reading the eBPF object")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok("STACKS"))
        .context("the eBPF object has no STACKS map")?;
    let section = file
        .section_by_index(sym.section_index().context("STACKS has no section")?)
        .context("STACKS's section")?;
    let (section_at, _) = section
        .file_range()
        .context("STACKS's section has no bytes in the file")?;
    let at = usize::try_from(section_at + sym.address() - section.address())? + VALUE_SIZE_AT;
    let mut patched = object.to_vec();
    let field = patched
        .get_mut(at..at + 4)
        .context("STACKS's definition lies outside the object")?;
    let built = u32::from_le_bytes(field.try_into()?);
    if built != rmaptrace_common::MAX_STACK_DEPTH * 8 {
        bail!("STACKS's definition is not the one built (value size {built})");
    }
    field.copy_from_slice(&(depth * 8).to_le_bytes());
    Ok(patched)
}

/// The stack tables as read at one tick.
#[derive(Default)]
pub struct StackRead {
    /// Faults per (row, stack), summed over CPUs.
    pub counts: Vec<(StackKey, u64)>,
    /// The frames of the stacks asked for (leaf first), by id; an id missing
    /// here was freed.
    pub traces: Vec<(u32, Vec<u64>)>,
}

impl Probes {
    /// Reads the per-stack counts, and the frames of the stacks among them
    /// that `known` does not have yet.
    pub fn read_stacks(&self, known: impl Fn(u32) -> bool) -> Result<StackRead> {
        let (counts_fd, stacks_fd) = self.stack_fds()?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut read = StackRead::default();
        let batched = batch::for_each(counts_fd, 8 * cpus, |key: StackKey, v| {
            read.counts
                .push((key, v.chunks(8).map(batch::value::<u64>).sum()));
        })?;
        if !batched {
            let counts: aya::maps::PerCpuHashMap<&aya::maps::MapData, StackKey, u64> =
                aya::maps::PerCpuHashMap::try_from(
                    self.ebpf()
                        .map("STACK_COUNTS")
                        .context("STACK_COUNTS map")?,
                )?;
            for item in counts.iter() {
                let (key, per_cpu) = item?;
                read.counts.push((key, per_cpu.iter().sum()));
            }
        }
        let depth = self.stack_depth as usize;
        let mut asked = std::collections::HashSet::new();
        for (key, _) in &read.counts {
            if known(key.stack_id) || !asked.insert(key.stack_id) {
                continue;
            }
            if let Ok(v) = batch::lookup(stacks_fd, &key.stack_id, depth * 8) {
                let ips = v
                    .chunks(8)
                    .map(batch::value::<u64>)
                    .take_while(|&ip| ip != 0)
                    .collect();
                read.traces.push((key.stack_id, ips));
            }
        }
        Ok(read)
    }

    /// Frees per-stack counts, then the stacks no count uses any more.
    pub fn forget_stacks(&self, keys: &[StackKey], ids: &[u32]) -> Result<()> {
        let (counts_fd, stacks_fd) = self.stack_fds()?;
        for key in keys {
            delete_if_there(counts_fd, key)?;
        }
        for id in ids {
            delete_if_there(stacks_fd, id)?;
        }
        Ok(())
    }

    fn stack_fds(&self) -> Result<(RawFd, RawFd)> {
        Ok((self.map_fd("STACK_COUNTS")?, self.map_fd("STACKS")?))
    }
}

/// Deletes `key` from the map `fd`; one already gone is no error.
fn delete_if_there<K: Copy>(fd: RawFd, key: &K) -> Result<()> {
    match batch::delete(fd, key) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_depth_is_written_into_the_object() {
        if super::super::EBPF_OBJECT.is_empty() {
            return; // built without the eBPF toolchain
        }
        let patched = with_stack_depth(super::super::EBPF_OBJECT, 16).unwrap();
        assert_eq!(patched.len(), super::super::EBPF_OBJECT.len());
        let changed: Vec<usize> = (0..patched.len())
            .filter(|&i| patched[i] != super::super::EBPF_OBJECT[i])
            .collect();
        assert!(!changed.is_empty() && changed.len() <= 4, "{changed:?}");
        // Patching a patched object is refused: the field is checked first.
        assert!(with_stack_depth(&patched, 16).is_err());
    }
}
