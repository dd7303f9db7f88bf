//! Remote access and graceful stops, booted in QEMU (TCG): `appEnd=sshd` with `appliance
//! run --ssh`, logins with the app dir's generated key, per-build host keys, and the
//! power button (`appliance stop`) or SIGTERM to `appliance run` ending in a clean
//! power-off with the status record complete.
//!
//! The images use the project's kernel (`build:6.1`: virtio-net, evdev and the ACPI
//! button built in), taken from the kernel cache, except where a test says it boots
//! Debian's cloud kernel (the default, where the button and evdev are modules the images do
//! not list, and the PC keyboard is built in); OpenSSH's sshd and ssh-keygen come from the
//! host (host-tools/deps.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use appliance_cmdline::status::{Event, Exit};
use appliance_tests::{Session, appliance, bash_manifest, build, image};
use tempfile::TempDir;

fn ssh_image(tmp: &Path, run: &str, postrun: &str) -> PathBuf {
    let manifest = bash_manifest("kernel = \"build:6.1\"\n[ssh]\n");
    let img = image(tmp, &manifest, &[("run", run), ("postrun", postrun)]);
    build(&img, tmp)
}

fn appliance_ssh(app: &Path, command: &[&str]) -> Output {
    appliance().arg("ssh").arg(app).arg("--ssh-arg=-oConnectTimeout=20").args(command).output().unwrap()
}

/// `appliance ssh APP COMMAND`, retried while sshd is not reachable yet.
fn ssh_until_it_works(app: &Path, command: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let o = appliance_ssh(app, command);
        if o.status.success() || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn stop(app: &Path) -> Output {
    appliance().arg("stop").arg(app).output().unwrap()
}

fn phase_end(events: &[Event], name: &str) -> Option<Exit> {
    events.iter().find_map(|e| match e {
        Event::PhaseEnd { phase, exit, .. } if phase == name => Some(*exit),
        _ => None,
    })
}

#[test]
fn sshd_serves_the_generated_key_refuses_passwords_and_stops_gracefully() {
    let tmp = TempDir::new().unwrap();
    let app = ssh_image(tmp.path(), "#!/bin/bash\necho run-output-$((40 + 2))\n", "");
    let s = Session::start(&app, &["--end", "sshd", "--ssh"]);
    s.expect("Server listening on", 0);

    let o = ssh_until_it_works(&app, &["cat /app/output; echo shell=$0 home=$HOME"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "appliance ssh failed: {o:?}");
    assert!(stdout.contains("run-output-42\n"), "{stdout}");
    assert!(stdout.contains("shell=bash home=/root"), "{stdout}");

    // The init restarts sshd when it dies (the listener is PID 1's child; sessions are
    // forked from it, so this one survives the kill).
    let kill_listener = r#"for f in /proc/[0-9]*/stat; do read -r pid comm state ppid rest < "$f";
        [ "$comm" = "(sshd)" ] && [ "$ppid" = 1 ] && kill -9 "$pid" && echo "killed-listener"; done"#;
    let o = appliance_ssh(&app, &[kill_listener]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("killed-listener"), "{o:?}");
    s.expect("restarting in 1 s", 0);
    let o = ssh_until_it_works(&app, &["echo back-$((6 * 7))"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("back-42"), "{o:?}");

    // The host key is checked for real: another key under the alias is refused.
    let known_hosts = app.join("ssh/known_hosts");
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    let other = appliance_host::image::ssh::generate_host_key(appliance_host::image::ssh::Server::Openssh).unwrap();
    std::fs::write(&known_hosts, format!("appliance-image {}\n", other.public)).unwrap();
    let o = appliance_ssh(&app, &["true"]);
    std::fs::write(&known_hosts, &recorded).unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("Host key verification failed"), "{stderr}");

    // Passwords are not even offered: only public keys.
    let port = appliance_host::vm::running::read(&app).unwrap().ssh_port.unwrap();
    let o = std::process::Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password,keyboard-interactive"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=appliance-image"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");

    let o = stop(&app);
    assert!(o.status.success(), "appliance stop: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("powered off"), "{o:?}");
    let b = s.finish();
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("power button pressed");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(!app.join(appliance_host::vm::running::FILE_NAME).exists(), "the run record is removed");
    let err = String::from_utf8_lossy(&stop(&app).stderr).into_owned();
    assert!(err.contains("no appliance is running from"), "{err}");
}

#[test]
fn two_builds_have_different_host_keys_and_each_app_dir_its_own_login_key() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &bash_manifest("kernel = \"build:6.1\"\n[ssh]\n"), &[("run", "#!/bin/sh\n")]);
    let a = build(&img, &tmp.path().join("a"));
    let b = build(&img, &tmp.path().join("b"));
    let read = |app: &Path, f: &str| std::fs::read_to_string(app.join("ssh").join(f)).unwrap();
    let (ka, kb) = (read(&a, "known_hosts"), read(&b, "known_hosts"));
    assert!(ka.starts_with("appliance-image ssh-ed25519 ") && kb.starts_with("appliance-image ssh-ed25519 "), "{ka}");
    assert_ne!(ka, kb);
    assert_ne!(read(&a, "id_ed25519.pub"), read(&b, "id_ed25519.pub"));
    // A rebuild of the same app dir keeps its login key but gets a new host key.
    let login = read(&a, "id_ed25519.pub");
    let again = build(&img, &tmp.path().join("a"));
    assert_eq!(read(&again, "id_ed25519.pub"), login);
    assert_ne!(read(&again, "known_hosts"), ka);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(a.join("ssh/id_ed25519")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

const SLEEPING_RUN: &str = "#!/bin/bash\ntrap 'echo run-got-TERM; exit 3' TERM\necho run-started\nsleep 600 &\nwait\n";

#[test]
fn the_power_button_stops_the_running_app_skips_postrun_and_powers_off() {
    let tmp = TempDir::new().unwrap();
    let app = ssh_image(tmp.path(), SLEEPING_RUN, "#!/bin/bash\necho postrun-ran\n");
    let s = Session::start(&app, &[]);
    s.expect("run-started", 0);
    let o = stop(&app);
    assert!(o.status.success(), "appliance stop: {o:?}");
    let b = s.finish();
    assert_eq!(b.code, 3, "the run's status: {b:?}");
    b.assert_console("power button pressed");
    b.assert_console("run-got-TERM");
    assert!(!b.console.contains("postrun-ran"), "{}", b.console);
    assert_eq!(phase_end(&b.events, "run"), Some(Exit::Code(3)));
    assert_eq!(b.end(), Some(("poweroff".into(), 3)));
}

#[test]
fn sigterm_to_appliance_run_powers_the_guest_off_cleanly() {
    let tmp = TempDir::new().unwrap();
    let app = ssh_image(tmp.path(), SLEEPING_RUN, "#!/bin/bash\necho postrun-ran\n");
    let s = Session::start(&app, &[]);
    s.expect("run-started", 0);
    let kill = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let b = s.finish();
    assert_eq!(b.code, 3, "{b:?}");
    b.assert_console("run-got-TERM");
    assert!(!b.console.contains("postrun-ran"), "{}", b.console);
    assert_eq!(b.end(), Some(("poweroff".into(), 3)));
}

/// Debian's cloud kernel (the default), an image without `button` and `evdev` in its
/// manifest: the power button goes unheard, so `appliance stop` reaches the init as
/// Ctrl-Alt-Del (SIGINT), and the guest powers off with its status record complete
/// instead of being killed after the grace period.
#[test]
fn appliance_stop_powers_off_an_image_without_button_modules_on_the_default_kernel() {
    let tmp = TempDir::new().unwrap();
    let img =
        image(tmp.path(), &bash_manifest(""), &[("run", SLEEPING_RUN), ("postrun", "#!/bin/bash\necho postrun-ran\n")]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &[]);
    s.expect("run-started", 0);
    let o = stop(&app);
    assert!(o.status.success(), "appliance stop: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("powered off"), "{o:?}");
    let b = s.finish();
    b.assert_console("signal 2: shutting down");
    assert!(!b.console.contains("postrun-ran"), "{}", b.console);
    // run traps TERM only: SIGINT ends it.
    assert_eq!(phase_end(&b.events, "run"), Some(Exit::Signal(2)));
    assert_eq!(b.end(), Some(("poweroff".into(), 130)), "{b:?}");
    assert_eq!(b.code, 130);
}

/// The same through SIGTERM to `appliance run`.
#[test]
fn sigterm_to_appliance_run_powers_off_an_image_without_button_modules_on_the_default_kernel() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &bash_manifest(""), &[("run", SLEEPING_RUN)]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &[]);
    s.expect("run-started", 0);
    let kill = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let b = s.finish();
    b.assert_console("signal 2: shutting down");
    assert_eq!(b.end(), Some(("poweroff".into(), 130)), "{b:?}");
    assert!(b.stderr.contains("appliance: run status 130, poweroff"), "{}", b.stderr);
}

/// A guest that hears neither request (the project's kernel, no PC keyboard, on a machine
/// without ACPI): QEMU is killed after the grace period, and `appliance run` says that the
/// stop went unanswered, not that the guest crashed.
#[test]
fn a_stop_the_guest_cannot_hear_is_reported_as_such_not_as_a_crash() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &bash_manifest("kernel = \"build:6.1\"\n"), &[("run", SLEEPING_RUN)]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &["--stop-grace", "5", "--qemu-arg=-machine", "--qemu-arg=acpi=off"]);
    s.expect("run-started", 0);
    let kill = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let b = s.finish();
    assert_eq!(b.code, 125, "{b:?}");
    assert_eq!(b.end(), None);
    assert!(
        b.stderr.contains("appliance: VM killed: the guest did not power off within 5 s of the stop request"),
        "{}",
        b.stderr
    );
    assert!(!b.stderr.contains("kernel panic or crash"), "{}", b.stderr);
}

#[test]
fn dropbear_serves_the_generated_key_too() {
    let tmp = TempDir::new().unwrap();
    let manifest = bash_manifest("kernel = \"build:6.1\"\n[ssh]\nserver = \"dropbear\"\n");
    let img = image(tmp.path(), &manifest, &[("run", "#!/bin/bash\necho dropbear-run-ran\n")]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &["--end", "sshd", "--ssh"]);
    s.expect("sshd is running", 0);
    let o = ssh_until_it_works(&app, &["cat /app/output"]);
    assert!(o.status.success(), "appliance ssh failed: {o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("dropbear-run-ran"), "{o:?}");
    assert!(stop(&app).status.success());
    let b = s.finish();
    assert_eq!(b.end(), Some(("poweroff".into(), 0)), "{b:?}");
}

#[test]
fn ctrl_alt_del_stops_the_running_app_and_powers_off() {
    let tmp = TempDir::new().unwrap();
    // Debian's cloud kernel: the project's has no PC keyboard (i8042, atkbd) nor VT, so
    // no Ctrl-Alt-Del.
    let img =
        image(tmp.path(), &bash_manifest(""), &[("run", SLEEPING_RUN), ("postrun", "#!/bin/bash\necho postrun-ran\n")]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &[]);
    s.expect("run-started", 0);
    let record = appliance_host::vm::running::read(&app).unwrap();
    let mut qmp = appliance_host::vm::qmp::Qmp::connect(&record.qmp, Duration::from_secs(5)).unwrap();
    let keys = serde_json::json!({ "keys": [
        { "type": "qcode", "data": "ctrl" }, { "type": "qcode", "data": "alt" }, { "type": "qcode", "data": "delete" }
    ] });
    qmp.execute_with("send-key", Some(keys)).unwrap();
    let b = s.finish();
    // The kernel sends SIGINT to PID 1, which forwards it: run (trapping only TERM) dies of it.
    assert_eq!(b.code, 130, "{b:?}");
    b.assert_console("signal 2: shutting down");
    assert!(!b.console.contains("postrun-ran"), "{}", b.console);
    assert_eq!(phase_end(&b.events, "run"), Some(Exit::Signal(2)));
    assert_eq!(b.end(), Some(("poweroff".into(), 130)));
}

#[test]
fn sigterm_to_pid_1_skips_the_remaining_phases_and_powers_off() {
    let tmp = TempDir::new().unwrap();
    // The stop ends prerun too (PID 1 forwards it). Prerun then waits in a loop of
    // builtins, not in a program it starts: the init's EXIT trap (which carries exports)
    // makes bash catch SIGTERM, and bash acts on a caught signal only when its foreground
    // program ends. A SIGTERM that arrives while bash forks that program (bash blocks it
    // then) never reaches the program, so bash waited for `sleep 60` until the 5 s grace
    // ended it with SIGKILL, in 4 of 27 boots with two VMs at once (docs/protocol.md,
    // "What carries over"). The loop is bounded by that grace.
    let prerun = "#!/bin/bash\necho prerun-asks-to-stop\nkill -TERM 1\nwhile :; do :; done\n";
    let img = image(
        tmp.path(),
        &bash_manifest("kernel = \"build:6.1\"\n"),
        &[("prerun", prerun), ("run", "#!/bin/bash\necho run-ran\n")],
    );
    let b = appliance_tests::boot(&build(&img, tmp.path()), &[]);
    b.assert_console("prerun-asks-to-stop");
    b.assert_console("signal 15: shutting down");
    assert!(!b.console.contains("run-ran"), "{}", b.console);
    assert_eq!(phase_end(&b.events, "prerun"), Some(Exit::Signal(15)), "control: the stop reached prerun");
    assert!(phase_end(&b.events, "run").is_none(), "{:?}", b.events);
    // /app/run never ran: not a success (docs/protocol.md, "Stopping").
    assert_eq!(b.end(), Some(("poweroff".into(), 143)));
    assert_eq!(b.code, 143, "{b:?}");
}

/// A program that cleans up on SIGTERM gets `appStopGrace` seconds for it, not a fixed 5.
#[test]
fn app_stop_grace_is_the_time_a_stopped_program_has_to_clean_up() {
    let tmp = TempDir::new().unwrap();
    // The cleanup's sleep starts after the stop was forwarded: it does not get SIGTERM.
    let prerun = "#!/bin/bash\ntrap 'echo cleaning-up; sleep 3; echo cleaned-up; exit 0' TERM\n\
                  kill -TERM 1\nwhile :; do :; done\n";
    let manifest = bash_manifest("kernel = \"build:6.1\"\n");
    let img = image(tmp.path(), &manifest, &[("prerun", prerun), ("run", "#!/bin/bash\necho run-ran\n")]);
    let app = build(&img, tmp.path());
    let b = appliance_tests::boot(&app, &["--", "appStopGrace=20"]);
    b.assert_console("cleaned-up");
    assert_eq!(phase_end(&b.events, "prerun"), Some(Exit::Code(0)), "{b:?}");
    assert!(!b.console.contains("killing it"), "{}", b.console);
    assert!(!b.console.contains("run-ran"), "{}", b.console);
    assert_eq!(b.code, 143, "{b:?}");
    // Control: a grace shorter than the cleanup ends it with SIGKILL.
    let b = appliance_tests::boot(&app, &["--", "appStopGrace=1"]);
    b.assert_console("cleaning-up");
    b.assert_console("still running 1 s after the stop request (appStopGrace): killing it");
    assert!(!b.console.contains("cleaned-up"), "{}", b.console);
    assert_eq!(phase_end(&b.events, "prerun"), Some(Exit::Signal(9)), "{b:?}");
    // A guest grace the host's would cut short is named before the boot.
    let o =
        appliance().arg("run").arg(&app).args(["--dry-run", "--stop-grace", "10", "--", "appStopGrace=10"]).output();
    let err = String::from_utf8_lossy(&o.unwrap().stderr).into_owned();
    assert!(err.contains("raise --stop-grace above 10 s"), "{err}");
}

#[test]
fn run_ssh_forwards_a_loopback_port_and_sets_the_guest_address_unless_given() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &bash_manifest("kernel = \"build:6.1\"\n"), &[("run", "#!/bin/sh\n")]);
    let app = build(&img, tmp.path());
    let dry = |extra: &[&str]| {
        let o = appliance().arg("run").arg(&app).args(["--dry-run", "--ssh", "2222"]).args(extra).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let line = dry(&[]);
    assert!(line.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{line}");
    assert!(line.contains("appIp=10.0.2.15/24"), "{line}");
    // An appIp of the user's comes later on the line, and the last one wins.
    let line = dry(&["--", "appIp=10.0.2.99/24"]);
    let (ours, theirs) = (line.find("appIp=10.0.2.15/24").unwrap(), line.find("appIp=10.0.2.99/24").unwrap());
    assert!(ours < theirs, "{line}");
}
