//! `appliance netboot`: an app dir as a network boot tree, optionally served.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_host::deploy::{cmdline, netboot};
use appliance_host::host::http::HttpServer;
use appliance_host::host::tftp::TftpServer;

/// Write an app dir as a network boot tree (PXELINUX and iPXE), and optionally serve it.
///
/// DIR gets vmlinuz, initrd, pxelinux.0 with ldlinux.c32 and pxelinux.cfg/default, and
/// boot.ipxe, all with the kernel command line `appliance run` would pass (console=ttyS0
/// panic=-1 quiet, the app dir's cmdline, then EXTRA). Copy DIR to a lab's TFTP server
/// (boot file pxelinux.0) or HTTP server (iPXE: chain http://SERVER/boot.ipxe).
///
/// With --serve ADDR the tree is served over HTTP on ADDR (iPXE's boot file is then
/// http://ADDR/boot.ipxe), and with --tftp ADDR over TFTP (read-only, with the blksize
/// and tsize options; PXE's boot file is pxelinux.0), until SIGINT or SIGTERM. Point the
/// lab's DHCP server at them (next-server and filename), or use QEMU's built-in TFTP
/// (-nic user,tftp=DIR,bootfile=pxelinux.0).
///
/// With --power-cycle CMD, CMD runs with `sh -c` once per --node (NODE in its environment),
/// after the tree is written and served, as `ipmitool -H $NODE ... chassis power cycle`.
#[derive(clap::Args)]
pub struct Args {
    /// App dir (vmlinuz, initrd, cmdline) or image (built first)
    #[arg(value_name = "APP_DIR")]
    target: String,

    /// The boot tree's directory
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,

    /// Serve the tree over HTTP on this address (e.g. 192.168.1.2:8080; port 0 picks one)
    #[arg(long, value_name = "ADDR")]
    serve: Option<String>,

    /// Serve the tree over TFTP on this address (e.g. 192.168.1.2:69, which needs root or
    /// CAP_NET_BIND_SERVICE; port 0 picks one)
    #[arg(long, value_name = "ADDR")]
    tftp: Option<String>,

    /// Command that power-cycles a node, run with `sh -c` and NODE set, once per --node
    #[arg(long, value_name = "CMD", requires = "nodes")]
    power_cycle: Option<String>,

    /// A node for --power-cycle (repeatable)
    #[arg(long = "node", value_name = "NODE")]
    nodes: Vec<String>,

    /// Extra kernel command-line words, after `--`
    #[arg(last = true, value_name = "EXTRA")]
    extra: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let app_dir = super::run::app_dir(&args.target)?;
    let line = cmdline::kernel_line(&app_dir, false, &[], &args.extra)?;
    for d in appliance_cmdline::parse(line.as_bytes()).diagnostics {
        log::warn!("kernel command line: {d}");
    }
    netboot::write_tree(&app_dir, &line, &args.output)?;
    let dir = args.output.display();
    eprintln!(
        "appliance: boot tree in {dir}: TFTP boot file {}, iPXE script {}",
        netboot::PXELINUX_FILE,
        netboot::IPXE_SCRIPT
    );
    if args.serve.is_none() && args.tftp.is_none() {
        power_cycle(&args)?;
        return Ok(ExitCode::SUCCESS);
    }
    let signals = appliance_host::vm::stop::catch_stop_signals().context("cannot set up signal handling")?;
    let http = match &args.serve {
        Some(addr) => {
            let server = HttpServer::start(&args.output, addr, |path, status| log::info!("http: {path} {status}"))?;
            // The line tests and scripts read the address from.
            eprintln!(
                "appliance: serving {dir} on http://{}/ : point iPXE at http://{}/{}",
                server.addr(),
                server.addr(),
                netboot::IPXE_SCRIPT
            );
            Some(server)
        }
        None => None,
    };
    let tftp = match &args.tftp {
        Some(addr) => {
            let server = TftpServer::start(&args.output, addr, |file, sent| {
                log::info!("tftp: {file} {}", if sent { "sent" } else { "not sent" })
            })?;
            eprintln!(
                "appliance: serving {dir} on tftp://{}/ : point PXE at next-server {} filename {}",
                server.addr(),
                server.addr().ip(),
                netboot::PXELINUX_FILE
            );
            Some(server)
        }
        None => None,
    };
    power_cycle(&args)?;
    loop {
        if let Ok(Some(sig)) = signals.read_signal() {
            eprintln!("appliance: signal {}: no longer serving {dir}", sig.ssi_signo);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((http, tftp));
    Ok(ExitCode::SUCCESS)
}

fn power_cycle(args: &Args) -> anyhow::Result<()> {
    let Some(cmd) = &args.power_cycle else { return Ok(()) };
    for node in &args.nodes {
        let status = Command::new("sh").arg("-c").arg(cmd).env("NODE", node).status().context("cannot run sh")?;
        if !status.success() {
            bail!("power cycle of {node} failed ({status}): {cmd}");
        }
        eprintln!("appliance: power-cycled {node}");
    }
    Ok(())
}
