//! One node of a run: its VM booted with the node's words, its console and status record
//! kept in the node's directory, stopped gracefully at the run's time bound or when the
//! batch is interrupted, its results brought back with the existing results step, and
//! what happened written down as the node's outcome (`outcome.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use appliance_cmdline::render_param;
use appliance_cmdline::status::Event;
use serde::{Deserialize, Serialize};

use super::definition::Transport;
use crate::vm::machine::{self, Machine};
use crate::vm::qemu::{self, Accel, VmSpec};
use crate::vm::{self, Tick, TimedOut, Watch, nfs, qmp, results};

/// The name of the node's outcome in its directory, written last: a node directory
/// without one is a run that did not finish (interrupted).
pub const OUTCOME: &str = "outcome.json";

/// The run id the guest names its results directory with; they are moved up into the
/// node's directory (`output`, `results/`).
const RUN_ID: &str = "run";

/// Bound on a QMP exchange of a stop request.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// How every node of a role boots: decided once per batch.
#[derive(Debug, Clone)]
pub struct RoleBoot {
    pub app_dir: PathBuf,
    pub kernel: PathBuf,
    pub machine: Machine,
    pub accel: Accel,
    /// The machine's own kernel words ([`machine::kernel_params`]).
    pub machine_words: Vec<String>,
    pub qemu: PathBuf,
}

/// Why a role cannot boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no {what} at {}: build the app dir first", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot find QEMU: {0}")]
    Qemu(String),
}

impl RoleBoot {
    /// The boot of `app_dir` on `cpus` CPUs, with `kernel` instead of its vmlinuz when given.
    pub fn new(app_dir: &Path, kernel: Option<&Path>, cpus: u32) -> Result<RoleBoot, BootError> {
        let kernel = kernel.map_or_else(|| app_dir.join("vmlinuz"), Path::to_path_buf);
        for (what, path) in [("kernel", &kernel), ("initrd", &app_dir.join("initrd"))] {
            if !path.exists() {
                return Err(BootError::Missing { what, path: path.clone() });
            }
        }
        let (accel, _) = qemu::detect_accel();
        // As `appliance run` boots it: on microvm a kernel the project built boots as its
        // vmlinux, through PVH.
        let boot = machine::plan(&kernel, app_dir, None, accel, cpus);
        Ok(RoleBoot {
            app_dir: app_dir.to_path_buf(),
            machine_words: boot.words,
            kernel: boot.kernel,
            machine: boot.machine,
            accel,
            qemu: qemu::find_qemu().map_err(BootError::Qemu)?,
        })
    }
}

/// One VM of a run.
#[derive(Debug, Clone)]
pub struct NodeJob {
    /// `<role>-<index>`, from 1: `APP_MYNODE` and the node's directory.
    pub name: String,
    pub boot: RoleBoot,
    /// Words after the app dir's cmdline: appArgs, appCmds, appNode, the role's words.
    pub words: Vec<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    pub grace: Duration,
    pub transport: Transport,
    /// The node's directory, made (empty) by the caller.
    pub dir: PathBuf,
    /// QEMU arguments of the run's private segment.
    pub qemu_args: Vec<String>,
    pub net: Option<qemu::UserNet>,
}

/// What happened to a node, as `outcome.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub node: String,
    /// `ok`, `failed` or `timeout`.
    pub status: String,
    /// /app/run's status; 124 on timeout; 125 without a status from the guest.
    pub exit: i32,
    /// Why it is not `ok`.
    pub reason: Option<String>,
    pub wall_s: f64,
    /// Milliseconds of each phase the status record shows (`run`, `prerun`, `cmd1`, ...),
    /// and `boot` (kernel start to /init).
    pub phases_ms: BTreeMap<String, f64>,
    pub results_files: u64,
    pub results_bytes: u64,
    /// `$APP_RESULTS/metrics.json`.
    pub metrics: BTreeMap<String, f64>,
    /// Seconds since the node's VM started at which it reached each rendezvous point.
    #[serde(default)]
    pub rendezvous: BTreeMap<String, f64>,
}

/// Why a node could not be run at all (a node that ran and failed has an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("the kernel command line of node {node}")]
    Cmdline {
        node: String,
        #[source]
        source: crate::deploy::cmdline::CmdlineError,
    },
    #[error("cannot create a directory for the QMP socket")]
    Socket(#[source] std::io::Error),
    #[error("the node's NFS server")]
    Nfs(#[from] nfs::NfsError),
}

/// Boots `job` and waits for it; `None` when the batch was interrupted (`stop` set) before
/// the node finished: such a node leaves no outcome and is run again by `--resume`.
pub fn run(job: &NodeJob, stop: &AtomicBool) -> Result<Option<Outcome>, NodeError> {
    // A short path: Unix socket paths are limited to 107 bytes, and a node's directory
    // can be deep.
    let sockets = crate::host::scratch::dir("appliance-exp-").map_err(NodeError::Socket)?;
    let qmp = sockets.path().join("qmp.sock");
    let stream = results::stream_file(&job.dir, RUN_ID);
    // A server of the node's own, exporting its directory, for as long as the VM runs.
    let mut server = match job.transport {
        Transport::Nfs => Some(nfs::NfsServer::start(&job.dir)?),
        Transport::Serial | Transport::NineP => None,
    };
    let spec = spec(job, &qmp, &stream, server.as_ref().map(nfs::NfsServer::port))?;
    // Once per batch: every node of a role has the same words.
    static GRACE_WARNED: std::sync::Once = std::sync::Once::new();
    if let Some(warning) = crate::vm::stop::grace_conflict(&spec.append, job.grace) {
        GRACE_WARNED.call_once(|| log::warn!("node {}: {warning}", job.name));
    }
    let mut watch =
        StopWatch { stop, qmp: qmp.clone(), grace: job.grace, deadline: None, killed: None, stopped: false };
    let report = vm::run_logged(&spec, Some(job.timeout), &mut watch, &job.dir.join("console.log"))?;
    if let Some(server) = &mut server {
        // The guest is gone: nothing writes to the export any more.
        server.stop();
    }
    if watch.stopped && report.timed_out.is_none() {
        return Ok(None);
    }
    Ok(Some(outcome(job, &report, &stream)))
}

fn spec(job: &NodeJob, qmp: &Path, stream: &Path, nfs_port: Option<u16>) -> Result<VmSpec, NodeError> {
    let mut after = job.words.clone();
    after.push(format!("appRunId={RUN_ID}"));
    let mut shares = Vec::new();
    let mut ports = Vec::new();
    let mut net = job.net.clone();
    match job.transport {
        Transport::Serial => {
            after.push(format!("appResultsTo=serial:{}", results::PORT_NAME));
            ports.push(qemu::PortToFile { name: results::PORT_NAME.into(), path: stream.to_path_buf() });
        }
        Transport::NineP => {
            after.push(format!("appResultsTo=9p:{}", results::NINEP_TAG));
            shares.push(qemu::Share9p { tag: results::NINEP_TAG.into(), path: job.dir.clone(), readonly: false });
        }
        Transport::Nfs => {
            after.push(format!("appResultsTo={}", nfs::guest_param(nfs_port.unwrap_or_default())));
            // The control NIC the results step brings up (a multi-node run has one already).
            net.get_or_insert_with(qemu::UserNet::default);
        }
    }
    let append = crate::deploy::cmdline::kernel_line(&job.boot.app_dir, false, &job.boot.machine_words, &after)
        .map_err(|source| NodeError::Cmdline { node: job.name.clone(), source })?;
    Ok(VmSpec {
        qemu: job.boot.qemu.clone(),
        kernel: job.boot.kernel.clone(),
        initrd: job.boot.app_dir.join("initrd"),
        append,
        memory_mib: job.memory_mib,
        cpus: job.cpus,
        accel: job.boot.accel,
        machine: job.boot.machine,
        status_file: job.dir.join("status.jsonl"),
        net,
        shares,
        ports,
        qmp: Some(qmp.to_path_buf()),
        extra: job.qemu_args.clone(),
        disk: None,
        initrd_as_is: false,
    })
}

/// The words of a node: `appArgs`, `appCmds` and `appNode`, then the role's own.
pub fn words(name: &str, args: Option<&str>, cmds: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut words = Vec::new();
    let mut push = |key: &str, value: &str| {
        if let Ok(w) = render_param(key, value) {
            words.push(w);
        }
    };
    if let Some(a) = args {
        push("appArgs", a);
    }
    if let Some(c) = cmds {
        push("appCmds", c);
    }
    push("appNode", name);
    words.extend(extra.iter().cloned());
    words
}

/// Why a node's run failed, from its report; `None` when it did not.
fn reason(report: &vm::RunReport, timeout: Duration, memory_mib: u32) -> Option<String> {
    match (report.timed_out, report.end()) {
        (Some(TimedOut::Killed), _) => Some(format!("timed out after {} s: VM killed", timeout.as_secs())),
        (Some(TimedOut::PoweredOff), _) => Some(format!("timed out after {} s: stopped gracefully", timeout.as_secs())),
        (None, Some((_, 0))) => None,
        (None, Some((_, status))) => Some(match report.out_of_memory() {
            Some((phase, names)) => format!(
                "/app/run exited with {status}; out of memory in {phase}: the guest's kernel killed {} \
                 (the role has memory = {} MiB)",
                names.join(", "),
                memory_mib
            ),
            None => format!("/app/run exited with {status}"),
        }),
        (None, None) => Some(
            report
                .killed
                .clone()
                .unwrap_or_else(|| "no status from the guest (kernel panic or crash? see console.log)".to_string()),
        ),
    }
}

fn outcome(job: &NodeJob, report: &vm::RunReport, stream: &Path) -> Outcome {
    let mut reason = reason(report, job.timeout, job.memory_mib);
    let (mut files, mut bytes) = (0, 0);
    match save_results(job, report, stream) {
        Ok(Some((f, b))) => (files, bytes) = (f, b),
        Ok(None) => {}
        Err(e) => {
            if reason.is_none() {
                reason = Some(e);
            }
        }
    }
    let _ = results::discard_empty_stream(stream);
    let exit = report.exit_code();
    let status = if report.timed_out.is_some() {
        "timeout"
    } else if reason.is_none() {
        "ok"
    } else {
        "failed"
    };
    Outcome {
        node: job.name.clone(),
        status: status.into(),
        exit,
        reason,
        wall_s: report.wall.as_secs_f64(),
        phases_ms: phases(&report.events),
        results_files: files,
        results_bytes: bytes,
        metrics: metrics(&job.dir.join("results").join("metrics.json")),
        rendezvous: BTreeMap::new(),
    }
}

/// Moves the guest's results (`run/output`, `run/results`) into the node's directory.
/// `Ok(None)` when the guest never got to its results step (the reason is elsewhere).
fn save_results(job: &NodeJob, report: &vm::RunReport, stream: &Path) -> Result<Option<(u64, u64)>, String> {
    let Some(o) = results::outcome(&report.events, &job.dir) else {
        return if report.end().is_some() { Err("the guest never reported its results step".into()) } else { Ok(None) };
    };
    if !o.ok {
        return Err(format!("results not saved: {}", o.error.as_deref().unwrap_or("unknown error")));
    }
    let run_dir = match job.transport {
        Transport::Serial => {
            results::unpack_stream(stream, &job.dir, &o).map_err(|e| format!("results not saved: {}", chain(&e)))?
        }
        Transport::NineP | Transport::Nfs => job.dir.join(RUN_ID),
    };
    let _ = std::fs::remove_file(stream);
    for name in ["output", "results"] {
        let from = run_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, job.dir.join(name)).map_err(|e| format!("cannot move {}: {e}", from.display()))?;
        }
    }
    let _ = std::fs::remove_dir(&run_dir);
    Ok(Some((o.files, o.bytes)))
}

/// Milliseconds per phase, and `boot` (kernel start to /init).
pub fn phases(events: &[Event]) -> BTreeMap<String, f64> {
    let mut starts = BTreeMap::new();
    let mut out = BTreeMap::new();
    let name = |phase: &str, index: Option<u32>| match index {
        Some(i) => format!("{phase}{i}"),
        None => phase.to_string(),
    };
    for e in events {
        match e {
            Event::Init { t_us, .. } => {
                out.insert("boot".to_string(), *t_us as f64 / 1000.0);
            }
            Event::PhaseStart { t_us, phase, index } => {
                starts.insert(name(phase, *index), *t_us);
            }
            Event::PhaseEnd { t_us, phase, index, .. } => {
                let n = name(phase, *index);
                if let Some(s) = starts.get(&n) {
                    out.insert(n, t_us.saturating_sub(*s) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    out
}

/// A flat JSON object of numbers; anything else in it is left out.
pub fn metrics(path: &Path) -> BTreeMap<String, f64> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeMap::new() };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text) {
        Ok(map) => map.into_iter().filter_map(|(k, v)| v.as_f64().map(|n| (k, n))).collect(),
        Err(e) => {
            log::warn!("{}: not a JSON object of numbers: {e}", path.display());
            BTreeMap::new()
        }
    }
}

/// The [`Watch`] of a node: the run's time bound and an interrupted batch both ask the
/// guest to power off ([`qmp::request_stop`], as `appliance stop` does) and kill QEMU only
/// after the grace period.
struct StopWatch<'a> {
    stop: &'a AtomicBool,
    qmp: PathBuf,
    grace: Duration,
    deadline: Option<Instant>,
    killed: Option<String>,
    /// The batch's stop (not the time bound) asked the guest to power off.
    stopped: bool,
}

impl StopWatch<'_> {
    fn power_off(&mut self) -> Tick {
        if self.deadline.is_some() {
            return Tick::Continue;
        }
        if let Err(e) = qmp::request_stop(&self.qmp, QMP_TIMEOUT) {
            self.killed = Some(format!("VM killed: the stop request could not be sent ({e})"));
            return Tick::Kill;
        }
        self.deadline = Some(Instant::now() + self.grace);
        Tick::Continue
    }
}

impl Watch for StopWatch<'_> {
    /// Always: a Ctrl-C on the terminal reaches `appliance exp` only, which stops every VM
    /// gracefully.
    fn own_process_group(&self) -> bool {
        true
    }

    fn tick(&mut self) -> Tick {
        if self.stop.load(Ordering::Relaxed) && !self.stopped {
            self.stopped = true;
            if self.power_off() == Tick::Kill {
                return Tick::Kill;
            }
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                self.killed = Some(format!(
                    "VM killed: the guest did not power off within {} s of the stop request",
                    self.grace.as_secs()
                ));
                Tick::Kill
            }
            _ => Tick::Continue,
        }
    }

    fn time_up(&mut self, _after: Duration) -> Tick {
        self.power_off()
    }

    fn kill_reason(&self) -> Option<String> {
        self.killed.clone()
    }
}

/// An error with its causes, on one line (for `outcome.json`'s reason).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::fixtures::{oom_run_end, report};

    #[test]
    fn a_run_the_out_of_memory_killer_ended_says_so_with_the_roles_memory() {
        let end = Event::End { t_us: 9, action: "poweroff".into(), status: 137 };
        let r = report(vec![oom_run_end(&["python3"]), end.clone()], None);
        assert_eq!(
            reason(&r, Duration::from_secs(60), 256).as_deref(),
            Some(
                "/app/run exited with 137; out of memory in run: the guest's kernel killed python3 \
                 (the role has memory = 256 MiB)"
            )
        );
        let r = report(vec![end], None);
        assert_eq!(reason(&r, Duration::from_secs(60), 256).as_deref(), Some("/app/run exited with 137"));
    }
}
