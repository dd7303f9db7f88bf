//! Console shells (`appEnd=shell`, `appDebug`) driven over the serial console, booted in
//! QEMU (TCG): the shell has the console as its controlling terminal, so job control
//! works and Ctrl-C reaches the foreground program, not the shell and not PID 1. Without a
//! shell in the image the init says so and goes on.

use appliance_tests::{
    Boot, Session, bash_manifest, boot, boot_on_terminal, boot_with_stdin, build, image, piped, root,
};
use tempfile::TempDir;

/// Ctrl-C on the serial line.
const CTRL_C: &str = "\x03";

fn bash_app(tmp: &TempDir) -> std::path::PathBuf {
    let img = image(tmp.path(), &bash_manifest(""), &[("run", "#!/bin/bash\necho run-ran\n")]);
    build(&img, tmp.path())
}

/// Starts `sleep 1000` in the shell, interrupts it with Ctrl-C, and checks that the
/// shell lives on with job control on. Returns the console offset after the check.
fn ctrl_c_kills_sleep_not_the_shell(s: &mut Session, from: usize) -> usize {
    // The job says when it runs (the terminal is its group's by then: bash hands it over
    // in the child too); the typed line's echo has `$((...))`, not its value.
    s.send("bash -c 'echo fg-$((1 + 1))-ready; exec sleep 1000'\n");
    let at = s.expect("fg-2-ready", from);
    s.send(CTRL_C);
    // `m` in $-: job control (monitor mode) is on, which needs a controlling terminal.
    s.send("case $- in *m*) echo after-$((2 + 3))-monitor;; *) echo after-no-monitor;; esac\n");
    s.expect("after-5-monitor", at)
}

#[test]
fn app_end_shell_has_job_control_and_ctrl_c_kills_only_the_foreground_job() {
    let tmp = TempDir::new().unwrap();
    let app = bash_app(&tmp);
    let mut s = Session::start(&app, &["--end", "shell"]);
    let at = s.expect("console shell on /dev/ttyS0", 0);
    let at = ctrl_c_kills_sleep_not_the_shell(&mut s, at);
    s.send("exit\n");
    s.expect("Power down", at);
    let b = s.finish();
    assert_eq!(b.code, 0, "{b:?}");
    assert!(!b.console.contains("shutting down"), "Ctrl-C must not reach PID 1:\n{}", b.console);
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

#[test]
fn app_debug_shell_survives_ctrl_c_and_exiting_it_continues_the_boot() {
    let tmp = TempDir::new().unwrap();
    let app = bash_app(&tmp);
    let mut s = Session::start(&app, &["--debug"]);
    let at = s.expect("debug shell on /dev/ttyS0", 0);
    let at = ctrl_c_kills_sleep_not_the_shell(&mut s, at);
    s.send("exit\n");
    s.expect("run-ran", at);
    let b = s.finish();
    assert_eq!(b.code, 0, "{b:?}");
    assert!(!b.console.contains("shutting down"), "{}", b.console);
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
}

#[test]
fn without_a_shell_the_init_says_so_and_goes_on() {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    let b = boot(&app, &["--end", "shell"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("appEnd asks for a console shell, but the image has none: powering off");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    let b = boot(&app, &["--debug"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("appDebug asks for a console shell, but the image has none: going on with the boot");
    b.assert_console("arg[1]=hello");
}

#[test]
fn the_power_button_hangs_up_a_debug_shell_and_powers_off_without_running_the_app() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), &bash_manifest("kernel = \"build:6.1\"\n"), &[("run", "#!/bin/bash\necho run-ran\n")]);
    let app = build(&img, tmp.path());
    let s = Session::start(&app, &["--debug", "--stop-grace", "45", "--", "appStopGrace=40"]);
    s.expect("debug shell on /dev/ttyS0", 0);
    // The run records its grace and the guest's, for `appliance stop`.
    let record = std::fs::read_to_string(app.join("running.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!((record["stop_grace_s"].as_u64(), record["guest_stop_grace_s"].as_u64()), (Some(45), Some(40)));
    let o = appliance_tests::appliance().arg("stop").arg(&app).args(["--grace", "40"]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("QEMU is killed 40 s after the stop request (--grace): raise --grace above 40 s"), "{err}");
    let b = s.finish();
    // /app/run never ran: not a success (docs/protocol.md, "Stopping").
    assert_eq!(b.code, 143, "{b:?}");
    b.assert_console("power button pressed");
    // SIGHUP ended the shell: no SIGKILL after the grace period was needed.
    assert!(!b.console.contains("killing"), "{}", b.console);
    assert!(!b.console.contains("run-ran"), "{}", b.console);
    assert_eq!(b.end(), Some(("poweroff".into(), 143)));
}

// ---------------------------------------------------------------------------------------
// Console input typed ahead: from a pipe or a file, before the shell starts

/// Input typed before the shell is ready is the shell's: `printf ... | appliance run`. Each
/// of these runs would wait for `--timeout` (a failure: exit 124) if the input were lost,
/// or if the end of the input did not end the shell.
fn typed_ahead(args: &[&str], stdin: impl Into<std::process::Stdio>) -> Boot {
    let tmp = TempDir::new().unwrap();
    let app = bash_app(&tmp);
    boot_with_stdin(&app, args, stdin)
}

/// The typed commands ran in the shell (their output, not their echo: `$((...))` is only
/// computed by the shell).
#[track_caller]
fn ran_in_the_shell(b: &Boot, needle: &str) {
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console(needle);
    assert_eq!(b.end(), Some(("poweroff".into(), 0)), "{b:?}");
}

/// Regression: the input was written before the guest's serial driver was up, which
/// discarded it, and the end shell waited at its prompt until `--timeout`.
#[test]
fn input_piped_ahead_of_the_end_shell_reaches_it() {
    let b = typed_ahead(&["--end", "shell"], piped("echo typed-$((20 + 1))\nexit\n"));
    ran_in_the_shell(&b, "typed-21");
    b.assert_console("run-ran");
}

#[test]
fn input_piped_ahead_of_the_debug_shell_reaches_it_and_the_boot_goes_on() {
    let b = typed_ahead(&["--debug"], piped("echo typed-$((20 + 2))\nexit\n"));
    ran_in_the_shell(&b, "typed-22");
    let typed = b.console.find("typed-22").unwrap();
    assert!(b.console[typed..].contains("run-ran"), "the boot went on after the debug shell:\n{}", b.console);
}

#[test]
fn input_from_a_file_reaches_the_end_shell() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("input");
    std::fs::write(&input, "echo typed-$((20 + 3))\nexit\n").unwrap();
    let b = typed_ahead(&["--end", "shell"], std::fs::File::open(&input).unwrap());
    ran_in_the_shell(&b, "typed-23");
}

/// The end of the input ends the shell as at the end of a script, after the commands
/// before it ran: here one that takes a while, and a last line without a newline.
#[test]
fn the_end_of_the_input_ends_the_console_shells_without_an_exit_command() {
    let b = typed_ahead(&["--debug", "--end", "shell"], piped("sleep 2; echo slept-$((4 * 6))\necho last-$((5 * 5))"));
    ran_in_the_shell(&b, "slept-24");
    b.assert_console("last-25");
    // The debug shell ended, the boot went on, and the end shell ended too.
    let last = b.console.find("last-25").unwrap();
    assert!(b.console[last..].contains("run-ran") && b.console[last..].contains("console shell on"), "{}", b.console);
}

/// The same on a terminal: what is typed during the boot waits until the guest's console
/// is open (Enter sends a carriage return there).
#[test]
fn keys_typed_ahead_on_a_terminal_reach_the_end_shell() {
    let tmp = TempDir::new().unwrap();
    let app = bash_app(&tmp);
    let b = boot_on_terminal(&app, &["--end", "shell"], "echo typed-$((30 + 1))\rexit\r");
    ran_in_the_shell(&b, "typed-31");
}
