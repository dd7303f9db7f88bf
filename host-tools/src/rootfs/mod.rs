//! The file systems an image takes files from (the host's `/`, or a reference root): paths
//! inside a root with its symlinks resolved there, and the ELF closure of a program.

pub mod elf;
pub mod path;
