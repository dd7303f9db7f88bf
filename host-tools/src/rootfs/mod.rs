//! The file systems an image takes files from (the host's `/`, or a reference root): paths
//! inside a root with its symlinks resolved there, and the ELF closure of a program; the
//! host's apt `sources` a reference root is made from, and the mount table (`mounts`) to
//! check what is mounted in one.

pub mod elf;
pub mod mounts;
pub mod path;
pub mod sources;
