//! Writing to the console (standard output and error), whole buffers at a time.

use alloc::format;
use alloc::string::String;
use rustix::fd::BorrowedFd;
use rustix::io::Errno;

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
    let _ = write_all(crate::sys::stderr(), buf);
}

/// Writes to standard output, ignoring failures.
pub fn write_out(buf: &[u8]) {
    let _ = write_all(crate::sys::stdout(), buf);
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
