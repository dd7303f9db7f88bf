//! The host side of the appliance toolkit: everything the `appliance` CLI does, as a
//! library that tests call directly. Folders from the bottom up; a folder imports only
//! from those above it in this list (`docs/architecture.md` is the full map):
//!
//! - [`host`]: what every capability takes from the host: file errors, glob patterns,
//!   programs on `PATH`, child processes, free ports, sizes;
//! - [`archive`]: the newc cpio writer and reader and the kernel's compressions;
//! - [`rootfs`]: paths inside a root file system, the ELF closure of a program, and
//!   reference roots: made with mmdebstrap, entered in namespaces of their own;
//! - [`kernel`]: Debian's kernels, the project's kernel builds, kconfig, modules;
//! - [`trace`]: trace-based file selection under ptrace in a reference root;
//! - [`image`]: the manifest, host files into an archive, and the builder of an app dir,
//!   with the SSH server half;
//! - [`vm`]: QEMU, a running VM, QMP and stop, the status record, the SSH client half,
//!   results and their NFS server;
//! - [`deploy`]: an app dir beyond `appliance run`: its kernel command line, unified kernel
//!   images and bootable disk images.
//! - [`publish`] (imports only [`host`]): app dirs published to an OCI registry with
//!   signed TUF metadata, pulled, verified and updated.
//!
//! Nothing in this crate runs as root or needs privileges, not even for device nodes;
//! the exceptions are [`trace`] chrooting into a reference root other than `/`, making
//! and entering reference roots ([`rootfs::create`], [`rootfs::shell`]), and the NFS
//! server of [`vm::nfs`].

pub mod archive;
pub mod deploy;
pub mod exp;
pub mod host;
pub mod image;
pub mod kernel;
pub mod publish;
pub mod rootfs;
pub mod trace;
pub mod vm;
