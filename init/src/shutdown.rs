//! The orderly end of PID 1: every process asked to stop, then killed after a grace
//! period, file systems synced and unmounted, and `reboot(2)`.
//!
//! Every step that can block in the kernel on bare metal (sync and unmounting with a hung
//! network mount the application made, draining a UART nobody reads) runs in a child
//! process with a deadline ([`bounded`]): when it is not done in time, PID 1 goes on
//! without it, and the machine powers off anyway.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::system::RebootCommand;

use crate::console::Describe;
use crate::supervisor::{Supervisor, now};
use crate::sys::{self, Fork};

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

/// How long `sync` may take: the flusher threads start writing every disk at once, so
/// this is the time to write what the run left dirty, not one disk after another.
pub const SYNC_LIMIT: Duration = Duration::from_secs(20);

/// How long unmounting everything (and the sync after it) may take.
pub const UNMOUNT_LIMIT: Duration = Duration::from_secs(10);

/// How long a serial port gets to send what was written to it.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How a [`bounded`] step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounded {
    /// It finished in time (or ran in PID 1 itself, when no child could be started).
    Done,
    /// It was still running at the deadline: this child is left to itself.
    Abandoned(Pid),
}

/// Runs `step` in a child process and waits for it up to `limit`. A step that blocks in
/// the kernel (sync on a hard NFS mount whose server is gone, tcdrain on a port that
/// cannot send) blocks the child only; PID 1 says so and goes on. Without a child (fork
/// failed) the step runs here, unbounded: skipping a sync could lose data.
pub fn bounded(what: &str, limit: Duration, step: impl FnOnce()) -> Bounded {
    let pid = match sys::fork() {
        Ok(Fork::Child) => {
            step();
            sys::exit(0)
        }
        Ok(Fork::Parent(pid)) => pid,
        Err(e) => {
            log::warn!("{what}: cannot start a process for it ({}): doing it here", Describe(e));
            step();
            return Bounded::Done;
        }
    };
    if wait_for(pid, now() + limit) {
        Bounded::Done
    } else {
        log::warn!("{what}: not done after {} s: going on without it", limit.as_secs());
        Bounded::Abandoned(pid)
    }
}

/// Waits until child `pid` has ended (and reaps it), or until `deadline`. A pidfd says
/// when it ends; kernels without pidfds (before 5.3) are asked every 10 ms.
fn wait_for(pid: Pid, deadline: Duration) -> bool {
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    loop {
        if let Ok(Some(_)) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            return true;
        }
        let left = deadline.saturating_sub(now());
        if left.is_zero() {
            return false;
        }
        let nap = match &pidfd {
            Some(_) => left,
            None => left.min(Duration::from_millis(10)),
        };
        let ts = rustix::time::Timespec { tv_sec: nap.as_secs() as i64, tv_nsec: i64::from(nap.subsec_nanos()) };
        match &pidfd {
            Some(fd) => {
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
            None => {
                let _ = rustix::thread::nanosleep(&ts);
            }
        }
    }
}

/// SIGTERM to everything, up to `grace` for it to end, then SIGKILL; reaps all.
pub fn terminate_all(sup: &mut Supervisor, grace: Duration) {
    if !sup.has_children() {
        return;
    }
    let _ = sys::kill_all(Signal::TERM);
    let deadline = now() + grace;
    while sup.has_children() && now() < deadline {
        sup.pump(Some(Duration::from_millis(20)));
    }
    if sup.has_children() {
        log::warn!("processes still running after {} s: killing them", grace.as_secs());
        let _ = sys::kill_all(Signal::KILL);
        let deadline = now() + Duration::from_secs(1);
        while sup.has_children() && now() < deadline {
            sup.pump(Some(Duration::from_millis(10)));
        }
    }
    sup.drain_output();
}

/// A mount from /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    pub target: String,
    /// Its server can go away (NFS, CIFS, 9p...): a plain unmount may wait for it for ever.
    pub network: bool,
}

/// File system types whose unmount may wait for a server.
const NETWORK_TYPES: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "fuse", "fuse.sshfs"];

/// Mount points from /proc/mounts, deepest last, without the root.
pub fn mount_points(mounts: &str) -> Vec<MountPoint> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace().skip(1);
            Some((fields.next()?, fields.next()?))
        })
        .filter(|(m, _)| *m != "/")
        .map(|(m, fstype)| MountPoint { target: m.replace("\\040", " "), network: NETWORK_TYPES.contains(&fstype) })
        .collect()
}

/// Unmounts everything but the root, in reverse order of mounting. A network file system
/// is forced first (its pending requests fail instead of waiting for a server that may be
/// gone); what stays busy (the console's /dev) is detached, so the data is at least synced.
pub fn unmount_all() {
    let text = crate::read_to_string("/proc/mounts").unwrap_or_default();
    for mount in mount_points(&text).iter().rev() {
        let target = mount.target.as_str();
        let first = if mount.network { UnmountFlags::FORCE } else { UnmountFlags::empty() };
        if rustix::mount::unmount(target, first).is_err() {
            let _ = rustix::mount::unmount(target, UnmountFlags::FORCE | UnmountFlags::DETACH);
        }
    }
}

/// sync, unmount, reboot(2), each step bounded in time. If the kernel refuses to power
/// off, there is nothing left but to wait.
pub fn power(cmd: RebootCommand) -> ! {
    bounded("sync", SYNC_LIMIT, rustix::fs::sync);
    bounded("unmounting the file systems", UNMOUNT_LIMIT, || {
        unmount_all();
        rustix::fs::sync();
    });
    bounded("sending the console's output", DRAIN_LIMIT, || {
        let _ = sys::drain_console();
    });
    if let Err(e) = rustix::system::reboot(cmd) {
        log::error!("reboot(2) failed: {}; halting here", Describe(e));
    }
    loop {
        let _ = rustix::thread::nanosleep(&rustix::time::Timespec { tv_sec: 3600, tv_nsec: 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_skip_root_and_keep_order() {
        let m = "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\ndevpts /dev/pts devpts rw 0 0\nx /a\\040b tmpfs rw 0 0\n10.0.2.2:/ /mnt nfs4 rw 0 0\n";
        let points = mount_points(m);
        let targets: Vec<&str> = points.iter().map(|p| p.target.as_str()).collect();
        assert_eq!(targets, ["/proc", "/dev", "/dev/pts", "/a b", "/mnt"]);
        let network: Vec<bool> = points.iter().map(|p| p.network).collect();
        assert_eq!(network, [false, false, false, false, true]);
    }

    /// A sync stuck on a hung NFS mount kept the machine from powering off: a step that
    /// never ends is left behind at its deadline, and one that ends is waited for.
    #[test]
    fn a_step_that_hangs_is_abandoned_at_its_deadline() {
        let started = now();
        let hang = || loop {
            let _ = rustix::thread::nanosleep(&rustix::time::Timespec { tv_sec: 3600, tv_nsec: 0 });
        };
        let Bounded::Abandoned(pid) = bounded("hanging step", Duration::from_millis(300), hang) else {
            panic!("a step that never ends was not abandoned");
        };
        let took = now() - started;
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
        rustix::process::kill_process(pid, Signal::KILL).unwrap();
        rustix::process::waitpid(Some(pid), WaitOptions::empty()).unwrap();

        let started = now();
        assert_eq!(bounded("quick step", Duration::from_secs(60), || {}), Bounded::Done);
        assert!(now() - started < Duration::from_secs(30));
    }
}
