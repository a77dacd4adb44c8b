//! Copying and clearing structs eight bytes at a time. Left to itself LLVM calls
//! compiler-builtins' memmove/memset for these sizes: byte loops that the verifier
//! walks one byte at a time, on every path, which put Linux 6.1 over its limit.
use core::ptr::{read_volatile, write_volatile};

/// Copies a plain `repr(C)` value whose size is a multiple of eight bytes.
///
/// # Safety
/// `dst` and `src` are valid for a `T` each, eight-byte aligned, and no
/// reference to `*dst` is used during the copy.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst as *mut u64, src as *const u64);
    // Volatile, so LLVM cannot fold the words back into a memcpy call.
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: word i of a T at each pointer (the caller's promise).
        unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
    }
}

/// Zeroes a plain `repr(C)` value whose size is a multiple of eight bytes.
///
/// # Safety
/// `dst` is valid for writes of a `T`, eight-byte aligned, and T is plain data
/// for which all-zero bytes are a value.
#[inline(always)]
pub unsafe fn zero<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let d = dst as *mut u64;
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: word i of the T at `dst` (the caller's promise).
        unsafe { write_volatile(d.add(i), 0) };
    }
}
