//! Writing to the console (standard output and error), whole buffers at a time.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use core::time::Duration;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{BorrowedFd, IntoRawFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::status::t_us;

/// How long one of our writes may wait for a console that does not take it (a UART nobody
/// reads, with flow control; a pipe nobody empties). After that the stream counts as
/// stalled: later writes go only as far as it takes them at once, until it takes one
/// whole again, so that the init never hangs on its console (the phases' output is in
/// the output file all the same).
pub const CONSOLE_WAIT: Duration = Duration::from_secs(2);

/// One of our standard streams, as we write to it ourselves.
struct Stream {
    /// A non-blocking description of our own (-1: none yet, the blocking standard stream).
    own: AtomicI32,
    stalled: AtomicBool,
}

static OUT: Stream = Stream { own: AtomicI32::new(-1), stalled: AtomicBool::new(false) };
static ERR: Stream = Stream { own: AtomicI32::new(-1), stalled: AtomicBool::new(false) };

/// Opens standard output and error anew, non-blocking, for our own writes, when they are
/// terminals, pipes or FIFOs: the programs that share the standard descriptions keep their
/// blocking writes. Done once, after the first phase has started (it costs a few kernel
/// calls the application need not wait for); a no-op after that.
pub fn own_streams() {
    for (fd, stream) in [(1, &OUT), (2, &ERR)] {
        if stream.own.load(Ordering::Relaxed) >= 0 {
            continue;
        }
        let Ok(stat) = rustix::fs::fstat(crate::sys::borrow_raw(fd)) else { continue };
        let kind = FileType::from_raw_mode(stat.st_mode);
        if !matches!(kind, FileType::CharacterDevice | FileType::Fifo) {
            // A file never blocks; a socket cannot be opened through /proc.
            continue;
        }
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if let Ok(own) = rustix::fs::open(format!("/proc/self/fd/{fd}").as_str(), flags, Mode::empty()) {
            stream.own.store(own.into_raw_fd(), Ordering::Relaxed);
        }
    }
}

/// Writes `buf` to `stream`: bounded by [`CONSOLE_WAIT`] on our own description, as
/// [`write_all`] on the standard one (`fd`) before [`own_streams`].
fn write_stream(stream: &Stream, fd: BorrowedFd<'_>, buf: &[u8]) {
    let own = stream.own.load(Ordering::Relaxed);
    if own < 0 {
        let _ = write_all(fd, buf);
        return;
    }
    let wait = if stream.stalled.load(Ordering::Relaxed) { Duration::ZERO } else { CONSOLE_WAIT };
    let taken = write_within(crate::sys::borrow_raw(own), buf, wait).is_ok();
    let was_stalled = stream.stalled.swap(!taken, Ordering::Relaxed);
    if !taken && !was_stalled {
        // To the kernel's log only: the console is what does not take it.
        crate::logger::kmsg_only(
            "the console does not take output (nobody reads it?): what it cannot take at once is \
             not shown there until it takes a write again; the phases' output file has all of it",
        );
    }
}

/// The terminal behind /dev/console (the last entry of /sys/class/tty/console/active),
/// which a shell can take as its controlling terminal; /dev/console itself cannot.
pub fn terminal() -> String {
    crate::read_to_string("/sys/class/tty/console/active")
        .and_then(|s| s.split_whitespace().last().map(|t| format!("/dev/{t}")))
        .unwrap_or_else(|| String::from("/dev/console"))
}

/// Writes all of `buf`, retrying on short writes and EINTR.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes to standard error, ignoring failures (there is nowhere else to report them).
pub fn write_err(buf: &[u8]) {
    write_stream(&ERR, crate::sys::stderr(), buf);
}

/// Writes to standard output, ignoring failures.
pub fn write_out(buf: &[u8]) {
    write_stream(&OUT, crate::sys::stdout(), buf);
}

/// Writes all of `buf` to the non-blocking `fd`, waiting up to `wait` in all for it to
/// take more when it is full; `TIMEDOUT` then (part of `buf` may have been written).
pub fn write_within(fd: BorrowedFd<'_>, mut buf: &[u8], wait: Duration) -> Result<(), Errno> {
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

/// `println!` to standard output.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        let mut s = alloc::format!($($t)*);
        s.push('\n');
        $crate::console::write_out(s.as_bytes());
    }};
}

/// An error number as text. rustix without std prints only "os error N", and the messages
/// of PID 1 are read by people at a console.
pub struct Describe(pub Errno);

impl core::fmt::Display for Describe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self.0 {
            Errno::NOENT => "no such file or directory",
            Errno::ACCESS => "permission denied",
            Errno::PERM => "operation not permitted",
            Errno::NOEXEC => "exec format error (not a program, or a script without #!)",
            Errno::NOTDIR => "not a directory",
            Errno::ISDIR => "is a directory",
            Errno::BUSY => "device or resource busy",
            Errno::NODEV => "no such device (not supported by this kernel?)",
            Errno::NXIO => "no such device or address",
            Errno::INVAL => "invalid argument",
            Errno::NOMEM => "out of memory",
            Errno::NOSPC => "no space left on device",
            Errno::ROFS => "read-only file system",
            Errno::EXIST => "file exists",
            Errno::IO => "input/output error",
            Errno::AGAIN => "resource temporarily unavailable",
            Errno::TXTBSY => "text file busy",
            Errno::TOOBIG => "argument list too long",
            Errno::LOOP => "too many levels of symbolic links",
            Errno::NAMETOOLONG => "file name too long",
            Errno::TIMEDOUT => "timed out",
            Errno::CONNREFUSED => "connection refused",
            Errno::HOSTUNREACH => "no route to host",
            Errno::NETUNREACH => "network is unreachable",
            Errno::NETDOWN => "network is down",
            Errno::ADDRNOTAVAIL => "address not available",
            _ => return write!(f, "error {}", self.0.raw_os_error()),
        };
        write!(f, "{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_text() {
        assert_eq!(alloc::format!("{}", Describe(Errno::NOENT)), "no such file or directory");
        assert_eq!(alloc::format!("{}", Describe(Errno::from_raw_os_error(200))), "error 200");
    }
}
