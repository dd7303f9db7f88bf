//! `appEnd=kexec`: the booting appliance (`images/kexec-boot`, booted by `appliance run`)
//! fetches `images/hello` over HTTP from the project's server on the host's loopback
//! (10.0.2.2 through QEMU's user network), checks it against its `SHA256SUMS`, and kexecs
//! into it: hello's output, exit status and status record come back through the same QEMU.
//! The same from an NFS export (nfs-ganesha on the loopback, as for results) and from a 9p
//! share. A corrupted initrd is refused, and the booting appliance halts saying why. Both
//! kernels are Debian's cloud kernel (CONFIG_KEXEC_FILE=y), the default of images, except
//! for 9p, which Debian's has not: there the booting appliance runs the project's 6.1
//! kernel with the kexec topic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use appliance_cmdline::status::Event;
use appliance_host::host::http::HttpServer;
use appliance_tests::{Boot, boot, build, project_kernel, root, run_bounded};
use tempfile::TempDir;

/// The booting appliance and hello, built; hello's copy in `tmp/served` with `cmdline`
/// as given and its sums written anew (as `appliance build` writes them).
fn appliances(hello_cmdline: &str) -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let boot_dir = build(&root().join("images/kexec-boot"), &tmp.path().join("boot"));
    let hello = build(&root().join("images/hello"), &tmp.path().join("hello"));
    let served = tmp.path().join("served");
    std::fs::create_dir(&served).unwrap();
    for name in ["vmlinuz", "initrd"] {
        // Follows the app dir's symlinks: the server gets files.
        std::fs::copy(hello.join(name), served.join(name)).unwrap();
    }
    std::fs::write(served.join("cmdline"), hello_cmdline).unwrap();
    appliance_host::image::sums::write_sums(&served).unwrap();
    (tmp, boot_dir, served)
}

/// Serves `dir` on the host's loopback and boots the booting appliance with a NIC on
/// QEMU's user network, pointed at the server.
fn kexec_from(boot_dir: &Path, dir: &Path) -> Boot {
    let server = HttpServer::start(dir, "127.0.0.1:0", |_, _| {}).unwrap();
    let url = format!("http://10.0.2.2:{}/", server.addr().port());
    let b = boot(boot_dir, &["--qemu-arg", "-nic", "--qemu-arg", "user,model=virtio-net-pci", "--kexec", &url]);
    drop(server);
    b
}

fn ends(b: &Boot) -> Vec<(String, i32)> {
    b.events
        .iter()
        .filter_map(|e| match e {
            Event::End { action, status, .. } => Some((action.clone(), *status)),
            _ => None,
        })
        .collect()
}

fn kexec_event(b: &Boot) -> (bool, u64, Option<String>) {
    b.events
        .iter()
        .find_map(|e| match e {
            Event::Kexec { ok, bytes, error, .. } => Some((*ok, *bytes, error.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no kexec event: {:?}\n{}", b.events, b.console))
}

#[test]
fn a_running_appliance_kexecs_into_hello_fetched_over_http_and_hellos_status_comes_back() {
    let (_tmp, boot_dir, served) = appliances("appArgs='after kexec exit=3'\n");
    let b = kexec_from(&boot_dir, &served);
    // The booting appliance ran, fetched and checked hello, and handed over.
    b.assert_console("arg[4]=appliance\nhello: wrote");
    b.assert_console("arg[1]=fetching");
    let (ok, bytes, error) = kexec_event(&b);
    assert!(ok && error.is_none(), "{error:?}\n{}", b.console);
    let size = |name: &str| std::fs::metadata(served.join(name)).unwrap().len();
    assert!(bytes >= size("vmlinuz") + size("initrd"), "{bytes}");
    // Hello ran under the next kernel, on the same console, with its own command line.
    b.assert_console("arg[1]=after");
    b.assert_console("arg[3]=exit=3");
    // Two records on the one status port: the booting appliance's, ended by kexec, then
    // hello's, whose status is the run's.
    let inits = b.events.iter().filter(|e| matches!(e, Event::Init { .. })).count();
    assert_eq!(inits, 2, "{:?}", b.events);
    assert_eq!(ends(&b), [("kexec".to_string(), 0), ("poweroff".to_string(), 3)], "{}", b.console);
    assert_eq!(b.code, 3, "{}", b.stderr);
}

/// The same handover from an NFS export: the booting appliance mounts it with the results
/// step's options (nfs-ganesha on the host's loopback, reached as 10.0.2.2), loading the
/// NFS modules of Debian's kernel first, reads and checks the files, and kexecs.
#[test]
fn a_running_appliance_kexecs_into_hello_read_from_an_nfs_export() {
    let (_tmp, boot_dir, served) = appliances("appArgs='from the export exit=4'\n");
    let mut server = appliance_host::vm::nfs::NfsServer::start(&served).unwrap();
    let from = format!("appKexec={}", appliance_host::vm::nfs::guest_param(server.port()));
    let b = boot(&boot_dir, &["--qemu-arg", "-nic", "--qemu-arg", "user,model=virtio-net-pci", "--", &from]);
    server.stop();
    let (ok, bytes, error) = kexec_event(&b);
    assert!(ok && error.is_none(), "{error:?}\n{}", b.console);
    assert!(bytes > std::fs::metadata(served.join("initrd")).unwrap().len(), "{bytes}");
    b.assert_console("arg[1]=from");
    b.assert_console("arg[4]=exit=4");
    assert_eq!(ends(&b), [("kexec".to_string(), 0), ("poweroff".to_string(), 4)], "{}", b.console);
    assert_eq!(b.code, 4, "{}", b.stderr);
}

#[test]
fn a_corrupted_initrd_is_refused_and_the_booting_appliance_halts_with_the_reason() {
    let (_tmp, boot_dir, served) = appliances("appArgs='never run'\n");
    let initrd = served.join("initrd");
    let mut bytes = std::fs::read(&initrd).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&initrd, bytes).unwrap();
    let b = kexec_from(&boot_dir, &served);
    let (ok, _, error) = kexec_event(&b);
    let error = error.unwrap_or_default();
    assert!(!ok && error.starts_with("initrd: SHA-256 is "), "{error}\n{}", b.console);
    assert!(error.ends_with("refused"), "{error}");
    b.assert_console("failed: initrd: SHA-256 is ");
    b.assert_console("halting instead");
    assert!(!b.console.contains("never run"), "{}", b.console);
    assert_eq!(ends(&b), [("poweroff".to_string(), 0)], "{}", b.console);
    assert_eq!(b.events.iter().filter(|e| matches!(e, Event::Init { .. })).count(), 1);
}

/// The kexec topic's options, checked against Debian's cloud kernel (which both kernels of
/// the tests above are) without a compile: the kernel that boots the appliances has them.
#[test]
fn debians_cloud_kernel_has_what_the_kexec_fragment_asks_for() {
    let boot = appliance_host::kernel::default_cache_dir().unwrap().join("kernels/debian-cloud/boot");
    let config = std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("config-"))
        .unwrap_or_else(|| panic!("no config-* in {}: `appliance build hello` fetches the kernel", boot.display()));
    let o = appliance_tests::appliance()
        .args(["kernel", "check"])
        .arg(&config)
        .args(["--no-base", "-f", "kexec"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("all 3 requested options kept (kexec.config)"), "{stdout}");
}

/// The kexec topic over the project's 6.1 base, configured from Debian's source as a build
/// would (tinyconfig, fragments, olddefconfig) without compiling: no option is lost.
#[test]
fn the_kexec_fragment_survives_olddefconfig_on_the_projects_6_1_kernel() {
    const SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
    // It waits for the kernel cache's lock while another build runs: bounded.
    let o = run_bounded(
        appliance_tests::appliance().args(["kernel", "check", "--series", "6.1", "-f", "kexec", "--source", SOURCE]),
        Duration::from_secs(900),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("requested options kept") && stdout.contains("kexec.config"), "{stdout}");
}

/// The same handover from a 9p share, which QEMU serves itself (no server, no network
/// needed). Debian's cloud kernel has no 9p, so the booting appliance runs on the project's
/// 6.1 kernel with the kexec topic (compiled here the first time, then cached); hello
/// still boots Debian's.
#[test]
fn a_running_appliance_on_the_projects_kernel_kexecs_into_hello_from_a_9p_share() {
    let kernel = project_kernel("6.1", &["kexec"]).display().to_string();
    let (_tmp, boot_dir, served) = appliances("appArgs='from the share exit=5'\n");
    let share = format!("local,path={},mount_tag=next,security_model=none,readonly=on", served.display());
    // The NIC is for the image's appIp=dhcp; the files come over 9p.
    let nic = ["--qemu-arg", "-nic", "--qemu-arg", "user,model=virtio-net-pci"];
    let share = ["--kernel", &kernel, "--qemu-arg", "-virtfs", "--qemu-arg", &share, "--", "appKexec=9p:next"];
    let b = boot(&boot_dir, &[&nic[..], &share[..]].concat());
    let (ok, bytes, error) = kexec_event(&b);
    assert!(ok && error.is_none(), "{error:?}\n{}", b.console);
    assert!(bytes > std::fs::metadata(served.join("initrd")).unwrap().len(), "{bytes}");
    let from = b.events.iter().find_map(|e| match e {
        Event::Kexec { from, .. } => Some(from.clone()),
        _ => None,
    });
    assert_eq!(from.as_deref(), Some("9p:next"));
    b.assert_console("arg[1]=from");
    b.assert_console("arg[4]=exit=5");
    assert_eq!(ends(&b), [("kexec".to_string(), 0), ("poweroff".to_string(), 5)], "{}", b.console);
    assert_eq!(b.code, 5, "{}", b.stderr);
}
