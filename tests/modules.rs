//! Kernel modules on Debian's cloud kernel, where virtio drivers are modules: the builder
//! packs what the manifest names with its dependencies, `appliance-init` loads it before
//! the phases, and `appModules=` loads more from what the image packs.
//!
//! The NIC is QEMU's virtio-net-pci. `virtio_net` alone does not bring it up: the PCI
//! transport, `virtio_pci`, is a driver of its own (neither needs the other), so the
//! images name both and the builder adds `virtio`, `virtio_ring`, `net_failover`,
//! `failover` and the PCI helpers.

use appliance_tests::{Boot, boot, build, image};
use tempfile::TempDir;

/// A virtio NIC on QEMU's user network.
const NIC: [&str; 2] = ["--qemu-arg=-nic", "--qemu-arg=user,model=virtio-net-pci"];

/// Prints the network interfaces on one line, and the loaded modules.
const RUN: &str = r#"#!/bin/bash
echo net: $(ls /sys/class/net)
for m in /sys/module/*/initstate; do m=${m%/initstate}; echo "module: ${m##*/}"; done
"#;

fn manifest(modules: &str) -> String {
    format!(
        r#"description = "kernel modules test"
host_files = ["/bin/bash", "/usr/bin/cat", "/usr/bin/ls"]
{modules}
"#
    )
}

/// The interfaces the run script saw.
fn interfaces(b: &Boot) -> Vec<String> {
    b.console
        .lines()
        .find_map(|l| l.strip_prefix("net: "))
        .unwrap_or_else(|| panic!("run printed no interfaces:\n{}\n{}", b.console, b.stderr))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn loaded(b: &Boot) -> Vec<&str> {
    b.console.lines().filter_map(|l| l.strip_prefix("module: ")).map(str::trim).collect()
}

#[test]
fn manifest_modules_are_loaded_at_boot_and_virtio_net_comes_up_as_eth0() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(r#"modules = ["virtio_pci", "virtio_net"]"#), &[("run", RUN)]);
    let app = build(&img, tmp.path());
    let facts = std::fs::read_to_string(app.join("appliance.json")).unwrap();
    for dependency in ["failover", "net_failover", "virtio", "virtio_ring"] {
        assert!(facts.contains(&format!("\"{dependency}\"")), "{dependency} not packed: {facts}");
    }
    let b = boot(&app, &NIC);
    assert_eq!(b.code, 0, "{b:?}");
    assert!(b.errors().is_empty(), "{:?}", b.errors());
    let net = interfaces(&b);
    assert!(net.iter().any(|i| i == "eth0"), "no eth0 in {net:?}:\n{}", b.console);
    let modules = loaded(&b);
    for m in ["virtio_net", "virtio_pci", "net_failover", "failover", "virtio_ring", "virtio"] {
        assert!(modules.contains(&m), "{m} not loaded: {modules:?}");
    }
}

#[test]
fn app_modules_loads_packed_modules_and_reports_unknown_ones() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(r#"modules_available = ["virtio_pci", "virtio_net"]"#), &[("run", RUN)]);
    let app = build(&img, tmp.path());

    // Control: packed only, nothing loads them, no NIC driver.
    let b = boot(&app, &NIC);
    assert_eq!(b.code, 0, "{b:?}");
    assert!(!interfaces(&b).iter().any(|i| i == "eth0"), "{:?}", interfaces(&b));
    assert!(!loaded(&b).contains(&"virtio_net"), "{:?}", loaded(&b));

    // appModules loads them, with their dependencies, from the image's modules.dep; an
    // unknown name is an error on the console and in the record, and the boot goes on.
    let mut args = NIC.to_vec();
    args.extend(["--", "appModules=virtio-pci,virtio_net,nonexistent"]);
    let b = boot(&app, &args);
    assert_eq!(b.code, 0, "{b:?}");
    let net = interfaces(&b);
    assert!(net.iter().any(|i| i == "eth0"), "no eth0 in {net:?}:\n{}", b.console);
    assert!(loaded(&b).contains(&"net_failover"), "{:?}", loaded(&b));
    let errors = b.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("module nonexistent is not in the image"), "{errors:?}");
    b.assert_console("module nonexistent is not in the image");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

#[test]
fn an_unknown_manifest_module_fails_the_build_with_near_names() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &manifest(r#"modules = ["virtio_nte"]"#), &[("run", RUN)]);
    let o = appliance_tests::appliance()
        .arg("-q")
        .arg("build")
        .arg(&img)
        .arg("-o")
        .arg(tmp.path().join("app"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no kernel module `virtio_nte` in "), "{stderr}");
    assert!(stderr.contains("did you mean virtio_net"), "{stderr}");
}
