//! `appliance-echo`, the application of `images/echo`: a TCP echo server and a client that
//! measures round trips and throughput against it, for multi-node experiments.
//!
//! - `appliance-echo server PORT`: listens, reaches the rendezvous point `server-ready`,
//!   echoes one connection until it closes, and exits.
//! - `appliance-echo client PEER PORT COUNT SIZE`: waits at `server-ready`, connects to the
//!   segment address of node PEER (from `APP_PEERS`), sends COUNT messages of SIZE bytes,
//!   each echoed back before the next, and writes `$APP_RESULTS/metrics.json` with
//!   `rtt_us` (mean round trip) and `mbit_s` (bytes both ways over the total time).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use appliance_init::rendezvous::{self, env};
use appliance_init::rt::Args;
use appliance_init::{console, outln, sys};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::net::{AddressFamily, SocketType, sockopt};

appliance_init::entry!(main);

/// How long a node waits at `server-ready` for the others.
const RENDEZVOUS_S: u32 = 120;

fn main(args: Args) -> ! {
    let a: alloc::vec::Vec<&str> = args.argv.iter().skip(1).map(String::as_str).collect();
    let result = match a.as_slice() {
        ["server", port] => port.parse().map_err(|_| String::from("PORT is a number")).and_then(|p| server(&args, p)),
        ["client", peer, port, count, size] => match (port.parse(), count.parse(), size.parse()) {
            (Ok(p), Ok(c), Ok(s)) => client(&args, peer, p, c, s),
            _ => Err(String::from("PORT, COUNT and SIZE are numbers")),
        },
        _ => Err(String::from("usage: appliance-echo server PORT | client PEER PORT COUNT SIZE")),
    };
    match result {
        Ok(()) => sys::exit(0),
        Err(e) => {
            outln!("echo: {e}");
            sys::exit(1)
        }
    }
}

fn now_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1000
}

fn tcp() -> Result<OwnedFd, String> {
    rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).map_err(|e| format!("socket: {e}"))
}

fn server(args: &Args, port: u16) -> Result<(), String> {
    let sock = tcp()?;
    sockopt::set_socket_reuseaddr(&sock, true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    rustix::net::bind(&sock, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("bind: {e}"))?;
    rustix::net::listen(&sock, 4).map_err(|e| format!("listen: {e}"))?;
    outln!("echo: listening on port {port}");
    rendezvous::reach(&args.envp, "server-ready", RENDEZVOUS_S).map_err(|e| format!("rendezvous: {e}"))?;
    let conn = rustix::net::accept(&sock).map_err(|e| format!("accept: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let mut total = 0u64;
    loop {
        let n = rustix::io::read(&conn, buf.as_mut_slice()).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        console::write_all(conn.as_fd(), buf.get(..n).unwrap_or_default()).map_err(|e| format!("write: {e}"))?;
        total += n as u64;
    }
    outln!("echo: echoed {total} byte(s)");
    Ok(())
}

fn client(args: &Args, peer: &str, port: u16, count: u32, size: usize) -> Result<(), String> {
    rendezvous::reach(&args.envp, "server-ready", RENDEZVOUS_S).map_err(|e| format!("rendezvous: {e}"))?;
    let peers = env(&args.envp, "APP_PEERS").ok_or("APP_PEERS is not set (appPeers)")?;
    let addr = appliance_cmdline::segment::parse_peers(peers)
        .and_then(|p| p.into_iter().find(|(name, _)| *name == peer).map(|(_, a)| a))
        .ok_or_else(|| format!("no node {peer} in APP_PEERS={peers}"))?;
    let sock = tcp()?;
    rustix::net::connect(&sock, &SocketAddrV4::new(addr, port))
        .map_err(|e| format!("connect to {addr}:{port}: {e}"))?;
    sockopt::set_tcp_nodelay(&sock, true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    outln!("echo: connected to {peer} at {addr}:{port}");
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let started = now_us();
    let mut rtt_total = 0u64;
    for _ in 0..count {
        let t = now_us();
        console::write_all(sock.as_fd(), &msg).map_err(|e| format!("write: {e}"))?;
        let mut got = 0;
        while got < size {
            let n =
                rustix::io::read(&sock, back.get_mut(got..).unwrap_or_default()).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(String::from("the server closed the connection"));
            }
            got += n;
        }
        rtt_total += now_us() - t;
    }
    let elapsed = (now_us() - started).max(1);
    let rtt = rtt_total / u64::from(count.max(1));
    let bits = 2 * 8 * size as u64 * u64::from(count);
    // Megabits per second, with three decimals, in integers (no float formatting here).
    let milli_mbit = bits * 1000 / elapsed;
    let metrics = format!("{{\"rtt_us\":{rtt},\"mbit_s\":{}.{:03}}}\n", milli_mbit / 1000, milli_mbit % 1000);
    outln!(
        "echo: {count} round trip(s) of {size} byte(s): mean {rtt} us, {}.{:03} Mbit/s",
        milli_mbit / 1000,
        milli_mbit % 1000
    );
    let dir = env(&args.envp, "APP_RESULTS").unwrap_or("/app/results");
    let _ = rustix::fs::mkdir(dir, Mode::from_raw_mode(0o755));
    let path = format!("{dir}/metrics.json");
    let fd =
        rustix::fs::open(path.as_str(), OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, Mode::from_raw_mode(0o644))
            .map_err(|e| format!("{path}: {e}"))?;
    console::write_all(fd.as_fd(), metrics.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
    Ok(())
}
