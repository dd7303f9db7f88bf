//! The private segment of a multi-node run: a second NIC on every node, all of a run's on
//! one QEMU multicast socket (`-netdev socket,mcast=`), which needs no root, no bridge and
//! no tap. Each run gets a group and port of its own, so concurrent runs (of one batch or
//! of two) never see each other's frames. Addresses are static: node `n` (from 0) is
//! `10.77.0.<n+1>/24`, passed with `appSegIp`, and every node learns all of them from
//! `appPeers` (`APP_PEERS`).
//!
//! The control NIC beside it (QEMU user networking, for the rendezvous server on the host)
//! is picked by its fixed MAC (`appMac`), so that the init never takes one for the other.

use std::net::Ipv4Addr;

use crate::vm::machine::Machine;
use crate::vm::qemu;

/// The control NIC's MAC on every node: each VM has its own user network, so the same
/// one does no harm.
pub const CONTROL_MAC: &str = "52:54:00:12:34:56";
/// QEMU user networking's guest address and the host as the guest sees it.
pub const CONTROL_IP: &str = "10.0.2.15/24";

/// A run's multicast group and UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub group: Ipv4Addr,
    pub port: u16,
}

impl Segment {
    /// A segment for one run: a UDP port free on the loopback now, and a group in
    /// 239.0.0.0/8 (organisation-local) drawn from our pid, the time and the run's index.
    /// QEMU binds each socket to its group's address, so a frame reaches only the sockets
    /// of the same group and port.
    pub fn new(run_index: usize) -> std::io::Result<Segment> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let mix = (std::process::id() ^ nanos ^ (run_index as u32).wrapping_mul(0x9e37_79b9)).to_be_bytes();
        Ok(Segment { group: Ipv4Addr::new(239, mix[1], mix[2], mix[3].max(1)), port })
    }

    /// QEMU arguments of node `n`'s segment NIC.
    pub fn qemu_args(&self, n: usize, machine: Machine) -> Vec<String> {
        let netdev = format!("socket,id=seg,mcast={}:{},localaddr=127.0.0.1", self.group, self.port);
        let device = format!("{},netdev=seg,mac={}", qemu::virtio(machine, "net"), segment_mac(n));
        vec!["-netdev".into(), netdev, "-device".into(), device]
    }
}

/// Node `n`'s segment MAC: locally administered, distinct per node.
pub fn segment_mac(n: usize) -> String {
    format!("52:54:00:77:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
}

/// Node `n`'s segment address (from 0; at most 253 nodes).
pub fn segment_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (n + 1).min(254) as u8)
}

/// The words of node `n` of `names`: its segment address and the list of peers.
pub fn guest_words(n: usize, names: &[String]) -> Vec<String> {
    let peers: Vec<String> = names.iter().enumerate().map(|(i, name)| format!("{name}={}", segment_ip(i))).collect();
    vec![format!("appSegIp={}/24", segment_ip(n)), format!("appPeers={}", peers.join(","))]
}

/// The control NIC's words (its MAC and address), for a run whose nodes talk to the host.
pub fn control_words() -> Vec<String> {
    vec![format!("appMac={CONTROL_MAC}"), format!("appIp={CONTROL_IP}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_addresses_and_the_peer_list() {
        let names = ["server-1".to_string(), "client-1".to_string()];
        assert_eq!(guest_words(1, &names), ["appSegIp=10.77.0.2/24", "appPeers=server-1=10.77.0.1,client-1=10.77.0.2"]);
        let seg = Segment { group: Ipv4Addr::new(239, 1, 2, 3), port: 4000 };
        assert_eq!(
            seg.qemu_args(1, Machine::Pc),
            [
                "-netdev",
                "socket,id=seg,mcast=239.1.2.3:4000,localaddr=127.0.0.1",
                "-device",
                "virtio-net-pci,netdev=seg,mac=52:54:00:77:00:01"
            ]
        );
    }

    #[test]
    fn two_runs_get_different_segments() {
        let (a, b) = (Segment::new(0).unwrap(), Segment::new(1).unwrap());
        assert!(a != b, "{a:?} {b:?}");
    }
}
