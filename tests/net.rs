//! The init's network: a static address on the control NIC (`appIp`, `appGateway`, `appMac`),
//! configured by the init itself through ioctls (the image has no `ip` binary), and the
//! variables the phases see.
//!
//! Kernel: Debian's cloud kernel (the images' default), where the NIC driver is a module:
//! the images here load `virtio_pci` and `virtio_net` at every boot, except the one that
//! names none and gets them from what every image packs for `appliance run`'s features.
//! The NIC is QEMU's virtio-net-pci on user networking, where the host's loopback is
//! 10.0.2.2.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use appliance_tests::{boot, build, image};
use tempfile::TempDir;

const MAC: &str = "52:54:00:12:34:99";

/// Prints what the run phase sees, then sends a line to the host over TCP with bash's
/// /dev/tcp (so the address and the route really work, without any network tool).
const RUN: &str = r#"#!/bin/bash
echo "myip=$APP_MYIP mymac=$APP_MYMAC mynode=$APP_MYNODE gw=$APP_GATEWAY"
while read -r iface dest gw rest; do
  [ "$dest" = 00000000 ] && echo "default-route=$iface:$gw"
done < /proc/net/route
echo "hello from $APP_MYIP" > "/dev/tcp/10.0.2.2/$1" && echo sent
"#;

fn manifest() -> String {
    r#"description = "static network test"
host_files = ["/bin/bash", "/usr/bin/cat"]
modules = ["virtio_pci", "virtio_net"]
"#
    .to_string()
}

/// A TCP listener on the host's loopback; the receiver gets the first line sent to it.
fn listener() -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            let _ = tx.send(text);
        }
    });
    (port, rx)
}

#[test]
fn static_address_on_the_nic_with_app_mac_reaches_the_host() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(), &[("run", RUN)]);
    let app = build(&img, tmp.path());
    let (port, rx) = listener();
    let nic = format!("--qemu-arg=user,model=virtio-net-pci,mac={MAC}");
    let port_arg = port.to_string();
    let b = boot(
        &app,
        &[
            "--qemu-arg=-nic",
            &nic,
            "--args",
            &port_arg,
            "--",
            "appIp=10.0.2.15/24",
            "appGateway=10.0.2.2",
            &format!("appMac={MAC}"),
        ],
    );
    assert_eq!(b.code, 0, "{b:?}");
    assert!(b.errors().is_empty(), "{:?}", b.errors());
    b.assert_console(&format!("myip=10.0.2.15/24 mymac={MAC} mynode=52_54_00_12_34_99 gw=10.0.2.2"));
    // 10.0.2.2 in /proc/net/route's little-endian hex.
    b.assert_console("default-route=eth0:0202000A");
    b.assert_console("sent");
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("the guest connected to the host");
    assert_eq!(got, "hello from 10.0.2.15/24\n");
}

/// `appliance run --ssh` gives the guest a NIC and an address; on the default kernel its
/// driver is a module, which an image whose manifest names none still packs, and the init
/// loads it because the boot uses the network.
#[test]
fn run_ssh_gives_the_network_to_an_image_that_names_no_module_on_the_default_kernel() {
    let tmp = TempDir::new().unwrap();
    let manifest = "description = \"no modules\"\nhost_files = [\"/bin/bash\", \"/usr/bin/cat\"]\n";
    let img = image(tmp.path(), manifest, &[("run", RUN)]);
    let app = build(&img, tmp.path());
    let (port, rx) = listener();
    let b = boot(&app, &["--ssh", "--args", &port.to_string()]);
    assert_eq!(b.code, 0, "{b:?}");
    assert!(b.errors().is_empty(), "{:?}", b.errors());
    b.assert_console("myip=10.0.2.15/24");
    b.assert_console("sent");
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("the guest connected to the host");
    assert_eq!(got, "hello from 10.0.2.15/24\n");
}

#[test]
fn an_app_mac_that_no_nic_has_is_an_error_and_the_boot_goes_on() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(), &[("run", "#!/bin/bash\necho \"myip=$APP_MYIP\"\n")]);
    let app = build(&img, tmp.path());
    let b = boot(
        &app,
        &[
            "--qemu-arg=-nic",
            "--qemu-arg=user,model=virtio-net-pci",
            "--",
            "appIp=10.0.2.15/24",
            "appMac=02:00:00:00:00:01",
        ],
    );
    assert_eq!(b.code, 0, "{b:?}");
    let errors = b.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("network: no network interface has the MAC address 02:00:00:00:00:01 of appMac"),
        "{errors:?}"
    );
    // Not configured: the variable keeps the command line's value.
    b.assert_console("myip=10.0.2.15/24");
}

#[test]
fn dhcp_at_boot_gives_the_lease_and_the_router_to_the_phases() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(), &[("run", RUN)]);
    let app = build(&img, tmp.path());
    let (port, rx) = listener();
    let port_arg = port.to_string();
    let b = boot(
        &app,
        &["--qemu-arg=-nic", "--qemu-arg=user,model=virtio-net-pci", "--args", &port_arg, "--", "appIp=dhcp"],
    );
    assert_eq!(b.code, 0, "{b:?}");
    assert!(b.errors().is_empty(), "{:?}", b.errors());
    // QEMU's slirp leases 10.0.2.15/24 with 10.0.2.2 as the router.
    b.assert_console("myip=10.0.2.15/24 mymac=52:54:00:12:34:56 mynode=52_54_00_12_34_56 gw=10.0.2.2");
    b.assert_console("default-route=eth0:0202000A");
    let network = b.events.iter().find_map(|e| match e {
        appliance_cmdline::status::Event::Network { method, addr, .. } => Some((method.clone(), addr.clone())),
        _ => None,
    });
    assert_eq!(network, Some(("dhcp".into(), "10.0.2.15/24".into())));
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("the guest connected to the host");
    assert_eq!(got, "hello from 10.0.2.15/24\n");
}
