//! `appliance exp`: experiments, many runs over a parameter matrix (see
//! `appliance_host::exp`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_host::exp::batch::{self, Settings};
use appliance_host::exp::definition::{self, Definition, HostCapacity};
use appliance_host::exp::node::RoleBoot;
use appliance_host::exp::{matrix, node, report, slurm, summary};
use appliance_host::kernel::kbuild;

/// Run experiments: one appliance booted over a grid of parameters, with repetitions.
///
/// An experiment is a directory with an experiment.toml (`appliance exp new DIR` writes a
/// commented one). Each run lands in DIR/runs/<batch>/<point>/<rep>/<node>/ with its
/// console.log, status.jsonl, output, results/, params.json and outcome.json; each
/// batch gets summary.csv and summary.json.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    New(NewArgs),
    Run(RunArgs),
    Report(ReportArgs),
    Status(BatchArgs),
    Cancel(BatchArgs),
}

/// A batch of an experiment: with `status`, the state of each run from its directory and,
/// for a batch on Slurm, from squeue/sacct; with `cancel`, cancel its Slurm job array.
#[derive(clap::Args)]
struct BatchArgs {
    /// The experiment directory
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// The batch; default: the latest
    #[arg(value_name = "BATCH")]
    batch: Option<String>,
}

/// Summarise a batch: statistics per parameter point, and a plot.
///
/// For the batch (the latest, or BATCH): per parameter point, the count, mean,
/// standard deviation, min and max of each metric and of the run time (of the runs that
/// succeeded, per node role); with --plot, an SVG of that metric against --x, one line
/// per value of --by, with error bars of one standard deviation over the repetitions.
/// The summary (summary.csv, summary.json) is written again from the run directories.
#[derive(clap::Args)]
struct ReportArgs {
    /// The experiment directory
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// The batch (a directory under DIR/runs); default: the latest
    #[arg(value_name = "BATCH")]
    batch: Option<String>,

    /// Plot this metric (a name in the runs' metrics.json) into <batch>/plot-<METRIC>.svg
    #[arg(long, value_name = "METRIC", requires = "x")]
    plot: Option<String>,

    /// The parameter on the plot's x axis (numbers)
    #[arg(long, value_name = "PARAM")]
    x: Option<String>,

    /// One line per value of this parameter
    #[arg(long, value_name = "PARAM")]
    by: Option<String>,
}

/// Write a commented experiment.toml into DIR (made if missing; an existing one is kept)
#[derive(clap::Args)]
struct NewArgs {
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Run every point of the matrix, REPETITIONS times each, up to N VMs at once.
///
/// A run that fails or times out is recorded with its reason while the others go on.
/// Ctrl-C or SIGTERM asks every VM to power off (killed after --stop-grace seconds),
/// starts no new run, and leaves the batch resumable with --resume. Exits with 0 when
/// every run succeeded, 1 when some failed, 130 when interrupted.
#[derive(clap::Args)]
struct RunArgs {
    /// The experiment directory (holding experiment.toml)
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// Finish an interrupted batch (the latest, or BATCH): runs already complete are
    /// skipped, incomplete ones moved aside to <rep>.interrupted and run again
    #[arg(long, value_name = "BATCH", num_args = 0..=1, default_missing_value = "")]
    resume: Option<String>,

    /// Run only the points whose parameter NAME has VALUE (repeatable: all must hold)
    #[arg(long, value_name = "NAME=VALUE")]
    filter: Vec<String>,

    /// VMs at once, instead of the definition's max_vms (default: from cores and memory)
    #[arg(long, value_name = "N")]
    max_vms: Option<u32>,

    /// Seconds a stopped VM gets to power off before QEMU is killed
    #[arg(long, value_name = "SECONDS", default_value_t = appliance_host::vm::stop::DEFAULT_GRACE.as_secs())]
    stop_grace: u64,

    /// Where the runs go: here, or one Slurm job array (a task per run, on the nodes
    /// Slurm picks; DIR must be on a file system they share); `appliance exp status` and
    /// `cancel` follow it
    #[arg(long, value_name = "WHERE", default_value = "local", value_parser = ["local", "slurm"])]
    on: String,

    /// The Slurm partition
    #[arg(long, value_name = "P", requires = "on")]
    partition: Option<String>,

    /// Slurm tasks at once (the array's %N); default: all
    #[arg(long, value_name = "N")]
    max_running: Option<u32>,

    /// Run only task I of a batch submitted to Slurm (what each task of the array runs)
    #[arg(long, value_name = "I", hide = true, requires = "resume")]
    task: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::New(a) => new(&a.dir),
        Command::Run(a) => run_batch(a),
        Command::Report(a) => report(a),
        Command::Status(a) => status(a),
        Command::Cancel(a) => cancel(a),
    }
}

fn new(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(definition::FILE_NAME);
    if path.exists() {
        bail!("{} exists: edit it, or pick another directory", path.display());
    }
    std::fs::write(&path, definition::TEMPLATE).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The definition of `dir`, with `max_vms` replaced when given, checked against this host.
pub(crate) fn load(dir: &Path, max_vms: Option<u32>) -> anyhow::Result<Definition> {
    let path = dir.join(definition::FILE_NAME);
    let mut text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}: is {} an experiment directory?", path.display(), dir.display()))?;
    if let Some(n) = max_vms {
        // The command line wins over the file; checked like the file's own.
        text = format!("max_vms = {n}\n{}", strip_max_vms(&text));
    }
    Ok(Definition::parse(&text, &path, HostCapacity::of_this_host())?)
}

fn strip_max_vms(text: &str) -> String {
    let mut in_table = false;
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            in_table |= t.starts_with('[');
            in_table || !(t.starts_with("max_vms") && t[7..].trim_start().starts_with('='))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_batch(args: RunArgs) -> anyhow::Result<ExitCode> {
    let def = load(&args.dir, args.max_vms)?;
    let filters = args.filter.iter().map(|f| matrix::parse_filter(f, &def.matrix)).collect::<Result<Vec<_>, _>>()?;
    let resume = args.resume.as_deref().map(|b| (!b.is_empty()).then_some(b));
    // A task of a Slurm array runs its one run, with the images built at submission.
    let only = match (args.task, resume.flatten()) {
        (Some(i), Some(batch)) => Some(slurm::task(&args.dir.join(batch::RUNS).join(batch), i)?),
        (Some(_), None) => bail!("--task needs the batch: --resume BATCH"),
        _ => None,
    };
    if def.results == definition::Transport::Nfs {
        // Before any image is built or VM boots.
        appliance_host::vm::nfs::usable().context("`results = \"nfs\"`")?;
    }
    let boots = role_boots(&args.dir, &def, only.is_none())?;
    let vms_at_once = def.vms_at_once(HostCapacity::of_this_host());
    let plan = match batch::plan(&args.dir, &def, &filters, resume, only.as_ref().map(|t| (t.point.as_str(), t.rep))) {
        Err(batch::BatchError::AllDone { .. }) if only.is_some() => return Ok(ExitCode::SUCCESS),
        other => other?,
    };
    if args.on == "slurm" {
        return submit(&args, &def, &plan);
    }
    log::info!(
        "batch {}: {} run(s) of {} VM(s) to do ({} already complete), {} VM(s) at once",
        plan.batch,
        plan.runs.len(),
        def.vms_per_run(),
        plan.complete,
        vms_at_once
    );
    // Before the scheduler's threads start, so that they inherit the blocked signals and
    // only this thread reads them.
    let signals = appliance_host::vm::stop::catch_stop_signals().context("cannot set up signal handling")?;
    let settings = Settings { vms_at_once, grace: Duration::from_secs(args.stop_grace), boots };
    let mut poll = || matches!(signals.read_signal(), Ok(Some(_)));
    let bar = Bar::new(plan.runs.len(), plan.complete);
    let report = batch::run(&def, &plan, &settings, bar.clone(), &mut poll)?;
    bar.bar.finish_and_clear();
    if only.is_some() {
        // Tasks run side by side: `status` and `report` write the batch's summary.
        return Ok(if report.failed + report.interrupted > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    let rows = summary::rows(&plan.dir);
    let csv = summary::write(&plan.dir, &rows)?;
    eprintln!(
        "appliance: batch {}: {} run(s) ok, {} failed, {} interrupted in {:.1} s ({} VM(s) at most at once); \
         summary in {}",
        plan.batch,
        report.done,
        report.failed,
        report.interrupted,
        report.wall.as_secs_f64(),
        report.peak_vms,
        csv.display()
    );
    println!("{}", plan.dir.display());
    Ok(if report.interrupted > 0 {
        ExitCode::from(130)
    } else if report.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--on slurm`: the batch as one job array.
fn submit(args: &RunArgs, def: &Definition, plan: &batch::Plan) -> anyhow::Result<ExitCode> {
    if plan.runs.is_empty() {
        bail!("no run to submit");
    }
    let exe = std::env::current_exe().context("cannot find the appliance executable")?;
    let exp_dir = args.dir.canonicalize().with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    // The run's bound, the stop's grace, and a few minutes for the boot of the task itself.
    let minutes = (def.timeout + args.stop_grace).div_ceil(60) + 5;
    let cpus = def.nodes.iter().map(|r| r.cpus * r.count).sum();
    let submit = slurm::Submit {
        exe: &exe,
        exp_dir: &exp_dir,
        partition: args.partition.as_deref(),
        max_running: args.max_running.unwrap_or(plan.runs.len() as u32),
        minutes,
        cpus_per_task: cpus,
        grace_s: args.stop_grace,
    };
    let job = slurm::submit(plan, &submit)?;
    eprintln!(
        "appliance: batch {}: {} run(s) submitted as Slurm job array {job}; `appliance exp status {}` follows it",
        plan.batch,
        plan.runs.len(),
        args.dir.display()
    );
    println!("{}", plan.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The batch directory of `dir` named `batch`, or the latest.
fn batch_dir(dir: &Path, batch: Option<&str>) -> anyhow::Result<(String, PathBuf)> {
    let runs = dir.join(batch::RUNS);
    let name = match batch {
        Some(b) => b.to_string(),
        None => batch::latest_batch(&runs).with_context(|| format!("no batch in {}", runs.display()))?,
    };
    let path = runs.join(&name);
    if !path.is_dir() {
        bail!("no batch `{name}` in {} (batches: {})", runs.display(), batch::batches(&runs).join(", "));
    }
    Ok((name, path))
}

fn status(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let (name, dir) = batch_dir(&args.dir, args.batch.as_deref())?;
    let def = load(&args.dir, None)?;
    let nodes = batch::node_names(&def);
    let outcome = |point: &str, rep: u32| -> String {
        let run = dir.join(point).join(rep.to_string());
        let read = |n: &String| {
            std::fs::read_to_string(run.join(n).join(node::OUTCOME))
                .ok()
                .and_then(|t| serde_json::from_str::<node::Outcome>(&t).ok())
        };
        let outcomes: Vec<Option<node::Outcome>> = nodes.iter().map(read).collect();
        if outcomes.iter().all(Option::is_some) {
            let bad = outcomes.iter().flatten().find(|o| o.status != "ok");
            bad.map_or("ok".to_string(), |o| o.status.clone())
        } else if run.exists() {
            "started".to_string()
        } else {
            "not started".to_string()
        }
    };
    let tasks = slurm::tasks(&dir);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    if tasks.is_empty() {
        println!("batch {name} (local)");
        for point in matrix::points(&def.matrix) {
            for rep in 1..=def.repetitions {
                let state = outcome(&point.dir_name(), rep);
                println!("  {}/{rep}: {state}", point.dir_name());
                *counts.entry(state).or_default() += 1;
            }
        }
    } else {
        let job = slurm::job(&dir, &name)?;
        let states = slurm::states(&job)?;
        println!("batch {name}: Slurm job array {job}");
        for (i, t) in tasks.iter().enumerate() {
            let run = outcome(&t.point, t.rep);
            let queue = states.get(&i).map_or("-", String::as_str);
            println!("  task {i} {}/{}: {run} (slurm: {queue})", t.point, t.rep);
            *counts.entry(run).or_default() += 1;
        }
    }
    let rows = summary::rows(&dir);
    if !rows.is_empty() {
        summary::write(&dir, &rows)?;
    }
    let line: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("runs: {}", line.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn cancel(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let (name, dir) = batch_dir(&args.dir, args.batch.as_deref())?;
    let job = slurm::job(&dir, &name)?;
    slurm::cancel(&job)?;
    eprintln!("appliance: cancelled Slurm job array {job} (batch {name}); `--resume {name}` runs what is left");
    Ok(ExitCode::SUCCESS)
}

fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let runs = args.dir.join(batch::RUNS);
    let name = match args.batch {
        Some(b) => b,
        None => batch::latest_batch(&runs).with_context(|| format!("no batch in {}", runs.display()))?,
    };
    let dir = runs.join(&name);
    if !dir.is_dir() {
        bail!("no batch `{name}` in {} (batches: {})", runs.display(), batch::batches(&runs).join(", "));
    }
    let rows = summary::rows(&dir);
    if rows.is_empty() {
        bail!("batch {name} has no complete run yet");
    }
    summary::write(&dir, &rows)?;
    print!("{}", report::render(&report::by_point(&rows)));
    if let (Some(metric), Some(x)) = (&args.plot, &args.x) {
        let path = dir.join(format!("plot-{metric}.svg"));
        let png = report::plot(&rows, &report::PlotSpec { metric, x, by: args.by.as_deref() }, &path)?;
        println!("plot: {}", path.display());
        println!("plot: {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The progress bar: runs done (of the batch's total), failed, running, and the time left.
struct Bar {
    bar: indicatif::ProgressBar,
    complete: usize,
}

impl Bar {
    fn new(todo: usize, complete: usize) -> std::sync::Arc<Bar> {
        let bar = indicatif::ProgressBar::new((todo + complete) as u64);
        bar.set_position(complete as u64);
        let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {msg}, {elapsed}, ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(500));
        std::sync::Arc::new(Bar { bar, complete })
    }
}

impl batch::Progress for Bar {
    fn counts(&self, done: usize, failed: usize, running: usize, _total: usize) {
        self.bar.set_position((self.complete + done + failed) as u64);
        self.bar.set_message(format!("{done} done, {failed} failed, {running} running"));
    }

    fn run_ended(&self, label: &str, failure: Option<&str>) {
        self.bar.suspend(|| match failure {
            None => log::info!("run {label}: ok"),
            Some(why) => log::warn!("run {label}: {why}"),
        });
    }

    fn stopping(&self) {
        self.bar.suspend(|| log::warn!("stopping: asking every VM to power off; no new run starts"));
    }
}

/// Each role's app dir (its image built into DIR/apps/<role> first, when `build`) and how
/// it boots.
fn role_boots(dir: &Path, def: &Definition, build: bool) -> anyhow::Result<BTreeMap<String, RoleBoot>> {
    let kernel = match &def.kernel {
        None => None,
        Some(k) => Some(kernel_file(dir, k)?),
    };
    let mut boots = BTreeMap::new();
    for role in &def.nodes {
        let app_dir = match (&role.image, &role.app) {
            (_, Some(app)) => dir.join(app),
            (Some(_), None) if !build => dir.join("apps").join(&role.name),
            (Some(image), None) => {
                // An image beside the definition, else one the build finds (./images/NAME, or
                // the toolkit's own images/NAME).
                let local = dir.join(image);
                let target = if local.join(appliance_host::image::manifest::FILE_NAME).exists() {
                    local.display().to_string()
                } else {
                    image.clone()
                };
                let out = dir.join("apps").join(&role.name);
                super::build::build_image(&target, Some(out), None, None, None)
                    .with_context(|| format!("cannot build the image of node role `{}`", role.name))?
            }
            (None, None) => bail!("node role `{}` has neither image nor app", role.name),
        };
        let boot = RoleBoot::new(&app_dir, kernel.as_deref(), role.cpus)
            .with_context(|| format!("node role `{}`", role.name))?;
        boots.insert(role.name.clone(), boot);
    }
    Ok(boots)
}

/// The definition's `kernel`: a path (relative to DIR), or build:<series> from the cache.
fn kernel_file(dir: &Path, kernel: &str) -> anyhow::Result<PathBuf> {
    let Some(series) = kbuild::parse_build_name(kernel) else { return Ok(dir.join(kernel)) };
    let request = kbuild::Request::series(&series?, appliance_host::kernel::default_cache_dir()?);
    let plan = kbuild::plan(&request)?;
    match kbuild::cached(&plan) {
        Some(built) => Ok(built.bzimage),
        None => bail!("kernel `{kernel}` is not built yet: run `appliance kernel build` for it first"),
    }
}
