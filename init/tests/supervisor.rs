//! Supervisor mode on the host: `appliance-init` run as an ordinary process, as a
//! subreaper that runs one program or the phases of an application directory.
//!
//! Every assertion is on what really happened: exit statuses, what the programs wrote,
//! `/proc` as the programs saw it, and the status record. Each run has a deadline, so a
//! hanging supervisor fails its test instead of hanging the suite.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use appliance_cmdline::status::{Event, Exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Longest a single supervisor run may take: generous, since the machine is shared.
const DEADLINE: Duration = Duration::from_secs(20);

fn init() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance-init"));
    cmd.stdin(Stdio::null());
    // SAFETY: the function runs in the forked child before exec and only makes system calls.
    unsafe { cmd.pre_exec(default_dispositions) };
    cmd
}

/// A shell starts background jobs with SIGINT and SIGQUIT ignored, `nohup` ignores SIGHUP,
/// and ignored signals stay ignored across exec: started that way, the programs could not
/// trap them. The supervisor starts as it does from a terminal or as PID 1, with every
/// signal at its default.
fn default_dispositions() -> std::io::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP] {
        // SAFETY: SIG_DFL installs no handler.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) }?;
    }
    Ok(())
}

/// `appliance-init -- sh -c SCRIPT`.
fn sh(script: &str) -> Command {
    let mut cmd = init();
    cmd.args(["--", "sh", "-c", script]);
    cmd
}

/// A directory under the system's temporary directory, removed on drop (tempfile would
/// link std into the no_std binary: see Cargo.toml).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("appliance-init-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    }

    /// Writes an executable shell script.
    fn script(&self, name: &str, body: &str) {
        let path = self.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls until `child` exits; kills it and fails the test past `deadline`.
fn wait_within(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            kill_children(child.id());
            let _ = child.kill();
            let _ = child.wait();
            panic!("appliance-init (pid {}) still running after {deadline:?}", child.id());
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Kills the process groups of `parent`'s children, so a failed test leaves nothing behind.
fn kill_children(parent: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the parenthesised command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.get(1) != Some(&parent.to_string().as_str()) {
            continue;
        }
        let pid = entry.file_name().to_string_lossy().parse::<i32>().ok();
        let pgrp = fields.get(2).and_then(|p| p.parse::<i32>().ok());
        match (pid, pgrp) {
            // Not in a group of its own (that would be a bug too): not our group to kill.
            (Some(pid), Some(pgrp)) if Pid::from_raw(pgrp) == nix::unistd::getpgrp() => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            (_, Some(pgrp)) => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pgrp), Signal::SIGKILL);
            }
            _ => {}
        }
    }
}

fn reader(stream: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut s);
        }
        s
    })
}

/// What a finished run left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The supervisor's own exit code; it must never die of a signal itself.
    fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!("appliance-init was killed by signal {:?}; stderr: {}", self.status.signal(), self.stderr)
        })
    }
}

/// A started supervisor whose output is being collected.
struct Running {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Running { child, stdout, stderr }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits until the program has created `ready` (it does once its traps are set), then
    /// sends `sig` to the supervisor; returns when it was sent.
    fn signal_when(&self, ready: &Path, sig: Signal) -> Instant {
        wait_for_file(ready);
        kill(self.pid(), sig).unwrap();
        Instant::now()
    }

    fn finish(mut self) -> Run {
        let status = wait_within(&mut self.child, DEADLINE);
        Run { status, stdout: self.stdout.join().unwrap(), stderr: self.stderr.join().unwrap() }
    }
}

fn run(cmd: Command) -> Run {
    Running::start(cmd).finish()
}

/// Waits for a program under test to create `path` (it does once its traps are set).
fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < DEADLINE, "{} never appeared", path.display());
        thread::sleep(Duration::from_millis(5));
    }
}

/// The status record of a run, parsed line by line.
fn events(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| Event::from_line(l).unwrap_or_else(|e| panic!("bad status line {l:?}: {e}"))).collect()
}

fn t_us(e: &Event) -> u64 {
    e.t_us()
}

// ---------------------------------------------------------------------------------------
// One program: exit statuses

#[test]
fn every_exit_code_from_0_to_255_propagates() {
    for n in 0..=255 {
        let mut cmd = sh(&format!("exit {n}"));
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let status = wait_within(&mut cmd.spawn().unwrap(), DEADLINE);
        assert_eq!(status.code(), Some(n), "sh -c 'exit {n}' gave {status:?}");
    }
}

#[test]
fn a_program_killed_by_a_signal_gives_128_plus_the_signal() {
    for (sig, expected) in [("KILL", 137), ("TERM", 143), ("SEGV", 139), ("USR1", 138)] {
        let r = run(sh(&format!("kill -{sig} $$; sleep 5")));
        assert_eq!(r.code(), expected, "killed by SIG{sig}; stderr: {}", r.stderr);
    }
}

#[test]
fn arguments_reach_the_program_unchanged() {
    let r = run({
        let mut c = init();
        c.args(["--", "sh", "-c", r#"for a; do printf '[%s]' "$a"; done"#, "zero", "a b", "", "--", "-h", "'\"$x"]);
        c
    });
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.stdout, r#"[a b][][--][-h]['"$x]"#);
}

#[test]
fn a_missing_program_gives_127_and_names_it() {
    let dir = TempDir::new("missing");
    let absent = dir.join("no-such-program");
    let absent = absent.to_str().unwrap();
    let r = run({
        let mut c = init();
        c.args(["--", absent, "arg"]);
        c
    });
    assert_eq!(r.code(), 127);
    assert!(r.stderr.contains(absent), "stderr does not name {absent}: {}", r.stderr);

    // A bare name is looked up in PATH; here PATH holds only an empty directory.
    let r = run({
        let mut c = init();
        c.args(["--", "no-such-program-anywhere"]).env("PATH", dir.path());
        c
    });
    assert_eq!(r.code(), 127);
    assert!(r.stderr.contains("no-such-program-anywhere"), "stderr: {}", r.stderr);
    // Regression: "command not found" went to stdout, which belongs to the program.
    assert_eq!(r.stdout, "");
}

#[test]
fn the_status_file_of_one_program_has_init_and_end() {
    let dir = TempDir::new("status");
    let r = run({
        let mut c = init();
        c.arg("--status").arg(dir.join("status")).args(["--", "sh", "-c", "exit 3"]);
        c
    });
    assert_eq!(r.code(), 3, "{}", r.stderr);
    let events = events(&dir.join("status"));
    assert!(matches!(events.as_slice(), [Event::Init { .. }, Event::End { status: 3, .. }]), "{events:?}");
}

#[test]
fn a_file_that_cannot_be_executed_gives_126_and_names_it() {
    let dir = TempDir::new("noexec");
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for program in [file.to_str().unwrap(), dir.path().to_str().unwrap()] {
        let r = run({
            let mut c = init();
            c.args(["--", program]);
            c
        });
        assert_eq!(r.code(), 126, "{program}: {}", r.stderr);
        assert!(r.stderr.contains(program), "stderr does not name {program}: {}", r.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// One program: the process it runs in

/// Descriptors a child of this test process inherits besides 0, 1 and 2: those the harness
/// itself inherited without close-on-exec (a jobserver pipe, say). Ours are close-on-exec.
fn inherited_descriptors() -> BTreeSet<i32> {
    const O_CLOEXEC: u32 = 0o2000000;
    let mut fds = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else { continue };
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(str::trim).unwrap_or("0");
        if fd > 2 && u32::from_str_radix(flags, 8).unwrap() & O_CLOEXEC == 0 {
            fds.insert(fd);
        }
    }
    fds
}

#[test]
fn the_program_has_its_own_group_a_clean_mask_and_no_stray_descriptors() {
    // ls runs as a child of the shell, so it lists the shell's descriptors, not its own
    // (and without a redirection, for which dash would keep a copy of stdout open).
    // stat field 5 is the process group; the supervisor is the program's parent.
    let cmd = sh(r#"
        ls /proc/$$/fd
        read -r _ _ _ _ pgrp _ < /proc/$$/stat
        read -r _ _ _ _ sup_pgrp _ < /proc/$PPID/stat
        echo "pid=$$ pgrp=$pgrp sup_pgrp=$sup_pgrp"
        grep ^SigBlk: /proc/$PPID/status
    "#);
    let mut expected: BTreeSet<i32> = [0, 1, 2].into();
    expected.extend(inherited_descriptors());
    let r = run(cmd);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let (fds, lines): (Vec<&str>, Vec<&str>) = r.stdout.lines().partition(|l| l.parse::<i32>().is_ok());
    let fields: Vec<&str> = lines[0].split([' ', '=']).collect();
    let (pid, pgrp, sup_pgrp) = (fields[1], fields[3], fields[5]);
    assert_eq!(pgrp, pid, "the program leads its own process group: {}", lines[0]);
    assert_ne!(pgrp, sup_pgrp, "{}", lines[0]);
    // The signalfd, the output pipe and the status file are close-on-exec.
    let fds: BTreeSet<i32> = fds.iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(fds, expected, "descriptors of the program");

    // The supervisor blocks signals (the control); the program it runs has nothing
    // blocked. The program is grep itself: a shell changes its own mask as it runs.
    assert!(lines[1].starts_with("SigBlk:") && lines[1] != "SigBlk:\t0000000000000000", "{}", lines[1]);
    let r = run({
        let mut c = init();
        c.args(["--", "grep", "^SigBlk:", "/proc/self/status"]);
        c
    });
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.stdout, "SigBlk:\t0000000000000000\n");
}

#[test]
fn orphans_are_reparented_to_the_supervisor_and_reaped() {
    let dir = TempDir::new("orphans");
    // The inner sh starts two readers of fifos and exits: they become orphans, re-parented
    // to the subreaper. Opening a fifo's write end returns once its reader has opened it, so
    // the main program knows both orphans are alive when it records their parent; closing
    // the write ends gives them end of file, and they exit. It then waits (10 s at most)
    // until each has left /proc, which only reaping does, and counts zombies whose parent
    // is the supervisor.
    let script = r#"
        mkfifo hold1 hold2
        sh -c 'cat hold1 & echo $! > pids; cat hold2 & echo $! >> pids'
        exec 3> hold1 4> hold2
        for p in $(cat pids); do read -r _ _ state ppid _ < /proc/$p/stat; echo "alive $p $state $ppid"; done
        exec 3>&- 4>&-
        for p in $(cat pids); do
            n=0; while [ -e /proc/$p ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n + 1)); done
            [ -e /proc/$p ] && echo "left $p $(cat /proc/$p/stat)"
        done
        zombies=0
        for f in /proc/[0-9]*/stat; do
            read -r _ _ state ppid _ < "$f" 2>/dev/null || continue
            [ "$state" = Z ] && [ "$ppid" = "$PPID" ] && zombies=$((zombies + 1))
        done
        echo "zombies $zombies"
    "#;
    let mut cmd = sh(script);
    cmd.current_dir(dir.path());
    let running = Running::start(cmd);
    let sup = running.pid().as_raw().to_string();
    let r = running.finish();
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let alive: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("alive ")).collect();
    assert_eq!(alive.len(), 2, "{}", r.stdout);
    for line in alive {
        let ppid = line.split(' ').nth(3).unwrap();
        assert_eq!(ppid, sup, "an orphan was not re-parented to the supervisor: {line}");
    }
    assert!(!r.stdout.contains("left "), "orphans still in /proc after they ended: {}", r.stdout);
    assert!(r.stdout.contains("zombies 0\n"), "{}", r.stdout);
}

// ---------------------------------------------------------------------------------------
// One program: signals

#[test]
fn forwarded_signals_reach_the_program_and_its_status_is_ours() {
    let signals = [
        (Signal::SIGTERM, "TERM", 11),
        (Signal::SIGINT, "INT", 12),
        (Signal::SIGHUP, "HUP", 13),
        (Signal::SIGUSR1, "USR1", 14),
        (Signal::SIGUSR2, "USR2", 15),
    ];
    // All at once: each waits for its trap to be set before it is signalled.
    let runs: Vec<_> = signals
        .iter()
        .map(|&(sig, name, code)| {
            let dir = TempDir::new(name);
            let mut cmd = sh(&format!(
                r#"trap 'echo {name} > got; exit {code}' {name}; : > ready; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; exit 99"#
            ));
            cmd.current_dir(dir.path());
            (sig, name, code, dir, Running::start(cmd))
        })
        .collect();
    for (sig, name, code, dir, running) in runs {
        running.signal_when(&dir.join("ready"), sig);
        let r = running.finish();
        assert_eq!(r.code(), code, "after SIG{name}; stderr: {}", r.stderr);
        assert_eq!(dir.read("got"), format!("{name}\n"));
    }
}

#[test]
fn a_forwarded_signal_reaches_the_whole_process_group() {
    let dir = TempDir::new("group");
    // A grandchild in the program's process group (a non-interactive sh has no job
    // control) traps SIGTERM too; the program waits for it in its own trap.
    let script = r#"
        sh -c 'trap "echo grandchild > grandchild; exit 0" TERM; : > gc-ready; i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; exit 99' &
        gc=$!
        trap 'echo main > main; wait $gc; exit 21' TERM
        while [ ! -e gc-ready ]; do sleep 0.01; done
        read -r _ _ _ _ pgrp _ < /proc/$$/stat
        read -r _ _ _ _ gc_pgrp _ < /proc/$gc/stat
        echo "$pgrp $gc_pgrp" > groups
        : > ready
        i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done; exit 99
    "#;
    let mut cmd = sh(script);
    cmd.current_dir(dir.path());
    let running = Running::start(cmd);
    running.signal_when(&dir.join("ready"), Signal::SIGTERM);
    let r = running.finish();
    assert_eq!(r.code(), 21, "{}", r.stderr);
    let groups = dir.read("groups");
    let (pgrp, gc_pgrp) = groups.trim().split_once(' ').unwrap();
    assert_eq!(pgrp, gc_pgrp, "control: the grandchild is in the program's group");
    assert_eq!(dir.read("main"), "main\n");
    assert_eq!(dir.read("grandchild"), "grandchild\n");
}

#[test]
fn a_program_that_ignores_a_forwarded_signal_keeps_running() {
    let dir = TempDir::new("ignore");
    // The program goes on until the test creates `go`, which it does only once the signal
    // has been forwarded: a witness in the program's process group, which forwarded
    // signals reach as a whole (see above), traps it and says so. The witness starts
    // before the trap: a shell started with SIGTERM ignored could not trap it.
    let script = r#"
        sh -c 'trap "echo TERM > seen; exit 0" TERM; : > witness-ready; i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done; exit 99' &
        while [ ! -e witness-ready ]; do sleep 0.01; done
        trap '' TERM
        : > ready
        i=0; while [ ! -e go ]; do [ $i -lt 400 ] || { echo "no go"; exit 98; }; sleep 0.05; i=$((i + 1)); done
        echo done; exit 5
    "#;
    let mut cmd = sh(script);
    cmd.current_dir(dir.path());
    let running = Running::start(cmd);
    // The supervisor neither dies of it nor kills the program: the shell (and its sleeps,
    // since ignored signals stay ignored across exec) go on, and we get its status.
    running.signal_when(&dir.join("ready"), Signal::SIGTERM);
    wait_for_file(&dir.join("seen"));
    std::fs::write(dir.join("go"), "").unwrap();
    let r = running.finish();
    assert_eq!(r.code(), 5, "{}", r.stderr);
    assert_eq!(r.stdout, "done\n");
    assert_eq!(dir.read("seen"), "TERM\n", "control: the signal was forwarded");
}

// ---------------------------------------------------------------------------------------
// A terminal on stdin

/// Runs `cmd` as the leader of a new session whose controlling terminal is a new pty, with
/// `input` typed on it; `stdout` is what the terminal showed.
fn on_terminal(mut cmd: Command, input: &str) -> Run {
    use std::os::unix::fs::OpenOptionsExt;
    let nocty = nix::fcntl::OFlag::O_NOCTTY.bits();
    // std opens close-on-exec: no other test's program inherits either end.
    let ptmx = std::fs::OpenOptions::new().read(true).write(true).custom_flags(nocty).open("/dev/ptmx").unwrap();
    // SAFETY: a descriptor of /dev/ptmx is a pty master.
    let master = unsafe { nix::pty::PtyMaster::from_owned_fd(ptmx.into()) };
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    let slave_path = nix::pty::ptsname_r(&master).unwrap();
    let slave = std::fs::OpenOptions::new().read(true).write(true).custom_flags(nocty).open(slave_path).unwrap();
    cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    let new_session = || {
        let errno = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        rustix::process::setsid().map_err(errno)?;
        // SAFETY: fd 0 is the pty slave std just put there; it stays open until exec.
        let stdin = unsafe { rustix::fd::BorrowedFd::borrow_raw(0) };
        rustix::process::ioctl_tiocsctty(stdin).map_err(errno)
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system calls.
    unsafe { cmd.pre_exec(new_session) };
    let mut child = cmd.spawn().unwrap();
    // Our copies of the slave: the master reads EIO once the session has closed its own.
    drop(cmd);
    let mut master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
    std::io::Write::write_all(&mut master, input.as_bytes()).unwrap();
    let (sender, shown) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        let _ = sender.send(String::from_utf8_lossy(&shown).replace("\r\n", "\n"));
    });
    let session = child.id();
    let status = wait_within(&mut child, DEADLINE);
    // The master reads end of file once every process of the session has let go of the
    // terminal: one that still holds it is a failure, not a reason to wait forever.
    let stdout = shown.recv_timeout(DEADLINE).unwrap_or_else(|_| {
        kill_session(session);
        panic!("a process of session {session} still holds the terminal {DEADLINE:?} after the session leader ended")
    });
    Run { status, stdout, stderr: String::new() }
}

/// Kills every process of session `sid` (stat field 6).
fn kill_session(sid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name in parentheses: state, ppid, pgrp, session.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        if fields.get(3) == Some(&sid.to_string().as_str())
            && let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Prints the line read, and whether the reader's group is the terminal's foreground group
/// (stat fields 5 and 8).
const READ_LINE: &str = r#"read -r line; read -r _ _ _ _ pgrp _ _ tpgid _ < /proc/$$/stat
echo "$0 read [$line] foreground=$([ "$pgrp" = "$tpgid" ] && echo yes || echo no)""#;

// Regression: the program, in a process group of its own, was stopped by SIGTTIN at its
// first read of the terminal, and the supervisor waited for it forever.
#[test]
fn a_program_reading_our_terminal_gets_the_foreground() {
    let mut cmd = init();
    cmd.args(["--", "sh", "-c", &format!("{READ_LINE}\nexit 7"), "program"]);
    let r = on_terminal(cmd, "typed\n");
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(r.stdout.contains("program read [typed] foreground=yes\n"), "{}", r.stdout);
}

#[test]
fn each_phase_reading_our_terminal_gets_the_foreground_in_turn() {
    let dir = TempDir::new("tty-phases");
    dir.script("prerun", &READ_LINE.replace("$0", "prerun"));
    dir.script("run", &READ_LINE.replace("$0", "run"));
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap()]);
    let r = on_terminal(cmd, "one\ntwo\n");
    assert_eq!(r.code(), 0, "{}", r.stdout);
    assert_eq!(dir.read("output"), "prerun read [one] foreground=yes\nrun read [two] foreground=yes\n");
}

#[test]
fn a_supervisor_in_the_background_leaves_the_terminal_to_the_shell() {
    // A job-control shell (set -m) runs the supervisor as a background job; the program's
    // read then stops it, as it would stop any background job, and the shell keeps the
    // terminal. The shell looks once the program is stopped (10 s at most): the
    // supervisor's child in state T.
    let script = r#"set -m
        "$0" -- sh -c 'read -r line; echo "stole [$line]"' &
        sup=$! stopped=no i=0
        while [ $stopped = no ] && [ $i -lt 500 ]; do
            for f in /proc/[0-9]*/stat; do
                read -r _ _ state ppid _ < "$f" 2>/dev/null || continue
                [ "$ppid" = "$sup" ] && [ "$state" = T ] && stopped=yes
            done
            [ $stopped = no ] && sleep 0.02
            i=$((i + 1))
        done
        echo "program stopped=$stopped"
        read -r _ _ _ _ pgrp _ _ tpgid _ < /proc/$$/stat
        echo "shell foreground=$([ "$pgrp" = "$tpgid" ] && echo yes || echo no)"
        kill -KILL %1
        read -r line; echo "shell read [$line]""#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, env!("CARGO_BIN_EXE_appliance-init")]);
    // SAFETY: the function runs in the forked child before exec and only makes system calls.
    unsafe { cmd.pre_exec(default_dispositions) };
    let r = on_terminal(cmd, "typed\n");
    assert_eq!(r.code(), 0, "{}", r.stdout);
    assert!(r.stdout.contains("program stopped=yes\n"), "control: the program tried to read: {}", r.stdout);
    assert!(r.stdout.contains("shell foreground=yes\n"), "{}", r.stdout);
    assert!(r.stdout.contains("shell read [typed]\n"), "{}", r.stdout);
    assert!(!r.stdout.contains("stole"), "{}", r.stdout);
}

// ---------------------------------------------------------------------------------------
// The phases of an application directory

/// `appliance-init --phases --app-dir DIR --cmdline LINE --status DIR/status`.
fn phases(dir: &TempDir, cmdline: &str) -> Run {
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap(), "--cmdline", cmdline, "--status"])
        .arg(dir.join("status"));
    run(cmd)
}

/// Our stdout is a pipe nobody reads (as a console nobody reads, with flow control, is to
/// PID 1): the phases' output fills it, and the supervisor must still see run to its end,
/// with all of the output in the output file.
#[test]
fn a_console_nobody_reads_does_not_hold_the_phases() {
    let dir = TempDir::new("stuck-console");
    // 1 MiB: sixteen times what the pipe holds.
    dir.script("run", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo after >&2; exit 7");
    dir.script("postrun", "echo postrun ran");
    let (unread, stdout) = std::io::pipe().unwrap();
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap(), "--cmdline", "", "--status"])
        .arg(dir.join("status"));
    let mut child = cmd.stdout(stdout).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = reader(child.stderr.take());
    let status = wait_within(&mut child, DEADLINE);
    drop(unread);
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(7), "stderr: {stderr}");
    let output = dir.read("output");
    assert_eq!(output.len(), 1048576 + 1 + "after\n".len() + "postrun ran\n".len(), "{}", &output[output.len() - 40..]);
    assert!(output.ends_with("x\nafter\npostrun ran\n"), "{}", &output[output.len() - 40..]);
    let events = events(&dir.join("status"));
    assert!(matches!(events.last(), Some(Event::End { status: 7, .. })), "{events:?}");
}

#[test]
fn phases_run_in_order_with_their_environment_and_run_decides_the_status() {
    let dir = TempDir::new("phases");
    dir.script(
        "prerun",
        r#"echo "prerun out $APP_PHASE"
echo "prerun err" >&2
echo "FROM_PRERUN=set by prerun" >> "$APP_ENV"
exit 3
echo "not reached""#,
    );
    dir.script(
        "run",
        r#"echo "run $APP_PHASE argc=$#"
for a; do echo "arg [$a]"; done
echo "run FROM_PRERUN=[$FROM_PRERUN] APP_DIR=$APP_DIR APP_RUN=$APP_RUN APP_OUT=$APP_OUT"
echo "run err" >&2
exit 42"#,
    );
    dir.script("postrun", r#"echo "postrun $APP_PHASE APP_RUN_STATUS=$APP_RUN_STATUS FROM_PRERUN=[$FROM_PRERUN]""#);
    let r = phases(&dir, r#"appCmds='echo "cmd 1 $APP_PHASE":echo cmd 2 err >&2; exit 4; echo no:' appArgs='a "b c"'"#);
    assert_eq!(r.code(), 42, "run's status is the result; stderr: {}", r.stderr);

    let d = dir.path().display();
    let expected = format!(
        "prerun out prerun\n\
         prerun err\n\
         cmd 1 cmd\n\
         cmd 2 err\n\
         run run argc=2\n\
         arg [a]\n\
         arg [b c]\n\
         run FROM_PRERUN=[set by prerun] APP_DIR={d} APP_RUN={d}/run APP_OUT={d}/output\n\
         run err\n\
         postrun postrun APP_RUN_STATUS=42 FROM_PRERUN=[set by prerun]\n"
    );
    // Both streams of every phase, in order, in the output file and on our stdout alike.
    assert_eq!(dir.read("output"), expected);
    assert_eq!(r.stdout, expected);
    assert_eq!(dir.read(".appliance-env"), "FROM_PRERUN=set by prerun\n");

    let events = events(&dir.join("status"));
    assert!(matches!(events.first(), Some(Event::Init { .. })), "{events:?}");
    assert!(matches!(events.last(), Some(Event::End { status: 42, .. })), "{events:?}");
    assert!(events.windows(2).all(|w| t_us(&w[0]) <= t_us(&w[1])), "t_us decreases: {events:?}");
    let phases: Vec<(String, Option<u32>, Option<Exit>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseStart { phase, index, .. } => Some((phase.clone(), *index, None)),
            Event::PhaseEnd { phase, index, exit, status, .. } => {
                assert_eq!(*status, exit.status(), "{e:?}");
                Some((phase.clone(), *index, Some(*exit)))
            }
            _ => None,
        })
        .collect();
    let s = |p: &str, i: Option<u32>| (p.to_string(), i, None);
    let e = |p: &str, i: Option<u32>, c: i32| (p.to_string(), i, Some(Exit::Code(c)));
    assert_eq!(
        phases,
        [
            s("prerun", None),
            e("prerun", None, 3),
            s("cmd", Some(1)),
            e("cmd", Some(1), 0),
            s("cmd", Some(2)),
            e("cmd", Some(2), 4),
            s("run", None),
            e("run", None, 42),
            s("postrun", None),
            e("postrun", None, 0),
        ]
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })), "{events:?}");
}

/// Regression: the whole `$APP_ENV` file was read again after every phase, so an old line
/// undid a newer value, here the init's own `APP_RUN_STATUS` in postrun.
#[test]
fn an_app_env_line_is_taken_once_and_does_not_undo_a_newer_value() {
    let dir = TempDir::new("envonce");
    dir.script("prerun", r#"echo "APP_RUN_STATUS=from-prerun" >> "$APP_ENV""#);
    dir.script("run", r#"echo "run [$APP_RUN_STATUS]"; exit 5"#);
    dir.script("postrun", r#"echo "postrun [$APP_RUN_STATUS]""#);
    let r = phases(&dir, "");
    assert_eq!(r.code(), 5, "{}", r.stderr);
    assert_eq!(dir.read("output"), "run [from-prerun]\npostrun [5]\n");
    // A rewritten file counts as new lines, even at the same length as before.
    let dir = TempDir::new("envrewritten");
    dir.script("prerun", r#"echo "X=1" >> "$APP_ENV""#);
    dir.script("run", r#"echo "run [$X]"; echo "X=2" > "$APP_ENV""#);
    dir.script("postrun", r#"echo "postrun [$X]""#);
    let r = phases(&dir, "");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(dir.read("output"), "run [1]\npostrun [2]\n");
}

impl TempDir {
    /// Writes an executable file as it is (its own `#!` line).
    fn program(&self, name: &str, text: &str) {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// An original prerun, unchanged: it exported a variable for run and exited with a
/// status of its own.
const ORIGINAL_PRERUN: &str = r#"#!/bin/bash
export TRIAL_TAG="tag-$(echo one)"
export APP_RUN=not-the-init-s
NOT_EXPORTED=1
exit 3
"#;

/// Regression: phases are child processes, so variables an original prerun exported for
/// run (the original sourced its phases) were silently unset there.
#[test]
fn variables_a_shell_script_phase_exports_reach_the_later_phases() {
    let dir = TempDir::new("carry");
    dir.program("prerun", ORIGINAL_PRERUN);
    dir.program(
        "run",
        "#!/bin/sh -u\necho \"run [$TRIAL_TAG] [$FROM_CMD] [${NOT_EXPORTED-unset}] 0=$0 args=$#:$*\"\n\
         case \"$APP_RUN\" in */run) echo init-s-APP_RUN;; esac\nexport FROM_RUN=r\nexit 7\n",
    );
    dir.program(
        "postrun",
        "#!/usr/bin/env bash\necho \"postrun [$FROM_RUN] [$TRIAL_TAG] [$FROM_CMD] status=$APP_RUN_STATUS\"\n",
    );
    let r = phases(&dir, r#"appCmds='export FROM_CMD="c d":echo "cmd [$TRIAL_TAG]"' appArgs='a "b c"'"#);
    assert_eq!(r.code(), 7, "{}", r.stderr);
    let run = dir.join("run");
    assert_eq!(
        dir.read("output"),
        format!(
            "cmd [tag-one]\nrun [tag-one] [c d] [unset] 0={} args=2:a b c\ninit-s-APP_RUN\n\
             postrun [r] [tag-one] [c d] status=7\n",
            run.display()
        )
    );
    // Each phase's own status, `exit 3` included.
    let ends: Vec<(String, i32)> = events(&dir.join("status"))
        .iter()
        .filter_map(|e| match e {
            Event::PhaseEnd { phase, status, .. } => Some((phase.clone(), *status)),
            _ => None,
        })
        .collect();
    let want: Vec<(String, i32)> = [("prerun", 3), ("cmd", 0), ("cmd", 0), ("run", 7), ("postrun", 0)]
        .iter()
        .map(|(p, s)| (p.to_string(), *s))
        .collect();
    assert_eq!(ends, want);
    assert!(!dir.join(".appliance-exported").exists());
}

#[test]
fn with_app_carry_env_0_exported_variables_stay_in_their_phase() {
    let dir = TempDir::new("nocarry");
    dir.program("prerun", ORIGINAL_PRERUN);
    dir.script("run", r#"echo "run [${TRIAL_TAG-unset}] [${FROM_CMD-unset}]""#);
    let r = phases(&dir, "appCarryEnv=0 appCmds='export FROM_CMD=c'");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(dir.read("output"), "run [unset] [unset]\n");
}

/// Sourcing must not make a script run that the kernel refuses to execute.
#[test]
fn a_script_without_execute_permission_still_fails_with_126() {
    let dir = TempDir::new("noexec");
    dir.script("run", "echo ran");
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = phases(&dir, "");
    assert_eq!(r.code(), 126, "{}", r.stderr);
    let output = dir.read("output");
    assert!(output.contains("permission denied") && !output.contains("ran"), "{output}");
}

#[test]
fn app_cmds_with_and_without_a_trailing_colon_are_the_same_commands() {
    for cmds in ["appCmds='echo one:echo two'", "appCmds='echo one:echo two:'", "appCmds=\"echo one:echo two::\""] {
        let dir = TempDir::new("cmds");
        dir.script("run", "echo run");
        let r = phases(&dir, cmds);
        assert_eq!(r.code(), 0, "{cmds}: {}", r.stderr);
        assert_eq!(dir.read("output"), "one\ntwo\nrun\n", "{cmds}");
        let indexes: Vec<u32> = events(&dir.join("status"))
            .iter()
            .filter_map(|e| match e {
                Event::PhaseEnd { phase, index, .. } if phase == "cmd" => *index,
                _ => None,
            })
            .collect();
        assert_eq!(indexes, [1, 2], "{cmds}");
    }
}

#[test]
fn a_missing_run_gives_127_an_error_event_and_postrun_still_runs() {
    let dir = TempDir::new("norun");
    dir.script("postrun", r#"echo "postrun APP_RUN_STATUS=$APP_RUN_STATUS""#);
    let r = phases(&dir, "");
    assert_eq!(r.code(), 127, "{}", r.stderr);
    assert_eq!(dir.read("output"), "postrun APP_RUN_STATUS=127\n");
    let events = events(&dir.join("status"));
    let run_path = dir.join("run");
    let run_path = run_path.to_str().unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Error { message, .. } if message.contains(run_path))),
        "no error event naming {run_path}: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, Event::PhaseEnd { phase, status: 127, .. } if phase == "run")),
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(Event::End { status: 127, .. })), "{events:?}");
}

#[test]
fn a_run_killed_by_a_signal_gives_128_plus_the_signal() {
    let dir = TempDir::new("runkilled");
    dir.script("run", "kill -TERM $$; sleep 5");
    dir.script("postrun", r#"echo "APP_RUN_STATUS=$APP_RUN_STATUS""#);
    let r = phases(&dir, "");
    assert_eq!(r.code(), 143, "{}", r.stderr);
    assert_eq!(dir.read("output"), "APP_RUN_STATUS=143\n");
    let events = events(&dir.join("status"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PhaseEnd { phase, exit: Exit::Signal(15), status: 143, .. } if phase == "run")),
        "{events:?}"
    );
}

/// A script that sets `trap`, writes `$APP_DIR/ready`, then waits `ticks` x 50 ms.
fn ready_then_wait(trap: &str, ticks: u32) -> String {
    format!(r#"{trap}; : > "$APP_DIR/ready"; i=0; while [ $i -lt {ticks} ]; do sleep 0.05; i=$((i + 1)); done"#)
}

/// Runs the phases of `dir` with a status file, waits until a phase has written
/// `$APP_DIR/ready`, sends SIGTERM to the supervisor and waits for it to end. Returns
/// the run and how long it took to end after the signal.
fn stop_phases_when_ready(dir: &TempDir) -> (Run, Duration) {
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap(), "--cmdline", "", "--status"])
        .arg(dir.join("status"));
    let running = Running::start(cmd);
    let asked = running.signal_when(&dir.join("ready"), Signal::SIGTERM);
    let r = running.finish();
    (r, asked.elapsed())
}

#[test]
fn sigterm_to_the_supervisor_stops_the_run_and_skips_the_rest_but_ends_the_record() {
    let dir = TempDir::new("stop");
    dir.script("run", &ready_then_wait("trap 'echo run got TERM; exit 7' TERM", 200));
    dir.script("postrun", "echo postrun ran");
    let (r, _) = stop_phases_when_ready(&dir);
    assert_eq!(r.code(), 7, "{}", r.stderr);
    let output = dir.read("output");
    assert!(output.contains("run got TERM\n") && !output.contains("postrun"), "postrun is skipped: {output}");
    let events = events(&dir.join("status"));
    assert!(matches!(events.last(), Some(Event::End { status: 7, .. })), "{events:?}");
}

#[test]
fn a_stop_before_run_is_not_a_success() {
    let dir = TempDir::new("stopprerun");
    dir.script("prerun", &ready_then_wait("trap 'exit 0' TERM", 200));
    dir.script("run", "echo run ran");
    let (r, _) = stop_phases_when_ready(&dir);
    assert_eq!(r.code(), 143, "{}", r.stderr);
    assert!(!dir.read("output").contains("run ran"), "run is skipped");
    let events = events(&dir.join("status"));
    assert!(matches!(events.last(), Some(Event::End { status: 143, .. })), "{events:?}");
}

#[test]
fn a_stopped_run_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = TempDir::new("stopkill");
    dir.script("run", &format!("{}; exit 3", ready_then_wait("trap '' TERM", 400)));
    let (r, waited) = stop_phases_when_ready(&dir);
    // SIGKILL after the 5 s grace, well before the run's own 20 s.
    assert_eq!(r.code(), 137, "{}", r.stderr);
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(15), "{waited:?}");
}

fn phase_ends(events: &[Event]) -> Vec<(String, Exit, i32, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseEnd { phase, exit, status, timed_out, .. } => Some((phase.clone(), *exit, *status, *timed_out)),
            _ => None,
        })
        .collect()
}

/// Where no host watches the run (bare metal), a run that hangs kept the appliance from
/// its results and its power-off: `appRunTimeout` ends it, postrun runs (bounded too), and
/// the record says the run timed out.
#[test]
fn a_run_past_app_run_timeout_is_ended_and_postrun_runs_bounded_too() {
    let dir = TempDir::new("runtimeout");
    dir.script("run", &ready_then_wait("trap 'echo run got TERM; exit 9' TERM", 2000));
    dir.script("postrun", r#"echo "postrun APP_RUN_STATUS=$APP_RUN_STATUS"; while :; do sleep 0.05; done"#);
    let started = Instant::now();
    let r = phases(&dir, "appRunTimeout=1");
    let took = started.elapsed();
    assert_eq!(r.code(), 124, "a run that was ended is not a success: {}", r.stderr);
    assert!(took < Duration::from_secs(15), "{took:?}");
    let output = dir.read("output");
    assert!(output.contains("run got TERM\npostrun APP_RUN_STATUS=124\n"), "{output}");
    let events = events(&dir.join("status"));
    let ends = phase_ends(&events);
    assert_eq!(
        ends,
        [("run".into(), Exit::Code(9), 124, true), ("postrun".into(), Exit::Signal(15), 124, true)],
        "{events:?}"
    );
    assert!(matches!(events.last(), Some(Event::End { status: 124, .. })), "{events:?}");
    assert!(r.stderr.contains("still running after 1 s"), "{}", r.stderr);
}

/// A run that left processes behind in sessions of their own, one that keeps starting new
/// ones as they die, kept the machine busy past the run: at the run's time limit everything
/// it started is killed, whatever its group or session, before postrun.
#[test]
fn a_run_that_leaves_respawning_processes_behind_has_them_all_killed_at_its_timeout() {
    let dir = TempDir::new("leftovers");
    let d = dir.path().to_str().unwrap().to_string();
    let bash = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // A bounded spawner: each of 10 respawners, in a session of its own, starts a sleeper
    // in another session whenever the last one is gone. Named after this directory, so that
    // they can be counted, and never more than 20 at a time.
    bash("sleeper", r#"exec -a "$APP_DIR/sleeper-proc" sleep 1000"#);
    bash("respawn", r#"while :; do setsid "$APP_DIR/sleeper" & wait; done"#);
    let count = r#"count() { n=0; for f in /proc/[0-9]*/cmdline; do c=$(tr -d '\0' < "$f" 2>/dev/null)
  case $c in *"$APP_DIR/sleeper-proc"*|*"$APP_DIR/respawn"*) n=$((n + 1));; esac; done; }"#;
    bash(
        "run",
        &format!(
            r#"{count}
for i in 1 2 3 4 5 6 7 8 9 10; do setsid "$APP_DIR/respawn" & done
for ((try = 0; try < 400; try++)); do count; [ "$n" -ge 20 ] && break; sleep 0.05; done
echo "running: $n"
sleep 1000"#
        ),
    );
    bash("postrun", &format!("{count}\ncount; echo \"left behind: $n\""));
    let spawned = |d: &str| -> Vec<i32> {
        let marks = [format!("{d}/sleeper-proc"), format!("{d}/respawn")];
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                Some((e.file_name().to_str()?.parse().ok()?, std::fs::read(e.path().join("cmdline")).ok()?))
            })
            .filter(|(_, c): &(i32, Vec<u8>)| marks.iter().any(|m| String::from_utf8_lossy(c).contains(m.as_str())))
            .map(|(pid, _)| pid)
            .collect()
    };
    // Long enough for the spawner to get going on a loaded machine; the control below only
    // needs one sleeper in a session of its own beside the ten respawners.
    let r = phases(&dir, "appRunTimeout=8");
    // Nothing of it outlived the supervisor either; if something did, it goes now, so a
    // failure leaves no spawner behind on the test machine.
    let survivors = spawned(&d);
    for _ in 0..50 {
        let left = spawned(&d);
        if left.is_empty() {
            break;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(r.code(), 124, "{}", r.stderr);
    let output = dir.read("output");
    let running: u32 = output
        .lines()
        .find_map(|line| line.strip_prefix("running: ")?.parse().ok())
        .unwrap_or_else(|| panic!("the run did not count its processes: {output}"));
    assert!(running > 10, "the spawner did not get going: {output}");
    assert!(output.contains("left behind: 0\n"), "{output}");
    assert!(survivors.is_empty(), "{survivors:?}");
}

/// A phase that wrote faster than the console took its output kept the supervisor
/// copying for ever: a stop request (or any signal) went unanswered.
#[test]
fn a_phase_flooding_its_output_does_not_delay_a_stop() {
    let dir = TempDir::new("flood");
    dir.script("run", "exec yes 'flood flood flood flood flood flood flood flood'");
    dir.script("postrun", "echo postrun ran");
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap(), "--cmdline", "", "--status"])
        .arg(dir.join("status"));
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A slow console: 4 KiB at a time, with a pause between reads.
    let mut stdout = child.stdout.take().unwrap();
    let slow = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while stdout.read(&mut buf).is_ok_and(|n| n > 0) {
            thread::sleep(Duration::from_millis(2));
        }
    });
    let stderr = reader(child.stderr.take());
    // The flood has filled the pipe and the console many times over.
    let output = dir.join("output");
    let start = Instant::now();
    while std::fs::metadata(&output).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(start.elapsed() < DEADLINE, "the flood never started");
        thread::sleep(Duration::from_millis(5));
    }
    let asked = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_within(&mut child, DEADLINE);
    let answered = asked.elapsed();
    slow.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(answered < Duration::from_secs(10), "{answered:?}");
    assert!(!std::fs::read_to_string(&output).unwrap().contains("postrun ran"));
}

/// A status port nobody reads (a UART whose far end is not listening, here a FIFO with a
/// reader that never reads) blocked every write of the record once its buffer was full,
/// and the phases with it.
#[test]
fn a_status_port_nobody_reads_does_not_hold_the_phases() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new("stalled");
    let fifo = dir.join("status");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let port = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap();
    // SAFETY: fcntl on a descriptor this test owns; F_SETPIPE_SZ takes an int.
    let size = unsafe { nix::libc::fcntl(port.as_raw_fd(), nix::libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
    dir.script("run", "echo run ran");
    // 60 commands: twice as many record lines as 4 KiB hold.
    let cmds = vec!["true"; 60].join(":");
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap(), "--cmdline", &format!("appCmds='{cmds}'")])
        .arg("--status")
        .arg(&fifo);
    let started = Instant::now();
    let r = run(cmd);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(dir.read("output"), "run ran\n");
    assert!(r.stderr.contains("the status port does not take the record"), "{}", r.stderr);
    // What the port took is the record's start, whole lines first.
    let mut taken = String::new();
    let _ = (&port).read_to_string(&mut taken);
    assert!(taken.starts_with("{\"event\":\"init\""), "{taken}");
}

#[test]
fn phases_go_on_when_our_stdout_is_a_closed_pipe() {
    let dir = TempDir::new("epipe");
    dir.script("prerun", "echo prerun");
    dir.script("run", "echo run; exit 9");
    dir.script("postrun", "echo postrun");
    let mut cmd = init();
    cmd.args(["--phases", "--app-dir", dir.path().to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Nobody reads: our writes fail with EPIPE (SIGPIPE is blocked), the tee goes on.
    drop(child.stdout.take());
    let status = wait_within(&mut child, DEADLINE);
    assert_eq!(status.code(), Some(9), "{status:?}");
    assert_eq!(dir.read("output"), "prerun\nrun\npostrun\n");
}

#[test]
fn a_command_line_diagnostic_is_an_error_event() {
    let dir = TempDir::new("diag");
    dir.script("run", "exit 0");
    let r = phases(&dir, "appEdn=halt");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let events = events(&dir.join("status"));
    assert!(
        events.iter().any(|e| matches!(e, Event::Error { message, .. } if message.contains("appEdn"))),
        "{events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The command line

#[test]
fn help_prints_the_usage_and_exits_0() {
    for flag in ["--help", "-h"] {
        let r = run({
            let mut c = init();
            c.arg(flag);
            c
        });
        assert_eq!(r.code(), 0, "{flag}");
        assert!(r.stdout.starts_with("usage: appliance-init"), "{flag}: {}", r.stdout);
        assert!(r.stdout.contains("--phases"), "{flag}: {}", r.stdout);
    }
}

#[test]
fn bad_command_lines_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&[], "nothing to run"),
        (&["--"], "no program"),
        (&["--status"], "--status needs a value"),
        (&["--phases"], "--app-dir"),
        (&["--phases", "--app-dir"], "--app-dir needs a value"),
        // Regression: a program after options of phases mode ran, and they were ignored.
        (&["--phases", "--app-dir", "/nonexistent", "--", "true"], "take no program (`true`)"),
        (&["--phases", "--app-dir", "/nonexistent", "true"], "take no program (`true`)"),
        (&["--app-dir", "/nonexistent", "--", "true"], "take no program (`true`)"),
    ];
    for (args, message) in cases {
        let r = run({
            let mut c = init();
            c.args(*args);
            c
        });
        assert_eq!(r.code(), 2, "{args:?}: stdout {:?} stderr {:?}", r.stdout, r.stderr);
        assert!(r.stderr.contains(message), "{args:?}: stderr lacks {message:?}: {}", r.stderr);
        assert!(r.stderr.contains("usage:"), "{args:?}: {}", r.stderr);
    }
}
