//! The guest half of a rendezvous: tell the host's rendezvous server (`appRendezvous`,
//! over the control NIC) that this node reached a named point, and wait until every node
//! of the run has, or the time is up. The line protocol is `appliance_cmdline::segment`'s.
//! Used by `appliance-rendezvous` (for scripts and `appCmds`) and by programs built here
//! (`appliance-echo`), so that no image needs SSH or a shell for it.

use alloc::string::String;
use core::fmt;

use appliance_cmdline::segment;
use appliance_cmdline::status::Event;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType, sockopt};

use crate::console::Describe;

/// How a rendezvous ended, when not with every node there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `APP_RENDEZVOUS` or `APP_MYNODE` is missing or not valid.
    Setup(&'static str),
    /// The server could not be reached or the connection broke.
    Io { what: &'static str, errno: Errno },
    /// The others did not all arrive within the time.
    TimedOut { point: String, seconds: u32 },
    /// The server said something else.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Setup(what) => write!(f, "{what}"),
            Error::Io { what, errno } => write!(f, "cannot {what} the rendezvous server: {}", Describe(*errno)),
            Error::TimedOut { point, seconds } => {
                write!(f, "not every node reached `{point}` within {seconds} s")
            }
            Error::Protocol(line) => write!(f, "unexpected answer from the rendezvous server: {line:?}"),
        }
    }
}

/// The value of `name` in `envp` (`NAME=value` strings).
pub fn env<'a>(envp: &'a [String], name: &str) -> Option<&'a str> {
    envp.iter().find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// Reaches `point` as this node (`APP_MYNODE`) and waits up to `seconds` for the others,
/// then adds a `rendezvous` event to the status record: when the node arrived, how long it
/// waited, and how it ended.
pub fn reach(envp: &[String], point: &str, seconds: u32) -> Result<(), Error> {
    let arrived = crate::status::t_us();
    let result = ask(envp, point, seconds);
    let now = crate::status::t_us();
    record(&Event::Rendezvous {
        t_us: now,
        node: env(envp, "APP_MYNODE").unwrap_or_default().into(),
        point: point.into(),
        ok: result.is_ok(),
        waited_us: now.saturating_sub(arrived),
        error: result.as_ref().err().map(|e| alloc::format!("{e}")),
    });
    result
}

/// Writes `event` to the status port the command line names (`appStatus`), when it is a
/// serial port: the init writes there only between phases, and a terminal takes each
/// write whole, so lines do not mix. A virtio-serial port admits one opener, the init, and
/// gets no such event; nor does an appliance without a record.
fn record(event: &Event) {
    let cmdline = crate::read_to_string("/proc/cmdline").unwrap_or_default();
    let port = appliance_cmdline::parse(cmdline.as_bytes()).config.status_port;
    // A terminal's device only: never a file made by the name (outside a VM).
    let is_tty = |path: &str| {
        rustix::fs::stat(path).is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_char_device())
    };
    if let Some(path) = port.serial_device().filter(|p| is_tty(p)) {
        // Not raw: the init made the port raw already, and the console's own line (a
        // machine with one serial port) keeps the console's settings.
        crate::status::StatusWriter::open(&path, false).emit(event);
    }
}

fn ask(envp: &[String], point: &str, seconds: u32) -> Result<(), Error> {
    let server = env(envp, "APP_RENDEZVOUS").ok_or(Error::Setup("APP_RENDEZVOUS is not set (appRendezvous)"))?;
    let (addr, token) = segment::parse_rendezvous(server).ok_or(Error::Setup("APP_RENDEZVOUS is not valid"))?;
    let node = env(envp, "APP_MYNODE").ok_or(Error::Setup("APP_MYNODE is not set (appNode)"))?;
    let io = |what| move |errno| Error::Io { what, errno };
    let sock = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).map_err(io("open a socket to"))?;
    rustix::net::connect(&sock, &addr).map_err(io("connect to"))?;
    // The server answers within `seconds`; a little more for the network and a slow host.
    let bound = core::time::Duration::from_secs(u64::from(seconds) + 10);
    sockopt::set_socket_timeout(&sock, sockopt::Timeout::Recv, Some(bound)).map_err(io("set a timeout on"))?;
    let request = segment::request(token, node, point, seconds);
    crate::console::write_all(rustix::fd::AsFd::as_fd(&sock), request.as_bytes()).map_err(io("write to"))?;
    let mut answer = alloc::vec::Vec::new();
    let mut buf = [0u8; 64];
    while !answer.contains(&b'\n') {
        match rustix::io::read(&sock, &mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(Error::TimedOut { point: point.into(), seconds }),
            Err(e) => return Err(io("read from")(e)),
        }
    }
    match String::from_utf8_lossy(&answer).trim() {
        "go" => Ok(()),
        "timeout" => Err(Error::TimedOut { point: point.into(), seconds }),
        other => Err(Error::Protocol(other.into())),
    }
}
