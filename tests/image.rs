//! `appliance image`: disk images that UEFI firmware boots (OVMF under QEMU, TCG), their
//! conversions, and their reproducibility; and the status record's port (`appStatus`).

use std::path::{Path, PathBuf};
use std::process::Command;

use appliance_tests::{appliance, boot, build, root};
use tempfile::TempDir;

fn hello() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    (tmp, app)
}

/// `appliance image APP --format FORMAT -o OUT [-- EXTRA]`, with a fixed SOURCE_DATE_EPOCH.
fn image(app: &Path, format: &str, out: &Path, extra: &[&str]) {
    let o = appliance()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["-q", "image"])
        .arg(app)
        .args(["--format", format, "-o"])
        .arg(out)
        .arg("--")
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "appliance image --format {format} failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn qemu_img(args: &[&str], file: &Path) -> (bool, String) {
    let o = Command::new("qemu-img").args(args).arg(file).output().expect("qemu-img runs (apt-get install qemu-utils)");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn raw_and_qcow2_disks_boot_under_ovmf_with_the_status_record_and_exit_status() {
    let (tmp, app) = hello();
    let raw = tmp.path().join("hello.raw");
    image(&app, "raw", &raw, &[]);
    let b = boot(&raw, &[]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("arg[4]=appliance");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(b.stderr.contains("run status 0, poweroff"), "{}", b.stderr);
    assert!(!b.stderr.contains("unreadable status line"), "firmware output taken for the record: {}", b.stderr);

    // The command line EXTRA words reach the guest through the unified kernel image.
    let qcow2 = tmp.path().join("hello.qcow2");
    image(&app, "qcow2", &qcow2, &["appArgs=exit=3"]);
    let b = boot(&qcow2, &[]);
    assert_eq!(b.code, 3, "{b:?}");
    assert_eq!(b.end(), Some(("poweroff".into(), 3)));
}

#[test]
fn every_format_converts_and_passes_qemu_img_check() {
    let (tmp, app) = hello();
    // vpc is qemu-img's name of VHD; `check` supports the formats with metadata to check.
    for (format, checked) in
        [("raw", false), ("qcow2", true), ("vmdk", true), ("vdi", true), ("vhdx", true), ("vpc", false)]
    {
        let out = tmp.path().join(format!("hello.{format}"));
        image(&app, format, &out, &[]);
        // A fixed VHD is the raw disk with a footer, which probing takes for raw: name it.
        let (ok, info) = qemu_img(&["info", "--output=json", "-f", format], &out);
        assert!(ok, "{format}: {info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], format, "{info}");
        assert!(info["virtual-size"].as_u64().unwrap() >= 64 << 20, "{info}");
        if format == "vpc" {
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(&bytes[bytes.len() - 512..][..8], b"conectix", "a VHD footer");
        }
        if format == "vmdk" {
            assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}");
        }
        if checked {
            let (ok, report) = qemu_img(&["check"], &out);
            assert!(ok && report.contains("No errors were found"), "{format}: {report}");
        }
    }
}

#[test]
fn the_same_app_dir_and_epoch_give_the_same_disk_bytes() {
    let (tmp, app) = hello();
    for format in ["raw", "qcow2"] {
        let (a, b) = (tmp.path().join(format!("a.{format}")), tmp.path().join(format!("b.{format}")));
        image(&app, format, &a, &[]);
        image(&app, format, &b, &[]);
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two {format} disks differ");
    }
}

/// A machine with one serial line: the record shares the console, and its lines are
/// picked out of the console's output.
#[test]
fn the_status_record_shares_the_console_with_app_status_tty_s0() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--", "appStatus=ttyS0"]);
    let (events, garbled) = appliance_host::vm::parse_status(&b.console);
    assert!(garbled.is_empty(), "{garbled:?}");
    let end = events.iter().find_map(|e| match e {
        appliance_cmdline::status::Event::End { action, status, .. } => Some((action.clone(), *status)),
        _ => None,
    });
    assert_eq!(end, Some(("poweroff".into(), 0)), "console:\n{}", b.console);
    // The console kept its line endings (the port was not put in raw mode).
    b.assert_console("hello: exiting with 0\n");
    assert!(b.events.is_empty(), "nothing on ttyS1: {:?}", b.events);
}

#[test]
fn the_status_record_comes_over_virtio_with_app_status_virtio() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--", "appStatus=virtio"]);
    assert_eq!(b.code, 0, "{b:?}");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

#[test]
fn app_status_none_writes_no_record() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--", "appStatus=none"]);
    b.assert_console("hello: exiting with 0");
    assert!(b.events.is_empty(), "{:?}", b.events);
    assert_eq!(b.code, 125, "no record, no status: {b:?}");
}
