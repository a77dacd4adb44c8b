//! Reads a whole hash map a few thousand entries per syscall
//! (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+) instead of two syscalls per entry: a
//! process with 100k mappings has 100k rows, read every time the tables are.
use std::{io, os::fd::RawFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; the kernel answers ENOSPC when one hash bucket
/// holds more, and the call is retried with room for more.
const FIRST_COUNT: u32 = 4096;
const ERR_NOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each(key, value bytes)` for every entry of the hash map `fd`, whose
/// values are `value_len` bytes (for a per-CPU map: each CPU's value rounded up
/// to 8 bytes, times the possible CPUs). Returns Ok(false), having called
/// nothing, where the kernel has no batch lookup for this map: the caller then
/// reads it entry by entry.
pub fn for_each<K: Copy>(
    fd: RawFd,
    value_len: usize,
    mut each: impl FnMut(K, &[u8]),
) -> io::Result<bool> {
    let key_len = std::mem::size_of::<K>();
    let mut count = FIRST_COUNT;
    let mut keys = vec![0u8; key_len * count as usize];
    let mut values = vec![0u8; value_len * count as usize];
    // The position to resume from: a bucket index for hash maps (4 bytes),
    // given room for a key in case a map type wants one.
    let mut token_in = vec![0u8; key_len.max(8)];
    let mut token_out = vec![0u8; key_len.max(8)];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values and at two
        // tokens, all alive for the call; the kernel writes at most that much.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) if attr.count == 0 => {
                count *= 2;
                keys.resize(key_len * count as usize, 0);
                values.resize(value_len * count as usize, 0);
                continue;
            }
            Some(libc::EINVAL | libc::EOPNOTSUPP | ERR_NOTSUPP) if first => return Ok(false),
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.expect("an error")),
        }
        for i in 0..attr.count as usize {
            let k = &keys[i * key_len..(i + 1) * key_len];
            // SAFETY: `k` holds size_of::<K>() bytes the kernel copied from a key
            // of this map; K is plain data.
            let key: K = unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
            each(key, &values[i * value_len..(i + 1) * value_len]);
        }
        if err.is_some() {
            // ENOENT: that was the last batch.
            return Ok(true);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// `union bpf_attr`'s member for single-element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The value bytes (`value_len` of them, per-CPU values as in [`for_each`])
/// at `key` of the map `fd`.
pub fn lookup<K: Copy>(fd: RawFd, key: &K, value_len: usize) -> io::Result<Vec<u8>> {
    elem(BPF_MAP_LOOKUP_ELEM, fd, key, value_len)
}

/// [`lookup`], deleting the entry in the same step (hash maps, Linux 5.14+):
/// nothing counted between the read and the delete is lost.
pub fn take<K: Copy>(fd: RawFd, key: &K, value_len: usize) -> io::Result<Vec<u8>> {
    elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, key, value_len)
}

/// Deletes the entry at `key` of the map `fd`.
pub fn delete<K: Copy>(fd: RawFd, key: &K) -> io::Result<()> {
    elem(BPF_MAP_DELETE_ELEM, fd, key, 0).map(drop)
}

fn elem<K: Copy>(cmd: libc::c_long, fd: RawFd, key: &K, value_len: usize) -> io::Result<Vec<u8>> {
    let mut value = vec![0u8; value_len];
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        key: key as *const K as u64,
        // A command without a value (delete) must leave the field zero: the
        // kernel refuses attributes set past the command's own (EINVAL).
        value: if value_len == 0 {
            0
        } else {
            value.as_mut_ptr() as u64
        },
        ..Default::default()
    };
    // SAFETY: `attr` points at a key of the map's key size and a buffer of the
    // map's value size, both alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// A plain-data value from the bytes the kernel copied.
pub fn value<V: Copy>(bytes: &[u8]) -> V {
    assert!(bytes.len() >= std::mem::size_of::<V>());
    // SAFETY: length checked; V is a repr(C) plain-data map value.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}
