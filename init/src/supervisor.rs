//! Running phases as children, tini's way: the asynchronous signals are blocked and read
//! from a signalfd; the ones meant for the workload are forwarded to the running phase's
//! process group; every child that dies, orphans included, is reaped at once.
//!
//! A phase's stdout and stderr go into one pipe that the supervisor copies to the console
//! and to the output file, so both see the same bytes in the same order.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use appliance_cmdline::status::Exit;
use core::time::Duration;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::time::Timespec;

use crate::console::{Describe, write_all};
use crate::sys::{self, ExecArgs, Fork, SigSet};

/// The signals the supervisor handles itself; all are blocked and read from a signalfd.
const HANDLED: [Signal; 8] =
    [Signal::CHILD, Signal::TERM, Signal::INT, Signal::HUP, Signal::USR1, Signal::USR2, Signal::PIPE, Signal::POWER];

/// Signals passed on to the running phase's process group.
pub const FORWARDED: [Signal; 5] = [Signal::TERM, Signal::INT, Signal::HUP, Signal::USR1, Signal::USR2];

/// Signals that ask us to shut down cleanly now (SIGINT is Ctrl-Alt-Del for PID 1); the
/// ACPI power button ([`crate::power`]) asks the same.
pub const STOP: [Signal; 3] = [Signal::TERM, Signal::INT, Signal::POWER];

/// How many bytes of phase output one turn of the loop copies: at most a third of a
/// second of a 115200-baud console, the delay a flood of output adds to the handling of a
/// signal or a stop request.
pub const COPY_PER_TURN: usize = 4096;

/// Turns of [`COPY_PER_TURN`] that empty a full pipe of the default size (64 KiB).
const PIPE_TURNS: usize = 64 * 1024 / COPY_PER_TURN;

/// How long the running program has to end after a stop request (it got SIGTERM)
/// before its process group is killed, unless `appStopGrace` says otherwise: an
/// interactive shell ignores SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(appliance_cmdline::DEFAULT_STOP_GRACE as u64);

/// How long processes get to be gone after SIGKILL before the supervisor goes on without
/// them (only a process stuck in the kernel takes longer).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long [`Supervisor::run_limited`] waits for a program to reach its exec before
/// it goes on without: between fork and exec a child only sets up its streams.
const EXEC_WAIT: Duration = Duration::from_secs(1);

/// Where a child's standard streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    /// stdin from ours, stdout and stderr into the tee (console and output file).
    Tee,
    /// A new session with this terminal as controlling terminal for all three (shells).
    Terminal(String),
    /// Our own streams, unchanged (supervisor mode running one program).
    Inherit,
}

/// A program to run.
pub struct Command<'a> {
    pub argv: &'a [String],
    /// `KEY=value` strings.
    pub env: &'a [String],
    pub stdio: Stdio,
}

/// A signal the supervisor received that it did not forward (no phase was running).
pub type Pending = Vec<i32>;

pub struct Supervisor {
    sigfd: OwnedFd,
    tee_r: OwnedFd,
    tee_w: OwnedFd,
    output: Option<OwnedFd>,
    /// Process group of the running phase, for forwarding.
    current: Option<Pid>,
    /// Children we started that have not ended yet.
    spawned: Vec<Pid>,
    /// Exit statuses of children we started and have not collected yet.
    exited: Vec<(Pid, Exit)>,
    /// Signals that arrived while nothing ran (PID 1 acts on them between phases).
    pub pending: Pending,
    /// Zombies reaped that were not ours (orphans).
    pub orphans_reaped: u64,
    /// The child whose process group we made the foreground group of our terminal.
    terminal: Option<Pid>,
    /// Whether the signals in [`STOP`] are stop requests (PID 1, a phase sequence) or
    /// only forwarded (one program, tini's way).
    stop_on_signals: bool,
    /// When a stop was requested (see [`STOP`]), if one was.
    stop_since: Option<core::time::Duration>,
    /// How long a program has to end after SIGTERM before it is killed (`appStopGrace`).
    grace: Duration,
    /// Power-button event devices, read in the poll loop.
    power: Vec<OwnedFd>,
    /// Console shells running in sessions of their own (hung up on a stop request).
    sessions: Vec<Pid>,
}

impl Supervisor {
    /// Blocks the handled signals and sets up the signalfd and the output pipe.
    pub fn new() -> Result<Supervisor, Errno> {
        let set = SigSet::of(&HANDLED);
        sys::block_signals(set)?;
        // Blocked, never read: handing our terminal to a child and taking it back happen
        // while we are not its foreground group, which SIGTTOU would stop us for.
        sys::block_signals(SigSet::of(&[Signal::TTOU]))?;
        let sigfd = sys::signalfd(set)?;
        let (tee_r, tee_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Our end only: the phases' end blocks when the pipe is full, so a phase that writes
        // faster than the console takes it waits instead of failing with EAGAIN.
        rustix::fs::fcntl_setfl(&tee_r, OFlags::NONBLOCK)?;
        Ok(Supervisor {
            sigfd,
            tee_r,
            tee_w,
            output: None,
            current: None,
            spawned: Vec::new(),
            exited: Vec::new(),
            pending: Vec::new(),
            orphans_reaped: 0,
            terminal: None,
            stop_on_signals: false,
            stop_since: None,
            grace: STOP_GRACE,
            power: Vec::new(),
            sessions: Vec::new(),
        })
    }

    /// Also watches these input event devices for the power button (a stop request).
    pub fn watch_power_button(&mut self, devices: Vec<OwnedFd>) {
        self.power = devices;
    }

    /// Takes the grace of a stop or a time limit from `appStopGrace`.
    pub fn set_grace(&mut self, config: &appliance_cmdline::Config) {
        self.grace = Duration::from_secs(u64::from(config.stop_grace_or_default()));
    }

    /// Makes SIGTERM, SIGINT and SIGPWR stop requests: the running program gets SIGTERM,
    /// then SIGKILL after the grace ([`Supervisor::set_grace`]), and
    /// [`Supervisor::stop_requested`] turns true.
    pub fn stop_on_signals(&mut self) {
        self.stop_on_signals = true;
    }

    /// Whether a stop was requested: the rest of the sequence is skipped.
    pub fn stop_requested(&self) -> bool {
        self.stop_since.is_some()
    }

    /// Records a stop request; the running program gets SIGTERM (signals in [`FORWARDED`]
    /// reach it anyway).
    pub fn request_stop(&mut self, why: &str, forward_term: bool) {
        if self.stop_since.is_none() {
            log::warn!("{why}: shutting down");
            self.stop_since = Some(now());
        }
        if forward_term {
            self.signal_current(Signal::TERM);
        }
        // As if the console hung up: an interactive shell ignores SIGTERM, not SIGHUP.
        // The process too: right after fork it has no session (no group) of its own yet,
        // and a blocked SIGHUP stays pending until it unblocks its signals before exec.
        for session in &self.sessions {
            let _ = sys::kill_group_raw(*session, Signal::HUP.as_raw());
            let _ = rustix::process::kill_process(*session, Signal::HUP);
        }
    }

    /// Appends phase output to `path` from now on (created if needed).
    pub fn set_output(&mut self, path: &str) -> Result<(), Errno> {
        let fd = rustix::fs::open(
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        self.output = Some(fd);
        Ok(())
    }

    /// Runs a command to completion and returns how it ended: 127 when the program is
    /// missing, 126 when it cannot be executed.
    pub fn run(&mut self, cmd: &Command<'_>) -> Exit {
        match self.spawn(cmd) {
            Ok(pid) => self.wait(pid, None).unwrap_or(Exit::Code(127)),
            Err(exit) => exit,
        }
    }

    /// [`Supervisor::run`] with a time limit: a program still running after `limit` is
    /// ended as [`Supervisor::end_timed_out`] says. Returns how it ended, and whether it
    /// ran out of time. `started` is called once the program runs: after its exec (or its
    /// failure to exec, or [`EXEC_WAIT`]), before the wait for its end; PID 1 does there
    /// what the program does not need done before it starts.
    pub fn run_limited(&mut self, cmd: &Command<'_>, limit: Option<Duration>, started: impl FnOnce()) -> (Exit, bool) {
        // Both ends close on exec: the child holds the write end until its exec.
        let exec_seen = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok();
        let spawned = self.spawn(cmd);
        if let Some((seen, child_end)) = exec_seen {
            drop(child_end);
            if spawned.is_ok() {
                wait_for_exec(&seen, EXEC_WAIT);
            }
        }
        started();
        let pid = match spawned {
            Ok(pid) => pid,
            Err(exit) => return (exit, false),
        };
        match self.wait(pid, limit) {
            Some(exit) => (exit, false),
            None => {
                let secs = limit.map(|l| l.as_secs()).unwrap_or_default();
                let program = cmd.argv.first().map(String::as_str).unwrap_or_default();
                log::warn!("{program}: still running after {secs} s, its time limit: SIGTERM");
                (self.end_timed_out(pid), true)
            }
        }
    }

    /// Ends a program that ran out of time, and everything it left behind: SIGTERM to its
    /// process group, the grace ([`Supervisor::set_grace`]) to end, then SIGKILL to the group
    /// and to every other process but us ([`Supervisor::kill_leftovers`]: its daemons, a
    /// fork bomb in groups or sessions of their own), so the phases after it run on a
    /// quiet system. Returns how the program ended.
    pub fn end_timed_out(&mut self, pid: Pid) -> Exit {
        let _ = sys::kill_group_raw(pid, Signal::TERM.as_raw());
        let ended = self.wait(pid, Some(self.grace));
        if ended.is_none() {
            log::warn!("still running {} s after SIGTERM (appStopGrace): killing it", self.grace.as_secs());
        }
        let _ = sys::kill_group_raw(pid, Signal::KILL.as_raw());
        self.kill_leftovers();
        match ended.or_else(|| self.wait(pid, Some(KILL_WAIT))) {
            Some(exit) => exit,
            None => {
                // Stuck in the kernel (a hung network file system): nothing more to do here.
                log::error!("still there {} s after SIGKILL: going on without it", KILL_WAIT.as_secs());
                self.forget(pid);
                Exit::Signal(Signal::KILL.as_raw())
            }
        }
    }

    /// SIGKILL to every process but us, and reaps them. PID 1 has `kill(-1)`, which spares
    /// only itself and which the kernel delivers to all at once (a process forking at that
    /// moment does not get a child out); a supervisor run as a plain process kills its
    /// descendants, as `/proc` lists them, until none is left.
    pub fn kill_leftovers(&mut self) {
        let deadline = now() + KILL_WAIT;
        if rustix::process::getpid().is_init() {
            let _ = sys::kill_all(Signal::KILL);
        }
        loop {
            self.reap();
            let me = rustix::process::getpid().as_raw_nonzero().get();
            let left = crate::procs::live_descendants(me, &crate::procs::list());
            if left.is_empty() {
                break;
            }
            if now() >= deadline {
                log::error!("{} process(es) still there after SIGKILL: going on", left.len());
                break;
            }
            for pid in left.iter().filter_map(|p| Pid::from_raw(*p)) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            // Their ends arrive as SIGCHLD (reaped above), or the processes that forked
            // meanwhile are found on the next turn.
            self.pump(Some(Duration::from_millis(10)));
        }
        self.reap();
    }

    /// Stops tracking `pid` (a child that will not end): it is no longer the running
    /// phase, and its end, if it comes, is reaped like an orphan's.
    fn forget(&mut self, pid: Pid) {
        self.spawned.retain(|p| *p != pid);
        self.release(pid);
    }

    /// `pid` is no longer the running phase nor a session of ours, and the terminal, if
    /// it had it, comes back to us.
    fn release(&mut self, pid: Pid) {
        self.sessions.retain(|s| *s != pid);
        if self.current == Some(pid) {
            self.current = None;
        }
        if self.terminal == Some(pid) {
            self.terminal = None;
            let _ = rustix::termios::tcsetpgrp(sys::stdin(), rustix::process::getpgrp());
        }
    }

    /// Starts a command in its own process group (or session, for a terminal).
    pub fn spawn(&mut self, cmd: &Command<'_>) -> Result<Pid, Exit> {
        let Some(program) = cmd.argv.first() else { return Err(Exit::Code(127)) };
        let path = match resolve(program, cmd.env) {
            Some(p) => p,
            None => {
                let message = format!("appliance-init: {program}: command not found\n");
                // Where the program's own errors would have gone: the tee for phases, our
                // stderr for a program with inherited streams (not its stdout).
                match cmd.stdio {
                    Stdio::Inherit => crate::console::write_err(message.as_bytes()),
                    _ => self.tee_line(&message),
                }
                return Err(Exit::Code(127));
            }
        };
        let exec = ExecArgs::new(&path, cmd.argv, cmd.env);
        // A program in a process group of its own that reads our terminal while it is in the
        // background is stopped by SIGTTIN for good, so it gets the terminal as a shell's
        // job would: only when our group has it (not when we run in the background).
        let foreground = !matches!(cmd.stdio, Stdio::Terminal(_)) && has_terminal();
        match sys::fork() {
            Ok(Fork::Child) => self.child(&exec, &path, &cmd.stdio, foreground),
            Ok(Fork::Parent(pid)) => {
                if !matches!(cmd.stdio, Stdio::Terminal(_)) {
                    // Also done in the child: whichever runs first wins the race.
                    let _ = rustix::process::setpgid(Some(pid), Some(pid));
                } else {
                    self.sessions.push(pid);
                }
                if foreground {
                    let _ = rustix::termios::tcsetpgrp(sys::stdin(), pid);
                    self.terminal = Some(pid);
                }
                self.current = Some(pid);
                self.spawned.push(pid);
                Ok(pid)
            }
            Err(e) => {
                log::error!("cannot start {program}: {}", Describe(e));
                Err(Exit::Code(126))
            }
        }
    }

    /// In the forked child: clean signal mask, own process group or session, streams,
    /// exec. Never returns.
    fn child(&self, exec: &ExecArgs, path: &str, stdio: &Stdio, foreground: bool) -> ! {
        if !matches!(stdio, Stdio::Terminal(_)) {
            let _ = rustix::process::setpgid(None, None);
        }
        if foreground {
            // SIGTTOU is still blocked (our mask until the line below).
            let _ = rustix::termios::tcsetpgrp(sys::stdin(), rustix::process::getpid());
        }
        let _ = sys::set_signal_mask(SigSet::default());
        match stdio {
            Stdio::Tee => {
                let _ = sys::dup_to(self.tee_w.as_fd(), 1);
                let _ = sys::dup_to(self.tee_w.as_fd(), 2);
            }
            Stdio::Inherit => {}
            Stdio::Terminal(tty) => {
                let _ = rustix::process::setsid();
                match rustix::fs::open(tty.as_str(), OFlags::RDWR, Mode::empty()) {
                    Ok(fd) => {
                        let _ = rustix::process::ioctl_tiocsctty(&fd);
                        for n in 0..3 {
                            let _ = sys::dup_to(fd.as_fd(), n);
                        }
                    }
                    Err(e) => {
                        crate::console::write_err(
                            format!("appliance-init: cannot open {tty}: {}\n", Describe(e)).as_bytes(),
                        );
                    }
                }
            }
        }
        let e = exec.exec();
        // What the bare error hides: ENOENT for a program that is there means that what it
        // needs first is not; ENOEXEC for a text file, that it has no `#!` line.
        let why = match e {
            Errno::NOENT | Errno::NOEXEC => crate::read_head(path, 4096).and_then(|head| explain(e, &head)),
            _ => None,
        };
        let message = match why {
            Some(why) => format!("appliance-init: cannot execute {path}: {why} ({})\n", Describe(e)),
            None => format!("appliance-init: cannot execute {path}: {}\n", Describe(e)),
        };
        crate::console::write_err(message.as_bytes());
        sys::exit(if e == Errno::NOENT || e == Errno::NOTDIR { 127 } else { 126 })
    }

    /// Waits for `pid` to end (or for `timeout`), copying output, forwarding signals and
    /// reaping everything meanwhile.
    pub fn wait(&mut self, pid: Pid, timeout: Option<core::time::Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| now() + t);
        let mut killed = false;
        loop {
            if let Some(exit) = self.take_exit(pid) {
                return Some(exit);
            }
            let mut left = match deadline {
                Some(d) if now() >= d => return None,
                Some(d) => Some(d - now()),
                None => None,
            };
            if let Some(since) = self.stop_since
                && !killed
            {
                let kill_at = since + self.grace;
                if now() >= kill_at {
                    log::warn!(
                        "still running {} s after the stop request (appStopGrace): killing it",
                        self.grace.as_secs()
                    );
                    let _ = sys::kill_group_raw(pid, Signal::KILL.as_raw());
                    killed = true;
                } else {
                    let until_kill = kill_at - now();
                    left = Some(left.map_or(until_kill, |l| l.min(until_kill)));
                }
            }
            self.pump(left);
        }
    }

    /// The exit status of `pid` (a child we started) if it has ended, without waiting.
    pub fn take_exit(&mut self, pid: Pid) -> Option<Exit> {
        let i = self.exited.iter().position(|(p, _)| *p == pid)?;
        let (_, exit) = self.exited.swap_remove(i);
        self.release(pid);
        self.drain_output();
        Some(exit)
    }

    /// Handles whatever happens within `timeout` (all pending events when zero).
    pub fn pump(&mut self, timeout: Option<core::time::Duration>) {
        let ts = timeout.map(|t| Timespec { tv_sec: t.as_secs() as i64, tv_nsec: i64::from(t.subsec_nanos()) });
        let mut fds = Vec::with_capacity(2 + self.power.len());
        fds.push(PollFd::new(&self.sigfd, PollFlags::IN));
        fds.push(PollFd::new(&self.tee_r, PollFlags::IN));
        fds.extend(self.power.iter().map(|fd| PollFd::new(fd, PollFlags::IN)));
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let (sig_ready, out_ready) = (ready.first() == Some(&true), ready.get(1) == Some(&true));
        let pressed = self
            .power
            .iter()
            .zip(ready.iter().skip(2))
            .filter(|(_, r)| **r)
            .fold(false, |any, (fd, _)| crate::power::read_pressed(fd.as_fd()) || any);
        if pressed {
            self.request_stop("power button pressed", true);
        }
        if sig_ready {
            while let Some(sig) = sys::read_signal(self.sigfd.as_fd()) {
                self.on_signal(sig);
            }
        }
        if out_ready {
            let _ = self.copy_output();
        }
    }

    fn on_signal(&mut self, sig: i32) {
        if self.stop_on_signals && STOP.iter().any(|s| s.as_raw() == sig) {
            // SIGTERM and SIGINT are forwarded below; SIGPWR is not a program's business.
            self.request_stop(&format!("signal {sig}"), sig == Signal::POWER.as_raw());
        }
        if sig == Signal::CHILD.as_raw() {
            self.reap();
        } else if sig == Signal::PIPE.as_raw() {
            // Our console or output went away (supervisor mode under a pipe): ignore.
        } else if FORWARDED.iter().any(|s| s.as_raw() == sig)
            && let Some(pgid) = self.current
        {
            log::debug!("forwarding signal {sig} to process group {}", pgid.as_raw_nonzero());
            let _ = sys::kill_group_raw(pgid, sig);
        } else {
            self.pending.push(sig);
        }
    }

    /// Collects every child that has ended.
    pub fn reap(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let exit = match (status.exit_status(), status.terminating_signal()) {
                        (Some(code), _) => Exit::Code(code),
                        (None, Some(sig)) => Exit::Signal(sig),
                        // Stopped or continued: not an end.
                        (None, None) => continue,
                    };
                    if let Some(i) = self.spawned.iter().position(|p| *p == pid) {
                        self.spawned.swap_remove(i);
                        self.exited.push((pid, exit));
                    } else {
                        // An orphan, or a process a phase started: we only reap it.
                        self.orphans_reaped += 1;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Whether any child is left (after reaping).
    pub fn has_children(&mut self) -> bool {
        self.reap();
        !matches!(rustix::process::wait(WaitOptions::NOHANG), Err(Errno::CHILD))
    }

    /// Copies what the phases wrote so far to the console and the output file, up to
    /// [`COPY_PER_TURN`] bytes: a phase that writes faster than the console takes it must
    /// not keep the loop from its signals. What is left stays in the pipe for the next turn.
    /// Returns the number of bytes copied.
    pub fn copy_output(&mut self) -> usize {
        let mut buf = [0u8; COPY_PER_TURN];
        match rustix::io::read(&self.tee_r, &mut buf) {
            Ok(n) => {
                self.tee_bytes(buf.get(..n).unwrap_or_default());
                n
            }
            Err(_) => 0,
        }
    }

    /// Copies what is in the pipe now: the default pipe holds 64 KiB, so a few turns
    /// empty it when no writer is left, and a writer that is left (a process the phase
    /// started) cannot hold us here.
    pub fn drain_output(&mut self) {
        for _ in 0..PIPE_TURNS {
            if self.copy_output() == 0 {
                return;
            }
        }
    }

    fn tee_bytes(&self, bytes: &[u8]) {
        crate::console::write_out(bytes);
        if let Some(out) = &self.output {
            let _ = write_all(out.as_fd(), bytes);
        }
    }

    /// Writes a line of our own to the console and the output file.
    pub fn tee_line(&self, line: &str) {
        self.tee_bytes(line.as_bytes());
    }

    /// Sends `sig` to the running phase's group, if any.
    pub fn signal_current(&self, sig: Signal) {
        if let Some(pgid) = self.current {
            let _ = sys::kill_group_raw(pgid, sig.as_raw());
        }
    }
}

/// Whether our process group is the foreground group of the terminal on our stdin (never
/// for PID 1: the console is nobody's controlling terminal).
fn has_terminal() -> bool {
    rustix::termios::tcgetpgrp(sys::stdin()).ok() == Some(rustix::process::getpgrp())
}

/// The monotonic clock.
pub fn now() -> core::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    core::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Waits until no process holds the write end of the close-on-exec pipe `seen` any more
/// (the child holding it has reached its exec, or exited), or for `bound`.
fn wait_for_exec(seen: &OwnedFd, bound: Duration) {
    let deadline = now() + bound;
    // Nothing is ever written to it: the pipe turns readable (end of file) when the last
    // write end closes.
    loop {
        let left = deadline.saturating_sub(now());
        let ts = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 0 });
        let mut fds = [PollFd::new(seen, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Err(Errno::INTR) if !left.is_zero() => {}
            _ => return,
        }
    }
}

/// Why execve failed with `e` (ENOENT or ENOEXEC) for the program whose first bytes are
/// `head`, in words, when the program itself is the cause: a `#!` interpreter or an ELF
/// loader (`PT_INTERP`) the image lacks, a `#!` line ending in a carriage return (DOS line
/// endings: the kernel looks for an interpreter whose name ends in `\r`), a text file with
/// no `#!` line. The ELF program headers are read by hand: an ELF parser in PID 1 for one
/// field would cost more than these lines.
fn explain(e: Errno, head: &[u8]) -> Option<String> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = core::str::from_utf8(line).ok()?;
        // The kernel splits the line at spaces and tabs only.
        let interpreter = line.trim_start_matches([' ', '\t']).split([' ', '\t']).next()?;
        return match interpreter.strip_suffix('\r') {
            Some(name) if e == Errno::NOENT => Some(format!(
                "its #! line ends in a carriage return (DOS line endings), so the kernel looks for an \
                 interpreter named \"{name}\\r\": convert the file to Unix line endings"
            )),
            _ if e == Errno::NOENT && interpreter.starts_with('/') => {
                Some(format!("its interpreter {interpreter} is not in the image"))
            }
            _ => None,
        };
    }
    if head.get(..4) != Some(b"\x7fELF") {
        return (e == Errno::NOEXEC && !head.contains(&0)).then(|| {
            String::from("it is a text file without a #! line naming its interpreter (add one, e.g. #!/bin/sh)")
        });
    }
    // ELF64, little-endian: the only kind the kernel runs here.
    if e != Errno::NOENT || head.get(4..6)? != b"\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?) as usize);
    let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| usize::try_from(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?)).ok();
    let (phoff, phentsize, phnum) = (u64_at(32)?, u16_at(54)?, u16_at(56)?);
    const PT_INTERP: u32 = 3;
    (0..phnum).find_map(|i| {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(at)? != PT_INTERP {
            return None;
        }
        let (offset, size) = (u64_at(at + 8)?, u64_at(at + 32)?);
        let name = head.get(offset..offset.checked_add(size)?)?;
        let name = core::str::from_utf8(name.split(|&b| b == 0).next().unwrap_or_default()).ok()?;
        Some(format!("its program loader {name} is not in the image"))
    })
}

/// Finds `program` as execve needs it: paths as given, bare names through PATH.
fn resolve(program: &str, env: &[String]) -> Option<String> {
    if program.contains('/') {
        return Some(String::from(program));
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{program}"))
        .find(|candidate| rustix::fs::access(candidate.as_str(), rustix::fs::Access::EXEC_OK).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn exec_failures_are_explained_by_what_the_program_lacks() {
        let noent = |head: &[u8]| explain(Errno::NOENT, head);
        assert_eq!(noent(b"#!/bin/sh -e\necho\n").as_deref(), Some("its interpreter /bin/sh is not in the image"));
        assert_eq!(
            noent(b"#! /usr/bin/env python3\n").as_deref(),
            Some("its interpreter /usr/bin/env is not in the image")
        );
        let dos = noent(b"#!/bin/bash\r\necho\r\n").unwrap();
        assert!(dos.contains("DOS line endings") && dos.contains("\"/bin/bash\\r\""), "{dos}");
        assert_eq!(noent(b"#!sh\n"), None);
        assert_eq!(noent(b"echo\n"), None);
        assert_eq!(noent(b"\x7fELF\x02\x01"), None, "truncated");
        let text = explain(Errno::NOEXEC, b"echo no interpreter line\n").unwrap();
        assert!(text.contains("without a #! line"), "{text}");
        assert_eq!(explain(Errno::NOEXEC, b"\x7fELF\x01\x01"), None, "a 32-bit program: the error says enough");
        assert_eq!(explain(Errno::NOEXEC, b"\0\x01binary"), None);
        // A dynamically linked program of the host: its loader.
        let head = crate::read_head("/usr/bin/true", 4096).unwrap();
        let loader = noent(&head).unwrap();
        assert!(loader.starts_with("its program loader /") && loader.contains("ld-linux"), "{loader}");
        // Only the ELF header, so no program headers to read (as a static program has no
        // PT_INTERP): nothing to say.
        assert_eq!(noent(head.get(..64).unwrap()), None);
    }

    /// A child that sleeps before its exec: the wait ends at the exec, not before, and not
    /// at the bound.
    #[test]
    fn the_wait_for_exec_ends_when_the_child_has_exec_d() {
        let (seen, child_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        // Everything the child touches is made before the fork: it only makes system calls.
        let path = c"/bin/sleep";
        let args = [c"sleep".as_ptr(), c"5".as_ptr(), core::ptr::null()];
        let env = [core::ptr::null::<core::ffi::c_char>()];
        let nap = rustix::time::Timespec { tv_sec: 0, tv_nsec: 300_000_000 };
        let start = Instant::now();
        let pid = match sys::fork().unwrap() {
            Fork::Child => {
                let _ = rustix::thread::nanosleep(&nap);
                // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
                let _ =
                    unsafe { syscalls::syscall!(syscalls::Sysno::execve, path.as_ptr(), args.as_ptr(), env.as_ptr()) };
                sys::exit(127)
            }
            Fork::Parent(pid) => pid,
        };
        drop(child_end);
        wait_for_exec(&seen, Duration::from_secs(20));
        let waited = start.elapsed();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        assert_eq!(cmdline, b"sleep\x005\x00", "the wait ended before the exec");
        assert!(waited >= Duration::from_millis(300), "ended after {waited:?}, before the child's exec");
        assert!(waited < Duration::from_secs(10), "ended after {waited:?}: at the bound, not at the exec");
    }
}
