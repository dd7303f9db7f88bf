//! The file systems an image takes files from (the host's `/`, or a reference root): paths
//! inside a root with its symlinks resolved there, and the ELF closure of a program;
//! making a reference root (`create`, from the mirrors of the host's apt `sources`) and
//! entering it (`shell`), with the mount table (`mounts`) to check what is mounted in one.

pub mod create;
pub mod elf;
pub mod mounts;
pub mod path;
pub mod shell;
pub mod sources;
