//! The helper processes the toolkit starts (QEMU, the NFS server, build tools), the
//! programs on `PATH`, and waiting for a child that owns the terminal.

use nix::sys::signal::SigSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The program `name` on `PATH`, as `execvp` would find it: the first executable file of
/// that name. `None` when there is none, or no `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// Like [`find_program`], searching `dirs` instead of `PATH`.
pub fn find_program_in<D: AsRef<Path>>(name: &str, dirs: impl IntoIterator<Item = D>) -> Option<PathBuf> {
    let dirs = std::env::join_paths(dirs.into_iter().map(|dir| dir.as_ref().to_owned())).ok()?;
    which::which_in(name, Some(dirs), "/").ok()
}

/// Sets up a helper process (QEMU, the NFS server) as ours: it starts with no signal
/// blocked (std passes our mask on, and `appliance run` blocks SIGINT, SIGTERM and SIGHUP
/// to read them from a signalfd: QEMU would then ignore SIGTERM), and it gets SIGTERM when
/// the thread that spawns it dies, so that a killed `appliance run` (SIGKILL, which it
/// cannot catch) leaves no VM or server behind. The death signal survives `execve` (our
/// helpers are not set-user-ID); spawn from a thread that lives as long as the child.
pub fn as_our_child(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // system calls (sigprocmask, prctl, getppid); it allocates only on the error path, as
    // std's own child setup does.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The parent died before the prctl: nobody will send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent exited"));
            }
            Ok(())
        });
    }
}

/// SIGINT and SIGQUIT ignored while it lives, as system(3) does while its child runs: a
/// Ctrl-C at the terminal is for the child (which shares our process group), not for
/// the process waiting for it. The previous handlers come back when it is dropped.
/// Create it after spawning the child: an ignored signal stays ignored across exec.
pub struct IgnoreInterrupts {
    previous: Vec<(nix::sys::signal::Signal, nix::sys::signal::SigHandler)>,
}

impl IgnoreInterrupts {
    pub fn install() -> IgnoreInterrupts {
        use nix::sys::signal::{SigHandler, Signal, signal};
        let mut previous = Vec::new();
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            // SAFETY: installs SIG_IGN, which runs no code in this process.
            if let Ok(old) = unsafe { signal(sig, SigHandler::SigIgn) } {
                previous.push((sig, old));
            }
        }
        IgnoreInterrupts { previous }
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, handler) in self.previous.drain(..) {
            // SAFETY: puts back the handler that was installed before `install`, unchanged.
            let _ = unsafe { nix::sys::signal::signal(sig, handler) };
        }
    }
}
