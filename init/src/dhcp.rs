//! A minimal DHCP client for the control NIC (`appIp=dhcp`, or the results step without
//! `appIp`): DISCOVER, OFFER, REQUEST, ACK (RFC 2131) over a UDP socket bound to port 68
//! and to the NIC (SO_BINDTODEVICE), broadcast with the BOOTP broadcast flag, so the
//! replies come back before the NIC has an address (the kernel sends a broadcast through
//! the bound device without one, and delivers broadcasts to port 68: no AF_PACKET socket
//! is needed, checked against QEMU's slirp). Bounded: a few retries with growing waits,
//! then an error. The lease is not renewed: an appliance lives for one run, and
//! QEMU's user network leases for a day.
//!
//! Building and reading the packets is pure and unit-tested; [`bring_up`] talks to the
//! network.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use appliance_cmdline::{IpCidr, MacAddr};
use rustix::io::Errno;

use crate::console::Describe;
use crate::nic::{self, Control, NetError, Nic};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

const OPT_SUBNET: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_END: u8 = 255;
const OPT_PAD: u8 = 0;

/// How long to wait for each answer, one entry per try: about 10 s in all.
pub const WAITS_MS: [u64; 4] = [1000, 2000, 3000, 4000];

/// A client message: DISCOVER, or REQUEST for `offer` from `server`.
pub fn message(kind: u8, xid: u32, mac: MacAddr, request: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = alloc::vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6; // hardware address length
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    // Broadcast flag: answer to 255.255.255.255, we cannot receive unicast yet.
    p[10] = 0x80;
    p[28..34].copy_from_slice(&mac.0);
    p[236..240].copy_from_slice(&MAGIC);
    p.extend_from_slice(&[OPT_TYPE, 1, kind]);
    if let Some((addr, server)) = request {
        p.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
        p.extend_from_slice(&addr.octets());
        p.extend_from_slice(&[OPT_SERVER_ID, 4]);
        p.extend_from_slice(&server.octets());
    }
    p.extend_from_slice(&[OPT_PARAMS, 4, OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_LEASE]);
    p.push(OPT_END);
    // Some servers drop BOOTP messages shorter than 300 bytes.
    p.resize(300, OPT_PAD);
    p
}

/// What a server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub addr: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
    pub mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub lease_s: Option<u32>,
}

fn ip(b: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Reads a server's message for transaction `xid` and `mac`; `None` for anything else
/// (another client's answer, a malformed packet).
pub fn parse(p: &[u8], xid: u32, mac: MacAddr) -> Option<Reply> {
    if p.first() != Some(&2) || p.get(4..8)? != xid.to_be_bytes() || p.get(28..34)? != mac.0 {
        return None;
    }
    if p.get(236..240)? != MAGIC {
        return None;
    }
    let mut reply = Reply { kind: 0, addr: ip(p.get(16..20)?)?, server: None, mask: None, router: None, lease_s: None };
    let mut rest = p.get(240..)?;
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            OPT_PAD => {
                rest = tail;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let (&len, tail) = tail.split_first()?;
        let value = tail.get(..usize::from(len))?;
        match code {
            OPT_TYPE => reply.kind = *value.first()?,
            OPT_SUBNET => reply.mask = ip(value),
            OPT_ROUTER => reply.router = ip(value),
            OPT_SERVER_ID => reply.server = ip(value),
            OPT_LEASE => reply.lease_s = value.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
            _ => {}
        }
        rest = tail.get(usize::from(len)..)?;
    }
    (reply.kind != 0).then_some(reply)
}

/// The prefix length of a netmask (its leading ones).
pub fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// A transaction id from the clock and the MAC: only has to differ between clients.
fn xid(mac: MacAddr) -> u32 {
    let t = crate::supervisor::now();
    let m = u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    (t.as_nanos() as u32) ^ m.rotate_left(7)
}

/// Gets a lease for `nic` and configures it with the address, netmask and router it
/// names (`gateway`, from `appGateway`, wins over the router).
pub fn bring_up(nic: &Nic, gateway: Option<Ipv4Addr>) -> Result<Control, NetError> {
    let fail = |reason: String| NetError::Dhcp { nic: nic.name.clone(), reason };
    let mac = nic.mac.ok_or_else(|| fail(String::from("the interface has no MAC address")))?;
    nic::quiet_ipv6(&nic.name);
    nic::set_link(&nic.name, true)?;
    let sock = socket(&nic.name).map_err(|e| fail(format!("cannot open the client socket: {}", Describe(e))))?;
    let xid = xid(mac);
    let offer = exchange(&sock, &message(DISCOVER, xid, mac, None), xid, mac, &[OFFER])
        .map_err(|e| fail(format!("no offer: {e}")))?;
    let server = offer.server.ok_or_else(|| fail(String::from("the offer names no server")))?;
    let ack = exchange(&sock, &message(REQUEST, xid, mac, Some((offer.addr, server))), xid, mac, &[ACK, NAK])
        .map_err(|e| fail(format!("no answer to the request: {e}")))?;
    if ack.kind == NAK {
        return Err(fail(format!("the server refused {}", offer.addr)));
    }
    let mask = ack.mask.or(offer.mask).unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    let addr = IpCidr::new(ack.addr, prefix_of(mask)).ok_or_else(|| fail(String::from("bad netmask")))?;
    let mut control = nic::configure(nic, addr, gateway.or(ack.router).or(offer.router))?;
    control.method = "dhcp";
    Ok(control)
}

fn socket(nic: &str) -> Result<rustix::fd::OwnedFd, Errno> {
    use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};
    let sock = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, Some(ipproto::UDP))?;
    sockopt::set_socket_reuseaddr(&sock, true)?;
    sockopt::set_socket_broadcast(&sock, true)?;
    crate::sys::bind_to_device(rustix::fd::AsFd::as_fd(&sock), nic)?;
    rustix::net::bind(&sock, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))?;
    Ok(sock)
}

/// Sends `msg` and waits for an answer of one of `kinds`, resending with growing waits.
fn exchange(
    sock: &rustix::fd::OwnedFd,
    msg: &[u8],
    xid: u32,
    mac: MacAddr,
    kinds: &[u8],
) -> Result<Reply, &'static str> {
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut buf = alloc::vec![0u8; 1500];
    for wait in WAITS_MS {
        rustix::net::sendto(sock, msg, rustix::net::SendFlags::empty(), &to).map_err(|_| "cannot send")?;
        let deadline = crate::supervisor::now().saturating_add(Duration::from_millis(wait));
        loop {
            let left = deadline.saturating_sub(crate::supervisor::now());
            if left.is_zero() {
                break;
            }
            let timeout = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos().into() };
            let mut fds = [rustix::event::PollFd::new(sock, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => return Err("cannot wait for an answer"),
            }
            let n = match rustix::net::recv(sock, &mut buf[..], rustix::net::RecvFlags::empty()) {
                Ok((_, n)) => n,
                Err(_) => continue,
            };
            if let Some(reply) = parse(buf.get(..n).unwrap_or_default(), xid, mac)
                && kinds.contains(&reply.kind)
            {
                return Ok(reply);
            }
        }
    }
    Err("timed out (no DHCP server on this network?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    /// A server's answer as QEMU's slirp sends it.
    fn answer(kind: u8, xid: u32) -> Vec<u8> {
        let mut p = alloc::vec![0u8; 240];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[28..34].copy_from_slice(&MAC.0);
        p[236..240].copy_from_slice(&MAGIC);
        p.extend_from_slice(&[OPT_TYPE, 1, kind, OPT_PAD, OPT_SERVER_ID, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[OPT_SUBNET, 4, 255, 255, 255, 0, OPT_ROUTER, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[OPT_LEASE, 4, 0, 1, 81, 128, OPT_END]);
        p
    }

    #[test]
    fn discover_and_request_are_broadcast_bootp_requests() {
        let d = message(DISCOVER, 0x01020304, MAC, None);
        assert_eq!(d.len(), 300);
        assert_eq!(&d[..4], &[1, 1, 6, 0]);
        assert_eq!(&d[4..8], &[1, 2, 3, 4]);
        assert_eq!(d[10], 0x80, "broadcast flag");
        assert_eq!(&d[28..34], &MAC.0);
        assert_eq!(&d[236..243], &[99, 130, 83, 99, OPT_TYPE, 1, DISCOVER]);
        let r = message(REQUEST, 7, MAC, Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))));
        assert_eq!(&r[240..255], &[OPT_TYPE, 1, REQUEST, 50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]);
    }

    #[test]
    fn answers_are_read_with_their_options() {
        let reply = parse(&answer(OFFER, 9), 9, MAC).unwrap();
        assert_eq!(
            reply,
            Reply {
                kind: OFFER,
                addr: Ipv4Addr::new(10, 0, 2, 15),
                server: Some(Ipv4Addr::new(10, 0, 2, 2)),
                mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                lease_s: Some(86400),
            }
        );
    }

    #[test]
    fn other_transactions_and_garbage_are_ignored() {
        assert_eq!(parse(&answer(OFFER, 9), 10, MAC), None);
        assert_eq!(parse(&answer(OFFER, 9), 9, MacAddr([1; 6])), None);
        let mut bad = answer(OFFER, 9);
        bad.truncate(250);
        bad[245] = 200; // an option running past the end
        assert_eq!(parse(&bad, 9, MAC), None);
        for n in 0..300 {
            let p = answer(ACK, 9);
            let _ = parse(&p[..n.min(p.len())], 9, MAC);
        }
        assert_eq!(parse(&[], 9, MAC), None);
    }

    /// The init reads whatever arrives on port 68: no input may panic it. (The init has no
    /// proptest; a fixed-seed xorshift gives the same 20000 packets every run.)
    #[test]
    fn random_packets_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = answer(ACK, 9);
        for _ in 0..20_000 {
            let mut p = base.clone();
            let len = (next() % 320) as usize;
            p.resize(len, 0);
            for _ in 0..(next() % 8) {
                if !p.is_empty() {
                    let i = (next() as usize) % p.len();
                    p[i] = next() as u8;
                }
            }
            let _ = parse(&p, 9, MAC);
        }
    }

    #[test]
    fn prefixes_of_netmasks() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 0, 0)), 16);
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), 0);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), 32);
    }
}
