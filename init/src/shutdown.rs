//! The orderly end of PID 1: every process asked to stop, then killed after a grace
//! period, file systems synced and unmounted, and `reboot(2)`.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use rustix::process::Signal;
use rustix::system::RebootCommand;

use crate::console::Describe;
use crate::supervisor::{Supervisor, now};
use crate::sys;

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

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

/// Mount points from /proc/mounts, deepest last, without the root.
pub fn mount_points(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| *m != "/")
        .map(|m| m.replace("\\040", " "))
        .collect()
}

/// Unmounts everything but the root, in reverse order of mounting.
pub fn unmount_all() {
    let text = crate::read_to_string("/proc/mounts").unwrap_or_default();
    for target in mount_points(&text).iter().rev() {
        if rustix::mount::unmount(target.as_str(), rustix::mount::UnmountFlags::empty()).is_err() {
            // Busy (e.g. the console's /dev): detach so the data is at least synced.
            let _ = rustix::mount::unmount(target.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// sync, unmount, reboot(2). If the kernel refuses, there is nothing left but to wait.
pub fn power(cmd: RebootCommand) -> ! {
    rustix::fs::sync();
    unmount_all();
    rustix::fs::sync();
    let _ = sys::drain_console();
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
        let m = "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\ndevpts /dev/pts devpts rw 0 0\nx /a\\040b tmpfs rw 0 0\n";
        assert_eq!(mount_points(m), ["/proc", "/dev", "/dev/pts", "/a b"]);
    }
}
