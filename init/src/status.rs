//! Writes the status record (see `appliance_cmdline::status`) to its port.

use alloc::string::String;
use appliance_cmdline::status::{Event, Exit, TIMED_OUT};
use core::cell::Cell;
use core::time::Duration;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::console::Describe;
use crate::plan::PhaseKind;

/// Microseconds of CLOCK_BOOTTIME: time since the kernel started.
pub fn t_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_nsec as u64 / 1000)
}

/// How long one line of the record may wait for a port that does not take it (a UART
/// nobody reads, with flow control; a pipe nobody empties). After that the port counts as
/// stalled: later lines are written only as far as it takes them at once, so the
/// appliance never waits on it again.
pub const LINE_WAIT: Duration = Duration::from_secs(2);

/// The record's destination; writes are dropped when there is none.
pub struct StatusWriter {
    fd: Option<OwnedFd>,
    /// The port did not take a line within [`LINE_WAIT`] (and has not taken one since).
    stalled: Cell<bool>,
}

impl StatusWriter {
    /// Opens `path` for the record (a serial port, or a file in supervisor mode).
    /// Non-blocking: a port that does not send must not hold the appliance. `raw`: a
    /// terminal is put in raw mode (no `\r\n` translation, no echo); not the console's.
    pub fn open(path: &str, raw: bool) -> StatusWriter {
        let flags =
            OFlags::WRONLY | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::CREATE | OFlags::APPEND | OFlags::NONBLOCK;
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644)).ok();
        if let Some(fd) = &fd
            && raw
            && rustix::termios::isatty(fd)
            && let Ok(mut t) = rustix::termios::tcgetattr(fd)
        {
            // Raw: no "\r\n" translation, nothing echoed.
            t.make_raw();
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &t);
        }
        StatusWriter { fd, stalled: Cell::new(false) }
    }

    /// No record at all.
    pub fn none() -> StatusWriter {
        StatusWriter { fd: None, stalled: Cell::new(false) }
    }

    pub fn emit(&self, event: &Event) {
        let Some(fd) = &self.fd else { return };
        let wait = if self.stalled.get() { Duration::ZERO } else { LINE_WAIT };
        match write_within(fd.as_fd(), event.to_line().as_bytes(), wait) {
            Ok(()) => self.stalled.set(false),
            Err(e) => {
                if !self.stalled.replace(true) {
                    log::warn!("the status port does not take the record ({}): lines are dropped", Describe(e));
                }
            }
        }
    }

    pub fn phase_start(&self, kind: PhaseKind) {
        self.emit(&Event::PhaseStart { t_us: t_us(), phase: String::from(kind.name()), index: kind.index() });
    }

    /// The end of a phase; `timed_out`: the init ended it at its time limit.
    pub fn phase_end(&self, kind: PhaseKind, exit: Exit, timed_out: bool) {
        self.emit(&Event::PhaseEnd {
            t_us: t_us(),
            phase: String::from(kind.name()),
            index: kind.index(),
            exit,
            status: if timed_out { TIMED_OUT } else { exit.status() },
            timed_out,
        });
    }

    /// A console shell starts on `tty` in `phase` (`debug` or `end`).
    pub fn shell(&self, phase: &str, tty: &str) {
        self.emit(&Event::Shell { t_us: t_us(), phase: String::from(phase), tty: String::from(tty) });
    }

    pub fn error(&self, message: String) {
        self.emit(&Event::Error { t_us: t_us(), message });
    }

    /// Waits until everything written has left the port: a power-off right after a
    /// write would otherwise cut the record short. Unbounded: PID 1 calls it in a child
    /// with a deadline (`shutdown::bounded`).
    pub fn drain(&self) {
        if let Some(fd) = &self.fd
            && rustix::termios::isatty(fd)
        {
            let _ = rustix::termios::tcdrain(fd);
        }
    }
}

/// Writes all of `buf` to the non-blocking `fd`, waiting up to `wait` in all for it to
/// take more when it is full; `TIMEDOUT` then (part of `buf` may have been written).
fn write_within(fd: BorrowedFd<'_>, mut buf: &[u8], wait: Duration) -> Result<(), Errno> {
    let deadline = t_us().saturating_add(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX));
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let left_us = deadline.saturating_sub(t_us());
                if left_us == 0 {
                    return Err(Errno::TIMEDOUT);
                }
                let ts = rustix::time::Timespec {
                    tv_sec: (left_us / 1_000_000) as i64,
                    tv_nsec: ((left_us % 1_000_000) * 1000) as i64,
                };
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
