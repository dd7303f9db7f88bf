//! A batch: the runs of an experiment, one directory each under
//! `DIR/runs/<batch>/<point>/<repetition>/`, and the scheduler that boots them, up to N
//! VMs at once, with a progress bar.
//!
//! Every run directory is written once: a run is made with `create_dir`, never into an
//! existing one. A run counts as complete when each of its nodes wrote its outcome;
//! `--resume` moves an incomplete one aside (`<rep>.interrupted`) and runs it again.

use crate::host::fs_error::{FsError, io_error};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::definition::Definition;
use super::matrix::{self, Point};
use super::network::{self, Segment};
use super::node::{self, NodeJob, Outcome, RoleBoot};
use super::rendezvous::Rendezvous;

/// Where the batches of an experiment go.
pub const RUNS: &str = "runs";

/// Errors of planning and running a batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("no batch to resume in {}", dir.display())]
    NothingToResume { dir: PathBuf },
    #[error("no batch `{batch}` in {}", dir.display())]
    NoBatch { batch: String, dir: PathBuf },
    #[error(transparent)]
    Rendezvous(#[from] super::rendezvous::RendezvousError),
    #[error("cannot open a UDP socket for a run's segment")]
    Segment(#[source] std::io::Error),
    #[error("no run is left to do: every point{filter} is complete in batch {batch}")]
    AllDone { batch: String, filter: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BatchError + 'a {
    move |source| BatchError::Io(io_error(action, path)(source))
}

/// One run: a point of the matrix, one repetition of it.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub point: Point,
    /// From 1.
    pub rep: u32,
    /// `runs/<batch>/<point>/<rep>`.
    pub dir: PathBuf,
}

impl RunPlan {
    /// `<point>/<rep>`, as the progress lines name a run.
    pub fn label(&self) -> String {
        format!("{}/{}", self.point.dir_name(), self.rep)
    }
}

/// The batch to run into and its pending runs.
#[derive(Debug)]
pub struct Plan {
    pub batch: String,
    pub dir: PathBuf,
    pub runs: Vec<RunPlan>,
    /// Runs already complete (when resuming).
    pub complete: usize,
}

/// Plans a batch of `def` in the experiment directory `exp`: a new one, or with `resume`
/// the named (or latest) one, whose complete runs are skipped. `only` (a point's directory
/// name and a repetition) plans that one run and leaves the others alone, as a task of a
/// Slurm array does while its siblings run.
pub fn plan(
    exp: &Path,
    def: &Definition,
    filters: &[(String, String)],
    resume: Option<Option<&str>>,
    only: Option<(&str, u32)>,
) -> Result<Plan, BatchError> {
    let runs_dir = exp.join(RUNS);
    let (batch, dir) = match resume {
        Some(name) => {
            let batch = match name {
                Some(b) => b.to_string(),
                None => latest_batch(&runs_dir).ok_or_else(|| BatchError::NothingToResume { dir: runs_dir.clone() })?,
            };
            let dir = runs_dir.join(&batch);
            if !dir.is_dir() {
                return Err(BatchError::NoBatch { batch, dir: runs_dir });
            }
            (batch, dir)
        }
        None => {
            std::fs::create_dir_all(&runs_dir).map_err(io("create", &runs_dir))?;
            new_batch(&runs_dir)?
        }
    };
    let roles: Vec<String> = node_names(def);
    let mut runs = Vec::new();
    let mut complete = 0;
    for point in matrix::points(&def.matrix).into_iter().filter(|p| p.matches(filters)) {
        for rep in 1..=def.repetitions {
            if only.is_some_and(|(p, r)| p != point.dir_name() || r != rep) {
                continue;
            }
            let run_dir = dir.join(point.dir_name()).join(rep.to_string());
            if run_dir.exists() {
                if roles.iter().all(|n| run_dir.join(n).join(node::OUTCOME).exists()) {
                    complete += 1;
                    continue;
                }
                set_aside(&run_dir)?;
            }
            runs.push(RunPlan { point: point.clone(), rep, dir: run_dir });
        }
    }
    if runs.is_empty() && resume.is_some() {
        let filter = if filters.is_empty() { String::new() } else { " the filter selects".into() };
        return Err(BatchError::AllDone { batch, filter });
    }
    Ok(Plan { batch, dir, runs, complete })
}

/// The node names of every run: `<role>-<i>`.
pub fn node_names(def: &Definition) -> Vec<String> {
    def.nodes.iter().flat_map(|r| (1..=r.count).map(move |i| format!("{}-{i}", r.name))).collect()
}

/// The batch directories, oldest first (their names sort by time).
pub fn batches(runs_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(runs_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn latest_batch(runs_dir: &Path) -> Option<String> {
    batches(runs_dir).pop()
}

/// A new batch directory named for the UTC time, `YYYYMMDD-HHMMSS` (`-2`, ... when taken).
fn new_batch(runs_dir: &Path) -> Result<(String, PathBuf), BatchError> {
    let id = crate::vm::results::run_id("b", SystemTime::now());
    let stamp = id.trim_start_matches("b-").to_string();
    for n in 1.. {
        let name = if n == 1 { stamp.clone() } else { format!("{stamp}-{n}") };
        let dir = runs_dir.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((name, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &dir)(e)),
        }
    }
    unreachable!("some suffix is free")
}

/// Moves an incomplete run aside, to `<rep>.interrupted` (`.interrupted.2`, ...), so that
/// its rerun writes a fresh directory and nothing of it is lost.
fn set_aside(run_dir: &Path) -> Result<(), BatchError> {
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for n in 1.. {
        let to = run_dir.with_file_name(if n == 1 {
            format!("{name}.interrupted")
        } else {
            format!("{name}.interrupted.{n}")
        });
        if !to.exists() {
            return std::fs::rename(run_dir, &to).map_err(io("move aside", run_dir));
        }
    }
    unreachable!("some suffix is free")
}

/// What the scheduler needs beside the plan.
pub struct Settings {
    pub vms_at_once: u32,
    /// The grace of a graceful stop.
    pub grace: Duration,
    /// Boot of each role, by role name.
    pub boots: BTreeMap<String, RoleBoot>,
}

/// How a batch went.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub done: usize,
    pub failed: usize,
    /// Runs not finished because the batch was stopped.
    pub interrupted: usize,
    pub wall: Duration,
    /// The most VMs that ran at once.
    pub peak_vms: usize,
}

/// Where the scheduler reports progress (the CLI draws a bar); called from its threads.
pub trait Progress: Send + Sync {
    /// Runs done, failed and running now, with `total` to do in this call.
    fn counts(&self, done: usize, failed: usize, running: usize, total: usize);
    /// A run ended: `failure` says which nodes failed and why, `None` when all went well.
    fn run_ended(&self, label: &str, failure: Option<&str>);
    /// The stop was asked for.
    fn stopping(&self) {}
}

/// Shared counters of the scheduler and its runs.
#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    vms: AtomicUsize,
    peak_vms: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
    interrupted: AtomicUsize,
}

/// Runs `plan`'s runs, up to `settings.vms_at_once` VMs at once. `poll_stop` is asked
/// every 100 ms whether to stop (a signal): then no run starts any more, every VM is asked
/// to power off, and the call returns once all have ended.
pub fn run(
    def: &Definition,
    plan: &Plan,
    settings: &Settings,
    progress: Arc<dyn Progress>,
    poll_stop: &mut dyn FnMut() -> bool,
) -> Result<BatchReport, BatchError> {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let per_run = def.vms_per_run() as usize;
    let capacity = settings.vms_at_once.max(1) as usize;
    let rendezvous = Rendezvous::start()?;
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut pending = plan.runs.iter().enumerate().collect::<std::collections::VecDeque<_>>();
    loop {
        if !stop.load(Ordering::Relaxed) && poll_stop() {
            progress.stopping();
            stop.store(true, Ordering::Relaxed);
        }
        threads.retain(|t| !t.is_finished());
        if stop.load(Ordering::Relaxed) {
            pending.clear();
        }
        while let Some(&(index, run)) = pending.front() {
            if counters.vms.load(Ordering::SeqCst) + per_run > capacity {
                break;
            }
            pending.pop_front();
            counters.vms.fetch_add(per_run, Ordering::SeqCst);
            counters.peak_vms.fetch_max(counters.vms.load(Ordering::SeqCst), Ordering::SeqCst);
            counters.running.fetch_add(1, Ordering::SeqCst);
            let token = format!("r{index}");
            let jobs = match prepare(def, run, index, settings, &rendezvous, &token) {
                Ok(jobs) => jobs,
                Err(e) => {
                    counters.vms.fetch_sub(per_run, Ordering::SeqCst);
                    counters.running.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let (stop, counters, progress, rendezvous) =
                (stop.clone(), counters.clone(), progress.clone(), rendezvous.clone());
            let label = run.label();
            threads.push(std::thread::spawn(move || {
                let outcomes = run_nodes(jobs, &stop, &rendezvous, &token);
                rendezvous.unregister(&token);
                counters.vms.fetch_sub(per_run, Ordering::SeqCst);
                counters.running.fetch_sub(1, Ordering::SeqCst);
                match outcomes {
                    None => {
                        counters.interrupted.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(outcomes) => {
                        let bad: Vec<String> = outcomes
                            .iter()
                            .filter(|o| o.status != "ok")
                            .map(|o| format!("{}: {}", o.node, o.reason.as_deref().unwrap_or(&o.status)))
                            .collect();
                        if bad.is_empty() {
                            counters.done.fetch_add(1, Ordering::SeqCst);
                            progress.run_ended(&label, None);
                        } else {
                            counters.failed.fetch_add(1, Ordering::SeqCst);
                            progress.run_ended(&label, Some(&bad.join("; ")));
                        }
                    }
                }
            }));
        }
        let (done, failed, running) = (
            counters.done.load(Ordering::SeqCst),
            counters.failed.load(Ordering::SeqCst),
            counters.running.load(Ordering::SeqCst),
        );
        progress.counts(done, failed, running, plan.runs.len());
        if pending.is_empty() && threads.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(BatchReport {
        done: counters.done.load(Ordering::SeqCst),
        failed: counters.failed.load(Ordering::SeqCst),
        interrupted: counters.interrupted.load(Ordering::SeqCst)
            + plan.runs.len().saturating_sub(
                counters.done.load(Ordering::SeqCst)
                    + counters.failed.load(Ordering::SeqCst)
                    + counters.interrupted.load(Ordering::SeqCst),
            ),
        wall: started.elapsed(),
        peak_vms: counters.peak_vms.load(Ordering::SeqCst),
    })
}

/// Makes the run's directories and its nodes' jobs: with more than one node, a segment
/// of its own and a control NIC to reach the rendezvous server.
fn prepare(
    def: &Definition,
    run: &RunPlan,
    index: usize,
    settings: &Settings,
    rendezvous: &Rendezvous,
    token: &str,
) -> Result<Vec<NodeJob>, BatchError> {
    if let Some(parent) = run.dir.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    std::fs::create_dir(&run.dir).map_err(io("create", &run.dir))?;
    let names = node_names(def);
    let segment = if names.len() > 1 { Some(Segment::new(index).map_err(BatchError::Segment)?) } else { None };
    rendezvous.register(token, &names);
    let mut jobs = Vec::new();
    let mut n = 0;
    for role in &def.nodes {
        let Some(boot) = settings.boots.get(&role.name) else { continue };
        for i in 1..=role.count {
            let name = format!("{}-{i}", role.name);
            let dir = run.dir.join(&name);
            std::fs::create_dir(&dir).map_err(io("create", &dir))?;
            let params = serde_json::json!({
                "point": run.point.dir_name(),
                "rep": run.rep,
                "node": name,
                "role": role.name,
                "params": serde_json::Value::Object(run.point.to_json()),
                // How the node boots, as `appliance run` would boot its app dir.
                "boot": {
                    "kernel": boot.kernel,
                    "machine": boot.machine.name(),
                    "accel": boot.accel.as_str(),
                },
            });
            let path = dir.join("params.json");
            std::fs::write(&path, format!("{params:#}\n")).map_err(io("write", &path))?;
            let sub = |s: &String| run.point.substitute(s);
            // A run of one node has no one to meet: no NIC at all, the fastest boot. The
            // role's own words come last and win.
            let mut extra = Vec::new();
            let mut qemu_args = Vec::new();
            if let Some(seg) = &segment {
                extra.extend(network::control_words());
                extra.push(rendezvous.guest_word(token));
                extra.extend(network::guest_words(n, &names));
                qemu_args = seg.qemu_args(n, boot.machine);
            }
            extra.extend(role.kernel_words.iter().map(sub));
            jobs.push(NodeJob {
                words: node::words(
                    &name,
                    role.args.as_ref().map(sub).as_deref(),
                    role.cmds.as_ref().map(sub).as_deref(),
                    &extra,
                ),
                name,
                boot: boot.clone(),
                memory_mib: role.memory,
                cpus: role.cpus,
                timeout: Duration::from_secs(def.timeout),
                grace: settings.grace,
                transport: def.results,
                dir,
                qemu_args,
                net: segment
                    .is_some()
                    .then(|| crate::vm::qemu::UserNet { mac: Some(network::CONTROL_MAC.into()), ..Default::default() }),
            });
            n += 1;
        }
    }
    Ok(jobs)
}

/// Boots every node of a run at once and writes each one's outcome; `None` when the batch
/// was stopped before they all finished.
fn run_nodes(jobs: Vec<NodeJob>, stop: &AtomicBool, rendezvous: &Rendezvous, token: &str) -> Option<Vec<Outcome>> {
    let results: Vec<Option<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                s.spawn(move || match node::run(job, stop) {
                    Ok(o) => o,
                    Err(e) => Some(Outcome {
                        node: job.name.clone(),
                        status: "failed".into(),
                        exit: crate::vm::EXIT_NO_STATUS,
                        reason: Some(node::chain(&e)),
                        wall_s: 0.0,
                        phases_ms: BTreeMap::new(),
                        results_files: 0,
                        results_bytes: 0,
                        metrics: BTreeMap::new(),
                        rendezvous: BTreeMap::new(),
                    }),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(None)).collect()
    });
    if results.iter().any(Option::is_none) {
        return None;
    }
    let mut outcomes: Vec<Outcome> = results.into_iter().flatten().collect();
    for (job, o) in jobs.iter().zip(outcomes.iter_mut()) {
        o.rendezvous = rendezvous.reached(token, &job.name);
        let path = job.dir.join(node::OUTCOME);
        if let Ok(text) = serde_json::to_string_pretty(o) {
            let _ = std::fs::write(&path, text + "\n");
        }
    }
    Some(outcomes)
}
