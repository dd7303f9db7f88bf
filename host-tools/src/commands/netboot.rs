//! `appliance netboot`: an app dir as a network boot tree, optionally served.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_host::deploy::{cmdline, netboot};
use appliance_host::host::http::HttpServer;
use appliance_host::host::proxy_dhcp::{self, BootFiles, ProxyDhcpServer};
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
/// With --proxy-dhcp (and --tftp on this machine's address on the lab's segment), a
/// ProxyDHCP server on UDP ports 67 and 4011 answers PXE clients' DHCPDISCOVER with the
/// TFTP server and the boot file only, for a lab whose DHCP server cannot be changed: it
/// keeps handing out the addresses. Boot files: pxelinux.0 for legacy BIOS; for x86-64
/// UEFI, snponly.efi, ipxe.efi or appliance.efi if copied into DIR (else no answer); for
/// iPXE, boot.ipxe (over HTTP with --serve). Ports 67 and 4011 need root or
/// CAP_NET_BIND_SERVICE.
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

    /// Answer PXE clients as a ProxyDHCP server (UDP 67 and 4011) on the --tftp address,
    /// naming the TFTP server and the boot file; the lab's DHCP server gives the addresses
    #[arg(long, requires = "tftp")]
    proxy_dhcp: bool,

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
    let proxy = match (&tftp, args.proxy_dhcp) {
        (Some(tftp), true) => Some(start_proxy_dhcp(&args, tftp.addr(), http.as_ref().map(|h| h.addr()))?),
        _ => None,
    };
    power_cycle(&args)?;
    loop {
        if let Ok(Some(sig)) = signals.read_signal() {
            eprintln!("appliance: signal {}: no longer serving {dir}", sig.ssi_signo);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((proxy, http, tftp));
    Ok(ExitCode::SUCCESS)
}

/// The ProxyDHCP server, on the TFTP server's address.
fn start_proxy_dhcp(args: &Args, tftp: SocketAddr, http: Option<SocketAddr>) -> anyhow::Result<ProxyDhcpServer> {
    let IpAddr::V4(server) = tftp.ip() else { bail!(proxy_dhcp::ProxyDhcpError::NotIpv4(tftp.ip())) };
    if tftp.port() != 69 {
        // Firmware PXE asks port 69, whatever the offer says; iPXE would take a URL.
        log::warn!("ProxyDHCP: the TFTP server is on port {}, but PXE firmware asks port 69", tftp.port());
    }
    let efi_x64 = netboot::efi_boot_file(&args.output).map(str::to_string);
    if efi_x64.is_none() {
        log::warn!(
            "ProxyDHCP: no {} in {}: UEFI machines get no answer",
            netboot::EFI_BOOT_FILES.join(" or "),
            args.output.display()
        );
    }
    let files = BootFiles {
        bios: netboot::PXELINUX_FILE.to_string(),
        efi_x64,
        ipxe: match http {
            Some(http) => format!("http://{http}/{}", netboot::IPXE_SCRIPT),
            None => netboot::IPXE_SCRIPT.to_string(),
        },
    };
    let config = proxy_dhcp::Config { server, dhcp_port: proxy_dhcp::DHCP_PORT, pxe_port: proxy_dhcp::PXE_PORT, files };
    let proxy =
        ProxyDhcpServer::start(config, |client, kind, file| log::info!("proxy-dhcp: {client} {kind:?} {file}"))?;
    eprintln!(
        "appliance: ProxyDHCP on {} and {}: PXE clients are sent to tftp://{server}/",
        proxy.dhcp_addr(),
        proxy.pxe_addr()
    );
    Ok(proxy)
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
