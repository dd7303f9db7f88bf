//! Scratch directories in the system's temporary directory that outlive no process.
//!
//! A [`tempfile::TempDir`] is removed when it is dropped, which a process killed outright
//! (SIGKILL, the OOM killer) never does: `appliance run` killed that way left its status
//! directory and its NFS server's configuration behind, one pair per kill. So each
//! scratch directory here is locked (`flock`) by the process that made it for as long as
//! that process lives, and making one removes the unlocked directories of the same prefix
//! that are older than [`STALE_AFTER`]: those whose makers are gone. The age keeps a
//! directory made a moment ago, not yet locked, from being taken for a stale one.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

/// How old an unlocked directory must be before it counts as left behind.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// A directory removed when dropped, locked while it exists.
#[derive(Debug)]
pub struct Scratch {
    // Dropped first: the directory goes while it is still locked.
    dir: tempfile::TempDir,
    _lock: File,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A new directory `<temporary directory>/<prefix>XXXXXX`, locked by this process; the
/// ones of earlier processes killed before they could remove theirs are removed first.
/// `prefix` names what the directory is for (`appliance-run-`).
pub fn dir(prefix: &str) -> io::Result<Scratch> {
    let parent = std::env::temp_dir();
    sweep(&parent, prefix, SystemTime::now());
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(&parent)?;
    let lock = File::open(dir.path())?;
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
    Ok(Scratch { dir, _lock: lock })
}

/// Removes the directories of `parent` named `prefix...` that are ours (same owner), not
/// locked, and unchanged for [`STALE_AFTER`] at `now`; returns them. Errors are skipped:
/// sweeping is a courtesy, never a reason to fail.
pub fn sweep(parent: &Path, prefix: &str, now: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let uid = rustix::process::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let path = entry.path();
        // Not followed: a link named like ours is not ours.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok());
        if !meta.is_dir() || std::os::unix::fs::MetadataExt::uid(&meta) != uid || age.is_none_or(|a| a < STALE_AFTER) {
            continue;
        }
        let Ok(lock) = File::open(&path) else { continue };
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // its maker lives
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_directory_is_kept_and_a_left_one_is_removed_once_it_is_old_enough() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let p = parent.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("file"), "x").unwrap();
            p
        };
        let left = make("appliance-t-left");
        let live = make("appliance-t-live");
        let other = make("other-left");
        let held = File::open(&live).unwrap();
        rustix::fs::flock(&held, FlockOperation::NonBlockingLockExclusive).unwrap();
        // Young: nothing is removed, locked or not.
        assert!(sweep(parent.path(), "appliance-t-", SystemTime::now()).is_empty());
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(1);
        assert_eq!(sweep(parent.path(), "appliance-t-", later), std::slice::from_ref(&left));
        assert!(!left.exists() && live.join("file").exists() && other.exists());
        drop(held);
        assert_eq!(sweep(parent.path(), "appliance-t-", later), [live]);
    }

    #[test]
    fn a_scratch_directory_is_locked_while_it_lives_and_removed_when_dropped() {
        let s = dir("appliance-scratch-test-").unwrap();
        let path = s.path().to_path_buf();
        let other = File::open(&path).unwrap();
        assert!(rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(1);
        assert!(!sweep(&std::env::temp_dir(), "appliance-scratch-test-", later).contains(&path));
        drop(s);
        assert!(!path.exists());
    }
}
