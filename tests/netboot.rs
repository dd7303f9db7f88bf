//! `appliance netboot`: a VM with no kernel given boots the appliance from the network,
//! over QEMU's built-in TFTP (PXELINUX) and over HTTP from `appliance netboot --serve`
//! (iPXE, the boot ROM of QEMU's NIC from Debian's `ipxe-qemu`), and its output and status
//! record come back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_tests::{BOOT_TIMEOUT_S, appliance, build, root};
use tempfile::TempDir;

/// Kills the process when dropped, so a failing test leaves no VM or server behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hello() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    (tmp, app)
}

/// Boots a VM without a kernel from its NIC (`nic`: QEMU's `-nic` value), within the
/// boot bound; returns the console and the status record.
fn netboot_vm(nic: &str, tmp: &Path) -> (String, Vec<Event>) {
    let status = tmp.join("status.jsonl");
    let child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-no-user-config", "-machine", "pc,accel=tcg", "-m", "512", "-display", "none"])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", status.display()))
        .args(["-no-reboot", "-nic", nic, "-boot", "n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let mut vm = KillOnDrop(child);
    let stdout = vm.0.stdout.take().unwrap();
    let console = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut BufReader::new(stdout), &mut out);
        String::from_utf8_lossy(&out).replace("\r\n", "\n")
    });
    let deadline = Instant::now() + Duration::from_secs(BOOT_TIMEOUT_S);
    while vm.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the network boot did not end within {BOOT_TIMEOUT_S} s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = console.join().unwrap();
    let (events, _) = appliance_host::vm::read_status(&status);
    (console, events)
}

fn end(events: &[Event]) -> Option<(String, i32)> {
    events.iter().find_map(|e| match e {
        Event::End { action, status, .. } => Some((action.clone(), *status)),
        _ => None,
    })
}

#[test]
fn pxelinux_over_qemus_tftp_boots_the_appliance_with_its_command_line() {
    let (tmp, app) = hello();
    let tree = tmp.path().join("tree");
    let o = appliance()
        .args(["-q", "netboot"])
        .arg(&app)
        .arg("-o")
        .arg(&tree)
        .args(["--", "appArgs=exit=3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nic = format!("user,model=virtio-net-pci,tftp={},bootfile=pxelinux.0", tree.display());
    let (console, events) = netboot_vm(&nic, tmp.path());
    assert!(console.contains("hello: exiting with 3"), "{console}");
    assert_eq!(end(&events), Some(("poweroff".into(), 3)), "{console}");
}

#[test]
fn ipxe_over_http_from_netboot_serve_boots_the_appliance_and_power_cycles_nodes() {
    let (tmp, app) = hello();
    let tree = tmp.path().join("tree");
    let cycled = tmp.path().join("cycled");
    let child = appliance()
        .arg("netboot")
        .arg(&app)
        .arg("-o")
        .arg(&tree)
        .args(["--serve", "127.0.0.1:0", "--node", "n1", "--node", "n2", "--power-cycle"])
        .arg(format!("echo $NODE >> {}", cycled.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(child);
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the server's address");
        if let Some(at) = line.find("point iPXE at ") {
            break line[at + "point iPXE at ".len()..].trim().to_string();
        }
    };
    // The host's loopback, as QEMU's user network shows it to the guest.
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let nic = format!("user,model=virtio-net-pci,bootfile=http://10.0.2.2:{port}/boot.ipxe");
    let (console, events) = netboot_vm(&nic, tmp.path());
    assert!(console.contains("arg[4]=appliance"), "the quoted appArgs arrived whole:\n{console}");
    assert_eq!(end(&events), Some(("poweroff".into(), 0)), "{console}");
    assert_eq!(std::fs::read_to_string(&cycled).unwrap(), "n1\nn2\n");
    // SIGTERM ends the server cleanly.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `appliance netboot --serve/--tftp` started on loopback with free ports; the addresses
/// it prints, read within a bound: HTTP's and TFTP's ports.
/// The receiver gets the rest of its log, line by line.
fn serve_tree(
    app: &Path,
    tree: &Path,
    servers: &[&str],
) -> (KillOnDrop, Option<u16>, Option<u16>, mpsc::Receiver<String>) {
    let mut command = appliance();
    command.arg("netboot").arg(app).arg("-o").arg(tree);
    for server in servers {
        command.args([*server, "127.0.0.1:0"]);
    }
    let mut server =
        KillOnDrop(command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let port = |line: &str, scheme: &str| {
        line.split(scheme).nth(1).and_then(|rest| rest.split(['/', ' ']).next()?.rsplit(':').next()?.parse().ok())
    };
    let (mut http, mut tftp) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (servers.contains(&"--serve") && http.is_none()) || (servers.contains(&"--tftp") && tftp.is_none()) {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the servers' addresses");
        http = http.or_else(|| port(&line, "on http://"));
        tftp = tftp.or_else(|| port(&line, "on tftp://"));
    }
    (server, http, tftp, rx)
}

/// curl's TFTP client against `netboot --tftp`: every file of the tree arrives whole, with
/// the default 512-byte blocks and with a negotiated block size; a missing file and a path
/// out of the tree are refused.
#[test]
fn netboot_tftp_server_sends_the_trees_files_to_a_tftp_client() {
    let (tmp, app) = hello();
    let tree = tmp.path().join("tree");
    let (_server, _, tftp, _log) = serve_tree(&app, &tree, &["--tftp"]);
    let tftp = tftp.unwrap();
    let fetch = |name: &str, extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "120"])
            .args(extra)
            .arg(format!("tftp://127.0.0.1:{tftp}/{name}"))
            .output()
            .expect("curl runs")
    };
    for (name, extra) in
        [("pxelinux.cfg/default", &[][..]), ("pxelinux.0", &[]), ("initrd", &["--tftp-blksize", "1468"][..])]
    {
        let o = fetch(name, extra);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout == std::fs::read(tree.join(name)).unwrap(), "{name} differs");
    }
    for name in ["no-such-file", "../app/initrd"] {
        let o = fetch(name, &[]);
        assert!(!o.status.success(), "{name} was sent");
    }
}

/// A VM with no kernel boots the appliance over our TFTP server: iPXE (QEMU's NIC ROM)
/// chains from an HTTP script to `boot.ipxe` over TFTP, which loads the kernel and the
/// initrd over TFTP too, relative to its own URL. (QEMU's user network cannot point PXE's
/// own TFTP at another server, so iPXE does the TFTP part.)
#[test]
fn ipxe_boots_the_appliance_over_netboot_tftp_server() {
    let (tmp, app) = hello();
    let tree = tmp.path().join("tree");
    let (_server, http, tftp, log) = serve_tree(&app, &tree, &["--serve", "--tftp"]);
    std::fs::write(tree.join("tftp.ipxe"), format!("#!ipxe\nchain tftp://10.0.2.2:{}/boot.ipxe\n", tftp.unwrap()))
        .unwrap();
    let nic = format!("user,model=virtio-net-pci,bootfile=http://10.0.2.2:{}/tftp.ipxe", http.unwrap());
    let (console, events) = netboot_vm(&nic, tmp.path());
    assert!(console.contains("arg[4]=appliance"), "{console}");
    assert_eq!(end(&events), Some(("poweroff".into(), 0)), "{console}");
    // The server's log says the kernel and the initrd went over TFTP, in full (iPXE's own
    // messages are on the VGA console, which the VM does not have).
    let sent: Vec<String> = log.try_iter().filter(|l| l.contains("tftp: ") && l.ends_with(" sent")).collect();
    for file in ["boot.ipxe", "vmlinuz", "initrd"] {
        assert!(sent.iter().any(|l| l.ends_with(&format!("tftp: {file} sent"))), "{file} not over TFTP: {sent:?}");
    }
}
