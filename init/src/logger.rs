//! The `log` backend: records go to `/dev/kmsg` with their level, so they interleave with
//! the kernel's messages and carry its timestamps; before `/dev` exists, or when the
//! kernel would not show a warning on the console (`quiet`), they go to the console too.

use alloc::format;
use core::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use log::{Level, LevelFilter, Log, Metadata, Record};
use rustix::fd::IntoRawFd;
use rustix::fs::{Mode, OFlags};

static KMSG: AtomicI32 = AtomicI32::new(-1);
/// The kernel's console log level: records below it reach the console through the kernel.
/// Read at the first warning, since only warnings and errors need it: [`UNKNOWN`] until then.
static CONSOLE_LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = u8::MAX;

struct Logger;
static LOGGER: Logger = Logger;

/// Installs the logger at `level`. Call `attach_kmsg` once `/dev` is mounted.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Sends records to `/dev/kmsg` from now on.
pub fn attach_kmsg() {
    if let Ok(fd) = rustix::fs::open("/dev/kmsg", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        KMSG.store(fd.into_raw_fd(), Ordering::Relaxed);
    }
}

/// The console log level, the first field of /proc/sys/kernel/printk (0 when it cannot
/// be read: the kernel shows nothing, so we do); read once.
fn console_level() -> u8 {
    let known = CONSOLE_LEVEL.load(Ordering::Relaxed);
    if known != UNKNOWN {
        return known;
    }
    let mut buf = [0u8; 64];
    let level = rustix::fs::open("/proc/sys/kernel/printk", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .ok()
        .and_then(|fd| rustix::io::read(&fd, &mut buf).ok())
        .and_then(|n| core::str::from_utf8(buf.get(..n).unwrap_or_default()).ok())
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<u8>().ok())
        .unwrap_or(0);
    CONSOLE_LEVEL.store(level, Ordering::Relaxed);
    level
}

/// A warning for the kernel's log and not the console (when the console is what it is
/// about); nothing before [`attach_kmsg`].
pub fn kmsg_only(message: &str) {
    let kmsg = KMSG.load(Ordering::Relaxed);
    if kmsg >= 0 {
        let line = format!("<{}>appliance-init: warning: {message}\n", priority(Level::Warn));
        let _ = rustix::io::write(crate::sys::borrow_raw(kmsg), line.as_bytes());
    }
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prio = priority(record.level());
        let kmsg = KMSG.load(Ordering::Relaxed);
        if kmsg >= 0 {
            let line = format!("<{prio}>appliance-init: {}\n", record.args());
            let _ = rustix::io::write(crate::sys::borrow_raw(kmsg), line.as_bytes());
        }
        // Without kmsg everything; with it, warnings and errors the kernel does not show.
        let to_console = kmsg < 0 || (record.level() <= Level::Warn && prio >= console_level());
        if to_console {
            let tag = match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            crate::console::write_err(format!("appliance-init: {tag}{}\n", record.args()).as_bytes());
        }
    }

    fn flush(&self) {}
}
