//! `appEnd=kexec`: fetch the app dir `appKexec` names over HTTP, check every file against
//! the `SHA256SUMS` that comes with it, and load its kernel with `kexec_file_load(2)`;
//! the shutdown then ends in `reboot(LINUX_REBOOT_CMD_KEXEC)` instead of a power-off.
//!
//! The HTTP client is written here, a GET over HTTP/1.0 and a response head parser: the
//! init is `no_std` without a C library, and the HTTP client crates need std (and most an
//! async runtime) for what is one request at a time to a server we name by address.
//! HTTP/1.0 keeps it small: no chunked encoding, the server closes after the body.
//!
//! The kernel and the initrd go into memfds, which `kexec_file_load` reads like files:
//! nothing is written to the root file system, and nothing is left to clean up when the
//! check fails. Every step is bounded in time (connect, each read), so a dead server
//! ends in an error and a power-off, never in a hang.
//!
//! The response head parser and the plan are pure and unit-tested; the fetch is tested
//! against a real server on loopback; the load needs a VM (`tests/kexec.rs`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use appliance_cmdline::ResultsTo;
use appliance_cmdline::kexec::{KEXEC_FILES, KexecFrom, SUMS_FILE, SumsError, hex, next_cmdline, parse_sums, sum_of};
use appliance_cmdline::status::Event;
use appliance_cmdline::{Config, End, MAX_CMDLINE_LEN};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::console::Describe;
use crate::net;
use crate::nic::Control;
use crate::status::{StatusWriter, t_us};

/// How long a connect, and then each read or write, may take: a server that does not
/// answer within this is taken for dead.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Connection attempts, with these waits before each: a NIC whose link has just come up,
/// or a server that is starting, refuses the first.
const CONNECT_WAITS_MS: [u64; 3] = [0, 1000, 2000];

/// The longest response head taken.
const MAX_HEAD: usize = 16 * 1024;

/// The longest `SHA256SUMS` and `cmdline` taken: a few lines each.
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Why the next appliance could not be loaded. Each names the URL or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error("appEnd=kexec, but appKexec names no app dir to fetch")]
    NoSource,
    #[error("no network to fetch it over: {0}")]
    Network(String),
    #[error("cannot connect to {addr}:{port}: {}", Describe(*.errno))]
    Connect { addr: Ipv4Addr, port: u16, errno: Errno },
    #[error("{url}: {}", Describe(*.errno))]
    Transfer { url: String, errno: Errno },
    #[error("{url}: the server answered `{status}`")]
    Status { url: String, status: String },
    #[error("{url}: not an HTTP response")]
    BadResponse { url: String },
    #[error("{url}: {got} bytes received, the server announced {want}")]
    Truncated { url: String, got: u64, want: u64 },
    #[error("{url}: larger than the {limit} bytes allowed")]
    TooLarge { url: String, limit: u64 },
    #[error(transparent)]
    Sums(#[from] SumsError),
    #[error("{name}: SHA-256 is {got}, {SUMS_FILE} says {want}: refused")]
    Mismatch { name: &'static str, got: String, want: String },
    #[error("the next command line is {len} bytes, longer than the kernel's {MAX_CMDLINE_LEN}")]
    CmdlineTooLong { len: usize },
    #[error("cannot hold {name} in memory: {}", Describe(*.errno))]
    Memory { name: &'static str, errno: Errno },
    #[error("cannot mount {what}: {}{hint}", Describe(*.errno))]
    Mount { what: String, errno: Errno, hint: &'static str },
    #[error("kexec_file_load refused the kernel: {}{}", Describe(*.errno), load_hint(*.errno))]
    Load { errno: Errno },
}

fn load_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::NOSYS => " (the running kernel has no CONFIG_KEXEC_FILE)",
        Errno::PERM => " (the kernel is locked down, or requires signed kernels: KEXEC_SIG_FORCE)",
        Errno::NOEXEC => " (not a bzImage this kernel can boot)",
        Errno::KEYREJECTED | Errno::BADMSG => " (its signature does not verify)",
        _ => "",
    }
}

/// What the fetch did, for the record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    pub fetch_us: u64,
}

/// The head of an HTTP response: its status code and line, and `Content-Length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub code: u16,
    pub status: String,
    pub length: Option<u64>,
}

/// Parses a response head (everything before the empty line); `None` when it is not one.
pub fn parse_head(head: &[u8]) -> Option<Head> {
    let text = core::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.trim_end();
    let mut words = status.splitn(3, ' ');
    let version = words.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next().filter(|c| c.len() == 3)?.parse::<u16>().ok()?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<u64>().ok()?);
        }
    }
    Some(Head { code, status: String::from(status), length })
}

/// The end of the head (the index after `\r\n\r\n`) in what has been received.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// The request for `path` on `host`.
pub fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: appliance-init/{}\r\nAccept: */*\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// A TCP connection to `addr:port` whose connect, reads and writes each give up after
/// [`IO_TIMEOUT`] (`SO_SNDTIMEO` bounds the connect too).
fn connect(addr: Ipv4Addr, port: u16) -> Result<OwnedFd, KexecError> {
    let mut last = Errno::TIMEDOUT;
    for wait in CONNECT_WAITS_MS {
        if wait > 0 {
            let ts =
                rustix::time::Timespec { tv_sec: (wait / 1000) as i64, tv_nsec: ((wait % 1000) * 1_000_000) as i64 };
            let _ = rustix::thread::nanosleep(&ts);
        }
        let attempt = || -> Result<OwnedFd, Errno> {
            use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
            let fd = rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
            sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(IO_TIMEOUT))?;
            sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(IO_TIMEOUT))?;
            rustix::net::connect(&fd, &SocketAddrV4::new(addr, port))?;
            Ok(fd)
        };
        match attempt() {
            Ok(fd) => return Ok(fd),
            Err(e) => {
                log::debug!("kexec: connect to {addr}:{port}: {}", Describe(e));
                last = e;
            }
        }
    }
    Err(KexecError::Connect { addr, port, errno: last })
}

/// Where an NFS export or a 9p share that `appKexec` names is mounted while it is read.
pub const MOUNT_POINT: &str = "/run/appliance/kexec";

/// Reads the app dir's file `name` from where `from` is (over HTTP, or in the file system
/// mounted on [`MOUNT_POINT`]), handing it to `sink` as it arrives; at most `limit` bytes.
/// Returns its length.
pub fn get(
    from: &KexecFrom,
    name: &str,
    limit: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), KexecError>,
) -> Result<u64, KexecError> {
    match from {
        KexecFrom::Http { addr, port, .. } => get_http(*addr, *port, &from.file_path(name), limit, sink),
        KexecFrom::Mount(_) => read_file(&format!("{MOUNT_POINT}{}", from.file_path(name)), limit, sink),
    }
}

/// Reads the file at `path` in chunks into `sink`; at most `limit` bytes.
pub fn read_file(
    path: &str,
    limit: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), KexecError>,
) -> Result<u64, KexecError> {
    let transfer = |errno| KexecError::Transfer { url: String::from(path), errno };
    let fd =
        rustix::fs::open(path, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
            .map_err(transfer)?;
    let mut buf = alloc::vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = match rustix::io::read(&fd, buf.as_mut_slice()) {
            Err(Errno::INTR) => continue,
            other => other.map_err(transfer)?,
        };
        if n == 0 {
            return Ok(got);
        }
        got = got.saturating_add(n as u64);
        if got > limit {
            return Err(KexecError::TooLarge { url: String::from(path), limit });
        }
        sink(buf.get(..n).unwrap_or_default())?;
    }
}

/// GETs `path` from `addr:port`, handing the body to `sink` as it arrives; at most
/// `limit` bytes. Returns the body's length.
fn get_http(
    addr: Ipv4Addr,
    port: u16,
    path: &str,
    limit: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), KexecError>,
) -> Result<u64, KexecError> {
    let url = format!("http://{addr}:{port}{path}");
    let transfer = |errno| KexecError::Transfer { url: url.clone(), errno };
    let sock = connect(addr, port)?;
    crate::console::write_all(sock.as_fd(), request(path, &format!("{addr}:{port}")).as_bytes()).map_err(transfer)?;
    let mut buf = alloc::vec![0u8; 64 * 1024];
    // The head, and whatever of the body came with it.
    let mut received: Vec<u8> = Vec::new();
    let (head, body_start) = loop {
        let n = read(sock.as_fd(), &mut buf).map_err(transfer)?;
        received.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(end) = head_end(&received) {
            let head = parse_head(received.get(..end).unwrap_or_default())
                .ok_or_else(|| KexecError::BadResponse { url: url.clone() })?;
            break (head, end);
        }
        if n == 0 || received.len() > MAX_HEAD {
            return Err(KexecError::BadResponse { url: url.clone() });
        }
    };
    if head.code != 200 {
        return Err(KexecError::Status { url: url.clone(), status: head.status });
    }
    let too_large = || KexecError::TooLarge { url: url.clone(), limit };
    if head.length.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let first = received.get(body_start..).unwrap_or_default();
    let mut got = first.len() as u64;
    sink(first)?;
    loop {
        let n = read(sock.as_fd(), &mut buf).map_err(transfer)?;
        if n == 0 {
            break;
        }
        got = got.saturating_add(n as u64);
        if got > limit {
            return Err(too_large());
        }
        sink(buf.get(..n).unwrap_or_default())?;
    }
    match head.length {
        Some(want) if want != got => Err(KexecError::Truncated { url, got, want }),
        _ => Ok(got),
    }
}

fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Err(Errno::INTR) => continue,
            // SO_RCVTIMEO ran out.
            Err(Errno::AGAIN) => return Err(Errno::TIMEDOUT),
            other => return other,
        }
    }
}

/// Fetches a small file (the sums, the command line) whole.
fn get_small(from: &KexecFrom, name: &str) -> Result<Vec<u8>, KexecError> {
    let mut data = Vec::new();
    get(from, name, MAX_SMALL_FILE, &mut |chunk| {
        data.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(data)
}

/// Checks `got` against the sum `SHA256SUMS` lists for `name`.
fn check(sums: &[(String, [u8; 32])], name: &'static str, got: [u8; 32]) -> Result<(), KexecError> {
    let want = sum_of(sums, name)?;
    if got != want {
        return Err(KexecError::Mismatch { name, got: hex(&got), want: hex(&want) });
    }
    Ok(())
}

/// The next appliance, fetched and checked: its kernel and initrd in memfds, and its
/// whole command line.
pub struct Next {
    pub kernel: OwnedFd,
    pub initrd: OwnedFd,
    pub cmdline: String,
}

/// Fetches `SHA256SUMS`, then the kernel and the initrd into memfds and the command line,
/// each hashed as it arrives and refused unless its sum is the listed one. `current`: this
/// kernel's command line, whose machine words the next one keeps.
pub fn fetch(from: &KexecFrom, current: &[u8], fetched: &mut Fetched) -> Result<Next, KexecError> {
    let started = t_us();
    let sums_text = get_small(from, SUMS_FILE)?;
    fetched.bytes = sums_text.len() as u64;
    let sums = parse_sums(&String::from_utf8_lossy(&sums_text))?;
    let [kernel_name, initrd_name, cmdline_name] = KEXEC_FILES;
    let mut to_memfd = |name: &'static str| -> Result<OwnedFd, KexecError> {
        let memory = |errno| KexecError::Memory { name, errno };
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).map_err(memory)?;
        let mut hash = Sha256::new();
        let n = get(from, name, u64::MAX, &mut |chunk| {
            hash.update(chunk);
            crate::console::write_all(fd.as_fd(), chunk).map_err(memory)
        })?;
        fetched.bytes = fetched.bytes.saturating_add(n);
        check(&sums, name, hash.finalize().into())?;
        Ok(fd)
    };
    let kernel = to_memfd(kernel_name)?;
    let initrd = to_memfd(initrd_name)?;
    let cmdline = get_small(from, cmdline_name)?;
    fetched.bytes = fetched.bytes.saturating_add(cmdline.len() as u64);
    check(&sums, cmdline_name, Sha256::digest(&cmdline).into())?;
    let cmdline = next_cmdline(current, &String::from_utf8_lossy(&cmdline));
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(KexecError::CmdlineTooLong { len: cmdline.len() });
    }
    fetched.fetch_us = t_us().saturating_sub(started);
    Ok(Next { kernel, initrd, cmdline })
}

/// Whether the end action will use the network (HTTP, NFS; a 9p share needs none).
pub fn needs_network(config: &Config) -> bool {
    config.end == End::Kexec && config.kexec.as_ref().is_some_and(uses_network)
}

fn uses_network(from: &KexecFrom) -> bool {
    match from {
        KexecFrom::Http { .. } => true,
        KexecFrom::Mount(to) => crate::results::nfs_server(to).is_some(),
    }
}

/// The whole step for `appEnd=kexec`: the network (configured now if the boot did not),
/// the fetch and the checks, the load. Says on the console and in the status record how
/// it went, and returns the end action: `kexec` when the next kernel is loaded, `halt`
/// otherwise.
pub fn step(config: &Config, control: &mut Option<Control>, status: &StatusWriter) -> End {
    let from_text = config.kexec.as_ref().map(|f| format!("{f}")).unwrap_or_default();
    let mut fetched = Fetched::default();
    let result = load_next(config, control, status, &mut fetched);
    let error = result.as_ref().err().map(|e| format!("{e}"));
    match &error {
        None => crate::console::write_err(
            format!(
                "appliance-init: kexec: {} bytes from {from_text} checked in {} ms; booting it\n",
                fetched.bytes,
                fetched.fetch_us / 1000
            )
            .as_bytes(),
        ),
        Some(e) => log::error!("kexec from {from_text} failed: {e}; halting instead"),
    }
    status.emit(&Event::Kexec {
        t_us: t_us(),
        ok: error.is_none(),
        from: from_text,
        bytes: fetched.bytes,
        fetch_us: fetched.fetch_us,
        error,
    });
    if result.is_ok() { End::Kexec } else { End::Halt }
}

/// Mounts the NFS export or 9p share `to` on [`MOUNT_POINT`], with the drivers it needs
/// loaded first (as the results step does), and the results step's mount options.
fn mount_source(to: &ResultsTo) -> Result<(), KexecError> {
    for failure in crate::modules::load_wanted(crate::results::drivers(to)) {
        // The mount fails next, and says what is missing.
        log::error!("{failure}");
    }
    let args = crate::results::mount_args(to).ok_or(KexecError::NoSource)?;
    let _ = rustix::fs::mkdir(MOUNT_POINT, rustix::fs::Mode::from_raw_mode(0o755));
    crate::results::mount_on(&args, MOUNT_POINT).map_err(|errno| KexecError::Mount {
        what: format!("{to} ({} -o {})", args.fstype, args.options),
        errno,
        hint: crate::results::mount_hint(to, errno),
    })
}

fn load_next(
    config: &Config,
    control: &mut Option<Control>,
    status: &StatusWriter,
    fetched: &mut Fetched,
) -> Result<(), KexecError> {
    let from = config.kexec.as_ref().ok_or(KexecError::NoSource)?;
    if control.is_none() && uses_network(from) {
        let c = net::bring_up(config).map_err(|e| KexecError::Network(format!("{e}")))?;
        log::info!("network: {} is {} ({}), for kexec", c.nic, c.addr, c.method);
        status.emit(&c.event());
        *control = Some(c);
    }
    let current = crate::read_bytes("/proc/cmdline").unwrap_or_default();
    let next = match from {
        KexecFrom::Http { .. } => fetch(from, &current, fetched)?,
        KexecFrom::Mount(to) => {
            mount_source(to)?;
            // The files are in memfds once fetched: the mount is not needed for the load.
            let next = fetch(from, &current, fetched);
            crate::results::unmount_bounded(MOUNT_POINT);
            next?
        }
    };
    log::info!("kexec: next command line: {}", next.cmdline);
    crate::sys::kexec_file_load(next.kernel.as_fd(), next.initrd.as_fd(), &next.cmdline)
        .map_err(|errno| KexecError::Load { errno })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn response_heads_table() {
        let ok = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 42\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(ok, Head { code: 200, status: "HTTP/1.0 200 OK".into(), length: Some(42) });
        let lower = parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length:  7 \r\n\r\n").unwrap();
        assert_eq!((lower.code, lower.length), (404, Some(7)));
        assert_eq!(parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().length, None);
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.0 2000 OK\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: x\r\n\r\n",
            b"\xff",
        ] {
            assert!(parse_head(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(head_end(b"HTTP/1.0 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_end(b"HTTP/1.0 200 OK\r\n"), None);
    }

    #[test]
    fn request_names_the_path_and_host() {
        let r = request("/app/initrd", "10.0.2.2:8000");
        assert!(r.starts_with("GET /app/initrd HTTP/1.0\r\nHost: 10.0.2.2:8000\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
    }

    /// One HTTP/1.0 server on loopback that answers every request with `reply(path)`.
    fn serve(reply: impl Fn(&str) -> Vec<u8> + Send + 'static, requests: usize) -> (u16, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            for client in listener.incoming().take(requests) {
                let mut client = client.unwrap();
                let mut req = [0u8; 4096];
                let n = client.read(&mut req).unwrap();
                let line = String::from_utf8_lossy(&req[..n]).into_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let _ = client.write_all(&reply(&path));
            }
        });
        (port, thread)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn from(port: u16) -> KexecFrom {
        KexecFrom::Http { addr: Ipv4Addr::LOCALHOST, port, path: "/app/".into() }
    }

    fn sums(files: &[(&str, &[u8])]) -> Vec<u8> {
        let list: Vec<(String, [u8; 32])> =
            files.iter().map(|(n, d)| (String::from(*n), Sha256::digest(d).into())).collect();
        appliance_cmdline::kexec::render_sums(&list).into_bytes()
    }

    #[test]
    fn fetch_checks_every_file_and_builds_the_next_command_line() {
        let files: [(&str, &[u8]); 3] =
            [("vmlinuz", b"kernel bytes"), ("initrd", &[7u8; 100_000]), ("cmdline", b"appArgs=x\n")];
        let listed = sums(&files);
        let (port, server) = serve(
            move |path| match path.strip_prefix("/app/") {
                Some("SHA256SUMS") => ok(&listed),
                Some(name) => files.iter().find(|(n, _)| *n == name).map(|(_, d)| ok(d)).unwrap(),
                None => b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec(),
            },
            4,
        );
        let mut fetched = Fetched::default();
        let next = fetch(&from(port), b"console=ttyS0 appEnd=kexec appKexec=http://x/", &mut fetched).unwrap();
        server.join().unwrap();
        assert_eq!(next.cmdline, "console=ttyS0 appArgs=x");
        assert_eq!(fetched.bytes, listed_len(&files) + 12 + 100_000 + 10);
        assert_eq!(rustix::fs::fstat(&next.initrd).unwrap().st_size, 100_000);
    }

    fn listed_len(files: &[(&str, &[u8])]) -> u64 {
        sums(files).len() as u64
    }

    /// A corrupted initrd is refused with both sums named, before anything is loaded.
    #[test]
    fn a_file_whose_sum_differs_is_refused() {
        let files: [(&str, &[u8]); 3] = [("vmlinuz", b"k"), ("initrd", b"good"), ("cmdline", b"")];
        let listed = sums(&files);
        let (port, server) = serve(
            move |path| match path {
                "/app/SHA256SUMS" => ok(&listed),
                "/app/initrd" => ok(b"evil"),
                _ => ok(b"k"),
            },
            3,
        );
        let e = fetch(&from(port), b"", &mut Fetched::default()).err().unwrap();
        server.join().unwrap();
        let message = format!("{e}");
        assert!(message.starts_with("initrd: SHA-256 is "), "{message}");
        assert!(message.contains(&hex(&Sha256::digest(b"good"))), "{message}");
    }

    #[test]
    fn short_bodies_missing_files_and_dead_servers_are_errors() {
        let (port, server) = serve(|_| b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(), 1);
        let e = get_small(&from(port), "cmdline").err().unwrap();
        server.join().unwrap();
        assert!(matches!(e, KexecError::Truncated { got: 3, want: 10, .. }), "{e}");

        let (port, server) = serve(|_| b"HTTP/1.0 404 Not Found\r\n\r\n".to_vec(), 1);
        let e = get_small(&from(port), SUMS_FILE).err().unwrap();
        server.join().unwrap();
        assert_eq!(
            format!("{e}"),
            format!("http://127.0.0.1:{port}/app/SHA256SUMS: the server answered `HTTP/1.0 404 Not Found`")
        );

        // A port nobody listens on: refused at each attempt.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = get_small(&from(port), SUMS_FILE).err().unwrap();
        assert!(matches!(e, KexecError::Connect { errno: Errno::CONNREFUSED, .. }), "{e}");
    }

    #[test]
    fn a_file_of_a_mounted_source_is_read_whole_and_bounded() {
        let dir = std::env::temp_dir().join(format!("appliance-kexec-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("initrd");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let path = file.to_str().unwrap();
        let mut got = Vec::new();
        let n = read_file(path, u64::MAX, &mut |chunk| {
            got.extend_from_slice(chunk);
            Ok(())
        })
        .unwrap();
        assert_eq!((n, got == data), (600_000, true));
        let e = read_file(path, 1000, &mut |_| Ok(())).err().unwrap();
        assert!(matches!(e, KexecError::TooLarge { limit: 1000, .. }), "{e}");
        let e = read_file(dir.join("vmlinuz").to_str().unwrap(), u64::MAX, &mut |_| Ok(())).err().unwrap();
        assert!(matches!(e, KexecError::Transfer { errno: Errno::NOENT, .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_http_and_nfs_sources_need_the_network() {
        for (text, network) in [("http://10.0.2.2/app/", true), ("nfs:10.0.2.2:/app", true), ("9p:apps", false)] {
            assert_eq!(uses_network(&text.parse().unwrap()), network, "{text}");
        }
    }
}
