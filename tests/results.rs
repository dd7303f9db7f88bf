//! The results step end to end: `appliance run --results DIR` starts nfs-ganesha on the
//! host's loopback (or shares DIR over virtio 9p, or reads a cpio stream from a
//! virtio-serial port), the init saves `/app/output` and `$APP_RESULTS` there after
//! postrun, and the files arrive with the right content; a dead server is a clear error, a
//! non-zero exit and no hang.
//!
//! Kernels: for NFS, Debian's cloud kernel (the images' default), where the NIC driver and
//! NFSv4 are modules: most images here load them at boot (`virtio_pci`, `virtio_net`,
//! `nfsv4`, with `nfs`, `sunrpc`...), images/hello and the serial ones name none and get
//! them from what every image packs for `appliance run`'s features. Debian's cloud kernel has no 9p at all, so the 9p test boots the
//! project's kernel (`--kernel build:6.1`, built and cached by tests/kernel.rs or
//! `appliance kernel build`), which has virtio 9p built in. The NFS server needs real root (these
//! tests run as root) and `nfs-ganesha` + `nfs-ganesha-vfs` (host-tools/deps.sh installs
//! them); without them the NFS tests fail saying so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_host::host::scratch;
use appliance_tests::{BOOT_TIMEOUT_S, Boot, Session, boot, build, image};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// One boot at a time: the copies are timed by soft-mount timeouts and the proxy test by a
/// byte count, and several TCG guests plus servers on a 2-core machine would only make
/// them slower and flakier.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const NFS_MODULES: &str = r#"modules = ["virtio_pci", "virtio_net", "nfsv4"]"#;

/// Writes results of `$1` MiB (random, with its checksum on the console), a small file in
/// a subdirectory, a symbolic link, and a line to /app/output.
const RUN: &str = r#"#!/bin/bash
mkdir -p "$APP_RESULTS/sub"
echo "small result" > "$APP_RESULTS/sub/small.txt"
ln -s sub/small.txt "$APP_RESULTS/link"
head -c "$(( ${1:-1} * 1048576 ))" /dev/urandom > "$APP_RESULTS/big.bin"
echo "sum: $(sha256sum "$APP_RESULTS/big.bin" | cut -d' ' -f1)"
echo "operstate: $(cat /sys/class/net/eth0/operstate 2>/dev/null)"
echo "run done"
"#;

fn manifest(modules: &str) -> String {
    format!(
        r#"description = "results test"
host_files = ["/bin/bash", "/usr/bin/cat", "/usr/bin/head", "/usr/bin/mkdir", "/usr/bin/ln", "/usr/bin/sha256sum", "/usr/bin/cut", "/usr/bin/sleep"]
{modules}
"#
    )
}

fn app(tmp: &Path, modules: &str, run: &str) -> PathBuf {
    let img = image(tmp, &manifest(modules), &[("run", run)]);
    build(&img, tmp)
}

fn results_event(b: &Boot) -> (bool, String, u64, Option<String>) {
    b.events
        .iter()
        .find_map(|e| match e {
            Event::Results { ok, dest, files, error, .. } => Some((*ok, dest.clone(), *files, error.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no results event: {:?}\n{}\n{}", b.events, b.console, b.stderr))
}

/// The one directory under `dir`.
fn only_dir(dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn sha256_hex(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_arrived(b: &Boot, run_dir: &Path) {
    assert_eq!(std::fs::read_to_string(run_dir.join("results/sub/small.txt")).unwrap(), "small result\n");
    assert_eq!(std::fs::read_link(run_dir.join("results/link")).unwrap(), Path::new("sub/small.txt"));
    let output = std::fs::read_to_string(run_dir.join("output")).unwrap();
    assert!(output.contains("run done"), "{output}");
    let sum = b.console.lines().find_map(|l| l.strip_prefix("sum: ")).expect("the guest printed its checksum");
    assert_eq!(sha256_hex(&run_dir.join("results/big.bin")), sum.trim());
}

#[test]
fn nfs_results_arrive_intact_over_dhcp_and_never_overwrite_an_earlier_run() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let app = app(tmp.path(), NFS_MODULES, RUN);
    let dir = tmp.path().join("results");
    // 40 MiB of random data, checksummed on both sides. No appIp: DHCP at the very end.
    let b = boot(&app, &["--results", dir.to_str().unwrap(), "--args", "40", "-m", "768"]);
    assert_eq!(b.code, 0, "{b:?}");
    let (ok, dest, files, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert_eq!(files, 4, "output, small.txt, link, big.bin");
    let run_dir = only_dir(&dir);
    assert!(dest.ends_with(run_dir.file_name().unwrap().to_str().unwrap()), "{dest} vs {run_dir:?}");
    assert_arrived(&b, &run_dir);
    assert!(b.stderr.contains(&format!("appliance: results in {}", run_dir.display())), "{}", b.stderr);
    let network = b.events.iter().find_map(|e| match e {
        Event::Network { method, addr, .. } => Some((method.clone(), addr.clone())),
        _ => None,
    });
    assert_eq!(network, Some(("dhcp".into(), "10.0.2.15/24".into())));
    // The network came up after the run: nothing crossed the NIC while it ran.
    let traffic = b.events.iter().find_map(|e| match e {
        Event::RunTraffic { before, after, .. } => Some(before.packets_until(after)),
        _ => None,
    });
    assert_eq!(traffic, Some(0));

    // The same run id again: a directory of its own, the first one untouched.
    let first = std::fs::read(run_dir.join("results/big.bin")).unwrap();
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let b = boot(&app, &["--results", dir.to_str().unwrap(), "--args", "1", "--", &format!("appRunId={id}")]);
    assert_eq!(b.code, 0, "{b:?}");
    let second = dir.join(format!("{id}.2"));
    assert_arrived(&b, &second);
    assert_eq!(std::fs::read(run_dir.join("results/big.bin")).unwrap(), first);
}

#[test]
fn with_app_net_down_the_link_is_down_during_run_and_the_results_still_arrive() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let app = app(tmp.path(), NFS_MODULES, RUN);
    let dir = tmp.path().join("results");
    let b = boot(
        &app,
        &["--results", dir.to_str().unwrap(), "--", "appIp=10.0.2.15/24", "appGateway=10.0.2.2", "appNetDown"],
    );
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("operstate: down");
    let traffic = b.events.iter().find_map(|e| match e {
        Event::RunTraffic { link_down, before, after, .. } => Some((*link_down, before.packets_until(after))),
        _ => None,
    });
    assert_eq!(traffic, Some((true, 0)));
    let (ok, _, _, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert_arrived(&b, &only_dir(&dir));
}

/// The server dies while the guest runs: the results step fails in bounded time, says
/// so, the VM powers off, and `appliance run` exits 123.
#[test]
fn a_dead_server_is_a_clear_error_and_a_nonzero_exit_not_a_hang() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    // The run holds the boot until the test says on the console that the server is dead
    // (the results step comes after it), 150 s at most. Its answer names what it read,
    // which the echo of the typed line does not.
    let run = r#"#!/bin/bash
mkdir -p "$APP_RESULTS"; echo r > "$APP_RESULTS/r.txt"
echo kill-the-server-now
read -r -t 150 line
echo "run read [$line]"
"#;
    let app = app(tmp.path(), NFS_MODULES, run);
    let dir = tmp.path().join("results");
    let started = Instant::now();
    let mut s = Session::start(&app, &["--results", dir.to_str().unwrap()]);
    let at = s.expect("kill-the-server-now", 0);
    let server = ganesha_serving(&dir).expect("the run's ganesha.nfsd is running");
    // SIGKILL: a crash, not a clean shutdown.
    nix_kill(server);
    wait_until_gone(server, Duration::from_secs(20), "the killed ganesha.nfsd did not end");
    s.send("server-gone\n");
    s.expect("run read [server-gone]", at);
    let b = s.finish();
    let elapsed = started.elapsed();
    assert_eq!(b.code, 123, "{b:?}");
    let (ok, _, _, error) = results_event(&b);
    assert!(!ok);
    let error = error.unwrap();
    assert!(error.contains("cannot mount"), "{error}");
    b.assert_console("they are still in the guest");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(elapsed < Duration::from_secs(BOOT_TIMEOUT_S), "took {elapsed:?}");
}

/// `appliance run` killed outright (SIGKILL, no chance to clean up) leaves neither its
/// QEMU nor its NFS server running: both get SIGTERM from the kernel when it dies. Its
/// scratch directories (the run's, the server's) are no longer locked, and the next ones
/// made remove them once they are old enough: the sweep is run here as it would run a
/// minute later.
#[test]
fn a_killed_appliance_run_leaves_no_vm_and_no_server_behind() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let run = "#!/bin/bash\necho kill-appliance-run-now\nsleep 60\n";
    let app = app(tmp.path(), NFS_MODULES, run);
    let dir = tmp.path().join("results");
    let s = Session::start(&app, &["--results", dir.to_str().unwrap()]);
    s.expect("kill-appliance-run-now", 0);
    let server = ganesha_serving(&dir).expect("the run's ganesha.nfsd is running");
    let appliance = i32::try_from(s.pid()).unwrap();
    let qemu = children(appliance).into_iter().find(|&pid| comm(pid).starts_with("qemu")).expect("QEMU runs");
    let scratch = |pid: i32, prefix: &str| {
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args = String::from_utf8_lossy(&args).into_owned();
        let at = args.find(&format!("/{prefix}")).unwrap_or_else(|| panic!("no {prefix} directory in {args:?}"));
        let end = args[at + 1..].find('/').map_or(args.len(), |e| at + 1 + e);
        PathBuf::from(format!("{}{}", std::env::temp_dir().display(), &args[at..end]))
    };
    let run_dir = scratch(qemu, "appliance-run-");
    let server_dir = scratch(server, "appliance-nfs-");
    assert!(run_dir.is_dir() && server_dir.join("ganesha.conf").is_file(), "{run_dir:?} {server_dir:?}");
    nix_kill(appliance);
    let b = s.finish();
    assert_eq!(b.code, -1, "killed by a signal");
    wait_until_gone(qemu, Duration::from_secs(20), "QEMU outlived appliance run");
    wait_until_gone(server, Duration::from_secs(20), "ganesha.nfsd outlived appliance run");
    assert!(run_dir.is_dir() && server_dir.is_dir(), "nothing could remove them yet");
    let later = std::time::SystemTime::now() + scratch::STALE_AFTER + Duration::from_secs(1);
    let removed = [
        scratch::sweep(&std::env::temp_dir(), "appliance-run-", later),
        scratch::sweep(&std::env::temp_dir(), "appliance-nfs-", later),
    ]
    .concat();
    assert!(removed.contains(&run_dir) && removed.contains(&server_dir), "{removed:?}");
    assert!(!run_dir.exists() && !server_dir.exists());
}

/// Waits until `pid` has ended (gone or a zombie); fails the test past `limit`.
#[track_caller]
fn wait_until_gone(pid: i32, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what}: pid {pid} still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The process's name, "" when it is gone.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// Every process's pid.
fn pids() -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").unwrap().flatten();
    entries.filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect()
}

/// The fields of `/proc/PID/stat` after the command name (state, ppid, ...); None when
/// the process is gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(") ")?.1.split(' ').map(str::to_owned).collect())
}

/// Running and not a zombie (a zombie's parent is the test's subreaper or init: it is gone).
fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

fn children(parent: i32) -> Vec<i32> {
    let ppid = |pid: i32| stat_fields(pid).and_then(|f| f.get(1)?.parse::<i32>().ok());
    pids().into_iter().filter(|&pid| ppid(pid) == Some(parent)).collect()
}

/// The pid of the ganesha.nfsd whose configuration exports `dir`.
fn ganesha_serving(dir: &Path) -> Option<i32> {
    let line = format!("Path = \"{}\";", dir.canonicalize().ok()?.display());
    appliance_tests::ganeshas(|conf| conf.contains(&line)).first().copied()
}

fn nix_kill(pid: i32) {
    let st = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().unwrap();
    assert!(st.success());
}

/// The serial transport: a cpio stream over a virtio-serial port that QEMU writes to a file,
/// unpacked by `appliance run`; no server and no network. Debian's cloud kernel, where
/// virtio's console driver is a module the manifest does not name.
#[test]
fn serial_results_arrive_intact_without_a_server_or_network_and_never_overwrite_an_earlier_run() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let app = app(tmp.path(), "", RUN);
    let dir = tmp.path().join("results");
    let b = boot(&app, &["--results", dir.to_str().unwrap(), "--results-via", "serial", "--args", "40", "-m", "768"]);
    assert_eq!(b.code, 0, "{b:?}");
    let (ok, dest, files, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert_eq!(files, 4, "output, small.txt, link, big.bin");
    let run_dir = only_dir(&dir);
    assert!(dest.starts_with("serial:appliance.results/"), "{dest}");
    assert!(dest.ends_with(run_dir.file_name().unwrap().to_str().unwrap()), "{dest} vs {run_dir:?}");
    assert_arrived(&b, &run_dir);
    assert!(b.stderr.contains(&format!("appliance: results in {}", run_dir.display())), "{}", b.stderr);
    assert!(!b.events.iter().any(|e| matches!(e, Event::Network { .. })), "no network for a stream");

    let first = std::fs::read(run_dir.join("results/big.bin")).unwrap();
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let b =
        boot(&app, &["--results", dir.to_str().unwrap(), "--results-via", "serial", "--", &format!("appRunId={id}")]);
    assert_eq!(b.code, 0, "{b:?}");
    assert_arrived(&b, &dir.join(format!("{id}.2")));
    assert_eq!(std::fs::read(run_dir.join("results/big.bin")).unwrap(), first);
    // Nothing else: the streams were unpacked and removed.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

/// The README's first image on the default kernel, whose manifest names no module: the NIC
/// driver and NFSv4 are among what every image packs for `appliance run`'s features, and
/// the init loads them because the run asks for NFS results (as root: the default there).
#[test]
fn hello_on_the_default_kernel_brings_its_results_back_over_nfs() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let app = build(&appliance_tests::root().join("images/hello"), tmp.path());
    let dir = tmp.path().join("results");
    let b = boot(&app, &["--results", dir.to_str().unwrap()]);
    assert_eq!(b.code, 0, "{b:?}");
    let (ok, dest, files, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert!(dest.starts_with("nfs:10.0.2.2:/"), "{dest}");
    assert_eq!(files, 2, "output and results/hello.txt");
    let run_dir = only_dir(&dir);
    let output = std::fs::read_to_string(run_dir.join("output")).unwrap();
    assert!(output.contains("hello: exiting with 0"), "{output}");
    assert!(std::fs::read_to_string(run_dir.join("results/hello.txt")).unwrap().contains("hello"));
    assert!(b.errors().is_empty(), "{:?}", b.errors());
}

/// A user other than root cannot run the NFS server, and Debian's cloud kernel has no 9p:
/// `--results` picks the serial stream for them, which needs neither root nor a manifest
/// that names a module. `appliance run` runs as `nobody` (with a HOME of its own), on an
/// app dir root built (its kernel is a readable copy from root's cache).
#[test]
fn results_as_a_non_root_user_arrive_on_the_default_kernel() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    let _serial = serial();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(uid, 0, "this test runs `appliance run` as nobody, which needs root");
    let tmp = TempDir::new().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = app(tmp.path(), "", RUN);
    // nobody's: the app dir (for its run record), the results, HOME and the temporary files.
    let own = tmp.path().join("nobody");
    for dir in [&own, &own.join("results"), &own.join("home"), &own.join("tmp")] {
        std::fs::create_dir_all(dir).unwrap();
        chown(dir, Some(65534), Some(65534)).unwrap();
    }
    chown(&app, Some(65534), Some(65534)).unwrap();
    // A copy nobody can execute wherever the checkout lives.
    let bin = tmp.path().join("appliance");
    std::fs::copy(appliance_tests::tools().join("appliance"), &bin).unwrap();
    let status = own.join("status.jsonl");
    let dir = own.join("results");
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&bin)
        .arg("run")
        .arg(&app)
        .args(["--timeout", &BOOT_TIMEOUT_S.to_string(), "--status"])
        .arg(&status)
        .arg("--results")
        .arg(&dir)
        .args(["--args", "4"])
        .env("HOME", own.join("home"))
        .env("TMPDIR", own.join("tmp"))
        .env("APPLIANCE_ACCEL", "tcg")
        .current_dir(&own)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv runs");
    let (events, _) = appliance_host::vm::read_status(&status);
    let b = Boot {
        console: String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n"),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(-1),
        events,
    };
    assert_eq!(b.code, 0, "{b:?}");
    let (ok, dest, _, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert!(dest.starts_with("serial:"), "the serial transport by default: {dest}");
    let run_dir = only_dir(&dir);
    assert_arrived(&b, &run_dir);
    assert_eq!(std::fs::metadata(run_dir.join("results/big.bin")).unwrap().uid(), 65534);
}

/// On the project's kernel (`build:6.1`: `appliance run` builds it first when it is not
/// cached, which takes long on a fresh machine; tests/kernel.rs builds the same one).
#[test]
fn ninep_results_arrive_without_any_network() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let app = app(tmp.path(), "", RUN);
    let dir = tmp.path().join("results");
    let b = boot(
        &app,
        &["--kernel", "build:6.1", "--results", dir.to_str().unwrap(), "--results-via", "9p", "--args", "8"],
    );
    assert_eq!(b.code, 0, "{b:?}");
    let (ok, dest, _, error) = results_event(&b);
    assert!(ok, "{error:?}");
    assert!(dest.starts_with("9p:results/"), "{dest}");
    assert_arrived(&b, &only_dir(&dir));
    assert!(!b.events.iter().any(|e| matches!(e, Event::Network { .. })), "no network for 9p");
}

/// `--timeout` killed QEMU: whatever the run had produced was gone and the status record
/// ended without an `end`. Now the guest is stopped as `appliance stop` does: the run gets
/// SIGTERM, the results step saves what it produced, and the guest powers off. The exit
/// status is still the timeout's. On the project's kernel, which has the ACPI button and
/// evdev built in.
#[test]
fn a_run_past_its_timeout_still_saves_its_results_and_ends_its_record() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let run = "#!/bin/bash\nmkdir -p \"$APP_RESULTS\"; echo partial > \"$APP_RESULTS/partial.txt\"\necho started-sleeping\nsleep 600\n";
    let app = app(tmp.path(), "", run);
    let dir = tmp.path().join("results");
    let status = tmp.path().join("status.jsonl");
    let o = appliance_tests::appliance()
        .arg("run")
        .arg(&app)
        .args(["--kernel", "build:6.1", "--results", dir.to_str().unwrap(), "--results-via", "9p"])
        .args(["--timeout", "60", "--status", status.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(124), "{console}\n{stderr}");
    assert!(console.contains("started-sleeping"), "the run had started: {console}");
    assert!(
        stderr.contains("did not finish within 60 s: stopped it, and it powered off after the stop request"),
        "{stderr}"
    );
    assert!(stderr.contains("timed out: stopped, run status 143, poweroff"), "{stderr}");
    let (events, _) = appliance_host::vm::read_status(&status);
    assert!(events.iter().any(|e| matches!(e, Event::End { status: 143, .. })), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::Results { ok: true, .. })), "{events:?}");
    let run_dir = only_dir(&dir);
    assert_eq!(std::fs::read_to_string(run_dir.join("results/partial.txt")).unwrap(), "partial\n");
    assert!(std::fs::read_to_string(run_dir.join("output")).unwrap().contains("started-sleeping"));
    assert!(stderr.contains(&format!("appliance: results in {}", run_dir.display())), "{stderr}");
}

/// A hard NFS mount the application made, whose server stopped answering with data still
/// to write, hung `sync` at the shutdown for ever: the machine never powered off. Now each
/// shutdown step has a deadline. The server is frozen (SIGSTOP: connections stay open, no
/// answer comes) while a writer fills the page cache; the run learns it on its console.
#[test]
fn a_hung_nfs_mount_made_by_the_app_does_not_keep_the_machine_from_powering_off() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let manifest = manifest(NFS_MODULES)
        .replace("\"/usr/bin/sleep\"]", "\"/usr/bin/sleep\", \"/usr/bin/mount\", \"/usr/bin/dd\"]");
    let run = r#"#!/bin/bash
mkdir -p /mnt/nfs
mount -t nfs -o "vers=4.0,addr=10.0.2.2,port=$1,proto=tcp,hard" 10.0.2.2:/ /mnt/nfs || exit 1
# Writes for ever: whatever it wrote last is in the page cache when the server freezes.
dd if=/dev/zero of=/mnt/nfs/dirty bs=64k count=1000000 2>/dev/null &
writer=$!
written=0
for ((try = 0; try < 300 && written < 4194304; try++)); do
  while read -r key value; do [ "$key" = wchar: ] && written=$value; done 2>/dev/null < "/proc/$writer/io"
  sleep 0.1
done
echo "written: $written bytes; freeze-the-server-now"
read -r line
echo "run: $line"
"#;
    let img = image(tmp.path(), &manifest, &[("run", run)]);
    let app = build(&img, tmp.path());
    let dir = tmp.path().join("export");
    std::fs::create_dir(&dir).unwrap();
    let server = appliance_host::vm::nfs::NfsServer::start(&dir).unwrap();
    let port = server.port().to_string();
    let started = Instant::now();
    let mut s = Session::start(
        &app,
        &["--qemu-arg=-nic", "--qemu-arg=user,model=virtio-net-pci", "--args", &port, "--", "appIp=10.0.2.15/24"],
    );
    let at = s.expect("freeze-the-server-now", 0);
    let ganesha = ganesha_serving(&dir).expect("the test's ganesha.nfsd is running");
    let st = std::process::Command::new("kill").arg("-STOP").arg(ganesha.to_string()).status().unwrap();
    assert!(st.success());
    s.send("server frozen\n");
    s.expect("run: server frozen", at);
    let b = s.finish();
    let elapsed = started.elapsed();
    drop(server);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("not done after 20 s: going on without it");
    b.assert_console("Power down");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(elapsed < Duration::from_secs(BOOT_TIMEOUT_S), "took {elapsed:?}");
}

/// A server that accepts connections and never answers (hung, or a firewall that lets the
/// handshake through): the soft mount gives up in bounded time, the results step fails
/// with the error in the record, and the VM powers off. Measured: the mount fails with EIO
/// after about 20 s (timeo=100,retrans=1).
#[test]
fn a_server_that_never_answers_ends_the_step_in_bounded_time() {
    let _serial = serial();
    let tmp = TempDir::new().unwrap();
    let run = "#!/bin/bash\nmkdir -p \"$APP_RESULTS\"; echo r > \"$APP_RESULTS/r.txt\"\n";
    let app = app(tmp.path(), NFS_MODULES, run);
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    // Accept and keep every connection, answer nothing.
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for s in hole.incoming() {
            kept.push(s);
        }
    });
    let param = format!("appResultsTo=nfs:10.0.2.2:/,port={port}");
    let b =
        boot(&app, &["--qemu-arg=-nic", "--qemu-arg=user,model=virtio-net-pci", "--", "appIp=10.0.2.15/24", &param]);
    assert_eq!(b.code, 0, "the run itself succeeded: {b:?}");
    let mount_us = b
        .events
        .iter()
        .find_map(|e| match e {
            Event::Results { mount_us, .. } => Some(*mount_us),
            _ => None,
        })
        .unwrap();
    let (ok, _, _, error) = results_event(&b);
    assert!(!ok);
    assert!(error.as_deref().unwrap_or_default().starts_with("cannot mount 10.0.2.2:/"), "{error:?}");
    assert!(mount_us < 90_000_000, "the mount took {mount_us} us");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

/// The server is lost in the middle of the copy (a proxy between the guest and a ganesha
/// this test starts cuts every connection after 6 MiB and refuses new ones): the step
/// fails in bounded time and is never reported as success, though part of the data
/// arrived.
#[test]
fn a_server_lost_mid_copy_is_never_reported_as_success() {
    let _serial = serial();
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let tmp = TempDir::new().unwrap();
    let app = app(tmp.path(), NFS_MODULES, RUN);
    let dir = tmp.path().join("results");
    std::fs::create_dir(&dir).unwrap();
    let server = appliance_host::vm::nfs::NfsServer::start(&dir).unwrap();
    let upstream = server.port();

    const CUT_AFTER: u64 = 6 << 20;
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = proxy.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    std::thread::spawn(move || {
        for guest in proxy.incoming().flatten() {
            if dead.load(Ordering::SeqCst) {
                let _ = guest.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(nfs) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            open.lock().unwrap().extend([guest.try_clone().unwrap(), nfs.try_clone().unwrap()]);
            for (mut from, mut to, count) in [
                (guest.try_clone().unwrap(), nfs.try_clone().unwrap(), true),
                (nfs.try_clone().unwrap(), guest.try_clone().unwrap(), false),
            ] {
                let (sent, dead, open) = (Arc::clone(&sent), Arc::clone(&dead), Arc::clone(&open));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || dead.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if count && sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > CUT_AFTER {
                            dead.store(true, Ordering::SeqCst);
                            for s in open.lock().unwrap().iter() {
                                let _ = s.shutdown(Shutdown::Both);
                            }
                            break;
                        }
                    }
                });
            }
        }
    });

    let param = format!("appResultsTo=nfs:10.0.2.2:/,port={port}");
    let started = Instant::now();
    let b = boot(
        &app,
        &[
            "--qemu-arg=-nic",
            "--qemu-arg=user,model=virtio-net-pci",
            "--args",
            "24",
            "-m",
            "512",
            "--",
            "appIp=10.0.2.15/24",
            &param,
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(b.code, 0, "the run itself succeeded: {b:?}");
    let (ok, _, _, error) = results_event(&b);
    assert!(!ok, "a cut copy was reported as success");
    let error = error.unwrap();
    eprintln!("results step after the cut: {error} (boot took {elapsed:?})");
    assert!(error.starts_with("cannot "), "{error}");
    b.assert_console("they are still in the guest");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(elapsed < Duration::from_secs(BOOT_TIMEOUT_S), "took {elapsed:?}");
    drop(server);
}

/// Without booting: what `--results` adds to the QEMU command line and the kernel's.
#[test]
fn dry_run_shows_the_share_the_nic_and_the_parameters() {
    let tmp = TempDir::new().unwrap();
    let app = build(&appliance_tests::root().join("images/hello"), tmp.path());
    let dir = tmp.path().join("r");
    let dry = |via: &str| {
        let o = appliance_tests::appliance()
            .arg("run")
            .arg(&app)
            .args(["--dry-run", "--results", dir.to_str().unwrap(), "--results-via", via])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let line = dry("9p");
    let share = format!("-fsdev local,id=fs0,path={},security_model=none", dir.canonicalize().unwrap().display());
    assert!(line.contains(&share), "{line}");
    assert!(line.contains(",fsdev=fs0,mount_tag=results"), "{line}");
    assert!(line.contains(" appResultsTo=9p:results"), "{line}");
    assert!(line.contains(" appRunId=app-"), "{line}");
    assert!(!line.contains("-netdev "), "9p needs no network: {line}");
    let line = dry("serial");
    let stream = format!("-chardev file,id=port0,path={}/.app-", dir.canonicalize().unwrap().display());
    assert!(line.contains(&stream), "{line}");
    assert!(line.contains("-device virtserialport,bus=ports.0,chardev=port0,name=appliance.results"), "{line}");
    assert!(line.contains(" appResultsTo=serial:appliance.results"), "{line}");
    assert!(!line.contains("-netdev "), "a stream needs no network: {line}");
    // A dry run starts no server: the port shown is NFS's default.
    let line = dry("nfs");
    assert!(line.contains(" appResultsTo=nfs:10.0.2.2:/,port=2049"), "{line}");
    assert!(line.contains("-netdev user,id=net0"), "{line}");
    assert!(line.contains("-device virtio-net-pci,netdev=net0"), "{line}");
}
