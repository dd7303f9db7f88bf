//! The host side of the appliance toolkit: everything the `appliance` CLI does, as a
//! library that tests call directly.
//!
//! - [`manifest`]: the image definition, `images/<name>/appliance.toml`;
//! - [`cpio`] and [`compress`]: a reproducible newc archive writer and the compressions
//!   the kernel unpacks;
//! - [`elf`]: which loader and shared libraries a host program needs;
//! - [`kernel`]: the kernel to boot, Debian's cloud kernel fetched and cached by default;
//! - [`image`]: the builder tying these together into an app dir;
//! - [`qemu`] and [`vm`]: the QEMU command line, and running it with a time bound and
//!   reading back the init's status record.
//!
//! Nothing in this crate runs as root or needs privileges, not even for device nodes.

pub mod compress;
pub mod cpio;
pub mod elf;
pub mod image;
pub mod kernel;
pub mod manifest;
pub mod qemu;
pub mod vm;
