//! Console input typed ahead, from a pipe or a file (`printf 'echo hi\nexit\n' | appliance
//! run APP --end shell`) or on a terminal: held back until the guest can take it, typed
//! into its console then; the end of a pipe or a file ends the console shell as Ctrl-D does.
//!
//! Why held back: QEMU reads its standard input at once and pushes the bytes into the
//! emulated UART (its own buffers hold a few dozen), and the guest's 8250 driver discards
//! what the UART holds when it probes the port and when the console is first opened, just
//! before `/init` runs. Measured under TCG: input written before that point never reached
//! the shell (the run hung until `--timeout`), input written once the kernel had opened the
//! console did, whatever the phase running then. So `appliance run` gives QEMU a pipe of
//! its own as standard input and writes to it only once the status record says the guest
//! can take it; from then on the guest's terminal buffers what arrives.
//!
//! - A pipe or a file holds commands for the console shell: they wait for the `shell`
//!   event, so that no phase before the shell reads them (or for the `init` event when the
//!   command line asks for no console shell). At its end Ctrl-D follows: a shell reading a
//!   pipe ends at its end, and `printf ... |` means that. A hang-up from outside would
//!   overtake the commands still on their way and discard them; Ctrl-D travels behind them
//!   in the same stream. One that arrives while the shell runs a command goes to that
//!   command, or is kept as an end-of-file mark by the guest's terminal (in canonical mode
//!   then), which readline reads as a NUL; so it is typed again every second until QEMU
//!   ends: the input stays at its end for every later reader, as a pipe's does. A last
//!   line without a newline gets one, so that it runs as in a script.
//! - A terminal is put in raw mode as QEMU puts it (Ctrl-C is for the guest), and what is
//!   typed waits for the `init` event only, as on a real terminal the first reader gets it.
//!   QEMU's own keys (Ctrl-A and the key after it, and what is typed while its monitor has
//!   the console) pass at once: Ctrl-A X quits even during the boot ([`Hold`]).
//! - `/dev/null` (what background jobs and daemons get: no input, rather than input that
//!   ended), a terminal we do not have the foreground of, and a closed standard input are
//!   left to QEMU as before.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ChildStdin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_cmdline::{Config, End};
use nix::sys::termios::{self, SetArg, Termios};

/// How often the status record is read while input waits, and the longest wait for input.
const POLL: Duration = Duration::from_millis(20);
/// How often Ctrl-D is typed again once the input has ended.
const EOF_REPEAT: Duration = Duration::from_secs(1);
/// The terminal's end-of-file character, Ctrl-D.
const EOF_CHAR: u8 = 0x04;
/// QEMU's escape key on a multiplexed console, Ctrl-A.
const ESCAPE: u8 = 0x01;

/// What our standard input is, for the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A pipe, a file or a socket: commands that end.
    Stream,
    /// The terminal whose foreground we have.
    Terminal,
    /// Anything else: QEMU reads it itself.
    Qemu,
}

impl Input {
    /// What our standard input is.
    pub fn of_stdin() -> Input {
        let stdin = std::io::stdin();
        if nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            // In the background, reading the terminal or changing its modes would stop us.
            return match nix::unistd::tcgetpgrp(stdin.as_fd()) {
                Ok(pgrp) if pgrp == nix::unistd::getpgrp() => Input::Terminal,
                _ => Input::Qemu,
            };
        }
        use nix::sys::stat::SFlag;
        match nix::sys::stat::fstat(stdin.as_fd()) {
            Ok(st)
                if [SFlag::S_IFIFO, SFlag::S_IFREG, SFlag::S_IFSOCK]
                    .contains(&(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)) =>
            {
                Input::Stream
            }
            _ => Input::Qemu,
        }
    }

    /// When the guest takes this input, for a run with this kernel command line.
    pub fn gate(self, cmdline: &str) -> Gate {
        match self {
            Input::Stream => Gate::for_config(&appliance_cmdline::parse(cmdline.as_bytes()).config),
            Input::Terminal | Input::Qemu => Gate::Init,
        }
    }
}

/// When the guest can take console input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// When the first console shell starts: the input is for it.
    Shell,
    /// When the init starts: the console is open by then.
    Init,
}

impl Gate {
    /// For commands: the console shell's, if the command line asks for one.
    pub fn for_config(config: &Config) -> Gate {
        if config.debug || matches!(config.end, End::Shell | End::Sshd) { Gate::Shell } else { Gate::Init }
    }

    /// Whether `event` opens the gate.
    pub fn opened_by(self, event: &Event) -> bool {
        match self {
            Gate::Shell => matches!(event, Event::Shell { .. }),
            Gate::Init => matches!(event, Event::Init { .. }),
        }
    }
}

/// What is typed after the input ended, given its last byte: a newline to end an
/// unfinished line, then Ctrl-D.
pub fn end_of_input(last: Option<u8>) -> &'static [u8] {
    match last {
        Some(b) if b != b'\n' => b"\n\x04",
        _ => &[EOF_CHAR],
    }
}

/// Keys typed on a terminal before the guest can take them: held, except QEMU's own.
#[derive(Debug, Default)]
pub struct Hold {
    held: Vec<u8>,
    /// The gate is open: the guest takes what is typed.
    open: bool,
    /// Ctrl-A was typed: the next key is QEMU's.
    escape: bool,
    /// QEMU's monitor has the console (Ctrl-A C switches).
    monitor: bool,
}

impl Hold {
    /// What of `keys` goes to QEMU now.
    pub fn keys(&mut self, keys: &[u8]) -> Vec<u8> {
        let mut now = Vec::new();
        for &key in keys {
            if self.escape {
                self.escape = false;
                if key == ESCAPE {
                    // Ctrl-A Ctrl-A: one Ctrl-A for the guest.
                    self.for_guest(&[ESCAPE, ESCAPE], &mut now);
                    continue;
                }
                now.extend([ESCAPE, key]);
                if key.eq_ignore_ascii_case(&b'c') {
                    self.monitor = !self.monitor;
                    self.release(&mut now);
                }
            } else if key == ESCAPE {
                self.escape = true;
            } else {
                self.for_guest(&[key], &mut now);
            }
        }
        now
    }

    /// The gate opened: what was held goes to QEMU now.
    pub fn open(&mut self) -> Vec<u8> {
        self.open = true;
        let mut now = Vec::new();
        self.release(&mut now);
        now
    }

    fn for_guest(&mut self, keys: &[u8], now: &mut Vec<u8>) {
        // While the monitor has the console, keys are the monitor's, not the guest's.
        if self.monitor || (self.open && self.held.is_empty()) {
            now.extend_from_slice(keys);
        } else {
            self.held.extend_from_slice(keys);
        }
    }

    fn release(&mut self, now: &mut Vec<u8>) {
        if self.open && !self.monitor {
            now.append(&mut self.held);
        }
    }
}

/// Reads the lines a growing file gains, one complete line at a time.
#[derive(Debug, Default)]
pub struct Tail {
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// The complete lines `path` gained since the last call (none while it does not exist).
    pub fn lines(&mut self, path: &Path) -> Vec<String> {
        use std::io::{Read, Seek};
        let mut new = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path)
            && f.seek(std::io::SeekFrom::Start(self.offset)).is_ok()
            && f.read_to_end(&mut new).is_ok()
        {
            self.offset += new.len() as u64;
        }
        self.push(&new)
    }

    /// The complete lines of what came before and `new`.
    fn push(&mut self, new: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(new);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return Vec::new() };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&complete).lines().map(str::to_string).collect()
    }
}

/// Our terminal in raw mode, as QEMU sets it for its stdio console with `signal=off`; the
/// modes it had come back when this is dropped.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn new() -> nix::Result<RawTerminal> {
        use termios::{ControlFlags as C, InputFlags as I, LocalFlags as L, OutputFlags as O, SpecialCharacterIndices};
        let saved = termios::tcgetattr(std::io::stdin().as_fd())?;
        let mut raw = saved.clone();
        raw.input_flags &= !(I::IGNBRK | I::BRKINT | I::PARMRK | I::ISTRIP | I::INLCR | I::IGNCR | I::ICRNL | I::IXON);
        // Output as before: QEMU writes the guest's output to the same terminal.
        raw.output_flags |= O::OPOST;
        raw.local_flags &= !(L::ECHO | L::ECHONL | L::ICANON | L::IEXTEN | L::ISIG);
        raw.control_flags &= !(C::CSIZE | C::PARENB);
        raw.control_flags |= C::CS8;
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The thread that feeds our standard input to QEMU's; it stops when dropped (QEMU has
/// ended), and gives the terminal its modes back.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
    _raw: Option<RawTerminal>,
}

impl Feeder {
    /// Feeds our standard input, which is `input`, to `qemu` once `status` (the record
    /// QEMU writes) opens `gate`.
    pub fn start(qemu: ChildStdin, input: Input, status: &Path, gate: Gate) -> Feeder {
        let raw = match input {
            Input::Terminal => match RawTerminal::new() {
                Ok(raw) => Some(raw),
                Err(e) => {
                    log::warn!("cannot set the terminal's modes: {e}");
                    None
                }
            },
            Input::Stream | Input::Qemu => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let status = status.to_path_buf();
        let thread = std::thread::spawn(move || {
            let stdin = std::io::stdin();
            feed(stdin.as_fd(), qemu, input, &status, gate, &flag);
        });
        Feeder { stop, _thread: thread, _raw: raw }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The feeding loop: reads `source` when it has something and the gate allows, writes to
/// `qemu`, until `stop` or until QEMU stops reading.
fn feed(
    source: std::os::fd::BorrowedFd<'_>,
    mut qemu: impl Write,
    input: Input,
    status: &Path,
    gate: Gate,
    stop: &AtomicBool,
) {
    let mut tail = Tail::default();
    let mut hold = Hold::default();
    let mut open = false;
    // A stream that ended: when to type Ctrl-D next, and what.
    let mut ended: Option<(Instant, &'static [u8])> = None;
    let mut last = None;
    let mut buf = [0u8; 4096];
    let mut send = |bytes: &[u8]| bytes.is_empty() || qemu.write_all(bytes).and_then(|()| qemu.flush()).is_ok();
    while !stop.load(Ordering::Relaxed) {
        if !open && tail.lines(status).iter().filter_map(|l| Event::from_line(l).ok()).any(|e| gate.opened_by(&e)) {
            log::debug!("console input: the guest takes it now ({gate:?})");
            open = true;
            if !send(&hold.open()) {
                return;
            }
        }
        if let Some((at, end)) = ended {
            if Instant::now() >= at {
                if !send(end) {
                    return;
                }
                ended = Some((Instant::now() + EOF_REPEAT, &[EOF_CHAR]));
            }
            std::thread::sleep(POLL);
            continue;
        }
        // A stream is read only once the gate is open: until then it waits where it is.
        if input == Input::Stream && !open {
            std::thread::sleep(POLL);
            continue;
        }
        let mut fds = [nix::poll::PollFd::new(source, nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(POLL.as_millis() as u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::warn!("cannot poll standard input: {e}");
                return;
            }
        }
        let n = match nix::unistd::read(source, &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            // A terminal that hung up reads EIO.
            Err(_) => 0,
        };
        if n == 0 {
            if input == Input::Stream {
                log::debug!("console input: ended; typing Ctrl-D");
                ended = Some((Instant::now(), end_of_input(last)));
                continue;
            }
            return;
        }
        let keys = &buf[..n];
        let now = match input {
            Input::Terminal => hold.keys(keys),
            Input::Stream | Input::Qemu => {
                last = keys.last().copied();
                keys.to_vec()
            }
        };
        if !send(&now) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_wait_for_the_console_shell_when_one_is_coming_keys_for_the_init() {
        let stream = |cmdline: &str| Input::Stream.gate(cmdline);
        assert_eq!(stream("console=ttyS0 appEnd=shell"), Gate::Shell);
        assert_eq!(stream("appDebug"), Gate::Shell);
        assert_eq!(stream("appEnd=sshd"), Gate::Shell);
        assert_eq!(stream("appEnd=bash appEnd=halt"), Gate::Init);
        assert_eq!(stream(""), Gate::Init);
        assert_eq!(Input::Terminal.gate("appEnd=shell"), Gate::Init);
        let shell = Event::Shell { t_us: 1, phase: "end".into(), tty: "/dev/ttyS0".into() };
        let init = Event::Init { t_us: 1, version: "0".into(), v: 1 };
        assert!(Gate::Shell.opened_by(&shell) && !Gate::Shell.opened_by(&init));
        assert!(Gate::Init.opened_by(&init) && !Gate::Init.opened_by(&shell));
    }

    #[test]
    fn an_unfinished_last_line_is_ended_before_ctrl_d() {
        assert_eq!(end_of_input(Some(b'x')), b"\n\x04");
        assert_eq!(end_of_input(Some(b'\n')), b"\x04");
        assert_eq!(end_of_input(None), b"\x04");
    }

    #[test]
    fn keys_wait_for_the_guest_but_qemus_own_pass_at_once() {
        let mut h = Hold::default();
        assert_eq!(h.keys(b"ls\r"), b"");
        // Ctrl-A H (QEMU's help) at once; Ctrl-A Ctrl-A is a Ctrl-A for the guest.
        assert_eq!(h.keys(b"\x01h\x01\x01x"), b"\x01h");
        assert_eq!(h.open(), b"ls\r\x01\x01x");
        assert_eq!(h.keys(b"pwd\r"), b"pwd\r");
        // Ctrl-A X, split across reads: QEMU quits.
        let mut h = Hold::default();
        assert_eq!(h.keys(b"a\x01"), b"");
        assert_eq!(h.keys(b"x"), b"\x01x");
        // While the monitor has the console (Ctrl-A C), keys are the monitor's: at once.
        let mut h = Hold::default();
        assert_eq!(h.keys(b"early\x01cinfo status\r"), b"\x01cinfo status\r");
        // The gate opens while the monitor has the console: the guest's keys wait for it.
        assert_eq!(h.open(), b"");
        assert_eq!(h.keys(b"\x01c"), b"\x01cearly");
        assert_eq!(h.keys(b"more"), b"more");
    }

    #[test]
    fn tail_gives_complete_lines_only() {
        let mut t = Tail::default();
        assert_eq!(t.push(b"{\"a\":1}\n{\"b\""), ["{\"a\":1}"]);
        assert_eq!(t.push(b":2}\n"), ["{\"b\":2}"]);
        assert!(t.push(b"").is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        let mut t = Tail::default();
        assert!(t.lines(&path).is_empty());
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(t.lines(&path), ["one"]);
        std::fs::write(&path, "one\ntwo\n").unwrap();
        assert_eq!(t.lines(&path), ["two"]);
    }

    fn append(path: &Path, event: &Event) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        f.write_all(event.to_line().as_bytes()).unwrap();
    }

    /// The whole feed of a pipe, against a status record that opens the gate after a while.
    #[test]
    fn commands_are_held_until_the_shell_starts_then_end_with_ctrl_d() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        let (source, mut commands) = std::io::pipe().unwrap();
        commands.write_all(b"echo hi").unwrap();
        drop(commands);
        let (mut qemu, to_qemu) = std::io::pipe().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let path = status.clone();
        let thread = std::thread::spawn(move || {
            feed(source.as_fd(), to_qemu, Input::Stream, &path, Gate::Shell, &flag);
        });
        append(&status, &Event::Init { t_us: 1, version: "0".into(), v: 1 });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!thread.is_finished());
        append(&status, &Event::Shell { t_us: 2, phase: "end".into(), tty: "/dev/ttyS0".into() });
        let mut got = [0u8; 10];
        qemu.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"echo hi\n\x04\x04");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
