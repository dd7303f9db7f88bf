//! Stopping a running appliance gracefully: press its ACPI power button and Ctrl-Alt-Del
//! over QMP ([`qmp::request_stop`]: a kernel hears one or the other without any module
//! loaded for it), let the init run its shutdown sequence (the running program gets
//! SIGTERM, or SIGINT for Ctrl-Alt-Del, the status record gets its `end` event, file
//! systems are synced), and kill QEMU only when that has not happened within a grace
//! period.
//!
//! Two ways in: `appliance stop <app-dir>` from anywhere ([`stop`]), and SIGINT, SIGTERM
//! or SIGHUP to `appliance run` itself ([`GracefulStop`], a [`Watch`] of its run loop;
//! a second signal kills at once). On a terminal, Ctrl-C goes to the guest's console
//! instead (QEMU's `signal=off`), as on a serial line; there Ctrl-A X quits QEMU at once,
//! and Ctrl-A C opens the QEMU monitor, whose `system_powerdown` is the graceful way.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::vm::qmp;
use crate::vm::running::{self, Running};
use crate::vm::{Tick, Watch};

/// How long the guest gets to power off before QEMU is killed: the init gives the
/// running program 5 s (`appStopGrace`), every other process 2 s more, and TCG is slow.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The guest's grace for its program: `appStopGrace` on the kernel command line `append`,
/// or its default.
pub fn guest_grace(append: &str) -> u32 {
    appliance_cmdline::parse(append.as_bytes()).config.stop_grace_or_default()
}

/// A warning when the guest's own grace for its program (`appStopGrace` on the kernel
/// command line `append`, 5 s without it) is not shorter than `grace`, the host's for the
/// whole guest: QEMU would be killed while the program still had time to end, and before
/// the guest saved its results and powered off.
pub fn grace_conflict(append: &str, grace: Duration) -> Option<String> {
    guest_grace_conflict(guest_grace(append), grace, "--stop-grace")
}

/// [`grace_conflict`] with the guest's grace known, and the host's from `option`.
pub fn guest_grace_conflict(guest: u32, grace: Duration, option: &str) -> Option<String> {
    (u64::from(guest) >= grace.as_secs()).then(|| {
        format!(
            "the guest gives its program {guest} s to end after a stop (appStopGrace), but QEMU is killed {} s \
             after the stop request ({option}): raise {option} above {guest} s, with time for the results and the \
             power-off",
            grace.as_secs()
        )
    })
}

/// Bound on each QMP read and write.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals that ask `appliance run` to stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off within the grace period.
    PoweredOff(Duration),
    /// QEMU was killed after this grace: the guest did not power off in time, or QMP
    /// failed.
    Killed(Duration),
}

/// `appliance stop`: asks the VM running from `app_dir` to power off, waits up to
/// `grace` (by default the run's own, `run --stop-grace`) for its `appliance run` to end,
/// then kills QEMU.
pub fn stop(app_dir: &Path, grace: Option<Duration>) -> Result<Outcome, running::Error> {
    let record = running::read(app_dir)?;
    let grace = stop_grace(&record, grace);
    if let Some(warning) = record.guest_stop_grace_s.and_then(|guest| guest_grace_conflict(guest, grace, "--grace")) {
        log::warn!("{warning}");
    }
    let started = Instant::now();
    match qmp::request_stop(&record.qmp, QMP_TIMEOUT) {
        Ok(()) => {
            while started.elapsed() < grace {
                if running::read(app_dir).is_err() {
                    return Ok(Outcome::PoweredOff(started.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            log::warn!("the guest did not power off within {} s of the stop request: killing QEMU", grace.as_secs());
        }
        Err(e) => log::warn!("{e}: killing QEMU"),
    }
    kill(record.qemu_pid);
    Ok(Outcome::Killed(grace))
}

/// The grace of a stop: the one asked for, else the run's own, else [`DEFAULT_GRACE`].
fn stop_grace(record: &Running, asked: Option<Duration>) -> Duration {
    asked.or(record.stop_grace_s.map(Duration::from_secs)).unwrap_or(DEFAULT_GRACE)
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and threads it starts later; QEMU
/// and the NFS server start with a clean mask, see [`crate::host::process::as_our_child`]) and
/// returns a descriptor to read them from.
pub fn catch_stop_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// The [`Watch`] of `appliance run`: writes the run record once QEMU runs, and turns a
/// stop signal into a stop request to the guest followed, after the grace period (or a
/// second signal), by killing QEMU.
pub struct GracefulStop {
    signals: SignalFd,
    app_dir: PathBuf,
    qmp: PathBuf,
    ssh_port: Option<u16>,
    grace: Duration,
    /// The guest's grace for its program (`appStopGrace`), for the run record.
    guest_grace: u32,
    own_group: bool,
    deadline: Option<Instant>,
    record: Option<running::Record>,
    /// Why QEMU was killed, once it was.
    killed: Option<String>,
}

impl GracefulStop {
    /// `grace` is the host's for the whole guest, `guest_grace` the guest's for its
    /// program (`appStopGrace`): both go into the run record for `appliance stop`.
    pub fn new(
        signals: SignalFd,
        app_dir: &Path,
        qmp: &Path,
        ssh_port: Option<u16>,
        grace: Duration,
        guest_grace: u32,
    ) -> Self {
        let own_group = !nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
        GracefulStop {
            signals,
            app_dir: app_dir.to_owned(),
            qmp: qmp.to_owned(),
            ssh_port,
            grace,
            guest_grace,
            own_group,
            deadline: None,
            record: None,
            killed: None,
        }
    }

    fn on_signal(&mut self, signo: u32) -> Tick {
        if self.deadline.is_some() {
            eprintln!("appliance: signal {signo} again: killing the VM");
            return self.kill(format!("VM killed at a second signal ({signo}), before the guest powered off"));
        }
        self.power_off(&format!("signal {signo}"), "; signal again to kill now")
    }

    /// Asks the guest to shut down ([`qmp::request_stop`]), and kills QEMU when the grace
    /// period is over.
    fn power_off(&mut self, why: &str, hint: &str) -> Tick {
        eprintln!(
            "appliance: {why}: asking the guest to shut down (killing it after {} s{hint})",
            self.grace.as_secs()
        );
        if let Err(e) = qmp::request_stop(&self.qmp, QMP_TIMEOUT) {
            eprintln!("appliance: {e}: killing the VM");
            return self.kill(format!("VM killed: the stop request could not be sent ({e})"));
        }
        self.deadline = Some(Instant::now() + self.grace);
        Tick::Continue
    }

    fn kill(&mut self, why: String) -> Tick {
        self.killed = Some(why);
        Tick::Kill
    }
}

impl Watch for GracefulStop {
    fn own_process_group(&self) -> bool {
        self.own_group
    }

    fn started(&mut self, pid: u32) {
        let record = Running {
            appliance_pid: std::process::id(),
            qemu_pid: pid,
            qmp: self.qmp.clone(),
            ssh_port: self.ssh_port,
            stop_grace_s: Some(self.grace.as_secs()),
            guest_stop_grace_s: Some(self.guest_grace),
        };
        match running::write(&self.app_dir, &record) {
            Ok(guard) => self.record = Some(guard),
            Err(e) => log::warn!("{e}: `appliance stop` and `appliance ssh` will not find this run"),
        }
    }

    /// As a stop signal: the guest powers off through its shutdown (results step, the end
    /// of the status record), and is killed only after the grace period. A stop already
    /// under way keeps its own deadline.
    fn time_up(&mut self, after: Duration) -> Tick {
        if self.deadline.is_some() {
            return Tick::Continue;
        }
        self.power_off(&format!("--timeout: {} s are up", after.as_secs()), "")
    }

    fn tick(&mut self) -> Tick {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if self.on_signal(info.ssi_signo) == Tick::Kill {
                return Tick::Kill;
            }
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                let grace = self.grace.as_secs();
                eprintln!(
                    "appliance: the guest did not power off within {grace} s of the stop request: killing the VM"
                );
                self.kill(format!(
                    "VM killed: the guest did not power off within {grace} s of the stop request (it did not hear \
                     it, or its shutdown hung)"
                ))
            }
            _ => Tick::Continue,
        }
    }

    fn kill_reason(&self) -> Option<String> {
        self.killed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_grace_not_shorter_than_the_hosts_is_named() {
        assert_eq!(grace_conflict("console=ttyS0", DEFAULT_GRACE), None);
        assert_eq!(grace_conflict("appStopGrace=20", DEFAULT_GRACE), None);
        let w = grace_conflict("appStopGrace=30", DEFAULT_GRACE).unwrap();
        assert!(w.starts_with("the guest gives its program 30 s to end after a stop (appStopGrace), but QEMU"), "{w}");
        assert!(w.contains("killed 30 s after the stop request (--stop-grace)"), "{w}");
        // The guest's default, against a host grace cut below it.
        assert!(grace_conflict("", Duration::from_secs(5)).unwrap().contains("its program 5 s"));
        // The last word wins, as in the guest.
        assert_eq!(grace_conflict("appStopGrace=60 appStopGrace=2", Duration::from_secs(10)), None);
    }

    #[test]
    fn a_stop_takes_the_grace_asked_for_else_the_runs_own() {
        assert!(
            guest_grace_conflict(60, Duration::from_secs(30), "--grace")
                .unwrap()
                .contains("(--grace): raise --grace above 60 s")
        );
        let mut record = Running {
            appliance_pid: 1,
            qemu_pid: 2,
            qmp: "/tmp/q.sock".into(),
            ssh_port: None,
            stop_grace_s: Some(90),
            guest_stop_grace_s: Some(60),
        };
        assert_eq!(stop_grace(&record, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(stop_grace(&record, None), Duration::from_secs(90));
        record.stop_grace_s = None;
        assert_eq!(stop_grace(&record, None), DEFAULT_GRACE);
    }
}
