//! The early file systems, as a table walked by one function. The table is data, so the
//! order and options are unit-tested on the host by recording the calls.

use alloc::string::String;
use alloc::vec::Vec;
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// One mount of the boot sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static core::ffi::CStr,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC);

/// What the init mounts, in order. `/dev` comes before what lives under it.
pub const MOUNTS: &[MountSpec] = &[
    MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: c"" },
    MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: c"" },
    MountSpec { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MountFlags::NOSUID, data: c"mode=0755" },
    // gid 5 is "tty" on Debian; ptmxmode lets /dev/ptmx (a symlink to pts/ptmx) work.
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: c"gid=5,mode=0620,ptmxmode=0666",
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: c"mode=1777",
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: c"mode=0755",
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: c"mode=1777",
    },
];

/// Device nodes created on a tmpfs `/dev` when the kernel has no devtmpfs:
/// (name, major, minor, mode).
pub const FALLBACK_NODES: &[(&str, u32, u32, u32)] = &[
    ("/dev/console", 5, 1, 0o600),
    ("/dev/null", 1, 3, 0o666),
    ("/dev/zero", 1, 5, 0o666),
    ("/dev/random", 1, 8, 0o666),
    ("/dev/urandom", 1, 9, 0o666),
    ("/dev/tty", 5, 0, 0o666),
    ("/dev/kmsg", 1, 11, 0o644),
    ("/dev/ttyS0", 4, 64, 0o660),
    ("/dev/ttyS1", 4, 65, 0o660),
];

/// The operations the boot mounts need; the real implementation calls the kernel, tests
/// record the calls.
pub trait MountOps {
    fn mkdir(&mut self, path: &str) -> Result<(), Errno>;
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno>;
    fn mknod_char(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> Result<(), Errno>;
    fn symlink(&mut self, target: &str, link: &str) -> Result<(), Errno>;
}

/// A mount that failed, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct MountFailure {
    pub target: String,
    pub errno: Errno,
}

/// Mounts the table; on a kernel without devtmpfs, `/dev` becomes a tmpfs with the basic
/// nodes. Continues past failures and returns them, so the boot goes on with what works.
pub fn mount_all(ops: &mut impl MountOps) -> Vec<MountFailure> {
    let mut failures = Vec::new();
    for spec in MOUNTS {
        let _ = ops.mkdir(spec.target);
        match ops.mount(spec) {
            Ok(()) => {}
            Err(errno) if spec.fstype == "devtmpfs" => {
                failures.push(MountFailure { target: String::from(spec.target), errno });
                let tmpfs = MountSpec { source: "tmpfs", fstype: "tmpfs", data: c"mode=0755", ..*spec };
                let _ = ops.mount(&tmpfs);
                for (path, major, minor, mode) in FALLBACK_NODES {
                    let _ = ops.mknod_char(path, *major, *minor, *mode);
                }
            }
            Err(Errno::BUSY) => {} // already mounted (a second run, or the kernel did it)
            Err(errno) => failures.push(MountFailure { target: String::from(spec.target), errno }),
        }
    }
    // The original linked /etc/mtab to /proc/mounts; some tools still read it.
    let _ = ops.mkdir("/etc");
    let _ = ops.symlink("/proc/mounts", "/etc/mtab");
    let _ = ops.symlink("/proc/self/fd", "/dev/fd");
    failures
}

/// The real thing.
pub struct Kernel;

impl MountOps for Kernel {
    fn mkdir(&mut self, path: &str) -> Result<(), Errno> {
        rustix::fs::mkdir(path, rustix::fs::Mode::from_raw_mode(0o755))
    }

    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
        let data = if spec.data.is_empty() { None } else { Some(spec.data) };
        rustix::mount::mount(spec.source, spec.target, spec.fstype, spec.flags, data)
    }

    fn mknod_char(&mut self, path: &str, major: u32, minor: u32, mode: u32) -> Result<(), Errno> {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        )
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<(), Errno> {
        rustix::fs::symlink(target, link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_devtmpfs: bool,
    }

    impl MountOps for Recorder {
        fn mkdir(&mut self, path: &str) -> Result<(), Errno> {
            self.calls.push(format!("mkdir {path}"));
            Ok(())
        }
        fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno> {
            self.calls.push(format!("mount {} {} {}", spec.fstype, spec.target, spec.data.to_str().unwrap()));
            if self.fail_devtmpfs && spec.fstype == "devtmpfs" { Err(Errno::NODEV) } else { Ok(()) }
        }
        fn mknod_char(&mut self, path: &str, major: u32, minor: u32, _mode: u32) -> Result<(), Errno> {
            self.calls.push(format!("mknod {path} {major}:{minor}"));
            Ok(())
        }
        fn symlink(&mut self, target: &str, link: &str) -> Result<(), Errno> {
            self.calls.push(format!("ln {target} {link}"));
            Ok(())
        }
    }

    fn position(calls: &[String], what: &str) -> usize {
        calls.iter().position(|c| c == what).unwrap_or_else(|| panic!("no `{what}` in {calls:#?}"))
    }

    #[test]
    fn mounts_dev_before_what_lives_under_it() {
        let mut r = Recorder::default();
        assert!(mount_all(&mut r).is_empty());
        let dev = position(&r.calls, "mount devtmpfs /dev mode=0755");
        assert!(dev < position(&r.calls, "mkdir /dev/pts"));
        assert!(dev < position(&r.calls, "mount tmpfs /dev/shm mode=1777"));
        assert!(position(&r.calls, "mount proc /proc ") < position(&r.calls, "ln /proc/mounts /etc/mtab"));
        for t in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"] {
            assert!(r.calls.iter().any(|c| c.starts_with("mount ") && c.split(' ').nth(2) == Some(t)), "{t}");
        }
    }

    #[test]
    fn without_devtmpfs_dev_is_a_tmpfs_with_basic_nodes() {
        let mut r = Recorder { fail_devtmpfs: true, ..Default::default() };
        let failures = mount_all(&mut r);
        assert_eq!(failures, [MountFailure { target: "/dev".into(), errno: Errno::NODEV }]);
        let tmpfs = position(&r.calls, "mount tmpfs /dev mode=0755");
        assert!(tmpfs < position(&r.calls, "mknod /dev/console 5:1"));
        assert!(tmpfs < position(&r.calls, "mknod /dev/null 1:3"));
        assert!(
            position(&r.calls, "mknod /dev/null 1:3")
                < position(&r.calls, "mount devpts /dev/pts gid=5,mode=0620,ptmxmode=0666")
        );
    }
}
