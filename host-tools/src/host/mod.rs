//! What every capability takes from the host machine, written once: errors that name the
//! file, glob patterns, programs on `PATH`, child processes, free ports, sizes for people,
//! and the network boot servers (HTTP, TFTP, ProxyDHCP).

pub mod fs_error;
pub mod glob;
pub mod http;
pub mod net;
pub mod process;
pub mod proxy_dhcp;
pub mod scratch;
pub mod size;
pub mod tftp;
