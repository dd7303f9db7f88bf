//! Writing to the console (standard output and error), whole buffers at a time.

use rustix::fd::BorrowedFd;
use rustix::io::Errno;

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
