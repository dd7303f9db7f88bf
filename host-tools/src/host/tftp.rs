//! A read-only TFTP server for a directory (RFC 1350), with the block size and transfer
//! size options (RFC 2347, 2348, 2349) that PXE firmware and iPXE ask for: enough for a
//! machine's PXE to load PXELINUX, its configuration, the kernel and the initrd. Write
//! requests are refused.
//!
//! Written here, like [`crate::host::http`]: the TFTP crates bring an async runtime
//! (async-tftp) or are servers with their own configuration (tftpd), for what is a
//! lock-step loop of a hundred lines; one thread per transfer, from its own port, as the
//! RFC asks.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// RFC 1350's block size, when the client asks for no other.
pub const DEFAULT_BLKSIZE: usize = 512;
/// The largest block size taken (RFC 2348 allows 65464): what fits an Ethernet frame
/// without fragments, which some PXE stacks cannot reassemble.
pub const MAX_BLKSIZE: usize = 1468;
/// How long to wait for an ACK before sending again, and how many times.
const RETRY_WAIT: Duration = Duration::from_secs(1);
const RETRIES: u32 = 5;
/// How often the listening loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
#[error("cannot serve {} over TFTP on {addr}", root.display())]
pub struct TftpError {
    pub root: PathBuf,
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// A read request: the file, and the options the server accepts (RFC 2347).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub file: String,
    /// `blksize`, already limited to [`MAX_BLKSIZE`] (at least 8).
    pub blksize: Option<usize>,
    /// `tsize` was asked for (its value in a read request is 0).
    pub tsize: bool,
}

/// What a client sent to the server's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Read(ReadRequest),
    /// A write request, or a packet that is not a request: answered with an error.
    Refused {
        code: u16,
        message: &'static str,
    },
}

/// Parses a packet sent to the server's port. Modes are not told apart: `netascii`
/// files are sent as they are, as every PXE server does.
pub fn parse_request(packet: &[u8]) -> Request {
    let illegal = Request::Refused { code: 4, message: "illegal TFTP operation" };
    let Some((op, rest)) = packet.split_first_chunk::<2>() else { return illegal };
    match u16::from_be_bytes(*op) {
        RRQ => {}
        WRQ => return Request::Refused { code: 2, message: "read-only server" },
        _ => return illegal,
    }
    let fields: Vec<String> = rest.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    // file, mode, then option/value pairs; the packet ends with a NUL, so the last field is
    // empty.
    let (Some(file), Some(_mode)) = (fields.first(), fields.get(1)) else { return illegal };
    if file.is_empty() {
        return illegal;
    }
    let mut request = ReadRequest { file: file.clone(), blksize: None, tsize: false };
    let options = fields.get(2..).unwrap_or_default();
    for pair in options.chunks_exact(2) {
        match pair[0].to_ascii_lowercase().as_str() {
            "blksize" => {
                request.blksize = pair[1].parse::<usize>().ok().filter(|&b| b >= 8).map(|b| b.min(MAX_BLKSIZE))
            }
            "tsize" => request.tsize = true,
            // Others (timeout, windowsize) are left out of the OACK: the client then uses
            // its defaults, as RFC 2347 says.
            _ => {}
        }
    }
    Request::Read(request)
}

/// An ERROR packet.
pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// The OACK for the options accepted; `None` when there are none (the transfer then
/// starts with block 1 at once).
pub fn oack_packet(request: &ReadRequest, size: u64) -> Option<Vec<u8>> {
    if request.blksize.is_none() && !request.tsize {
        return None;
    }
    let mut p = OACK.to_be_bytes().to_vec();
    let mut option = |name: &str, value: String| {
        for field in [name, &value] {
            p.extend_from_slice(field.as_bytes());
            p.push(0);
        }
    };
    if let Some(b) = request.blksize {
        option("blksize", b.to_string());
    }
    if request.tsize {
        option("tsize", size.to_string());
    }
    Some(p)
}

fn data_packet(block: u16, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + data.len());
    p.extend_from_slice(&DATA.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(data);
    p
}

/// Whether `packet` acknowledges `block`.
fn acks(packet: &[u8], block: u16) -> bool {
    packet.len() >= 4 && packet[..2] == ACK.to_be_bytes() && packet[2..4] == block.to_be_bytes()
}

/// A running server; dropping it stops it (transfers under way finish on their own).
pub struct TftpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TftpServer {
    /// Serves `root` on `addr` (`127.0.0.1:0` picks a free port; the standard port 69
    /// needs root or CAP_NET_BIND_SERVICE). `log` is told each request's file and whether
    /// it was sent in full.
    pub fn start(root: &Path, addr: &str, log: fn(&str, bool)) -> Result<TftpServer, TftpError> {
        let error = |source| TftpError { root: root.to_path_buf(), addr: addr.to_string(), source };
        let socket = UdpSocket::bind(addr).map_err(error)?;
        let local = socket.local_addr().map_err(error)?;
        socket.set_read_timeout(Some(POLL)).map_err(error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (root, stopping) = (root.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !stopping.load(Ordering::SeqCst) {
                let Ok((n, client)) = socket.recv_from(&mut buf) else { continue };
                let request = parse_request(&buf[..n]);
                let root = root.clone();
                std::thread::spawn(move || {
                    let file = match &request {
                        Request::Read(r) => r.file.clone(),
                        Request::Refused { .. } => String::new(),
                    };
                    let sent = transfer(&root, local, client, request);
                    log(&file, sent);
                });
            }
        });
        Ok(TftpServer { addr: local, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TftpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One transfer, from a port of its own on the server's address; whether the file was
/// sent and acknowledged in full.
fn transfer(root: &Path, local: SocketAddr, client: SocketAddr, request: Request) -> bool {
    let Ok(socket) = UdpSocket::bind(SocketAddr::new(local.ip(), 0)) else { return false };
    if socket.connect(client).is_err() || socket.set_read_timeout(Some(RETRY_WAIT)).is_err() {
        return false;
    }
    let request = match request {
        Request::Read(r) => r,
        Request::Refused { code, message } => {
            let _ = socket.send(&error_packet(code, message));
            return false;
        }
    };
    // TFTP names are relative to the server's root, with or without a leading `/`.
    let target = format!("/{}", request.file.trim_start_matches('/'));
    let Some(mut file) =
        crate::host::http::resolve(root, &target).filter(|p| p.is_file()).and_then(|p| std::fs::File::open(p).ok())
    else {
        let _ = socket.send(&error_packet(1, "file not found"));
        return false;
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Some(oack) = oack_packet(&request, size)
        && !exchange(&socket, &oack, 0)
    {
        return false;
    }
    let blksize = request.blksize.unwrap_or(DEFAULT_BLKSIZE);
    let mut block: u16 = 1;
    let mut data = vec![0u8; blksize];
    loop {
        let mut n = 0;
        while n < blksize {
            match file.read(&mut data[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) => {
                    let _ = socket.send(&error_packet(0, "read error"));
                    return false;
                }
            }
        }
        if !exchange(&socket, &data_packet(block, &data[..n]), block) {
            return false;
        }
        // A block shorter than the block size (empty, at worst) ends the transfer.
        if n < blksize {
            return true;
        }
        // Block numbers roll over past 65535, as the common clients expect.
        block = block.wrapping_add(1);
    }
}

/// Sends `packet` until the client acknowledges `block`, up to [`RETRIES`] times.
fn exchange(socket: &UdpSocket, packet: &[u8], block: u16) -> bool {
    let mut reply = [0u8; 516];
    for _ in 0..RETRIES {
        if socket.send(packet).is_err() {
            return false;
        }
        // Stale or duplicate ACKs are read past until the wait runs out.
        loop {
            match socket.recv(&mut reply) {
                Ok(n) if acks(&reply[..n], block) => return true,
                Ok(n) if reply[..n].starts_with(&ERROR.to_be_bytes()) => return false,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut p = RRQ.to_be_bytes().to_vec();
        for f in fields {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn requests_table() {
        assert_eq!(
            parse_request(&rrq(&["pxelinux.0", "octet"])),
            Request::Read(ReadRequest { file: "pxelinux.0".into(), blksize: None, tsize: false })
        );
        assert_eq!(
            parse_request(&rrq(&["/initrd", "octet", "BLKSIZE", "1432", "tsize", "0", "timeout", "3"])),
            Request::Read(ReadRequest { file: "/initrd".into(), blksize: Some(1432), tsize: true })
        );
        let big = parse_request(&rrq(&["f", "octet", "blksize", "65464"]));
        assert!(matches!(big, Request::Read(ReadRequest { blksize: Some(MAX_BLKSIZE), .. })), "{big:?}");
        let mut wrq = rrq(&["f", "octet"]);
        wrq[1] = WRQ as u8;
        assert!(matches!(parse_request(&wrq), Request::Refused { code: 2, .. }));
        for bad in [&b""[..], b"\x00", b"\x00\x03\x00\x01", b"\x00\x01\x00octet\x00"] {
            assert!(matches!(parse_request(bad), Request::Refused { code: 4, .. }), "{bad:?}");
        }
    }

    #[test]
    fn oack_carries_only_the_options_asked_for() {
        let plain = ReadRequest { file: "f".into(), blksize: None, tsize: false };
        assert_eq!(oack_packet(&plain, 10), None);
        let both = ReadRequest { blksize: Some(1432), tsize: true, ..plain };
        assert_eq!(oack_packet(&both, 10).unwrap(), b"\x00\x06blksize\x001432\x00tsize\x0010\x00");
        assert_eq!(error_packet(1, "file not found"), b"\x00\x05\x00\x01file not found\x00");
    }

    /// A whole transfer over loopback, as a client does it: OACK, ACK 0, then each block
    /// acknowledged; the last one short.
    #[test]
    fn sends_a_file_in_blocks_with_the_negotiated_size() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let server = TftpServer::start(dir.path(), "127.0.0.1:0", |_, _| {}).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.send_to(&rrq(&["f", "octet", "blksize", "1000", "tsize", "0"]), server.addr()).unwrap();
        let mut buf = [0u8; 2000];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001000\x00tsize\x003000\x00");
        assert_ne!(from, server.addr(), "a transfer has a port of its own");
        client.send_to(b"\x00\x04\x00\x00", from).unwrap();
        let mut got = Vec::new();
        for block in 1u16..=4 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..4], &[0, 3, 0, block as u8]);
            got.extend_from_slice(&buf[4..n]);
            client.send_to(&[0, 4, 0, block as u8], from).unwrap();
        }
        // 3000 bytes in blocks of 1000: three full ones, then an empty one ends it.
        assert_eq!(got, content);
        client.send_to(&rrq(&["../etc/passwd", "octet"]), server.addr()).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], error_packet(1, "file not found"));
    }
}
