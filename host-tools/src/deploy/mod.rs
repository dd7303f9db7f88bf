//! An app dir everywhere a machine boots, beyond `appliance run`'s QEMU: its kernel command
//! line as `appliance run` builds it ([`cmdline`]), a unified kernel image that firmware
//! boots by itself ([`uki`]), and a GPT disk with an EFI system partition in the formats
//! hypervisors take ([`disk`]).
//!
//! Nothing here needs root, a loop device or a mount: the disk and its FAT file system are
//! written into a plain file.

pub mod cmdline;
pub mod disk;
pub mod netboot;
pub mod uki;
