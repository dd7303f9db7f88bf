//! Reference roots made by the toolkit: `appliance root create` (mmdebstrap), `appliance
//! root shell` (a chroot in PID and mount namespaces of its own), and an appliance traced
//! in such a root, built and booted in QEMU.
//!
//! The root is made the way a user makes one: `root create --variant minbase`, then
//! `root shell ROOT -- apt-get install hello`. It needs root, mmdebstrap (tests/run
//! installs it) and Debian's mirrors; it is made once per machine, under the tool's cache
//! (`~/.cache/appliance/roots/`), and reused after that.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use appliance_host::rootfs::mounts::mounted_under;
use appliance_tests::{appliance, boot, build, image};
use tempfile::TempDir;

/// The test root's name in the cache: what it was made from.
const ROOT_NAME: &str = "test-bookworm-minbase-hello";

/// The reference root of these tests, made on first use.
fn reference_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        assert!(rustix::process::geteuid().is_root(), "these tests make and enter a reference root, which needs root");
        let cache = appliance_host::kernel::default_cache_dir().expect("a cache directory");
        let roots = cache.join("roots");
        let root = roots.join(ROOT_NAME);
        if root.is_dir() {
            return root;
        }
        fs::create_dir_all(&roots).unwrap();
        // Test processes running at once make it once.
        let lock = fs::File::create(roots.join(".lock")).unwrap();
        lock.lock().unwrap();
        if root.is_dir() {
            return root;
        }
        let making = roots.join(format!(".{ROOT_NAME}.making"));
        let made = appliance()
            .args(["root", "create", "--suite", "bookworm", "--variant", "minbase", "--force"])
            .arg(&making)
            .status()
            .expect("appliance runs");
        assert!(
            made.success(),
            "appliance root create failed ({made}): is mmdebstrap installed (tests/run installs it)?"
        );
        let installed = appliance()
            .args(["root", "shell"])
            .arg(&making)
            .args(["--", "apt-get", "install", "-y", "-q", "--no-install-recommends", "hello"])
            .status()
            .expect("appliance runs");
        // No `apt-get update` first: the root has its package lists, as the original's had.
        assert!(installed.success(), "apt-get install hello in the root failed ({installed})");
        // Only a complete root gets the name that is looked for.
        fs::rename(&making, &root).unwrap();
        root
    })
}

/// `appliance root shell ROOT -- sh -c SCRIPT`.
fn shell(script: &str) -> Output {
    appliance()
        .args(["root", "shell"])
        .arg(reference_root())
        .args(["--", "sh", "-c", script])
        .output()
        .expect("appliance runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn trace_needs_a_reference_root_the_toolkit_could_not_make() {
    let root = reference_root();
    let tmp = TempDir::new().unwrap();
    // `hello` is in the root only (installed there with apt-get), and so is the /bin/sh
    // that runs the script: the image's files all come from the root.
    let manifest = format!(
        "description = \"traced in a reference root\"\n[trace]\nroot = \"{}\"\ncommands = [\"hello -g traced\"]\n",
        root.display()
    );
    let run = "#!/bin/sh\nexec hello -g 'made by appliance root create'\n";
    let app = build(&image(tmp.path(), &manifest, &[("run", run)]), tmp.path());
    let b = boot(&app, &[]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("made by appliance root create");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

#[test]
fn a_trace_root_relative_to_the_image_dir_is_the_same_root() {
    let root = reference_root();
    let tmp = TempDir::new().unwrap();
    std::os::unix::fs::symlink(root, tmp.path().join("reference")).unwrap();
    let manifest =
        |root: &str| format!("description = \"relative root\"\n[trace]\nroot = \"{root}\"\ncommands = [\"hello\"]\n");
    let relative = image(&tmp.path().join("relative"), &manifest("../../reference"), &[]);
    let absolute = image(&tmp.path().join("absolute"), &manifest(root.to_str().unwrap()), &[]);
    let (a, b) = (build(&relative, &tmp.path().join("relative")), build(&absolute, &tmp.path().join("absolute")));
    let same = appliance().args(["cpio", "diff"]).arg(a.join("initrd")).arg(b.join("initrd")).output().unwrap();
    assert!(same.status.success(), "the initrds differ:\n{}{}", text(&same.stdout), text(&same.stderr));
}

#[test]
fn the_commands_exit_status_comes_back_from_the_root() {
    let o = shell("exit 42");
    assert_eq!(o.status.code(), Some(42), "{}", text(&o.stderr));
    let o = appliance().args(["root", "shell"]).arg(reference_root()).args(["--", "no-such-program"]).output().unwrap();
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("`no-such-program` not found"), "{}", text(&o.stderr));
}

/// The original told its users to reboot to be rid of what a package installation
/// started in the reference root.
#[test]
fn a_daemon_started_in_the_root_does_not_outlive_its_shell() {
    // A name no other process has: the sleep's argument.
    let marker = format!("86400.{}", std::process::id());
    // Detached as a daemon is (its own session, no terminal, SIGHUP ignored), and
    // waited for until it runs (a bounded wait for the event, not a sleep).
    let script = format!(
        "setsid nohup sleep {marker} </dev/null >/dev/null 2>&1 &
         i=0
         while ! grep -qs {marker} /proc/[0-9]*/cmdline; do
             i=$((i+1)); [ $i -lt 200 ] || exit 9; sleep 0.05
         done
         echo daemon running"
    );
    let o = shell(&script);
    assert!(o.status.success() && text(&o.stdout).contains("daemon running"), "{o:?}");
    let survivors: Vec<PathBuf> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("cmdline"))
        .filter(|cmdline| fs::read(cmdline).is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(&marker)))
        .collect();
    assert!(survivors.is_empty(), "still running after the shell: {survivors:?}");
}

#[test]
fn nothing_stays_mounted_in_the_root_after_its_shell() {
    let root = reference_root();
    // Inside: /proc of its own namespace (the shell is not PID 1: the init is), the
    // host's devices, a read-only /sys and the host's resolver.
    let o = shell(
        "echo shell=$$; test -c /dev/null && echo dev ok; \
         touch /sys/x 2>/dev/null || echo sys read-only; cat /etc/resolv.conf",
    );
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout.contains("shell=2\n") && stdout.contains("dev ok") && stdout.contains("sys read-only"), "{stdout}");
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap();
    assert!(stdout.ends_with(&resolv), "the host's resolv.conf is not the root's:\n{stdout}");
    assert_eq!(mounted_under(root).unwrap(), Vec::<PathBuf>::new());
}

#[test]
fn root_create_refuses_a_directory_with_files_in_it() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("precious"), "keep me").unwrap();
    let o = appliance().args(["root", "create"]).arg(tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o.stderr).contains("is not empty: pass --force"), "{}", text(&o.stderr));
    assert_eq!(fs::read_to_string(tmp.path().join("precious")).unwrap(), "keep me");
}

/// Regression: the package cache of a suite kept every package it ever held, so each
/// update of Debian's left the superseded versions behind for good. A create now keeps in
/// it what the suite's lists still offer.
#[test]
fn a_create_drops_superseded_packages_from_the_cache() {
    reference_root();
    let tmp = TempDir::new().unwrap();
    // A copy of this machine's cache of the suite (so nothing is downloaded again), with
    // a version of a package that the suite no longer has.
    let ours = appliance_host::kernel::default_cache_dir().unwrap().join("apt/bookworm");
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("apt")).unwrap();
    let copied = std::process::Command::new("cp").arg("-a").arg(&ours).arg(cache.join("apt")).status().unwrap();
    assert!(copied.success());
    let archives = cache.join("apt/bookworm/archives");
    let debs = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".deb"))
            .collect();
        names.sort();
        names
    };
    let before = debs(&archives);
    let real = before.iter().find(|n| n.starts_with("apt_")).expect("apt is in a minbase root's cache").clone();
    fs::copy(archives.join(&real), archives.join("apt_0.0-superseded_amd64.deb")).unwrap();

    let o = appliance()
        .env("APPLIANCE_CACHE", &cache)
        .args(["-q", "root", "create", "--variant", "minbase", "--suite", "bookworm"])
        .arg(tmp.path().join("root"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The superseded version is gone; every package stays, in the version the suite has
    // now (the same, unless Debian updated it since this machine's cache was filled).
    let after = debs(&archives);
    assert!(!after.iter().any(|n| n.contains("0.0-superseded")), "{after:?}");
    let package = |name: &String| name.split('_').next().unwrap_or_default().to_owned();
    let packages: std::collections::HashSet<String> = after.iter().map(package).collect();
    assert!(before.iter().all(|n| packages.contains(&package(n))), "{before:?}\n{after:?}");
}

#[test]
fn an_unknown_suite_is_named_in_the_error() {
    let tmp = TempDir::new().unwrap();
    let o = appliance()
        .env("APPLIANCE_CACHE", tmp.path().join("cache"))
        .args(["root", "create", "--variant", "minbase", "--suite", "no-such-suite"])
        .arg(tmp.path().join("root"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o.stderr).contains("unknown suite `no-such-suite`"), "{}", text(&o.stderr));
    assert!(!tmp.path().join("root").exists());
    // Nothing left beside the root either.
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(left, ["cache"]);
}

#[test]
fn as_a_user_the_shell_says_it_needs_root() {
    // Said before anything else: no root is needed to get there.
    let tmp = TempDir::new().unwrap();
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(appliance_tests::tools().join("appliance"))
        .args(["root", "shell"])
        .arg(tmp.path())
        .args(["--", "true"])
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o.stderr).contains("needs root"), "{}", text(&o.stderr));
}
