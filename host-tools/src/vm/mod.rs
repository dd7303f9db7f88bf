//! Running an appliance in QEMU: start it, bound it in time, and read back the status
//! record the init wrote to the second serial port.

pub mod console;
pub mod machine;
pub mod nfs;
pub mod qemu;
pub mod qmp;
pub mod results;
pub mod running;
pub mod ssh;
pub mod stop;

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;

use qemu::VmSpec;

use crate::archive::cpio::read;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot start {qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for qemu failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// How a run ended, from QEMU's exit and the status record.
#[derive(Debug)]
pub struct RunReport {
    pub events: Vec<Event>,
    /// Lines of the record that did not parse (a truncated last line, say).
    pub garbled: Vec<String>,
    pub wall: Duration,
    /// The time bound ran out, and how the VM ended then.
    pub timed_out: Option<TimedOut>,
    pub qemu_status: Option<ExitStatus>,
    /// Why the [`Watch`] had QEMU killed, when it did (a stop the guest did not complete).
    pub killed: Option<String>,
}

/// How a VM that ran out of time ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    /// The guest powered off after the stop request: its shutdown ran (results step,
    /// the end of the status record).
    PoweredOff,
    /// QEMU was killed: the guest did not power off within the grace period (or could
    /// not be asked to).
    Killed,
}

/// What `appliance run` exits with when the guest did not report a result.
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_NO_STATUS: i32 = 125;

impl RunReport {
    /// The `end` event, if the init got that far.
    pub fn end(&self) -> Option<(&str, i32)> {
        self.events.iter().rev().find_map(|e| match e {
            Event::End { action, status, .. } => Some((action.as_str(), *status)),
            _ => None,
        })
    }

    /// The run's exit code: the run phase's status; 124 on timeout; 125 when the guest
    /// ended without saying how (kernel panic, crash, QEMU failure).
    pub fn exit_code(&self) -> i32 {
        if self.timed_out.is_some() { EXIT_TIMEOUT } else { self.end().map(|(_, s)| s).unwrap_or(EXIT_NO_STATUS) }
    }

    /// The events of the last boot: from the last `init` event on. After `appEnd=kexec`
    /// the record holds one boot per appliance, and the times of the one that ran last are
    /// the ones that go with its `end`.
    fn last_boot(&self) -> &[Event] {
        let start = self.events.iter().rposition(|e| matches!(e, Event::Init { .. })).unwrap_or(0);
        &self.events[start..]
    }

    fn t(&self, pick: impl Fn(&Event) -> Option<u64>) -> Option<u64> {
        self.last_boot().iter().find_map(pick)
    }

    /// Guest microseconds from kernel start to /init.
    pub fn kernel_to_init_us(&self) -> Option<u64> {
        self.t(|e| match e {
            Event::Init { t_us, .. } => Some(*t_us),
            _ => None,
        })
    }

    /// Guest microseconds from kernel start to the start of /app/run.
    pub fn run_start_us(&self) -> Option<u64> {
        self.t(|e| match e {
            Event::PhaseStart { t_us, phase, .. } if phase == "run" => Some(*t_us),
            _ => None,
        })
    }

    fn run_end_us(&self) -> Option<u64> {
        self.t(|e| match e {
            Event::PhaseEnd { t_us, phase, .. } if phase == "run" => Some(*t_us),
            _ => None,
        })
    }

    /// The first phase the init ended at its time limit (`appRunTimeout`), if any.
    pub fn run_limit(&self) -> Option<&str> {
        self.events.iter().find_map(|e| match e {
            Event::PhaseEnd { phase, timed_out: true, .. } => Some(phase.as_str()),
            _ => None,
        })
    }

    /// What the guest's out-of-memory killer ended before a phase failed: the phase and
    /// the processes' names, for the first such phase.
    pub fn out_of_memory(&self) -> Option<(&str, Vec<&str>)> {
        self.events.iter().find_map(|e| match e {
            Event::PhaseEnd { phase, oom_killed, .. } if !oom_killed.is_empty() => {
                Some((phase.as_str(), oom_killed.iter().map(|k| k.name.as_str()).collect()))
            }
            _ => None,
        })
    }

    /// The one-line summary `appliance run` prints.
    pub fn summary(&self) -> String {
        let ms = |us: u64| format!("{:.0} ms", us as f64 / 1000.0);
        let mut parts = Vec::new();
        if let Some(init) = self.kernel_to_init_us() {
            parts.push(format!("kernel→/init {}", ms(init)));
            if let Some(run) = self.run_start_us() {
                parts.push(format!("/init→run {}", ms(run.saturating_sub(init))));
            }
        }
        if let (Some(a), Some(b)) = (self.run_start_us(), self.run_end_us()) {
            parts.push(format!("run {}", ms(b.saturating_sub(a))));
        }
        parts.push(format!("wall {:.2} s", self.wall.as_secs_f64()));
        let outcome = match (self.timed_out, self.end()) {
            (Some(TimedOut::Killed), _) => "timed out: VM killed".to_string(),
            (Some(TimedOut::PoweredOff), Some((action, status))) => {
                format!("timed out: stopped, run status {status}, {action}")
            }
            (Some(TimedOut::PoweredOff), None) => "timed out: stopped, without a status from the guest".to_string(),
            (None, Some((action, status))) => format!("run status {status}, {action}"),
            (None, None) => match (&self.killed, self.qemu_status.and_then(|s| s.signal())) {
                (Some(why), _) => why.clone(),
                (None, Some(signal)) => format!(
                    "QEMU was killed by signal {signal} before the guest powered off (`appliance stop` kills it when \
                     the guest does not power off within its grace period)"
                ),
                (None, None) => "no status from the guest (kernel panic or crash? see the console)".to_string(),
            },
        };
        let outcome = match self.run_limit() {
            Some(phase) => format!("{outcome} ({phase} timed out in the guest: appRunTimeout)"),
            None => outcome,
        };
        let outcome = match self.out_of_memory() {
            Some((phase, names)) => format!(
                "{outcome} (out of memory in {phase}: the guest's kernel killed {}; give it more with -m)",
                names.join(", ")
            ),
            None => outcome,
        };
        format!("appliance: {outcome}; {}", parts.join(", "))
    }
}

/// What a [`Watch`] asks of the loop waiting for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Continue,
    /// Kill QEMU now (a graceful stop ran out of time).
    Kill,
}

/// Hooks into a run (graceful stop, the run record of [`crate::vm::running`]).
pub trait Watch {
    /// Start QEMU in a process group of its own, so that a signal to ours (a script's
    /// Ctrl-C) reaches only us and we can power the guest off gracefully. Only when our
    /// stdin is not a terminal: QEMU must stay in the foreground group of a terminal it
    /// reads.
    fn own_process_group(&self) -> bool {
        false
    }
    /// QEMU started with this pid.
    fn started(&mut self, _pid: u32) {}
    /// Called every 20 ms while QEMU runs.
    fn tick(&mut self) -> Tick {
        Tick::Continue
    }
    /// The run's time bound (`after`) ran out: stop the guest. [`Tick::Kill`] kills QEMU
    /// now (there is no graceful way); otherwise [`Watch::tick`] says when to.
    fn time_up(&mut self, _after: Duration) -> Tick {
        Tick::Kill
    }
    /// Why the last [`Tick::Kill`] asked to kill QEMU, for the run's summary.
    fn kill_reason(&self) -> Option<String> {
        None
    }
}

impl Watch for () {}

/// Starts QEMU for `spec` with the console on our terminal and waits for it, killing it
/// after `timeout`. Standard input (a pipe, a file, our terminal) is typed into the console
/// when the guest can take it ([`console`]).
pub fn run(spec: &VmSpec, timeout: Option<Duration>) -> Result<RunReport, VmError> {
    run_watched(spec, timeout, &mut ())
}

/// [`run`], with `watch` told when QEMU starts, asked every tick whether to kill it, and
/// asked to stop the guest when `timeout` runs out (killing QEMU only when it says so).
pub fn run_watched(spec: &VmSpec, timeout: Option<Duration>, watch: &mut dyn Watch) -> Result<RunReport, VmError> {
    run_with_console(spec, timeout, watch, None)
}

/// [`run_watched`] for a VM nobody watches: its console (and QEMU's messages) go to the
/// file `console`, its input is empty. Several of these may run at once, one per thread
/// (`appliance exp run`).
pub fn run_logged(
    spec: &VmSpec,
    timeout: Option<Duration>,
    watch: &mut dyn Watch,
    console: &std::path::Path,
) -> Result<RunReport, VmError> {
    run_with_console(spec, timeout, watch, Some(console))
}

/// How often a running VM's watch is asked whether to stop it.
const TICK_MS: u16 = 20;

fn run_with_console(
    spec: &VmSpec,
    timeout: Option<Duration>,
    watch: &mut dyn Watch,
    log: Option<&std::path::Path>,
) -> Result<RunReport, VmError> {
    let _ = std::fs::remove_file(&spec.status_file);
    let started = Instant::now();
    let (plain, warning) = initrd_for_qemu(spec);
    let booted = plain.as_ref().map(|(_, initrd)| VmSpec { initrd: initrd.clone(), ..spec.clone() });
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let mut command = Command::new(&spec.qemu);
    command.args(qemu::argv(booted.as_ref().unwrap_or(spec)));
    if watch.own_process_group() {
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
    }
    crate::host::process::as_our_child(&mut command);
    // Console input from a pipe, a file or our terminal goes through us, held until the
    // guest can take it; a logged console has none.
    let input = if log.is_some() { console::Input::Qemu } else { console::Input::of_stdin() };
    if let Some(path) = log {
        let file = std::fs::File::create(path).map_err(|source| VmError::Spawn { qemu: spec.qemu.clone(), source })?;
        let err = file.try_clone().map_err(|source| VmError::Spawn { qemu: spec.qemu.clone(), source })?;
        command.stdin(std::process::Stdio::null()).stdout(file).stderr(err);
    } else if input != console::Input::Qemu {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command.spawn().map_err(|source| VmError::Spawn { qemu: spec.qemu.clone(), source })?;
    let _feeder =
        child.stdin.take().map(|qemu| console::Feeder::start(qemu, input, &spec.status_file, input.gate(&spec.append)));
    watch.started(child.id());
    // Readable the moment QEMU exits: the loop below waits on it between ticks, so the
    // run ends with QEMU, not up to a tick later.
    let exited = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
    let mut timed_out = None;
    let mut killed = None;
    let qemu_status = loop {
        if let Some(status) = child.try_wait().map_err(VmError::Wait)? {
            break Some(status);
        }
        let mut tick = watch.tick();
        if let Some(t) = timeout
            && timed_out.is_none()
            && started.elapsed() >= t
        {
            // Powered off, unless the grace runs out first (below).
            timed_out = Some(TimedOut::PoweredOff);
            tick = watch.time_up(t);
        }
        if tick == Tick::Kill {
            if timed_out.is_some() {
                timed_out = Some(TimedOut::Killed);
            }
            let _ = child.kill();
            killed = watch.kill_reason();
            break child.wait().ok();
        }
        match &exited {
            Some(fd) => {
                let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(TICK_MS));
            }
            None => std::thread::sleep(Duration::from_millis(TICK_MS.into())),
        }
    };
    let wall = started.elapsed();
    let (events, garbled) = read_status(&spec.status_file);
    Ok(RunReport { events, garbled, wall, timed_out, qemu_status, killed })
}

/// The largest decompressed initrd handed to QEMU, as a share of the guest's memory: the
/// kernel holds the initrd and the files unpacked from it at once, and a compressed one
/// takes less room while it does.
const PLAIN_INITRD_SHARE: u64 = 4;

/// The initrd QEMU gets for `spec`, kept for as long as the returned value lives when it
/// is not the image's own, and a warning when the guest's memory cannot unpack it.
///
/// Under TCG, unless `initrd_as_is`, a compressed initrd is decompressed on the host into
/// a scratch directory when its plain size is at most 1/[`PLAIN_INITRD_SHARE`] of the
/// guest's memory. The guest's decompressor runs emulated, instruction by instruction:
/// for images/hello's 165 KB of zstd, 4.8 of the project kernel's 26.8 ms of instructions
/// to `/init` (icount); on the host it takes well under a millisecond.
///
/// The size the initrd unpacks to, for the warning: what `appliance build` recorded
/// beside it (`appliance.json`) when that describes this initrd, else measured here by
/// decoding it (an app dir of the original layout, or one made by hand), no further than
/// the size at which the boot fails whatever the initrd.
/// Anything that does not decode (a corrupt initrd) is left to the guest, which says what
/// is wrong with it as it always did.
fn initrd_for_qemu(spec: &VmSpec) -> (Option<(crate::host::scratch::Scratch, PathBuf)>, Option<String>) {
    if spec.disk.is_some() {
        return (None, None);
    }
    let Ok(loaded) = std::fs::metadata(&spec.initrd).map(|m| m.len()) else {
        return (None, None);
    };
    let recorded = recorded_unpacked_size(&spec.initrd, loaded);
    let decompress = spec.accel == qemu::Accel::Tcg && !spec.initrd_as_is;
    let share = (u64::from(spec.memory_mib) << 20) / PLAIN_INITRD_SHARE;
    let fails_past = largest_unpackable(spec.memory_mib, loaded);
    // How far to decode: nothing when the size is recorded and QEMU gets the initrd as it is.
    let limit = match (decompress, recorded) {
        (false, Some(_)) => None,
        (true, Some(_)) => Some(share),
        (true, None) => Some(share.max(fails_past)),
        (false, None) => Some(fails_past),
    };
    // `None`: not decoded, or it does not decode; `Some(None)`: longer than the limit.
    let decoded = limit.and_then(|limit| decode(&spec.initrd, limit));
    let size = match (recorded, &decoded, limit) {
        (Some(n), _, _) => Some(UnpackedSize::Exactly(n)),
        (None, Some(Some(d)), _) => Some(UnpackedSize::Exactly(d.plain.len() as u64)),
        (None, Some(None), Some(limit)) => Some(UnpackedSize::MoreThan(limit)),
        _ => None,
    };
    let plain = decoded
        .flatten()
        .filter(|d| decompress && d.compressed && d.plain.len() as u64 <= share)
        .and_then(|d| plain_copy(&spec.initrd, &d.plain));
    let loaded_by_qemu = plain.as_ref().map_or(loaded, |(_, _, len)| *len);
    let warning = size.and_then(|size| initrd_room(spec.memory_mib, loaded_by_qemu, size));
    (plain.map(|(dir, path, _)| (dir, path)), warning)
}

/// `initrd` decoded no further than `limit` bytes (`Some(None)` past them); `None` when it
/// cannot be read or does not decode, which the guest will then say.
fn decode(initrd: &Path, limit: u64) -> Option<Option<read::Unpacked>> {
    let decoded = std::fs::read(initrd).map_err(|e| e.to_string()).and_then(|input| {
        read::unpacked(&input, usize::try_from(limit).unwrap_or(usize::MAX)).map_err(|e| e.to_string())
    });
    decoded.map_err(|e| log::debug!("{}: left to the guest to decompress: {e}", initrd.display())).ok()
}

/// `plain`, the decompressed `initrd`, written into a scratch directory for QEMU: the
/// directory, the file and its length; `None` (QEMU gets the initrd as it is) when it
/// cannot be written.
fn plain_copy(initrd: &Path, plain: &[u8]) -> Option<(crate::host::scratch::Scratch, PathBuf, u64)> {
    let written = crate::host::scratch::dir("appliance-initrd-").and_then(|dir| {
        let path = dir.path().join("initrd");
        std::fs::write(&path, plain)?;
        Ok((dir, path, plain.len() as u64))
    });
    match written {
        Ok(written) => {
            log::debug!("{} decompressed for the guest: {} bytes", initrd.display(), plain.len());
            Some(written)
        }
        Err(e) => {
            log::debug!("{}: left to the guest to decompress: {e}", initrd.display());
            None
        }
    }
}

/// What `appliance build` recorded as the unpacked size of the initrd in `appliance.json`
/// beside it, if that describes an initrd of `loaded` bytes, not one replaced since.
fn recorded_unpacked_size(initrd: &Path, loaded: u64) -> Option<u64> {
    let facts = std::fs::read_to_string(initrd.with_file_name("appliance.json")).ok()?;
    let facts: serde_json::Value = serde_json::from_str(&facts).ok()?;
    (facts.get("initrd_size")?.as_u64()? == loaded).then_some(())?;
    facts.get("initrd_uncompressed_size")?.as_u64()
}

/// What the kernel keeps for itself at boot besides the initrd (its code and data, the page
/// structures): measured on Debian's 6.1 kernel with 320 and 512 MiB, 49-51 MiB.
const KERNEL_RESERVE_MIB: u64 = 48;

/// The size an initrd unpacks to, or the least it does when it was measured no further.
#[derive(Clone, Copy, Debug, PartialEq)]
enum UnpackedSize {
    Exactly(u64),
    MoreThan(u64),
}

/// A warning when `memory_mib` of guest memory cannot hold an initrd of `loaded` bytes
/// while the kernel unpacks it: the unpacked files go into a tmpfs limited to half of the
/// memory the kernel and the loaded initrd leave, and when they do not fit the kernel says
/// "Initramfs unpacking failed: write error" and either panics, long before the init could
/// say anything, or (with memory to spare beside a small compressed initrd) starts `/init`
/// without the files that did not fit. Measured with a 106 MiB initrd of incompressible
/// data: 224, 256 and 320 MiB panic, 512 MiB boots; with 24 MiB of zeros gzipped to 2 MiB
/// and 96 MiB, the application ran without them.
fn initrd_room(memory_mib: u32, loaded: u64, unpacked: UnpackedSize) -> Option<String> {
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    let (least, size) = match unpacked {
        UnpackedSize::Exactly(n) => (n, format!("{} MiB", mib(n))),
        UnpackedSize::MoreThan(n) => (n + 1, format!("more than {} MiB", n >> 20)),
    };
    let suggested = memory_for_initrd(memory_mib, loaded, least)?;
    Some(format!(
        "the initrd unpacks to {size} ({} MiB as loaded): with --memory {memory_mib} the kernel cannot unpack it (a \
         tmpfs of half the memory it has left): the boot will end in a kernel panic, or run without the files that \
         did not fit; pass --memory {suggested} or more",
        mib(loaded),
    ))
}

/// The largest unpacked size `memory_mib` holds with an initrd of `loaded` bytes (see
/// [`memory_for_initrd`]).
fn largest_unpackable(memory_mib: u32, loaded: u64) -> u64 {
    ((u64::from(memory_mib).saturating_sub(KERNEL_RESERVE_MIB) << 20).saturating_sub(loaded)) / 2
}

/// `None` when `memory_mib` holds an initrd of `loaded` bytes that unpacks to `unpacked`
/// bytes (see [`initrd_room`]), else the memory to suggest: what it takes, rounded up to
/// 64 MiB, and 64 MiB more for the application.
fn memory_for_initrd(memory_mib: u32, loaded: u64, unpacked: u64) -> Option<u64> {
    let need = KERNEL_RESERVE_MIB + (loaded + 2 * unpacked).div_ceil(1 << 20);
    (need > u64::from(memory_mib)).then(|| need.div_ceil(64) * 64 + 64)
}

/// Parses a status record file; unreadable means empty.
pub fn read_status(path: &std::path::Path) -> (Vec<Event>, Vec<String>) {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    parse_status(&text)
}

/// The start of every line of the record.
const RECORD_START: &str = "{\"event\":";

/// Parses status lines, keeping the ones that do not parse apart. Text without a record
/// line's start is not the record's and is skipped: UEFI firmware writes its messages to
/// every serial port, and `appStatus=ttyS0` shares the port with the console.
pub fn parse_status(text: &str) -> (Vec<Event>, Vec<String>) {
    let mut events = Vec::new();
    let mut garbled = Vec::new();
    let lines = text.lines().filter_map(|l| l.find(RECORD_START).map(|at| l[at..].trim()));
    for line in lines {
        match Event::from_line(line) {
            Ok(e) => events.push(e),
            Err(_) => garbled.push(line.to_string()),
        }
    }
    (events, garbled)
}

/// Reports and events for the tests of the modules that read them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use appliance_cmdline::status::{Exit, OomKill};

    /// A report of `events`, as QEMU leaves it after 2.5 s.
    pub fn report(events: Vec<Event>, timed_out: Option<TimedOut>) -> RunReport {
        RunReport {
            events,
            garbled: vec![],
            wall: Duration::from_millis(2500),
            timed_out,
            qemu_status: None,
            killed: None,
        }
    }

    /// The end of a run that exited with 137 after the out-of-memory killer ended
    /// processes of these names.
    pub fn oom_run_end(killed: &[&str]) -> Event {
        Event::PhaseEnd {
            t_us: 8,
            phase: "run".into(),
            index: None,
            exit: Exit::Code(137),
            status: 137,
            timed_out: false,
            oom_killed: killed.iter().map(|name| OomKill { pid: 57, name: (*name).into() }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_cmdline::status::Exit;
    use std::time::Instant;

    #[test]
    fn an_initrd_the_memory_cannot_unpack_is_told_before_the_boot() {
        const MIB: u64 = 1 << 20;
        // The measured case: 99 MiB loaded (incompressible), 106 MiB unpacked.
        for memory in [224, 256, 320] {
            assert_eq!(memory_for_initrd(memory, 99 * MIB, 106 * MIB), Some(448), "{memory}");
        }
        assert_eq!(memory_for_initrd(512, 99 * MIB, 106 * MIB), None);
        // images/hello on Debian's kernel, decompressed on the host: 6 MiB.
        assert_eq!(memory_for_initrd(128, 6 * MIB, 6 * MIB), None);
        assert_eq!(memory_for_initrd(64, 6 * MIB, 6 * MIB), Some(192));
        // The largest that fits is the bound of the measurement: one byte more does not.
        for (memory, loaded) in [(96, 24 * MIB + 3), (512, 99 * MIB), (64, 15 * MIB)] {
            let largest = largest_unpackable(memory, loaded);
            assert_eq!(memory_for_initrd(memory, loaded, largest), None, "{memory} {loaded}");
            assert!(memory_for_initrd(memory, loaded, largest + 1).is_some(), "{memory} {loaded}");
        }
        // Memory the kernel and the loaded initrd fill holds nothing more.
        assert_eq!(largest_unpackable(32, 0), 0);
        assert_eq!(largest_unpackable(64, 40 * MIB), 0);
        assert!(memory_for_initrd(64, 40 * MIB, 0).is_some());
        let w = initrd_room(96, MIB, UnpackedSize::MoreThan(24 * MIB + 5)).unwrap();
        assert!(w.starts_with("the initrd unpacks to more than 24 MiB (1 MiB as loaded): with --memory 96"), "{w}");
    }

    /// Regression: an app dir without `appliance.json` (the original layout) whose
    /// compressed initrd was handed to QEMU as it is got no warning, however large.
    #[test]
    fn an_initrd_without_recorded_sizes_is_measured() {
        use std::io::Write;
        const MIB: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let mut spec = fake_qemu(dir.path(), "exit 0");
        let mut cpio = Vec::new();
        let blob = crate::archive::cpio::Entry::data("/blob", vec![0u8; 40 * MIB], 0o644);
        crate::archive::cpio::write_archive(&mut cpio, [blob], 0).unwrap();
        let mut zstd =
            crate::archive::compress::Encoder::new(Vec::new(), crate::archive::compress::Compression::Zstd).unwrap();
        zstd.write_all(&cpio).unwrap();
        std::fs::write(&spec.initrd, zstd.finish().unwrap()).unwrap();
        for (accel, as_is) in [(qemu::Accel::Tcg, true), (qemu::Accel::Kvm, false), (qemu::Accel::Tcg, false)] {
            (spec.accel, spec.initrd_as_is) = (accel, as_is);
            // 64 MiB: the boot fails past 8 MiB, where the measurement stops (at a
            // quarter of the memory, 16 MiB, when it would be decompressed for QEMU).
            spec.memory_mib = 64;
            let (plain, warning) = initrd_for_qemu(&spec);
            assert!(plain.is_none(), "{accel:?} {as_is}");
            let least = if as_is || accel == qemu::Accel::Kvm { 7 } else { 16 };
            let expected = format!("the initrd unpacks to more than {least} MiB (1 MiB as loaded): with --memory 64");
            assert!(warning.unwrap_or_default().starts_with(&expected), "{accel:?} {as_is}: {expected}");
            // With the memory it needs, nothing is said.
            spec.memory_mib = 1024;
            let (plain, warning) = initrd_for_qemu(&spec);
            assert_eq!(warning, None);
            assert_eq!(plain.is_some(), accel == qemu::Accel::Tcg && !as_is, "{accel:?} {as_is}");
        }
        // A recorded size is taken as it is, without decoding.
        let facts = serde_json::json!({"initrd_size": std::fs::metadata(&spec.initrd).unwrap().len(),
                                       "initrd_uncompressed_size": 600 * MIB});
        std::fs::write(dir.path().join("appliance.json"), facts.to_string()).unwrap();
        spec.initrd_as_is = true;
        let warning = initrd_for_qemu(&spec).1.unwrap_or_default();
        assert!(
            warning.starts_with("the initrd unpacks to 600 MiB (1 MiB as loaded): with --memory 1024"),
            "{warning}"
        );
    }

    use super::fixtures::{oom_run_end, report};

    #[test]
    fn exit_code_is_the_run_status_or_says_why_not() {
        let end = Event::End { t_us: 9, action: "poweroff".into(), status: 3 };
        assert_eq!(report(vec![end.clone()], None).exit_code(), 3);
        assert_eq!(report(vec![end.clone()], Some(TimedOut::PoweredOff)).exit_code(), EXIT_TIMEOUT);
        assert_eq!(report(vec![end], Some(TimedOut::Killed)).exit_code(), EXIT_TIMEOUT);
        assert_eq!(report(vec![], None).exit_code(), EXIT_NO_STATUS);
    }

    #[test]
    fn summary_says_how_a_timed_out_run_ended() {
        let end = Event::End { t_us: 9, action: "poweroff".into(), status: 143 };
        let s = report(vec![end.clone()], Some(TimedOut::PoweredOff)).summary();
        assert!(s.starts_with("appliance: timed out: stopped, run status 143, poweroff;"), "{s}");
        let s = report(vec![end], Some(TimedOut::Killed)).summary();
        assert!(s.starts_with("appliance: timed out: VM killed;"), "{s}");
        let limited = Event::PhaseEnd {
            t_us: 8,
            phase: "run".into(),
            index: None,
            exit: Exit::Signal(15),
            status: appliance_cmdline::status::TIMED_OUT,
            timed_out: true,
            oom_killed: Vec::new(),
        };
        let end = Event::End { t_us: 9, action: "poweroff".into(), status: 124 };
        let s = report(vec![limited, end], None).summary();
        assert!(
            s.starts_with("appliance: run status 124, poweroff (run timed out in the guest: appRunTimeout);"),
            "{s}"
        );
    }

    #[test]
    fn summary_names_what_the_guests_out_of_memory_killer_ended() {
        let end = Event::End { t_us: 9, action: "poweroff".into(), status: 137 };
        let s = report(vec![oom_run_end(&["tail"]), end.clone()], None).summary();
        assert!(
            s.starts_with(
                "appliance: run status 137, poweroff (out of memory in run: the guest's kernel killed tail; \
                 give it more with -m);"
            ),
            "{s}"
        );
        let s = report(vec![end], None).summary();
        assert!(!s.contains("memory"), "{s}");
    }

    /// A stand-in for QEMU: a shell script that ignores QEMU's arguments.
    fn fake_qemu(dir: &std::path::Path, script: &str) -> VmSpec {
        use std::os::unix::fs::PermissionsExt;
        let qemu = dir.join("qemu");
        std::fs::write(&qemu, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        VmSpec {
            qemu,
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd"),
            append: String::new(),
            memory_mib: 64,
            cpus: 1,
            accel: qemu::Accel::Tcg,
            machine: qemu::Machine::Pc,
            status_file: dir.join("status"),
            net: None,
            shares: vec![],
            ports: vec![],
            qmp: None,
            extra: vec![],
            disk: None,
            initrd_as_is: false,
        }
    }

    /// What a graceful stop does, for the loop: the guest "powers off" (the fake QEMU
    /// exits) when `obeys`, else nothing happens and `tick` kills at the deadline.
    struct FakeStop {
        pid: Option<u32>,
        obeys: bool,
        asked: Option<Instant>,
        grace: Duration,
    }

    impl Watch for FakeStop {
        fn started(&mut self, pid: u32) {
            self.pid = Some(pid);
        }
        fn tick(&mut self) -> Tick {
            match self.asked {
                Some(at) if at.elapsed() >= self.grace => Tick::Kill,
                _ => Tick::Continue,
            }
        }
        fn time_up(&mut self, _after: Duration) -> Tick {
            self.asked = Some(Instant::now());
            if self.obeys {
                let pid = nix::unistd::Pid::from_raw(self.pid.unwrap() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            }
            Tick::Continue
        }
    }

    /// `--timeout` killed QEMU outright: whatever the run produced was gone and the record
    /// had no end. Now the guest is asked to stop first, and killed only after the grace.
    #[test]
    fn a_timeout_asks_the_guest_to_stop_before_killing_it() {
        let dir = tempfile::tempdir().unwrap();
        // Exits on SIGTERM (a guest that powers off), like QEMU on the power button.
        let spec = fake_qemu(dir.path(), "trap 'exit 0' TERM; while :; do sleep 1; done");
        let timeout = Some(Duration::from_millis(200));
        let mut stop = FakeStop { pid: None, obeys: true, asked: None, grace: Duration::from_secs(60) };
        let r = run_watched(&spec, timeout, &mut stop).unwrap();
        assert_eq!(r.timed_out, Some(TimedOut::PoweredOff));
        assert!(stop.asked.is_some());
        assert!(r.wall < Duration::from_secs(30), "{:?}", r.wall);
        assert_eq!(r.exit_code(), EXIT_TIMEOUT);

        // A guest that does not power off is killed when the grace is over, not before.
        let spec = fake_qemu(dir.path(), "trap '' TERM; while :; do sleep 1; done");
        let grace = Duration::from_millis(500);
        let mut stop = FakeStop { pid: None, obeys: true, asked: None, grace };
        let r = run_watched(&spec, timeout, &mut stop).unwrap();
        assert_eq!(r.timed_out, Some(TimedOut::Killed));
        assert!(stop.asked.unwrap().elapsed() >= grace);
        assert_eq!(r.exit_code(), EXIT_TIMEOUT);

        // Without a graceful way (no watch), the time bound kills at once, as it did.
        let r = run(&spec, timeout).unwrap();
        assert_eq!(r.timed_out, Some(TimedOut::Killed));
    }

    /// Under TCG QEMU gets the initrd decompressed, in a scratch directory that goes with
    /// the run; asked to, or under KVM, or when it is not compressed, the image's own.
    #[test]
    fn under_tcg_qemu_gets_the_initrd_decompressed_for_the_run_only() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut cpio = Vec::new();
        crate::archive::cpio::write_archive(&mut cpio, [crate::archive::cpio::Entry::data("/init", "x", 0o755)], 0)
            .unwrap();
        let mut zstd =
            crate::archive::compress::Encoder::new(Vec::new(), crate::archive::compress::Compression::Zstd).unwrap();
        zstd.write_all(&cpio).unwrap();
        let compressed = zstd.finish().unwrap();
        // The fake QEMU keeps the -initrd it was given: its path, and a copy.
        let keep = r#"while [ "$1" != -initrd ]; do shift; done; echo "$2" > "$0.path"; cp "$2" "$0.initrd""#;
        let mut spec = fake_qemu(dir.path(), keep);
        let seen = || {
            let path = std::fs::read_to_string(dir.path().join("qemu.path")).unwrap();
            (PathBuf::from(path.trim()), std::fs::read(dir.path().join("qemu.initrd")).unwrap())
        };
        std::fs::write(&spec.initrd, &compressed).unwrap();
        run(&spec, None).unwrap();
        let (path, bytes) = seen();
        assert!(path.starts_with(std::env::temp_dir().join("")), "{path:?}");
        assert!(path.parent().unwrap().file_name().unwrap().to_string_lossy().starts_with("appliance-initrd-"));
        assert_eq!(bytes, cpio);
        assert!(!path.exists(), "removed with the run");

        spec.initrd_as_is = true;
        run(&spec, None).unwrap();
        assert_eq!(seen(), (spec.initrd.clone(), compressed.clone()));
        spec.initrd_as_is = false;
        spec.accel = qemu::Accel::Kvm;
        run(&spec, None).unwrap();
        assert_eq!(seen().0, spec.initrd);
        spec.accel = qemu::Accel::Tcg;
        std::fs::write(&spec.initrd, &cpio).unwrap();
        run(&spec, None).unwrap();
        assert_eq!(seen(), (spec.initrd.clone(), cpio.clone()));
    }

    #[test]
    fn summary_has_the_guest_times() {
        let (events, garbled) = parse_status(concat!(
            "{\"event\":\"init\",\"t_us\":1200000,\"version\":\"0.1.0\",\"v\":1}\n",
            "{\"event\":\"phase_start\",\"t_us\":1204000,\"phase\":\"run\"}\n",
            "{\"event\":\"phase_end\",\"t_us\":1304000,\"phase\":\"run\",\"exit\":{\"code\":0},\"status\":0}\n",
            "{\"event\":\"end\",\"t_us\":1305000,\"action\":\"poweroff\",\"status\":0}\n",
            "{\"event\":\"end\",\"t_u"
        ));
        assert_eq!(garbled.len(), 1);
        let r = report(events, None);
        assert_eq!(
            r.summary(),
            "appliance: run status 0, poweroff; kernel→/init 1200 ms, /init→run 4 ms, run 100 ms, wall 2.50 s"
        );
        assert!(matches!(r.events[2], Event::PhaseEnd { exit: Exit::Code(0), .. }));
    }

    /// Firmware messages on the status port (OVMF writes to every serial port) were
    /// reported as unreadable status lines.
    #[test]
    fn text_around_the_record_is_not_the_records() {
        let (events, garbled) = parse_status(concat!(
            "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI Misc Device\"\n",
            "{\"event\":\"init\",\"t_us\":1,\"version\":\"0.1.0\",\"v\":1}\n",
            "[    2.6] a console line\n",
            "\x1b[0m{\"event\":\"end\",\"t_us\":2,\"action\":\"poweroff\",\"status\":0}\r\n",
            "{\"event\":\"end\",\"t_u"
        ));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(garbled, ["{\"event\":\"end\",\"t_u"]);
    }

    /// A VM killed after a stop it did not complete is not reported as a crash.
    #[test]
    fn summary_after_a_kexec_has_the_last_boots_times() {
        let (events, _) = parse_status(concat!(
            "{\"event\":\"init\",\"t_us\":1200000,\"version\":\"0.1.0\",\"v\":1}\n",
            "{\"event\":\"phase_start\",\"t_us\":1204000,\"phase\":\"run\"}\n",
            "{\"event\":\"phase_end\",\"t_us\":1304000,\"phase\":\"run\",\"exit\":{\"code\":0},\"status\":0}\n",
            "{\"event\":\"end\",\"t_us\":1305000,\"action\":\"kexec\",\"status\":0}\n",
            "{\"event\":\"init\",\"t_us\":900000,\"version\":\"0.1.0\",\"v\":1}\n",
            "{\"event\":\"phase_start\",\"t_us\":910000,\"phase\":\"run\"}\n",
            "{\"event\":\"phase_end\",\"t_us\":930000,\"phase\":\"run\",\"exit\":{\"code\":3},\"status\":3}\n",
            "{\"event\":\"end\",\"t_us\":931000,\"action\":\"poweroff\",\"status\":3}\n",
        ));
        let r = report(events, None);
        assert_eq!(
            r.summary(),
            "appliance: run status 3, poweroff; kernel→/init 900 ms, /init→run 10 ms, run 20 ms, wall 2.50 s"
        );
    }

    #[test]
    fn summary_says_why_qemu_was_killed() {
        let crash = report(vec![], None);
        assert!(crash.summary().contains("no status from the guest (kernel panic or crash?"), "{}", crash.summary());
        let mut stopped = report(vec![], None);
        stopped.qemu_status = Some(ExitStatus::from_raw(9));
        stopped.killed = Some("VM killed: the guest did not power off within 30 s of the stop request".into());
        assert!(
            stopped
                .summary()
                .starts_with("appliance: VM killed: the guest did not power off within 30 s of the stop request;"),
            "{}",
            stopped.summary()
        );
        stopped.killed = None;
        assert!(stopped.summary().contains("QEMU was killed by signal 9 before the guest powered off"));
        assert_eq!(stopped.exit_code(), EXIT_NO_STATUS);
    }
}
