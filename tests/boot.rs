//! Boots real appliances in QEMU (TCG) and checks what came back: the console, the exit
//! status of `appliance run`, and the init's status record.

use appliance_cmdline::status::Event;
use appliance_tests::{Boot, Session, bash_manifest, boot, build, image, root};
use tempfile::TempDir;

fn hello() -> (TempDir, std::path::PathBuf) {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    (tmp, app)
}

fn bash_tools() -> (TempDir, std::path::PathBuf) {
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/bash-tools"), tmp.path());
    (tmp, app)
}

/// The `arg[..]=` lines the run program printed, in order.
fn args_printed(b: &Boot) -> Vec<String> {
    b.console.lines().filter(|l| l.starts_with("arg[")).map(|l| l.trim_end().to_string()).collect()
}

#[test]
fn hello_prints_its_arguments_and_powers_off() {
    let (_tmp, app) = hello();
    let b = boot(&app, &[]);
    assert_eq!(b.code, 0, "{b:?}");
    assert_eq!(args_printed(&b), ["arg[1]=hello", "arg[2]=from", "arg[3]=the", "arg[4]=appliance"]);
    b.assert_console("hello: wrote /app/results/hello.txt");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(b.stderr.contains("run status 0, poweroff; kernel→/init"), "{}", b.stderr);
}

/// `-v` says why: the accelerator and the machine (a dry run: nothing boots).
#[test]
fn verbose_says_why_the_accelerator_and_the_machine_were_chosen() {
    let (_tmp, app) = hello();
    let o = appliance_tests::appliance().args(["-v", "run", "--dry-run"]).arg(&app).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("appliance: accelerator tcg: APPLIANCE_ACCEL=tcg"), "{err}");
    assert!(err.contains("appliance: machine pc: "), "{err}");
    let o = appliance_tests::appliance().args(["run", "--dry-run"]).arg(&app).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("machine pc"), "{o:?}");
}

/// Also the one boot whose initrd the guest decompresses itself (`--compressed-initrd`):
/// every other boot under TCG gets it decompressed by `appliance run`.
#[test]
fn run_exit_status_is_the_exit_status_of_appliance_run() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--args", "exit=3", "--compressed-initrd"]);
    assert_eq!(b.code, 3, "{b:?}");
    assert_eq!(b.end(), Some(("poweroff".into(), 3)));
    b.assert_console("hello: exiting with 3");
    // A failure that was not the memory's is not blamed on it.
    assert!(!b.console.contains("out of memory"), "{b:?}");
    assert!(
        b.events.iter().all(|e| !matches!(e, Event::PhaseEnd { oom_killed, .. } if !oom_killed.is_empty())),
        "{b:?}"
    );
}

#[test]
fn app_args_keep_spaces_and_double_quotes() {
    let (_tmp, app) = bash_tools();
    // The original's form, single quotes around double-quoted words, as extra words.
    let b = boot(&app, &["--", r#"appArgs='10 "a b" c'"#]);
    assert_eq!(b.code, 0, "{b:?}");
    assert_eq!(args_printed(&b), ["arg[0]=10", "arg[1]=a b", "arg[2]=c"]);
    // The same through the option, rendered by the tool.
    let b = boot(&app, &["--args", r#"one "two  three" 'say "hi"'"#]);
    assert_eq!(args_printed(&b), ["arg[0]=one", "arg[1]=two  three", "arg[2]=say \"hi\""]);
    // A lone double quote cannot cross the kernel's command line: refused before booting.
    let b = boot(&app, &["--args", r#"'fo"ur'"#]);
    assert_eq!(b.code, 2, "{b:?}");
    assert!(b.stderr.contains("appArgs"), "{}", b.stderr);
}

#[test]
fn app_cmds_run_in_order_with_or_without_a_trailing_colon() {
    let (_tmp, app) = bash_tools();
    for cmds in ["echo cmd-one:echo cmd-two:", "echo cmd-one:echo cmd-two"] {
        let b = boot(&app, &["--cmds", cmds]);
        assert_eq!(b.code, 0, "{cmds}: {b:?}");
        let one = b.console.find("cmd-one\n").unwrap_or_else(|| panic!("{cmds}: no cmd-one:\n{}", b.console));
        let two = b.console.find("cmd-two\n").expect("cmd-two ran");
        let run = b.console.find("arg[0]=hello").expect("run ran");
        assert!(one < two && two < run, "{cmds}: wrong order:\n{}", b.console);
        // A variable prerun appended to $APP_ENV reached postrun.
        b.assert_console("postrun: run exited 0, FROM_PRERUN=yes");
        // Each command ran once (the original ran the last one forever without ':').
        assert_eq!(b.console.matches("cmd-two\n").count(), 1, "{cmds}");
        let cmd_ends = b
            .events
            .iter()
            .filter(|e| matches!(e, appliance_cmdline::status::Event::PhaseEnd { phase, .. } if phase == "cmd"))
            .count();
        assert_eq!(cmd_ends, 2, "{cmds}");
    }
}

#[test]
fn app_end_reboot_ends_the_run_through_a_reboot() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--end", "reboot"]);
    assert_eq!(b.code, 0, "{b:?}");
    assert_eq!(b.end(), Some(("reboot".into(), 0)));
    b.assert_console("reboot: Restarting system");
}

#[test]
fn orphaned_zombies_are_reaped_before_postrun_looks() {
    let tmp = TempDir::new().unwrap();
    let run = r#"#!/bin/bash
# Orphans: subshells that exit at once, leaving their `sleep` to PID 1. Once it has seen
# them, the run ends them and waits until they have ended (10 s at most for each): they
# end while run is still going, so only the init can reap them.
for i in 1 2 3; do ( sleep 600 & ) ; done
for ((try = 0; try < 100; try++)); do
  orphans=()
  for f in /proc/[0-9]*/stat; do read -r pid comm state ppid rest < "$f" 2>/dev/null || continue
    [ "$comm" = "(sleep)" ] && [ "$ppid" = 1 ] && orphans+=("$pid"); done
  [ "${#orphans[@]}" -ge 3 ] && break
  sleep 0.1
done
echo "orphans of pid 1: ${#orphans[@]}"
kill "${orphans[@]}"
for ((try = 0; try < 100; try++)); do
  running=0
  for p in "${orphans[@]}"; do read -r pid comm state rest < "/proc/$p/stat" 2>/dev/null || continue
    [ "$state" != Z ] && running=$((running + 1)); done
  [ "$running" = 0 ] && break
  sleep 0.1
done
echo "orphans still running: $running"
"#;
    let postrun = r#"#!/bin/bash
zombies=0
for f in /proc/[0-9]*/stat; do read -r pid comm state rest < "$f" 2>/dev/null || continue
  [ "$state" = Z ] && { zombies=$((zombies+1)); echo "zombie $pid $comm"; }; done
echo "zombies=$zombies"
"#;
    let img = image(tmp.path(), &bash_manifest(""), &[("run", run), ("postrun", postrun)]);
    let b = boot(&build(&img, tmp.path()), &[]);
    assert_eq!(b.code, 0, "{b:?}");
    // Control: the orphans existed and were children of PID 1.
    b.assert_console("orphans of pid 1: 3");
    b.assert_console("orphans still running: 0");
    b.assert_console("zombies=0");
}

#[test]
fn missing_app_run_is_reported_and_powers_off_cleanly() {
    let tmp = TempDir::new().unwrap();
    let img = image(tmp.path(), "description = \"nothing to run\"\n", &[]);
    let b = boot(&build(&img, tmp.path()), &[]);
    assert_eq!(b.code, 127, "{b:?}");
    b.assert_console("no /app/run in the image");
    assert!(b.errors().iter().any(|e| e.contains("no /app/run")), "{:?}", b.events);
    assert_eq!(b.end(), Some(("poweroff".into(), 127)));
}

/// Regression: a phase whose interpreter (`#!/bin/sh`) or program loader the image lacked,
/// or a script saved with DOS line endings, failed with "cannot execute /app/run: No such
/// file or directory", as if the phase itself were missing. The build now warns about the
/// scripts, and the init says what is missing.
#[test]
fn a_phase_whose_interpreter_or_loader_is_missing_says_which() {
    let tmp = TempDir::new().unwrap();
    let img = image(
        tmp.path(),
        "description = \"no shell, no loader\"\n",
        &[("run", "#!/bin/sh\necho never\n"), ("postrun", "#!/bin/sh\r\necho never\r\n")],
    );
    // A dynamically linked program copied as a plain file: no loader comes with it.
    std::fs::copy("/usr/bin/true", img.join("app/prerun")).unwrap();
    let out = tmp.path().join("app");
    let o = appliance_tests::appliance().args(["-q", "build"]).arg(&img).arg("-o").arg(&out).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert!(warnings.contains("/app/run is a script for /bin/sh, which the image does not hold"), "{warnings}");
    assert!(warnings.contains("/app/postrun has DOS line endings"), "{warnings}");
    let b = boot(&out, &[]);
    assert_eq!(b.code, 127, "{b:?}");
    b.assert_console("cannot execute /app/run: its interpreter /bin/sh is not in the image");
    b.assert_console("cannot execute /app/prerun: its program loader /lib64/ld-linux-x86-64.so.2 is not in the image");
    b.assert_console("cannot execute /app/postrun: its #! line ends in a carriage return (DOS line endings)");
}

/// Regression: an initrd too large for the guest's memory ended in a kernel panic ("System
/// is deadlocked on memory", "Initramfs unpacking failed") and "no status from the guest",
/// with nothing naming the cause. `appliance run` now says so before the boot, with the
/// memory to pass, and that memory boots it.
#[test]
fn an_initrd_too_large_for_the_memory_is_named_before_the_boot() {
    let tmp = TempDir::new().unwrap();
    let manifest = "description = \"large\"\ncompression = \"none\"\n[files]\n\"/data/blob\" = \"blob\"\n\
                    [programs]\n\"/app/run\" = \"appliance-hello\"\n";
    let img = image(tmp.path(), manifest, &[]);
    std::fs::write(img.join("blob"), vec![0u8; 24 << 20]).unwrap();
    let app = build(&img, tmp.path());
    let b = boot(&app, &["-m", "96"]);
    assert_eq!(b.code, 125, "the boot fails as warned: {b:?}");
    b.assert_console("Initramfs unpacking failed");
    let warning = b.stderr.lines().find(|l| l.contains("the kernel cannot unpack it")).expect("the warning");
    let suggested = warning.split("pass --memory ").nth(1).and_then(|w| w.split(' ').next()).unwrap();
    let b = boot(&app, &["-m", suggested]);
    assert_eq!(b.code, 0, "{suggested} MiB: {b:?}");
    assert!(!b.stderr.contains("cannot unpack"), "{}", b.stderr);
    b.assert_console("hello: exiting with 0");

    // Without the sizes `appliance build` records (an app dir of the original layout),
    // and gzipped and handed to QEMU as it is: measured on the host, and named the same.
    std::fs::remove_file(app.join("appliance.json")).unwrap();
    let gzip = std::process::Command::new("gzip").args(["-1", "-n"]).arg(app.join("initrd")).status().unwrap();
    assert!(gzip.success());
    std::fs::rename(app.join("initrd.gz"), app.join("initrd")).unwrap();
    // The kernel fails as warned, here without a panic: the loaded initrd is small, and
    // /init starts without the files that did not fit. When the run then fails, the init
    // says why.
    let b = boot(&app, &["-m", "96", "--compressed-initrd", "--", "appArgs=exit=3"]);
    let warning = b.stderr.lines().find(|l| l.contains("the kernel cannot unpack it")).expect("the warning");
    assert!(warning.contains("the initrd unpacks to more than "), "{warning}");
    assert_eq!(b.code, 3, "{b:?}");
    let said = "run failed, and the kernel could not unpack the whole initramfs at boot \
                (\"Initramfs unpacking failed: write error\"): files of the image are missing";
    b.assert_console(said);
    assert!(b.events.iter().any(|e| matches!(e, Event::Error { message, .. } if message.starts_with(said))), "{b:?}");
}

/// Regression: `appliance exp new` writes `image = "hello"`, which was looked up only under
/// the working directory's `images/`: outside the checkout the new experiment's first run
/// failed with "no image". Bare names now also come from the toolkit's own `images/`.
#[test]
fn the_toolkits_images_are_found_from_any_directory() {
    let tmp = TempDir::new().unwrap();
    let o = appliance_tests::appliance()
        .current_dir(tmp.path())
        .args(["-q", "build", "hello", "-o", "app"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(tmp.path().join("app/initrd").is_file());
    let o = appliance_tests::appliance().current_dir(tmp.path()).args(["build", "helo"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no image \"helo\"") && err.contains("available images: ") && err.contains("hello"), "{err}");
}

#[test]
fn malformed_command_line_is_reported_and_defaults_apply() {
    let (_tmp, app) = hello();
    let b = boot(&app, &["--", "appEnd=bogus", "appDebugg", "appIp=10.0.2.300/24"]);
    assert_eq!(b.code, 0, "{b:?}");
    let errors = b.errors().join("\n");
    assert!(errors.contains("bogus"), "{errors}");
    assert!(errors.contains("appDebugg") && errors.contains("appDebug"), "{errors}");
    assert!(errors.contains("10.0.2.300/24"), "{errors}");
    // Unknown appEnd: reported, treated as halt; the run still happened.
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    b.assert_console("arg[1]=hello");
    assert!(b.stderr.contains("appEnd"), "the host warns before booting too: {}", b.stderr);
}

#[test]
fn boot_sets_up_mounts_loopback_hostname_and_output() {
    let tmp = TempDir::new().unwrap();
    let run = r#"#!/bin/bash
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "lo=$(cat /sys/class/net/lo/flags)"
while read -r dev mnt fs rest; do echo "mount $mnt $fs"; done < /proc/mounts
echo "mtab=$(ls -l /etc/mtab)"
echo "to-stderr" >&2
echo "env APP_DIR=$APP_DIR APP_OUT=$APP_OUT APP_MYNODE=$APP_MYNODE APP_PHASE=$APP_PHASE"
"#;
    let postrun = "#!/bin/bash\necho \"output has: $(cat \"$APP_OUT\" | tr '\\n' ' ')\"\n";
    let manifest = bash_manifest("").replace("\"/usr/bin/echo\"]", "\"/usr/bin/echo\", \"/usr/bin/tr\"]");
    let img = image(tmp.path(), &manifest, &[("run", run), ("postrun", postrun)]);
    let b = boot(&build(&img, tmp.path()), &["--", "appNode=node7"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("hostname=node7");
    // IFF_UP | IFF_LOOPBACK | IFF_RUNNING...: at least up (bit 0).
    let lo = b.console.lines().find_map(|l| l.strip_prefix("lo=")).expect("lo flags");
    assert_eq!(u32::from_str_radix(lo.trim().trim_start_matches("0x"), 16).unwrap() & 1, 1, "lo down: {lo}");
    for m in [
        "mount /proc proc",
        "mount /sys sysfs",
        "mount /dev devtmpfs",
        "mount /dev/pts devpts",
        "mount /dev/shm tmpfs",
        "mount /run tmpfs",
        "mount /tmp tmpfs",
    ] {
        b.assert_console(m);
    }
    b.assert_console("-> /proc/mounts");
    b.assert_console("env APP_DIR=/app APP_OUT=/app/output APP_MYNODE=node7 APP_PHASE=run");
    // /app/output holds the run phase's stdout and stderr.
    b.assert_console("output has: hostname=node7");
    let output_line = b.console.lines().find(|l| l.starts_with("output has:")).unwrap();
    assert!(output_line.contains("to-stderr"), "{output_line}");
}

/// Regression: `APP_RESULTS` was always set but the directory did not exist, so a run that
/// wrote `$APP_RESULTS/out.txt` without `mkdir -p` first failed. The init now creates it,
/// with its parents, before the phases.
#[test]
fn a_run_can_write_into_app_results_without_creating_it() {
    let tmp = TempDir::new().unwrap();
    let run = "#!/bin/bash\necho kept > \"$APP_RESULTS/out.txt\" && echo \"read back: $(cat \"$APP_RESULTS/out.txt\") from $APP_RESULTS\"\n";
    let img = image(tmp.path(), &bash_manifest(""), &[("run", run)]);
    let b = boot(&build(&img, tmp.path()), &["--", "appResultsDir=/data/deeper/out"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("read back: kept from /data/deeper/out");
}

/// Regression: a run that outgrew the guest's memory (512 MiB by default, the original's
/// machines had 8 GiB) "exited with status 137", and only the kernel's log said why.
#[test]
fn a_run_ended_by_the_out_of_memory_killer_is_named() {
    let tmp = TempDir::new().unwrap();
    let manifest = "description = \"test image\"\nhost_files = [\"/bin/bash\", \"/usr/bin/tail\"]\n";
    // tail keeps all of a line that never ends: it grows until the killer ends it.
    let run = "#!/bin/bash\necho filling-the-memory\ntail /dev/zero\n";
    let img = image(tmp.path(), manifest, &[("run", run)]);
    let b = boot(&build(&img, tmp.path()), &["-m", "128"]);
    assert_eq!(b.code, 137, "{b:?}");
    let killed = b.events.iter().find_map(|e| match e {
        Event::PhaseEnd { phase, oom_killed, .. } if phase == "run" => Some(oom_killed.clone()),
        _ => None,
    });
    let killed = killed.unwrap_or_else(|| panic!("no end of run: {b:?}"));
    assert!(killed.iter().any(|k| k.name == "tail" && k.pid > 1), "{b:?}");
    b.assert_console(
        "run failed after the guest ran out of memory: the kernel's out-of-memory killer ended tail (pid ",
    );
    assert!(
        b.stderr.contains(
            "run status 137, poweroff (out of memory in run: the guest's kernel killed tail; give it more with -m)"
        ),
        "{}",
        b.stderr
    );
}

/// Regression: the original sourced its phases, so what an unchanged prerun exported was
/// set in run; with phases as child processes it was silently unset.
#[test]
fn variables_an_original_prerun_exports_reach_run() {
    let tmp = TempDir::new().unwrap();
    let prerun = "#!/bin/bash\nexport TRIAL_TAG=\"tag-$(cat /proc/sys/kernel/hostname)\"\n";
    let run = "#!/bin/bash\necho \"run sees TRIAL_TAG=$TRIAL_TAG FROM_CMD=$FROM_CMD\"\n";
    let img = image(tmp.path(), &bash_manifest(""), &[("prerun", prerun), ("run", run)]);
    let b = boot(&build(&img, tmp.path()), &["--cmds", "export FROM_CMD=cmd-$((6 * 7))", "--", "appNode=node7"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("run sees TRIAL_TAG=tag-node7 FROM_CMD=cmd-42");
}

#[test]
fn app_debug_gives_a_console_shell_and_the_boot_continues() {
    let (_tmp, app) = bash_tools();
    let mut s = Session::start(&app, &["--debug"]);
    let at = s.expect("debug shell on /dev/ttyS0", 0);
    s.send("echo marker-$((6*7))\n");
    let at = s.expect("marker-42", at);
    // Nothing of the appliance ran yet.
    s.send("exit\n");
    let at = s.expect("prerun: prerun", at);
    s.expect("arg[0]=hello", at);
    let b = s.finish();
    assert_eq!(b.code, 0, "{b:?}");
    let debug_end = b
        .events
        .iter()
        .position(|e| matches!(e, appliance_cmdline::status::Event::PhaseEnd { phase, .. } if phase == "debug"));
    let run_start = b
        .events
        .iter()
        .position(|e| matches!(e, appliance_cmdline::status::Event::PhaseStart { phase, .. } if phase == "run"));
    assert!(debug_end.is_some() && debug_end < run_start, "{:?}", b.events);
}

/// A guest that hears neither stop request (the project's kernel, which has no PC keyboard
/// for Ctrl-Alt-Del, on a machine without ACPI, so no power button either) does not power
/// off when `--timeout` asks it to: QEMU is killed after `--stop-grace`.
#[test]
fn a_guest_that_ignores_the_stop_at_its_timeout_is_killed_after_the_grace() {
    let tmp = TempDir::new().unwrap();
    let manifest = bash_manifest("kernel = \"build:6.1\"\n");
    let img = image(tmp.path(), &manifest, &[("run", "#!/bin/bash\necho started-sleeping\nsleep 600\n")]);
    let app = build(&img, tmp.path());
    let started = std::time::Instant::now();
    let o = appliance_tests::appliance()
        .args(["run", app.to_str().unwrap(), "--timeout", "25", "--stop-grace", "5"])
        .args(["--qemu-arg=-machine", "--qemu-arg=acpi=off"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(124), "{o:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(70));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--timeout: 25 s are up: asking the guest to shut down"), "{stderr}");
    assert!(
        stderr.contains("did not finish within 25 s, nor power off within 5 s of the stop request: killed it"),
        "{stderr}"
    );
    assert!(stderr.contains("timed out: VM killed"), "{stderr}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("started-sleeping"), "the guest really ran");
}

/// Where no host watches the run, a fork bomb left behind by `/app/run` kept the
/// appliance busy for ever. `appRunTimeout` ends the run, kills what it left behind in
/// any process group, runs postrun on a quiet system, saves the results and powers off.
/// The bomb is bounded (a binary tree 4 deep, each process forking a short-lived child
/// over and over, slowly enough for an emulated CPU), and it runs inside the VM. The
/// control only needs half of it up: counting processes under TCG on a loaded host is
/// slow, and the run's 40 s must not run out before it.
#[test]
fn a_fork_bomb_left_by_run_is_ended_by_app_run_timeout_and_the_results_saved() {
    let tmp = TempDir::new().unwrap();
    let run = r#"#!/bin/bash
# Job control: the first generation gets process groups of its own, out of run's group.
set -m
bomb() {
  if (( $1 > 0 )); then bomb $(($1 - 1)) & bomb $(($1 - 1)) & fi
  while :; do sleep 10 & wait $!; done
}
bomb 4 &
count() { n=0; for f in /proc/[0-9]*/stat; do read -r pid comm state ppid rest 2>/dev/null < "$f" || continue
  case $comm in "(run)"|"(bash)") n=$((n + 1));; esac; done; }
# 31 in the tree, and run itself (named bash when the init runs it through bash -c to carry
# its exports); half of them is enough to show it spread.
for ((try = 0; try < 60; try++)); do count; [ "$n" -ge 16 ] && break; sleep 0.2; done
if [ "$n" -ge 16 ]; then echo "bomb up"; else echo "bomb not up: $n"; fi
wait
"#;
    let postrun = r#"#!/bin/bash
n=0
for f in /proc/[0-9]*/stat; do
  read -r pid comm state ppid rest 2>/dev/null < "$f" || continue
  [ "$pid" = 1 ] || [ "$pid" = 2 ] || [ "$ppid" = 2 ] || [ "$pid" = $$ ] && continue
  n=$((n + 1)); echo "left: $pid $comm $state"
done
echo "postrun: run status $APP_RUN_STATUS, left behind: $n"
"#;
    let img = image(tmp.path(), &bash_manifest("kernel = \"build:6.1\""), &[("run", run), ("postrun", postrun)]);
    let app = build(&img, tmp.path());
    let dir = tmp.path().join("results");
    let b = boot(&app, &["--results", dir.to_str().unwrap(), "--results-via", "9p", "--", "appRunTimeout=40"]);
    b.assert_console("bomb up\n");
    b.assert_console("postrun: run status 124, left behind: 0");
    assert_eq!(b.code, 124, "{b:?}");
    let run_end = b.events.iter().find_map(|e| match e {
        appliance_cmdline::status::Event::PhaseEnd { phase, status, timed_out, .. } if phase == "run" => {
            Some((*status, *timed_out))
        }
        _ => None,
    });
    assert_eq!(run_end, Some((124, true)), "{:?}", b.events);
    assert_eq!(b.end(), Some(("poweroff".into(), 124)));
    assert!(b.stderr.contains("run status 124, poweroff (run timed out in the guest: appRunTimeout)"), "{}", b.stderr);
    let saved = b.events.iter().any(|e| matches!(e, appliance_cmdline::status::Event::Results { ok: true, .. }));
    assert!(saved, "{:?}", b.events);
    let run_dir = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let output = std::fs::read_to_string(run_dir.join("output")).unwrap();
    assert!(output.contains("bomb up\n") && output.contains("left behind: 0"), "{output}");
}
