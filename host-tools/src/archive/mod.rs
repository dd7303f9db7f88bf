//! Initramfs archives: the newc cpio writer and reader, unpacking and comparing, and the
//! compressions the kernel unpacks.

pub mod compress;
pub mod cpio;
