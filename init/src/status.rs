//! Writes the status record (see `appliance_cmdline::status`) to its port.

use alloc::string::String;
use appliance_cmdline::status::{Event, Exit};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};

use crate::plan::PhaseKind;

/// Microseconds of CLOCK_BOOTTIME: time since the kernel started.
pub fn t_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_nsec as u64 / 1000)
}

/// The record's destination; writes are dropped when there is none.
pub struct StatusWriter {
    fd: Option<OwnedFd>,
}

impl StatusWriter {
    /// Opens `path` for the record (a serial port, or a file in supervisor mode).
    pub fn open(path: &str) -> StatusWriter {
        let flags = OFlags::WRONLY | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::CREATE | OFlags::APPEND;
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644)).ok();
        if let Some(fd) = &fd
            && rustix::termios::isatty(fd)
            && let Ok(mut t) = rustix::termios::tcgetattr(fd)
        {
            // Raw: no "\r\n" translation, nothing echoed.
            t.make_raw();
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &t);
        }
        StatusWriter { fd }
    }

    /// No record at all.
    pub fn none() -> StatusWriter {
        StatusWriter { fd: None }
    }

    pub fn emit(&self, event: &Event) {
        if let Some(fd) = &self.fd {
            let _ = crate::console::write_all(rustix::fd::AsFd::as_fd(fd), event.to_line().as_bytes());
        }
    }

    pub fn phase_start(&self, kind: PhaseKind) {
        self.emit(&Event::PhaseStart { t_us: t_us(), phase: String::from(kind.name()), index: kind.index() });
    }

    pub fn phase_end(&self, kind: PhaseKind, exit: Exit) {
        self.emit(&Event::PhaseEnd {
            t_us: t_us(),
            phase: String::from(kind.name()),
            index: kind.index(),
            exit,
            status: exit.status(),
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
    /// write would otherwise cut the record short.
    pub fn drain(&self) {
        if let Some(fd) = &self.fd
            && rustix::termios::isatty(fd)
        {
            let _ = rustix::termios::tcdrain(fd);
        }
    }
}
