//! A ProxyDHCP server (PXE 2.1, RFC 4578), as dnsmasq's `dhcp-range=...,proxy`: for a lab
//! whose DHCP server hands out addresses but cannot be told about a boot server. It answers
//! PXE clients only (option 60 starting with `PXEClient`), with an offer that gives no
//! address (yiaddr 0.0.0.0) but names the TFTP server (siaddr, option 54) and the boot file
//! for the client's architecture (option 93), with PXE discovery control 8 in option 43
//! (take the boot file from this offer, no boot server discovery), without which firmware
//! PXE ignores a ProxyDHCP offer. The lab's DHCP server's own offer gives the address; the
//! client merges the two.
//!
//! It does not hand out addresses, relay, or serve boot menus (PXE options 8 to 10), and it
//! answers only on the interface that has the given address.
//!
//! Packets are read and written with `dhcproto`: DHCP options are length-prefixed and
//! come from any machine on the segment, which a maintained and fuzzed codec handles
//! better than a hand-written one; the sockets and the answer are ours, as they are for
//! [`crate::host::tftp`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

/// The DHCP server port, where clients broadcast DHCPDISCOVER.
pub const DHCP_PORT: u16 = 67;
/// The PXE boot server port, where clients with an address send DHCPREQUEST to a ProxyDHCP
/// server that answered on port 67 (PXE 2.1, section 2.2.1).
pub const PXE_PORT: u16 = 4011;
/// Where clients without an address listen for the answer, broadcast.
const CLIENT_PORT: u16 = 68;
/// How often the listening loops look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Option 43's PXE_DISCOVERY_CONTROL (sub-option 6) = 8: "a boot file name is in this
/// offer: download it, without boot server discovery or a menu"; then the end (255).
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

#[derive(Debug, thiserror::Error)]
pub enum ProxyDhcpError {
    #[error("ProxyDHCP needs an IPv4 address of this machine, not {0}")]
    NotIpv4(IpAddr),
    #[error("ProxyDHCP needs the address of one interface, not {0}: give the TFTP server's address")]
    Unspecified(Ipv4Addr),
    #[error("no network interface of this machine has the address {0}")]
    NoInterface(Ipv4Addr),
    #[error("cannot list the network interfaces")]
    Interfaces(#[source] nix::Error),
    #[error(
        "cannot listen for DHCP on {addr} (UDP port {port}): ports 67 and 4011 need root or \
         CAP_NET_BIND_SERVICE (`sudo setcap cap_net_bind_service=ep $(which appliance)`), and no \
         other DHCP server on this machine"
    )]
    Bind {
        addr: Ipv4Addr,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// The boot files to offer, by what the client is (names inside the TFTP root, or URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// For legacy BIOS (option 93 = 0).
    pub bios: String,
    /// For x86-64 UEFI (option 93 = 7 or 9); `None`: such clients get no answer.
    pub efi_x64: Option<String>,
    /// For iPXE (user class `iPXE`, option 77), whatever the firmware: the script, so that
    /// an iPXE chained from the firmware's PXE does not load itself again.
    pub ipxe: String,
}

/// What the server answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This machine's address: the server identifier, and the TFTP server (siaddr).
    pub server: Ipv4Addr,
    /// The DHCP port ([`DHCP_PORT`]; 0 picks a free one, for tests).
    pub dhcp_port: u16,
    /// The PXE port ([`PXE_PORT`]; 0 picks a free one).
    pub pxe_port: u16,
    pub files: BootFiles,
}

/// What a request is, as far as the answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeRequest {
    pub kind: MessageType,
    /// Option 93, when given.
    pub arch: Option<u16>,
    pub ipxe: bool,
}

/// The PXE request in `packet`, or `None` for anything that is not a DHCPDISCOVER or
/// DHCPREQUEST from a PXE client, or that asks another server (option 54): those are
/// left to the lab's DHCP server.
pub fn pxe_request(msg: &Message, server: Ipv4Addr) -> Option<PxeRequest> {
    if msg.opcode() != Opcode::BootRequest {
        return None;
    }
    let kind = msg.opts().msg_type()?;
    match kind {
        MessageType::Discover => {}
        MessageType::Request => {
            if let Some(DhcpOption::ServerIdentifier(id)) = msg.opts().get(OptionCode::ServerIdentifier)
                && *id != server
            {
                return None;
            }
        }
        _ => return None,
    }
    match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(class)) if class.starts_with(b"PXEClient") => {}
        _ => return None,
    }
    let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let ipxe =
        matches!(msg.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(c)) if c.as_slice() == b"iPXE");
    Some(PxeRequest { kind, arch, ipxe })
}

/// The boot file for a request, or `None` when there is none for its architecture.
pub fn boot_file<'a>(request: &PxeRequest, files: &'a BootFiles) -> Option<&'a str> {
    if request.ipxe {
        return Some(&files.ipxe);
    }
    // No option 93 is an old BIOS PXE (before RFC 4578 numbered the architectures).
    match request.arch.unwrap_or(0) {
        0 => Some(&files.bios),
        7 | 9 => files.efi_x64.as_deref(),
        _ => None,
    }
}

/// The answer to `msg`: a DHCPOFFER to a DISCOVER, a DHCPACK to a REQUEST, with no address;
/// `None` when it is not ours to answer. Also returns the boot file, for the log.
pub fn answer(msg: &Message, config: &Config) -> Option<(Message, String)> {
    let request = pxe_request(msg, config.server)?;
    let file = boot_file(&request, &config.files)?.to_string();
    let mut reply = Message::new_with_id(
        msg.xid(),
        msg.ciaddr(),
        Ipv4Addr::UNSPECIFIED,
        config.server,
        msg.giaddr(),
        &msg.chaddr()[..usize::from(msg.hlen()).min(16)],
    );
    reply.set_opcode(Opcode::BootReply).set_htype(msg.htype()).set_flags(msg.flags()).set_fname_str(&file);
    let kind = if request.kind == MessageType::Discover { MessageType::Offer } else { MessageType::Ack };
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(config.server));
    opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
    // PXE 2.1: the server echoes the client's machine identifier (UUID), which some
    // firmware checks before it takes the offer.
    if let Some(DhcpOption::ClientMachineIdentifier(id)) = msg.opts().get(OptionCode::ClientMachineIdentifier) {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    Some((reply, file))
}

/// A running server; dropping it stops it.
pub struct ProxyDhcpServer {
    dhcp: SocketAddr,
    pxe: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ProxyDhcpServer {
    /// Answers PXE clients on the interface that has `config.server`. `log` is told each
    /// answer: the client's hardware address, the message type sent, and the boot file.
    pub fn start(config: Config, log: fn(&str, MessageType, &str)) -> Result<ProxyDhcpServer, ProxyDhcpError> {
        let server = config.server;
        if server.is_unspecified() || server.is_broadcast() {
            return Err(ProxyDhcpError::Unspecified(server));
        }
        let interface = interface_of(server)?;
        // DISCOVERs are broadcast, from 0.0.0.0: a socket bound to the interface's address
        // never sees them, so port 67 is bound to the wildcard address, restricted to the
        // interface (SO_BINDTODEVICE), which is also where the broadcast answers leave from.
        let dhcp = bind_device(&interface, config.dhcp_port, server)?;
        // Port 4011 gets unicasts to the address only.
        let pxe = UdpSocket::bind(SocketAddrV4::new(server, config.pxe_port))
            .map_err(|source| ProxyDhcpError::Bind { addr: server, port: config.pxe_port, source })?;
        let local =
            |s: &UdpSocket, port| s.local_addr().map_err(|source| ProxyDhcpError::Bind { addr: server, port, source });
        let (dhcp_addr, pxe_addr) = (local(&dhcp, config.dhcp_port)?, local(&pxe, config.pxe_port)?);
        let stop = Arc::new(AtomicBool::new(false));
        let config = Arc::new(config);
        let threads = [dhcp, pxe]
            .into_iter()
            .map(|socket| {
                let (stop, config) = (Arc::clone(&stop), Arc::clone(&config));
                std::thread::spawn(move || serve(&socket, &config, &stop, log))
            })
            .collect();
        Ok(ProxyDhcpServer { dhcp: SocketAddr::new(server.into(), dhcp_addr.port()), pxe: pxe_addr, stop, threads })
    }

    /// The address and DHCP port (67, or the one picked).
    pub fn dhcp_addr(&self) -> SocketAddr {
        self.dhcp
    }

    /// The address and PXE port (4011, or the one picked).
    pub fn pxe_addr(&self) -> SocketAddr {
        self.pxe
    }
}

impl Drop for ProxyDhcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, config: &Config, stop: &AtomicBool, log: fn(&str, MessageType, &str)) {
    if socket.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        // Anything that does not parse, or is not ours, is dropped without a word: the
        // segment's other DHCP traffic arrives here too.
        let Ok(msg) = Message::from_bytes(&buf[..n]) else { continue };
        let Some((reply, file)) = answer(&msg, config) else { continue };
        let Ok(bytes) = reply.to_vec() else { continue };
        // A client without an address (0.0.0.0) cannot take a unicast: broadcast to its
        // port, as DHCP servers do; one with an address (on port 4011) gets it back where
        // it came from.
        let to = match from {
            SocketAddr::V4(v4) if v4.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::BROADCAST, CLIENT_PORT)),
            _ => from,
        };
        if socket.send_to(&bytes, to).is_ok() {
            let kind = reply.opts().msg_type().unwrap_or(MessageType::Unknown(0));
            log(&hardware_address(&msg), kind, &file);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn hardware_address(msg: &Message) -> String {
    let len = usize::from(msg.hlen()).min(16);
    msg.chaddr()[..len].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The name of the interface that has `addr`.
fn interface_of(addr: Ipv4Addr) -> Result<String, ProxyDhcpError> {
    let interfaces = nix::ifaddrs::getifaddrs().map_err(ProxyDhcpError::Interfaces)?;
    interfaces
        .into_iter()
        .find(|i| i.address.as_ref().and_then(|a| a.as_sockaddr_in()).is_some_and(|a| a.ip() == addr))
        .map(|i| i.interface_name)
        .ok_or(ProxyDhcpError::NoInterface(addr))
}

/// A UDP socket on the wildcard address and `port`, receiving and sending on `interface`
/// only, allowed to broadcast.
fn bind_device(interface: &str, port: u16, addr: Ipv4Addr) -> Result<UdpSocket, ProxyDhcpError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt};
    let error = |e: nix::Error| ProxyDhcpError::Bind { addr, port, source: std::io::Error::from(e) };
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(error)?;
    // Unprivileged since Linux 5.7 on a socket not yet bound; port 67 needs privileges
    // anyway.
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(interface)).map_err(error)?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(error)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).map_err(error)?;
    Ok(UdpSocket::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Architecture;

    const SERVER: Ipv4Addr = Ipv4Addr::LOCALHOST;
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn files() -> BootFiles {
        BootFiles { bios: "pxelinux.0".into(), efi_x64: None, ipxe: "http://127.0.0.1:8080/boot.ipxe".into() }
    }

    fn discover(class: &[u8], arch: Option<u16>) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut msg = Message::new_with_id(0x1234_5678, z, z, z, z, &MAC);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Discover));
        opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
        if let Some(a) = arch {
            opts.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
        }
        opts.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        msg
    }

    /// Sends `msg` to the server from a socket on the loopback address and waits up to
    /// `bound` for an answer.
    fn exchange(server: &ProxyDhcpServer, msg: &Message, bound: Duration) -> Option<Message> {
        let client = UdpSocket::bind((SERVER, 0)).unwrap();
        client.send_to(&msg.to_vec().unwrap(), server.dhcp_addr()).unwrap();
        // One read with the bound as its timeout: the server answers once or not at all.
        client.set_read_timeout(Some(bound)).unwrap();
        let mut buf = [0u8; 1500];
        match client.recv_from(&mut buf) {
            Ok((n, _)) => Some(Message::from_bytes(&buf[..n]).unwrap()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("receiving the answer: {e}"),
        }
    }

    fn start() -> ProxyDhcpServer {
        let config = Config { server: SERVER, dhcp_port: 0, pxe_port: 0, files: files() };
        ProxyDhcpServer::start(config, |_, _, _| {}).expect("the server starts on the loopback interface")
    }

    #[test]
    fn a_bios_pxe_discover_over_udp_gets_an_offer_with_no_address_and_the_boot_file() {
        let server = start();
        let reply = exchange(&server, &discover(b"PXEClient:Arch:00000:UNDI:002001", Some(0)), Duration::from_secs(10))
            .expect("an answer within 10 s");
        assert_eq!(reply.opcode(), Opcode::BootReply);
        assert_eq!(reply.xid(), 0x1234_5678);
        assert_eq!(&reply.chaddr()[..6], &MAC);
        assert_eq!(reply.yiaddr(), Ipv4Addr::UNSPECIFIED, "a ProxyDHCP offer gives no address");
        assert_eq!(reply.siaddr(), SERVER, "next-server is the TFTP server");
        // The field is NUL-terminated on the wire.
        assert_eq!(reply.fname().and_then(|f| f.split(|&b| b == 0).next()), Some(&b"pxelinux.0"[..]));
        let opts = reply.opts();
        assert_eq!(opts.msg_type(), Some(MessageType::Offer));
        assert_eq!(opts.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SERVER)));
        assert_eq!(opts.get(OptionCode::ClassIdentifier), Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())));
        assert_eq!(
            opts.get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255])),
            "PXE discovery control 8: boot file from the offer"
        );
        assert_eq!(
            opts.get(OptionCode::ClientMachineIdentifier),
            Some(&DhcpOption::ClientMachineIdentifier(vec![0; 17]))
        );
    }

    #[test]
    fn a_discover_without_pxeclient_gets_no_answer() {
        let server = start();
        let plain = discover(b"android-dhcp-14", None);
        assert!(exchange(&server, &plain, Duration::from_secs(2)).is_none());
        // The server is still there, and answers the next PXE client.
        assert!(exchange(&server, &discover(b"PXEClient", None), Duration::from_secs(10)).is_some());
    }

    #[test]
    fn boot_file_follows_the_architecture_and_ipxe() {
        let mut with_efi = files();
        with_efi.efi_x64 = Some("snponly.efi".into());
        let req = |arch, ipxe| PxeRequest { kind: MessageType::Discover, arch, ipxe };
        let table: [(PxeRequest, &BootFiles, Option<&str>); 7] = [
            (req(Some(0), false), &with_efi, Some("pxelinux.0")),
            (req(None, false), &with_efi, Some("pxelinux.0")),
            (req(Some(7), false), &with_efi, Some("snponly.efi")),
            (req(Some(9), false), &with_efi, Some("snponly.efi")),
            (req(Some(7), false), &files(), None),
            (req(Some(11), false), &with_efi, None),
            (req(Some(7), true), &files(), Some("http://127.0.0.1:8080/boot.ipxe")),
        ];
        for (request, files, want) in table {
            assert_eq!(boot_file(&request, files), want, "{request:?}");
        }
    }

    #[test]
    fn only_pxe_discovers_and_requests_to_this_server_are_answered() {
        let config = Config { server: SERVER, dhcp_port: 0, pxe_port: 0, files: files() };
        let mut request = discover(b"PXEClient", Some(0));
        request.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        let (ack, _) = answer(&request, &config).expect("a REQUEST with no server id is ours");
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(answer(&request, &config).is_none(), "a REQUEST to the lab's DHCP server is not ours");
        let mut release = discover(b"PXEClient", Some(0));
        release.opts_mut().insert(DhcpOption::MessageType(MessageType::Release));
        assert!(answer(&release, &config).is_none());
        let mut reply = discover(b"PXEClient", Some(0));
        reply.set_opcode(Opcode::BootReply);
        assert!(answer(&reply, &config).is_none(), "another server's offer is not a request");
    }
}
