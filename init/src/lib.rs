//! `appliance-init`: the PID 1 of an appliance. It mounts the basic file systems, reads
//! the kernel command line (`appliance_cmdline`), runs the application's phases as
//! supervised children, reports each phase on the status port, and ends the way `appEnd`
//! says, always through an orderly shutdown.
//!
//! It is a `no_std` program without any C library (system calls through rustix's raw
//! Linux backend, start-up in [`rt`]), which keeps the static binary small. Run as an
//! ordinary process it is a subreaper supervisor instead, so its process handling is
//! tested on the host ([`cli`]).
//!
//! It loads the kernel modules the image packs ([`modules`]), configures the control
//! network ([`net`], on top of [`nic`] and [`dhcp`]), watches it around the run phase
//! ([`watch`]) and saves the results over NFS or 9p, or as a cpio stream ([`cpio`]) to a
//! virtio-serial port, at the very end ([`results`]); it does not switch roots.
//! `appEnd=sshd` supervises an SSH server ([`sshd`]); the power button ([`power`]),
//! SIGTERM and Ctrl-Alt-Del shut it down cleanly. What shell-script phases export reaches
//! the later phases ([`exports`]), as when the original sourced them. `appEnd=kexec` fetches,
//! checks and loads the next appliance's kernel ([`kexec`]).
#![cfg_attr(not(test), no_std)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

extern crate alloc;

pub mod cli;
pub mod console;
pub mod cpio;
pub mod dhcp;
pub mod exports;
pub mod kexec;
pub mod logger;
pub mod mem;
pub mod modules;
pub mod mount;
pub mod net;
pub mod nic;
pub mod oom;
pub mod plan;
pub mod power;
pub mod procs;
pub mod rendezvous;
pub mod results;
pub mod rt;
pub mod sequence;
pub mod shutdown;
pub mod sshd;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod watch;

use alloc::string::String;
use alloc::vec::Vec;

/// Reads a whole file as text (lossy); `None` when it cannot be read.
pub fn read_to_string(path: &str) -> Option<String> {
    read_bytes(path).map(|data| String::from(String::from_utf8_lossy(&data)))
}

/// Reads a whole file; `None` when it cannot be read.
pub fn read_bytes(path: &str) -> Option<Vec<u8>> {
    read_head(path, usize::MAX)
}

/// The first `limit` bytes of the file at `path` (fewer when it is shorter); `None` when
/// it cannot be read.
pub fn read_head(path: &str, limit: usize) -> Option<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while data.len() < limit {
        let want = buf.len().min(limit - data.len());
        match rustix::io::read(&fd, buf.get_mut(..want)?) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(buf.get(..n)?),
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
    Some(data)
}

/// `path` and the directories above it that do not exist yet (`mkdir -p`), each with
/// `mode`; an existing directory is no error. (No std here, so no `fs::create_dir_all`.)
pub fn create_dir_all(path: &str, mode: u32) -> Result<(), rustix::io::Errno> {
    use rustix::fs::Mode;
    use rustix::io::Errno;
    let ends = path.match_indices('/').map(|(i, _)| i).filter(|&i| i > 0).chain([path.len()]);
    for end in ends {
        let dir = path.get(..end).unwrap_or(path);
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            // Something is there: fine when it is a directory (or leads to one).
            Err(Errno::EXIST) if rustix::fs::stat(dir).is_ok_and(|st| st.st_mode & 0o170000 == 0o040000) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The names in a directory, without `.` and `..`.
pub fn read_dir(path: &str) -> Result<Vec<String>, rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf = [core::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut dir = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(String::from(String::from_utf8_lossy(name)));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn create_dir_all_makes_the_missing_parents_and_accepts_what_exists() {
        let base = std::env::temp_dir().join(std::format!("appliance-init-mkdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let deep = base.join("a/b/c");
        let deep = deep.to_str().unwrap();
        assert_eq!(create_dir_all(deep, 0o755), Ok(()));
        assert!(std::path::Path::new(deep).is_dir());
        // Again, and with a trailing slash: nothing to do, no error.
        assert_eq!(create_dir_all(deep, 0o755), Ok(()));
        assert_eq!(create_dir_all(&std::format!("{deep}/"), 0o755), Ok(()));
        // A file in the way is an error, as mkdir -p makes it.
        let file = base.join("file");
        std::fs::write(&file, "x").unwrap();
        let under = std::format!("{}/sub", file.to_str().unwrap());
        assert_eq!(create_dir_all(file.to_str().unwrap(), 0o755), Err(rustix::io::Errno::EXIST));
        assert_eq!(create_dir_all(&under, 0o755), Err(rustix::io::Errno::EXIST));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
