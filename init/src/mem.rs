//! The memory routines the compiler calls (`memcpy`, `memmove`, `memset`, `memcmp`,
//! `bcmp`, `strlen`), which a C library would otherwise provide. `entry!` exports them for a binary;
//! the library itself does not, so its tests keep the C library's.
//!
//! Copies and fills use `rep movsb`/`rep stosb` (fast on every x86-64 since Ivy Bridge
//! and, being assembly, never turned back into a call to themselves by the optimiser);
//! comparisons read through `read_volatile` for the same reason.

use core::arch::asm;

/// # Safety
/// As C `memcpy`: `n` bytes valid at both, not overlapping.
pub unsafe fn copy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; rep movsb copies rcx bytes forward.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C `memmove`: `n` bytes valid at both, which may overlap.
pub unsafe fn move_(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: dest is below src or the ranges do not overlap: a forward copy is safe.
        return unsafe { copy(dest, src, n) };
    }
    // SAFETY: overlapping with dest above src: copy backwards from the last byte, with
    // the direction flag set only for this instruction.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// As C `memset`: `n` bytes valid at `dest`.
pub unsafe fn set(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; rep stosb stores al rcx times.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C `memcmp`: `n` bytes valid at both.
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C `strlen`: `s` is NUL-terminated.
pub unsafe fn length(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL within the allocation.
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    n
}

/// Exports the memory routines from a binary (used by `entry!`).
#[macro_export]
macro_rules! export_mem {
    () => {
        /// # Safety
        /// As C memcpy.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
            // SAFETY: same contract.
            unsafe { $crate::mem::copy(d, s, n) }
        }
        /// # Safety
        /// As C memmove.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
            // SAFETY: same contract.
            unsafe { $crate::mem::move_(d, s, n) }
        }
        /// # Safety
        /// As C memset.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
            // SAFETY: same contract.
            unsafe { $crate::mem::set(d, c, n) }
        }
        /// # Safety
        /// As C memcmp.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract.
            unsafe { $crate::mem::compare(a, b, n) }
        }
        /// # Safety
        /// As C bcmp.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: same contract.
            unsafe { $crate::mem::compare(a, b, n) }
        }
        /// # Safety
        /// As C strlen.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
            // SAFETY: same contract.
            unsafe { $crate::mem::length(s) }
        }
        // The precompiled `alloc` has landing pads that name the unwinder; with
        // `panic = "abort"` nothing unwinds, so they are never entered.
        #[unsafe(no_mangle)]
        extern "C" fn _Unwind_Resume() -> ! {
            $crate::sys::exit(70)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_move_set_compare_behave_like_c() {
        let mut buf: [u8; 16] = core::array::from_fn(|i| i as u8);
        // SAFETY: all ranges lie within `buf`.
        unsafe {
            move_(buf.as_mut_ptr().add(2), buf.as_ptr(), 8);
            assert_eq!(&buf[..10], &[0, 1, 0, 1, 2, 3, 4, 5, 6, 7]);
            move_(buf.as_mut_ptr(), buf.as_ptr().add(2), 8);
            assert_eq!(&buf[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
            set(buf.as_mut_ptr().add(12), 0xab, 4);
            assert_eq!(&buf[11..], &[11, 0xab, 0xab, 0xab, 0xab]);
            let mut dst = [0u8; 4];
            copy(dst.as_mut_ptr(), buf.as_ptr().add(4), 4);
            assert_eq!(dst, [4, 5, 6, 7]);
            assert_eq!(compare(b"abc".as_ptr(), b"abd".as_ptr(), 3), -1);
            assert_eq!(compare(b"abc".as_ptr(), b"abc".as_ptr(), 3), 0);
            assert_eq!(compare(b"b".as_ptr(), b"a".as_ptr(), 1), 1);
            move_(buf.as_mut_ptr(), buf.as_ptr(), 0);
        }
    }
}
