//! Copying and clearing structs eight bytes at a time. Left to itself LLVM calls
//! compiler-builtins' memmove/memset for these sizes: byte loops that the verifier
//! walks one byte at a time, on every path, which put Linux 6.1 over its limit.
use core::ptr::{read_volatile, write_volatile};

/// Copies a plain `repr(C)` value whose size is a multiple of eight bytes.
#[inline(always)]
pub fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst as *mut u64, src as *const u64);
    // Volatile, so LLVM cannot fold the words back into a memcpy call.
    for i in 0..core::mem::size_of::<T>() / 8 {
        unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
    }
}

/// Zeroes a plain `repr(C)` value whose size is a multiple of eight bytes.
#[inline(always)]
pub fn zero<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let d = dst as *mut u64;
    for i in 0..core::mem::size_of::<T>() / 8 {
        unsafe { write_volatile(d.add(i), 0) };
    }
}
