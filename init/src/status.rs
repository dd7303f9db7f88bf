//! Writes the status record (see `appliance_cmdline::status`) to its port.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use appliance_cmdline::status::{Event, Exit, OomKill, TIMED_OUT};
use core::cell::{Cell, RefCell};
use core::time::Duration;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};

use crate::console::{Describe, write_within};
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

/// Opens the record's port when [`StatusWriter::connect`] asks for it.
pub type Opener = Box<dyn FnOnce() -> Option<OwnedFd>>;

/// The record's destination; writes are dropped when there is none.
pub struct StatusWriter {
    port: RefCell<Port>,
    /// The port did not take a line within [`LINE_WAIT`] (and has not taken one since).
    stalled: Cell<bool>,
}

enum Port {
    /// Not open yet: the lines wait here, in order, until [`StatusWriter::connect`].
    Deferred {
        open: Opener,
        lines: Vec<u8>,
    },
    Open(Option<OwnedFd>),
}

impl StatusWriter {
    /// Opens `path` for the record (a serial port, or a file in supervisor mode).
    /// Non-blocking: a port that does not send must not hold the appliance. `raw`: a
    /// terminal is put in raw mode (no `\r\n` translation, no echo); not the console's.
    pub fn open(path: &str, raw: bool) -> StatusWriter {
        StatusWriter::with(Port::Open(open_port(path, raw)))
    }

    /// A record whose port `open` opens only at [`StatusWriter::connect`]; the lines
    /// emitted before wait in memory. PID 1 connects once the first phase has started:
    /// opening a serial port and sending its first line is, under emulation, more
    /// first-time kernel code (the tty layer, the UART's interrupts) than everything else
    /// the init does before the application, and the application does not need it.
    pub fn deferred(open: Opener) -> StatusWriter {
        StatusWriter::with(Port::Deferred { open, lines: Vec::new() })
    }

    /// No record at all.
    pub fn none() -> StatusWriter {
        StatusWriter::with(Port::Open(None))
    }

    fn with(port: Port) -> StatusWriter {
        StatusWriter { port: RefCell::new(port), stalled: Cell::new(false) }
    }

    /// Opens a deferred port and sends the lines that waited for it; nothing when the
    /// port is open already.
    pub fn connect(&self) {
        let taken = {
            let mut port = self.port.borrow_mut();
            if matches!(*port, Port::Open(_)) {
                return;
            }
            core::mem::replace(&mut *port, Port::Open(None))
        };
        let Port::Deferred { open, lines } = taken else { return };
        // The opener may log, and the logger never writes the record: no borrow is held.
        let fd = open();
        *self.port.borrow_mut() = Port::Open(fd);
        if !lines.is_empty() {
            self.write(&lines);
        }
    }

    pub fn emit(&self, event: &Event) {
        let line = event.to_line();
        if let Port::Deferred { lines, .. } = &mut *self.port.borrow_mut() {
            lines.extend_from_slice(line.as_bytes());
            return;
        }
        self.write(line.as_bytes());
    }

    fn write(&self, bytes: &[u8]) {
        let port = self.port.borrow();
        let Port::Open(Some(fd)) = &*port else { return };
        let wait = if self.stalled.get() { Duration::ZERO } else { LINE_WAIT };
        let written = write_within(fd.as_fd(), bytes, wait);
        drop(port);
        match written {
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

    /// The end of a phase; `timed_out`: the init ended it at its time limit; `oom_killed`:
    /// what the out-of-memory killer ended meanwhile.
    pub fn phase_end(&self, kind: PhaseKind, exit: Exit, timed_out: bool, oom_killed: Vec<OomKill>) {
        self.emit(&Event::PhaseEnd {
            t_us: t_us(),
            phase: String::from(kind.name()),
            index: kind.index(),
            exit,
            status: if timed_out { TIMED_OUT } else { exit.status() },
            timed_out,
            oom_killed,
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
        self.connect();
        if let Port::Open(Some(fd)) = &*self.port.borrow()
            && rustix::termios::isatty(fd)
        {
            let _ = rustix::termios::tcdrain(fd);
        }
    }
}

/// Opens `path` for the record, as [`StatusWriter::open`] says.
pub fn open_port(path: &str, raw: bool) -> Option<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::CREATE | OFlags::APPEND | OFlags::NONBLOCK;
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
    fd
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;

    fn end(status: i32) -> Event {
        Event::End { t_us: 1, action: String::from("poweroff"), status }
    }

    /// What the pipe holds now (the writers are gone or idle).
    fn read_all(fd: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        rustix::io::ioctl_fionbio(fd, true).unwrap();
        while let Ok(n @ 1..) = rustix::io::read(fd, &mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_deferred_record_keeps_its_lines_until_connect_then_writes_them_in_order() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let opened = Rc::new(Cell::new(0));
        let count = opened.clone();
        let mut w = Some(w);
        let status = StatusWriter::deferred(Box::new(move || {
            count.set(count.get() + 1);
            w.take()
        }));
        status.emit(&end(1));
        status.error(String::from("two"));
        assert_eq!(opened.get(), 0, "opened before connect");
        assert_eq!(read_all(&r), "");
        status.connect();
        status.connect();
        assert_eq!(opened.get(), 1, "the port is opened once");
        status.emit(&end(3));
        let text = read_all(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(Event::from_line(lines[0]).unwrap(), end(1));
        assert!(matches!(Event::from_line(lines[1]).unwrap(), Event::Error { message, .. } if message == "two"));
        assert_eq!(Event::from_line(lines[2]).unwrap(), end(3));
    }

    #[test]
    fn drain_connects_a_deferred_record() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut w = Some(w);
        let status = StatusWriter::deferred(Box::new(move || w.take()));
        status.emit(&end(0));
        status.drain();
        assert_eq!(Event::from_line(read_all(&r).trim_end()).unwrap(), end(0));
    }
}
