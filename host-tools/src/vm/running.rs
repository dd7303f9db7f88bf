//! Where `appliance stop` and `appliance ssh` find a VM that `appliance run` started: a
//! record in the app dir, `<app-dir>/running.json`, written when QEMU has started and
//! removed when the run ends.
//!
//! Why in the app dir: the commands name the appliance by its app dir, as `run` does, so
//! no registry or naming scheme is needed, and one app dir runs at most once at a time
//! (its record says so). The QMP socket itself lives in a short temporary directory
//! (a Unix socket path is limited to 107 bytes; app dirs can be deeper), and the record
//! says where. A record whose `appliance run` process is gone (killed with SIGKILL) is
//! stale and ignored.

use crate::host::fs_error::FsError;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name in the app dir.
pub const FILE_NAME: &str = "running.json";

/// What a running VM's record holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The `appliance run` process.
    pub appliance_pid: u32,
    /// The QEMU process.
    pub qemu_pid: u32,
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The loopback port forwarded to the guest's port 22 (`run --ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// The run's grace for a stop (`run --stop-grace`): `appliance stop`'s default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_s: Option<u64>,
    /// The guest's grace for its program (`appStopGrace`, or its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_stop_grace_s: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no appliance is running from {} (no {FILE_NAME}: start one with `appliance run`)", app_dir.display())]
    NotRunning { app_dir: PathBuf },
    #[error(
        "{} is already running (appliance run, pid {pid}): stop it with `appliance stop {}`",
        app_dir.display(),
        app_dir.display()
    )]
    AlreadyRunning { app_dir: PathBuf, pid: u32 },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{} is not a run record", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

fn path(app_dir: &Path) -> PathBuf {
    app_dir.join(FILE_NAME)
}

/// The live record of `app_dir`, if a run is going on.
pub fn read(app_dir: &Path) -> Result<Running, Error> {
    let file = path(app_dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NotRunning { app_dir: app_dir.to_owned() });
        }
        Err(source) => return Err(Error::Io(FsError { action: "read", path: file, source })),
    };
    let running: Running = serde_json::from_str(&text).map_err(|source| Error::Parse { path: file, source })?;
    if !alive(running.appliance_pid) {
        return Err(Error::NotRunning { app_dir: app_dir.to_owned() });
    }
    Ok(running)
}

/// Refuses to start a second run of `app_dir`; removes a stale record.
pub fn claim(app_dir: &Path) -> Result<(), Error> {
    match read(app_dir) {
        Ok(running) if running.appliance_pid != std::process::id() => {
            Err(Error::AlreadyRunning { app_dir: app_dir.to_owned(), pid: running.appliance_pid })
        }
        _ => {
            let _ = fs::remove_file(path(app_dir));
            Ok(())
        }
    }
}

/// Writes the record (atomically: a reader never sees half of it). The returned guard
/// removes it when dropped.
pub fn write(app_dir: &Path, running: &Running) -> Result<Record, Error> {
    let file = path(app_dir);
    let tmp = app_dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let text = serde_json::to_string_pretty(running).map_err(|source| Error::Parse { path: file.clone(), source })?;
    fs::write(&tmp, text + "\n").map_err(|source| Error::Io(FsError { action: "write", path: tmp.clone(), source }))?;
    fs::rename(&tmp, &file).map_err(|source| Error::Io(FsError { action: "write", path: file.clone(), source }))?;
    Ok(Record { path: file })
}

/// Removes the record when the run ends.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_lives_as_long_as_its_guard() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()), Err(Error::NotRunning { .. })));
        let me = Running {
            appliance_pid: std::process::id(),
            qemu_pid: 1,
            qmp: "/tmp/q.sock".into(),
            ssh_port: Some(2222),
            stop_grace_s: Some(30),
            guest_stop_grace_s: Some(5),
        };
        claim(dir.path()).unwrap();
        let guard = write(dir.path(), &me).unwrap();
        assert_eq!(read(dir.path()).unwrap(), me);
        drop(guard);
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no appliance is running from") && err.contains("appliance run"), "{err}");
    }

    #[test]
    fn a_live_run_is_not_claimed_twice_and_a_stale_one_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        // PID 1 is always alive: another run.
        let other = Running {
            appliance_pid: 1,
            qemu_pid: 2,
            qmp: "/tmp/q.sock".into(),
            ssh_port: None,
            stop_grace_s: None,
            guest_stop_grace_s: None,
        };
        let guard = write(dir.path(), &other).unwrap();
        assert!(claim(dir.path()).unwrap_err().to_string().contains("already running"));
        std::mem::forget(guard);
        // A pid that cannot exist: stale.
        let stale = Running { appliance_pid: u32::MAX, ..other };
        std::mem::forget(write(dir.path(), &stale).unwrap());
        assert!(matches!(read(dir.path()), Err(Error::NotRunning { .. })));
        claim(dir.path()).unwrap();
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
