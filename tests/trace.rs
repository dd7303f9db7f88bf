//! Appliances whose files were chosen by `[trace]`: built from the host's `/` as the
//! reference root, booted in QEMU, and checked to run, with nothing but what the trace
//! (and the ELF headers of what it saw) asked for.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use appliance_tests::{boot, build, image, root};
use tempfile::TempDir;

#[path = "data/dlopen.rs"]
mod dlopen;
use dlopen::build_dlopen_program;

/// The member names of a zstd-compressed initrd, as `cpio -t` lists them.
fn initrd_members(app: &Path) -> BTreeSet<String> {
    let listing = Command::new("sh")
        .args(["-c", "zstd -dc \"$1\" | cpio -t --quiet", "sh"])
        .arg(app.join("initrd"))
        .output()
        .expect("sh runs");
    assert!(listing.status.success(), "zstd -dc | cpio -t (tests/run installs both): {listing:?}");
    String::from_utf8_lossy(&listing.stdout).lines().map(str::to_owned).collect()
}

fn member(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

#[test]
fn traced_bash_runs_ls_and_date_and_nothing_else_is_packed() {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/traced-bash"), tmp.path());
    let members = initrd_members(&app);
    for needed in ["/bin/bash", "/usr/bin/ls", "/usr/bin/date", "/usr/bin/uname"] {
        let real = fs::canonicalize(needed).unwrap();
        assert!(members.contains(&member(&real)), "{} not packed: {members:?}", real.display());
    }
    // Not run during the trace: not packed.
    let cat = fs::canonicalize("/usr/bin/cat").unwrap();
    assert!(!members.contains(&member(&cat)), "{} packed", cat.display());
    assert!(!members.iter().any(|m| m.starts_with("usr/share/locale/") || m.starts_with("usr/share/doc/")));

    let b = boot(&app, &[]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("traced-bash: ls /");
    b.assert_console("\nusr\n");
    b.assert_console("traced-bash: date 20");
    b.assert_console("traced-bash: done");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

/// A program that dlopen()s a library by a name it computes: the library is not in any
/// ELF header, so only the trace can put it into the image.
#[test]
fn a_library_loaded_with_dlopen_is_packed_and_found_at_boot() {
    // Not under /tmp (where the checkout may lie): the trace leaves /tmp out by default,
    // and in the guest /tmp is a fresh tmpfs that would hide the program.
    let tmp = tempfile::Builder::new().prefix("appliance-trace-boot-").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (program, plugin) = build_dlopen_program(&dir);
    let manifest = format!(
        "description = \"dlopen test\"\n[trace]\nroot = \"/\"\ndefault_excludes = false\ncommands = [\"{}\"]\n",
        program.display()
    );
    let run = format!("#!/bin/sh\nexec {}\n", program.display());
    let image_dir = image(&dir, &manifest, &[("run", &run)]);
    let app = build(&image_dir, &dir);
    let members = initrd_members(&app);
    assert!(members.contains(&member(&plugin)), "{} not packed: {members:?}", plugin.display());

    let b = boot(&app, &[]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("answered 42");
}
