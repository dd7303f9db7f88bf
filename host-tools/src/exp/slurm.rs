//! A batch on a Slurm cluster: one job array, one task per run (`%N` at once, a time limit
//! from the run's), each task running `appliance exp run DIR --resume BATCH --task I` on
//! the node it gets, into the experiment directory on the cluster's shared file system.
//! The runs of a batch are numbered in `<batch>/slurm/tasks.json` when it is submitted;
//! `<batch>/slurm/job` holds the array's job id for `status` and `cancel`. Slurm's own
//! commands (sbatch, squeue, sacct, scancel) do the talking, with the cluster's
//! configuration (`SLURM_CONF` or its default).

use crate::host::fs_error::{FsError, io_error};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::batch::{Plan, RunPlan};

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("cannot run {program}: is Slurm's client installed (slurm-client)?")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed { program: &'static str, stderr: String },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("batch {batch} was not submitted to Slurm (no {})", path.display())]
    NotSubmitted { batch: String, path: PathBuf },
    #[error("task {index} is not in {} ({count} task(s))", path.display())]
    NoTask { index: usize, count: usize, path: PathBuf },
}

/// One task of the array: the run it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub point: String,
    pub rep: u32,
}

/// What `--on slurm` asks for.
pub struct Submit<'a> {
    /// The `appliance` each task runs (it must exist on the nodes at this path).
    pub exe: &'a Path,
    pub exp_dir: &'a Path,
    pub partition: Option<&'a str>,
    pub max_running: u32,
    /// Minutes a task may take.
    pub minutes: u64,
    pub cpus_per_task: u32,
    /// `--stop-grace` of the tasks.
    pub grace_s: u64,
}

fn dir(batch_dir: &Path) -> PathBuf {
    batch_dir.join("slurm")
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SlurmError + 'a {
    move |source| SlurmError::Io(io_error(action, path)(source))
}

/// The sbatch script of `plan`'s runs.
pub fn script(plan: &Plan, s: &Submit<'_>) -> String {
    let n = plan.runs.len();
    let quote = |p: &Path| appliance_cmdline::quote_word(&p.display().to_string());
    let mut lines = vec![
        "#!/bin/sh".to_string(),
        format!("#SBATCH --job-name=appliance-exp-{}", plan.batch),
        format!("#SBATCH --array=0-{}%{}", n.saturating_sub(1), s.max_running.max(1)),
        format!("#SBATCH --time={}", s.minutes.max(1)),
        format!("#SBATCH --cpus-per-task={}", s.cpus_per_task.max(1)),
        format!("#SBATCH --output={}/task-%a.log", dir(&plan.dir).display()),
    ];
    if let Some(p) = s.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    lines.push("# One run of the batch per task: its VMs boot on this node (KVM when it works here).".to_string());
    lines.push(format!(
        "exec {} -q exp run {} --resume {} --task \"$SLURM_ARRAY_TASK_ID\" --stop-grace {}",
        quote(s.exe),
        quote(s.exp_dir),
        plan.batch,
        s.grace_s
    ));
    lines.join("\n") + "\n"
}

/// Writes the task list and the script into `<batch>/slurm/` and submits the array;
/// returns the job id.
pub fn submit(plan: &Plan, s: &Submit<'_>) -> Result<String, SlurmError> {
    let d = dir(&plan.dir);
    std::fs::create_dir_all(&d).map_err(io("create", &d))?;
    let tasks: Vec<Task> = plan.runs.iter().map(|r: &RunPlan| Task { point: r.point.dir_name(), rep: r.rep }).collect();
    let list = d.join("tasks.json");
    std::fs::write(&list, serde_json::to_string_pretty(&tasks).unwrap_or_default() + "\n")
        .map_err(io("write", &list))?;
    let path = d.join("job.sh");
    std::fs::write(&path, script(plan, s)).map_err(io("write", &path))?;
    let job = output("sbatch", Command::new("sbatch").arg("--parsable").arg(&path))?;
    // `--parsable` prints `id` or `id;cluster`.
    let job = job.trim().split(';').next().unwrap_or_default().to_string();
    let file = d.join("job");
    std::fs::write(&file, format!("{job}\n")).map_err(io("write", &file))?;
    Ok(job)
}

/// Task `index` of a submitted batch.
pub fn task(batch_dir: &Path, index: usize) -> Result<Task, SlurmError> {
    let path = dir(batch_dir).join("tasks.json");
    let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    let tasks: Vec<Task> = serde_json::from_str(&text).map_err(|e| io("parse", &path)(std::io::Error::other(e)))?;
    let count = tasks.len();
    tasks.into_iter().nth(index).ok_or(SlurmError::NoTask { index, count, path })
}

/// Every task of a submitted batch.
pub fn tasks(batch_dir: &Path) -> Vec<Task> {
    std::fs::read_to_string(dir(batch_dir).join("tasks.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The job id of a submitted batch.
pub fn job(batch_dir: &Path, batch: &str) -> Result<String, SlurmError> {
    let path = dir(batch_dir).join("job");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|_| SlurmError::NotSubmitted { batch: batch.to_string(), path })
}

/// The state of each task Slurm knows (queued, running; finished ones from accounting
/// when the cluster keeps it), by array index.
pub fn states(job: &str) -> Result<BTreeMap<usize, String>, SlurmError> {
    let mut states = BTreeMap::new();
    // Accounting first (it knows finished tasks), the queue over it (it is current).
    if let Ok(text) = output("sacct", Command::new("sacct").args(["-n", "-P", "-X", "-j", job, "-o", "JobID,State"])) {
        for line in text.lines() {
            if let Some((id, state)) = line.split_once('|')
                && let Some(i) = id.split_once('_').and_then(|(_, i)| i.parse().ok())
            {
                states.insert(i, state.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    }
    let text = output("squeue", Command::new("squeue").args(["-h", "-r", "-j", job, "-o", "%K %T"]))?;
    for line in text.lines() {
        if let Some((i, state)) = line.split_once(' ')
            && let Ok(i) = i.trim().parse()
        {
            states.insert(i, state.trim().to_string());
        }
    }
    Ok(states)
}

/// Cancels the array.
pub fn cancel(job: &str) -> Result<(), SlurmError> {
    output("scancel", Command::new("scancel").arg(job)).map(drop)
}

fn output(program: &'static str, command: &mut Command) -> Result<String, SlurmError> {
    let o = command.output().map_err(|source| SlurmError::Spawn { program, source })?;
    if !o.status.success() {
        return Err(SlurmError::Failed { program, stderr: String::from_utf8_lossy(&o.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_one_array_with_its_bounds() {
        let plan = Plan {
            batch: "20260101-000000".into(),
            dir: PathBuf::from("/shared/e/runs/20260101-000000"),
            runs: (1..=4)
                .map(|rep| RunPlan {
                    point: crate::exp::matrix::points(&Default::default()).remove(0),
                    rep,
                    dir: PathBuf::new(),
                })
                .collect(),
            complete: 0,
        };
        let s = Submit {
            exe: Path::new("/opt/appliance"),
            exp_dir: Path::new("/shared/e"),
            partition: Some("batch"),
            max_running: 2,
            minutes: 5,
            cpus_per_task: 2,
            grace_s: 30,
        };
        let text = script(&plan, &s);
        for line in [
            "#SBATCH --array=0-3%2",
            "#SBATCH --time=5",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --partition=batch",
            "#SBATCH --output=/shared/e/runs/20260101-000000/slurm/task-%a.log",
            "exec /opt/appliance -q exp run /shared/e --resume 20260101-000000 --task \"$SLURM_ARRAY_TASK_ID\" --stop-grace 30",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
