//! Console input from a pipe or a file (`printf 'echo hi\nexit\n' | appliance run APP --end
//! shell`): held back until the guest can take it, typed into its console then, and ended
//! as Ctrl-D ends a shell.
//!
//! Why held back: QEMU reads its standard input at once and pushes the bytes into the
//! emulated UART (its own buffers hold a few dozen), and the guest's 8250 driver discards
//! what the UART holds when it probes the port and when the console is first opened, just
//! before `/init` runs. Measured under TCG: input written before that point never reached
//! the shell (the run hung until `--timeout`), input written once the kernel had opened the
//! console did, whatever the phase running then. So `appliance run` gives QEMU a pipe of
//! its own as standard input and writes to it only when the status record says the console
//! shell starts (the `shell` event; or the `init` event when the command line asks for no
//! console shell): from then on the guest's terminal buffers what arrives, and the first
//! reader is the shell the input was meant for, not a phase before it.
//!
//! Why Ctrl-D at the end: a shell reading a pipe ends at its end, and `printf ... |`
//! means that. A hang-up from outside would overtake the commands still on their way and
//! discard them; Ctrl-D travels behind them, in the same stream, and is read after them. A
//! Ctrl-D that arrives while the shell runs a command reaches that command, or reaches
//! readline as a NUL (the terminal has left its raw mode then), so it is typed again every
//! second until QEMU ends: standard input stays at its end for every later reader, as a
//! pipe's does. A last line without a newline gets one, so that it runs as in a script.
//!
//! A terminal, `/dev/null` (what background jobs and daemons get: no input, rather than
//! input that ended) and a closed standard input are left to QEMU as before.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ChildStdin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use appliance_cmdline::status::Event;
use appliance_cmdline::{Config, End};

/// How often the status record is read while input waits.
const POLL: Duration = Duration::from_millis(20);
/// How often Ctrl-D is typed again once the input has ended.
const EOF_REPEAT: Duration = Duration::from_secs(1);
/// The terminal's end-of-file character, Ctrl-D.
const EOF_CHAR: u8 = 0x04;

/// When the guest can take console input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// When the first console shell starts: the input is for it.
    Shell,
    /// When the init starts (the console is open by then): no console shell will come.
    Init,
}

impl Gate {
    /// The gate for a run with this kernel command line.
    pub fn for_cmdline(cmdline: &str) -> Gate {
        Gate::for_config(&appliance_cmdline::parse(cmdline.as_bytes()).config)
    }

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

/// Whether our standard input is console input this module feeds: a pipe, a file or a
/// socket (not a terminal, nor a character device such as /dev/null).
pub fn stdin_is_fed() -> bool {
    let stdin = std::io::stdin();
    match nix::sys::stat::fstat(stdin.as_fd()) {
        Ok(st) => {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT;
            [nix::sys::stat::SFlag::S_IFIFO, nix::sys::stat::SFlag::S_IFREG, nix::sys::stat::SFlag::S_IFSOCK]
                .contains(&kind)
        }
        Err(_) => false,
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

/// Reads the lines a growing file gains, one complete line at a time.
#[derive(Debug, Default)]
pub struct Tail {
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// The complete lines `path` gained since the last call (none while it does not exist).
    pub fn lines(&mut self, path: &Path) -> Vec<String> {
        let mut new = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            use std::io::Seek;
            if f.seek(std::io::SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut new).is_ok() {
                self.offset += new.len() as u64;
            }
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

/// The thread that feeds our standard input to QEMU's; it stops when dropped (QEMU has
/// ended), except while it waits for input to read.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Feeder {
    /// Feeds our standard input to `qemu` once `status` (the record QEMU writes) opens
    /// `gate`.
    pub fn start(qemu: ChildStdin, status: &Path, gate: Gate) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let status = status.to_path_buf();
        let thread = std::thread::spawn(move || feed(std::io::stdin(), qemu, &status, gate, &flag));
        Feeder { stop, _thread: thread }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for `gate`, copies `input` to `qemu`, then types the end of input until `stop`
/// or until QEMU stops reading.
fn feed(mut input: impl Read, mut qemu: impl Write, status: &Path, gate: Gate, stop: &AtomicBool) {
    let mut tail = Tail::default();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let lines = tail.lines(status);
        if lines.iter().filter_map(|l| Event::from_line(l).ok()).any(|e| gate.opened_by(&e)) {
            break;
        }
        std::thread::sleep(POLL);
    }
    log::debug!("console input: the guest takes it now ({gate:?})");
    let mut last = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("cannot read standard input: {e}");
                break;
            }
        };
        last = buf[..n].last().copied();
        if qemu.write_all(&buf[..n]).and_then(|()| qemu.flush()).is_err() {
            return;
        }
    }
    log::debug!("console input: ended; typing Ctrl-D");
    let mut end = end_of_input(last);
    while !stop.load(Ordering::Relaxed) {
        if qemu.write_all(end).and_then(|()| qemu.flush()).is_err() {
            return;
        }
        end = &[EOF_CHAR];
        std::thread::sleep(EOF_REPEAT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_waits_for_the_console_shell_when_one_is_coming() {
        assert_eq!(Gate::for_cmdline("console=ttyS0 appEnd=shell"), Gate::Shell);
        assert_eq!(Gate::for_cmdline("appDebug"), Gate::Shell);
        assert_eq!(Gate::for_cmdline("appEnd=sshd"), Gate::Shell);
        assert_eq!(Gate::for_cmdline("appEnd=bash appEnd=halt"), Gate::Init);
        assert_eq!(Gate::for_cmdline(""), Gate::Init);
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
    fn tail_gives_complete_lines_only() {
        let mut t = Tail::default();
        assert!(t.push(b"{\"a\":1}\n{\"b\"").len() == 1);
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

    /// The whole feed, against a status record that opens the gate after a while.
    #[test]
    fn input_is_held_until_the_gate_opens_then_ends_with_ctrl_d() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        let (mut reader, writer) = std::io::pipe().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let path = status.clone();
        let thread = std::thread::spawn(move || feed(&b"echo hi"[..], writer, &path, Gate::Shell, &flag));
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&status, Event::Init { t_us: 1, version: "0".into(), v: 1 }.to_line()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!thread.is_finished());
        let mut record = std::fs::read_to_string(&status).unwrap();
        record.push_str(&Event::Shell { t_us: 2, phase: "end".into(), tty: "/dev/ttyS0".into() }.to_line());
        std::fs::write(&status, record).unwrap();
        let mut got = [0u8; 10];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"echo hi\n\x04\x04");
        stop.store(true, Ordering::Relaxed);
        drop(reader);
        thread.join().unwrap();
    }
}
