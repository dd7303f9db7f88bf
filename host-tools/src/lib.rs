//! The host side of the appliance toolkit: everything the `appliance` CLI does, as a
//! library that tests call directly.
//!
//! - [`manifest`]: the image definition, `images/<name>/appliance.toml`;
//! - [`cpio`] and [`compress`]: a reproducible newc archive writer, a reader for
//!   concatenated and compressed archives (the kernel's view), safe unpacking, comparisons,
//!   and the compressions the kernel unpacks (gzip, zstd, xz, lz4);
//! - [`elf`]: which loader and shared libraries a host program needs;
//! - [`kernel`]: the kernel to boot, Debian's cloud kernel fetched and cached by default;
//! - [`kconfig`]: kernel `.config` files and fragments: merging, and checking that a
//!   resolved configuration kept what was asked, with the dependency that dropped it;
//! - [`kbuild`]: the project's own kernels, built from a source tree or tarball with the
//!   fragments of `kernel-configs/`, and cached;
//! - [`modules`]: kernel modules an image loads, with their dependencies, decompressed;
//! - [`image`]: the builder tying these together into an app dir;
//! - [`trace`]: trace-based file selection: run an application in a reference root under
//!   ptrace and list only the files it touched (chrooting there needs root);
//! - [`ssh`]: the SSH server an image gets with `[ssh]`, its host key and login key;
//! - [`qmp`], [`running`] and [`stop`]: a running VM's record in its app dir, and a
//!   graceful stop through the guest's power button;
//! - [`qemu`] and [`vm`]: the QEMU command line, and running it with a time bound and
//!   reading back the init's status record.
//!
//! - [`nfs`] and [`results`]: a private NFS server (nfs-ganesha) for a run's results, and
//!   reading the results step back from the status record.
//!
//! Nothing in this crate runs as root or needs privileges, not even for device nodes;
//! the exceptions are [`trace`] chrooting into a reference root other than `/`, and the
//! NFS server of [`nfs`].

pub mod compress;
pub mod cpio;
pub mod elf;
pub mod fs_error;
pub mod image;
pub mod kbuild;
pub mod kconfig;
pub mod kernel;
pub mod manifest;
pub mod modules;
pub mod nfs;
pub mod qemu;
pub mod qmp;
pub mod results;
pub mod running;
pub mod ssh;
pub mod stop;
pub mod trace;
pub mod vm;
