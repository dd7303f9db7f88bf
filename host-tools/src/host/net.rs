//! Ports on the host's loopback for the servers a run starts.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

/// A free TCP port on 127.0.0.1, for ganesha and for `appliance run --ssh` (bound, then
/// released: another process may take it before its user does, which then fails to
/// start with a clear error).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_not_zero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
