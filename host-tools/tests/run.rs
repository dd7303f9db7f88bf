//! `appliance run` without booting: the QEMU command line, app dirs in the original layout,
//! and the errors for what is missing. Boots are in the workspace's `tests/`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

const APPLIANCE: &str = env!("CARGO_BIN_EXE_appliance");

fn appliance(args: &[&str], path_env: Option<&str>) -> Output {
    let mut c = Command::new(APPLIANCE);
    c.args(args).env("APPLIANCE_ACCEL", "tcg");
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

/// An app dir in the original layout whose files are symlinks, as runApp users made them.
fn symlinked_app_dir(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    fs::create_dir_all(&store).unwrap();
    fs::write(store.join("vmlinuz-6.1"), b"kernel").unwrap();
    fs::write(store.join("bash.cpio.gz"), b"initrd").unwrap();
    fs::write(store.join("cmdline.txt"), "appArgs='10 \"a b\"'\n").unwrap();
    let app = dir.join("myApp");
    fs::create_dir_all(&app).unwrap();
    symlink(store.join("vmlinuz-6.1"), app.join("vmlinuz")).unwrap();
    symlink(store.join("bash.cpio.gz"), app.join("initrd")).unwrap();
    symlink(store.join("cmdline.txt"), app.join("cmdline")).unwrap();
    app
}

#[test]
fn dry_run_prints_the_qemu_command_for_a_symlinked_app_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let app = symlinked_app_dir(tmp.path());
    let o = appliance(
        &[
            "run",
            app.to_str().unwrap(),
            "--dry-run",
            "--end",
            "reboot",
            "--cmds",
            "ls /app:echo a\\:b",
            "-m",
            "256",
            "--",
            "appNode=n1",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8(o.stdout).unwrap();
    assert!(line.contains("-machine pc,accel=tcg"), "{line}");
    assert!(line.contains(&format!("-kernel {}", app.join("vmlinuz").display())), "{line}");
    assert!(line.contains(&format!("-initrd {}", app.join("initrd").display())), "{line}");
    assert!(line.contains("-m 256"), "{line}");
    // console first, then the app dir's cmdline, the options, the extra words.
    let append = line.split("-append ").nth(1).unwrap();
    let order = ["console=ttyS0", "panic=-1", "quiet", "appArgs=", "appEnd=reboot", "appCmds=", "appNode=n1"];
    let positions: Vec<usize> =
        order.iter().map(|w| append.find(w).unwrap_or_else(|| panic!("{w}: {append}"))).collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{append}");
}

#[test]
fn missing_qemu_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let app = symlinked_app_dir(tmp.path());
    let o = appliance(&["run", app.to_str().unwrap()], Some("/nonexistent"));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("qemu-system-x86_64 not found") && err.contains("apt-get install qemu-system-x86"), "{err}");
}

#[test]
fn missing_kernel_says_what_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let app = symlinked_app_dir(tmp.path());
    fs::remove_file(app.join("vmlinuz")).unwrap();
    let o = appliance(&["run", app.to_str().unwrap(), "--dry-run"], None);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no kernel at") && err.contains("--kernel"), "{err}");
}

#[test]
fn too_long_a_command_line_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let app = symlinked_app_dir(tmp.path());
    let cmds = vec!["echo 0123456789"; 200].join(":");
    let o = appliance(&["run", app.to_str().unwrap(), "--dry-run", "--cmds", &cmds], None);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2047") && err.contains("appCmdsFile"), "{err}");
}

#[test]
fn neither_app_dir_nor_image_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = appliance(&["run", tmp.path().to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither an app dir"));
}
