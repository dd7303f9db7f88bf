//! The nodes of a multi-node run: the values of `appPeers` (every node's name and address
//! on the run's private segment) and `appRendezvous` (where the host's rendezvous server
//! listens, and the run's token), and the line protocol a node speaks to that server.
//!
//! The protocol, one TCP connection per rendezvous: the node sends
//! `reach <token> <node> <point> <seconds>\n` and waits; the host answers `go\n` once every
//! node of the run has reached `<point>`, or `timeout\n` when `<seconds>` have passed
//! first. The host records when each node reached each point.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::str::FromStr;

use crate::value::is_valid_node;

pub const SEG_IP_EXPECTED: &str = "an address with its prefix length, a.b.c.d/nn";
pub const PEERS_EXPECTED: &str = "node=a.b.c.d pairs separated by `,` (node names of A-Z a-z 0-9 - _ .)";
pub const RENDEZVOUS_EXPECTED: &str = "a.b.c.d:port/token (token: 1 to 64 of A-Z a-z 0-9 - _ .)";

/// The peers of `appPeers`, in order; `None` when the value is not valid.
pub fn parse_peers(s: &str) -> Option<Vec<(&str, Ipv4Addr)>> {
    s.split(',')
        .map(|pair| {
            let (name, addr) = pair.split_once('=')?;
            let addr = Ipv4Addr::from_str(addr).ok()?;
            is_valid_node(name).then_some((name, addr))
        })
        .collect()
}

pub fn is_valid_peers(s: &str) -> bool {
    parse_peers(s).is_some_and(|p| !p.is_empty())
}

/// `appRendezvous`: the server's address and the run's token.
pub fn parse_rendezvous(s: &str) -> Option<(SocketAddrV4, &str)> {
    let (addr, token) = s.split_once('/')?;
    let addr = SocketAddrV4::from_str(addr).ok()?;
    is_valid_node(token).then_some((addr, token))
}

pub fn is_valid_rendezvous(s: &str) -> bool {
    parse_rendezvous(s).is_some()
}

/// A node's request: `reach <token> <node> <point> <seconds>\n`.
pub fn request(token: &str, node: &str, point: &str, seconds: u32) -> String {
    alloc::format!("reach {token} {node} {point} {seconds}\n")
}

/// A request as the host reads it: (token, node, point, seconds).
pub fn parse_request(line: &str) -> Option<(&str, &str, &str, u32)> {
    let mut w = line.trim_end().split(' ');
    match (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?, w.next()) {
        ("reach", token, node, point, secs, None)
            if is_valid_node(token) && is_valid_node(node) && is_valid_node(point) =>
        {
            Some((token, node, point, secs.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_and_rendezvous_parse_and_refuse() {
        let p = parse_peers("server-1=10.77.0.1,client-1=10.77.0.2").unwrap();
        assert_eq!(p, [("server-1", Ipv4Addr::new(10, 77, 0, 1)), ("client-1", Ipv4Addr::new(10, 77, 0, 2))]);
        for bad in ["", "a", "a=1.2.3", "a b=1.2.3.4", "a=1.2.3.4,"] {
            assert!(!is_valid_peers(bad), "{bad}");
        }
        let (addr, token) = parse_rendezvous("10.0.2.2:4567/r3").unwrap();
        assert_eq!((addr.port(), token), (4567, "r3"));
        for bad in ["10.0.2.2:4567", "10.0.2.2/r", "x:1/r", "10.0.2.2:1/"] {
            assert!(!is_valid_rendezvous(bad), "{bad}");
        }
    }

    #[test]
    fn a_request_round_trips() {
        let line = request("r3", "client-1", "server-ready", 60);
        assert_eq!(parse_request(&line), Some(("r3", "client-1", "server-ready", 60)));
        assert_eq!(parse_request("reach r3 a b"), None);
        assert_eq!(parse_request("reach r3 a b 1 extra"), None);
        assert_eq!(parse_request("leave r3 a b 1"), None);
    }
}
