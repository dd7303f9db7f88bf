//! The summary of a batch: one row per node and run, read back from the run directories
//! (each node's `params.json` and `outcome.json`), written as `summary.csv` and
//! `summary.json` in the batch's directory. Read from the files rather than kept in
//! memory, so that a resumed batch and `appliance exp report` see the same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::node::{OUTCOME, Outcome};

/// Errors of writing a summary.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the CSV {}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
}

/// One node of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub point: String,
    pub rep: u32,
    pub node: String,
    pub role: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The rows of the batch directory `batch`, in point, repetition and node order; runs
/// set aside (`.interrupted`) and nodes without an outcome are left out.
pub fn rows(batch: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for point in sorted_dirs(batch) {
        for rep in sorted_dirs(&point) {
            let Some(rep_no) = rep.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            for node in sorted_dirs(&rep) {
                let read = |name: &str| std::fs::read_to_string(node.join(name)).ok();
                let (Some(params), Some(outcome)) = (read("params.json"), read(OUTCOME)) else { continue };
                let (Ok(params), Ok(outcome)) =
                    (serde_json::from_str::<serde_json::Value>(&params), serde_json::from_str::<Outcome>(&outcome))
                else {
                    log::warn!("{}: unreadable params.json or {OUTCOME}: left out", node.display());
                    continue;
                };
                rows.push(Row {
                    point: params["point"].as_str().unwrap_or_default().to_string(),
                    rep: rep_no,
                    node: outcome.node.clone(),
                    role: params["role"].as_str().unwrap_or_default().to_string(),
                    params: params["params"].as_object().cloned().unwrap_or_default(),
                    outcome,
                });
            }
        }
    }
    rows
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    // Numbers as numbers: repetition 10 after 9.
    dirs.sort_by_key(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (name.parse::<u64>().unwrap_or(u64::MAX), name)
    });
    dirs
}

/// Writes `summary.csv` and `summary.json` into `batch`; returns the CSV's path.
pub fn write(batch: &Path, rows: &[Row]) -> Result<PathBuf, SummaryError> {
    let json_path = batch.join("summary.json");
    let json = serde_json::to_string_pretty(rows).unwrap_or_default() + "\n";
    std::fs::write(&json_path, json).map_err(|source| SummaryError::Write { path: json_path, source })?;
    let csv_path = batch.join("summary.csv");
    let csv_err = |source| SummaryError::Csv { path: csv_path.clone(), source };
    let mut w = csv::Writer::from_path(&csv_path).map_err(csv_err)?;
    let (header, table) = table(rows);
    w.write_record(&header).map_err(csv_err)?;
    for line in table {
        w.write_record(&line).map_err(csv_err)?;
    }
    w.flush().map_err(|source| SummaryError::Write { path: csv_path.clone(), source })?;
    Ok(csv_path)
}

/// The CSV's columns: the run, its parameters, the outcome, then a column per phase
/// (`phase_<name>_ms`), metric (`metric_<name>`) and rendezvous point
/// (`rendezvous_<name>_s`) any row has; an empty cell where a row has none.
pub fn table(rows: &[Row]) -> (Vec<String>, Vec<Vec<String>>) {
    let keys = |f: &dyn Fn(&Row) -> Vec<String>| rows.iter().flat_map(f).collect::<BTreeSet<String>>();
    let params = keys(&|r| r.params.keys().cloned().collect());
    let phases = keys(&|r| r.outcome.phases_ms.keys().cloned().collect());
    let metrics = keys(&|r| r.outcome.metrics.keys().cloned().collect());
    let points = keys(&|r| r.outcome.rendezvous.keys().cloned().collect());
    let mut header: Vec<String> = ["point", "rep", "node", "role"].map(String::from).to_vec();
    header.extend(params.iter().cloned());
    header.extend(["status", "exit", "reason", "wall_s", "results_files", "results_bytes"].map(String::from));
    header.extend(phases.iter().map(|p| format!("phase_{p}_ms")));
    header.extend(metrics.iter().map(|m| format!("metric_{m}")));
    header.extend(points.iter().map(|p| format!("rendezvous_{p}_s")));
    let num = |m: &BTreeMap<String, f64>, k: &str| m.get(k).map(|v| v.to_string()).unwrap_or_default();
    let table = rows
        .iter()
        .map(|r| {
            let o = &r.outcome;
            let mut line = vec![r.point.clone(), r.rep.to_string(), r.node.clone(), r.role.clone()];
            line.extend(params.iter().map(|p| match r.params.get(p) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            }));
            line.extend([
                o.status.clone(),
                o.exit.to_string(),
                o.reason.clone().unwrap_or_default(),
                format!("{:.3}", o.wall_s),
                o.results_files.to_string(),
                o.results_bytes.to_string(),
            ]);
            line.extend(phases.iter().map(|p| num(&o.phases_ms, p)));
            line.extend(metrics.iter().map(|m| num(&o.metrics, m)));
            line.extend(points.iter().map(|p| num(&o.rendezvous, p)));
            line
        })
        .collect();
    (header, table)
}
