//! `appliance kernel`: the project's own kernels: build one from a source tree or
//! tarball with the fragments of `kernel-configs/`, check a configuration against the
//! fragments, list the fragments, list and prune the kernel cache.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use appliance_host::host::size::human_size;
use appliance_host::kernel;
use appliance_host::kernel::kbuild::{self, Base, FragmentArg, Progress, ProgressSink, Request};
use appliance_host::kernel::kconfig::{self, Config, Kconfig};

/// Build and check the project's own kernels; list or prune their cache.
///
/// The fragments live in kernel-configs/ (compiled into this tool): base.config is what
/// every appliance needs; net, debug, bench and modules are topics to add; series/
/// adjusts them where option names differ between kernel series. The series comes from
/// --series, else APPLIANCE_KERNEL_SERIES, else the source, else 6.1.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KernelCommand,
}

#[derive(Subcommand)]
enum KernelCommand {
    Build(BuildArgs),
    Check(CheckArgs),
    Fragments(FragmentsArgs),
    Cache(CacheArgs),
}

/// What the kernel cache holds, and removing what is superseded.
///
/// Every build of the project's kernels stays in the cache under its key, with the
/// extracted source and the object directory it was compiled in (a gigabyte or two
/// each), and so does every Debian kernel fetched, and every kernel source tarball
/// fetched from Debian's archive. A changed fragment, patch or tarball leaves the older
/// ones behind. Without a subcommand: the list, with what `prune` would do to each entry
/// and why.
#[derive(clap::Args)]
struct CacheArgs {
    #[command(subcommand)]
    action: Option<CacheAction>,
}

#[derive(Subcommand)]
enum CacheAction {
    /// List the cache's entries: kind, size, and whether `prune` keeps each, and why
    List,
    /// Remove older builds of each kind, sources and objects no kept build uses, older
    /// Debian kernels, and what killed builds left
    ///
    /// Kept: the newest build of each kind (series, base, fragments, patches, headers),
    /// the source and object directory it records, the Debian kernel in use, and the
    /// source tarballs fetched from Debian's archive (apt's lists beside them go). A
    /// later build of a removed kind extracts and compiles again. Refuses while a build
    /// or fetch runs.
    Prune {
        /// Show what would be removed, and remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Remove everything, kept entries too (the next build or image fetches and
        /// compiles from the start)
        #[arg(long)]
        all: bool,
    },
}

/// Which fragments, shared by `build`, `check` and `fragments`.
#[derive(clap::Args)]
struct FragmentOptions {
    /// Kernel series (major.minor) whose adjustments apply [env: APPLIANCE_KERNEL_SERIES]
    #[arg(long, value_name = "SERIES")]
    series: Option<String>,

    /// A fragment on top of base.config: a built-in topic (net, debug, bench, modules, kexec)
    /// or a file (repeatable; later ones win)
    #[arg(short, long = "fragment", value_name = "NAME|FILE")]
    fragments: Vec<String>,

    /// Leave base.config out: only the fragments given
    #[arg(long)]
    no_base: bool,
}

impl FragmentOptions {
    fn series(&self) -> anyhow::Result<Option<String>> {
        Ok(kbuild::series_from(self.series.as_deref(), std::env::var(kbuild::SERIES_ENV).ok())?)
    }

    fn args(&self) -> Vec<FragmentArg> {
        self.fragments.iter().map(|f| FragmentArg::from(f.as_str())).collect()
    }
}

/// Build a kernel: base config, fragments, olddefconfig, check, bzImage; cached.
///
/// Starts from `make tinyconfig` (or defconfig), merges the fragments as
/// scripts/kconfig/merge_config.sh does, resolves them with `make olddefconfig`, and
/// refuses to build when an option the fragments asked for did not survive (naming the
/// dependency that dropped it). Then bzImage on every core. The result is cached by
/// source and fragments: an unchanged build prints the cached kernel at once.
///
/// Prints the bzImage's path on stdout (its directory also holds vmlinux, bootable
/// through PVH, config, System.map and build.json). Boot it with `appliance run
/// --kernel <bzImage>`, or name it `build:<series>` in a manifest or --kernel.
#[derive(clap::Args)]
struct BuildArgs {
    /// Kernel source: a tree or a tarball [default: /usr/src/linux-source-<series>.tar.xz,
    /// Debian's linux-source-<series> package]
    #[arg(long, value_name = "DIR|TARBALL")]
    source: Option<PathBuf>,

    /// The configuration the fragments are merged over
    #[arg(long, value_name = "BASE", default_value = "tinyconfig", value_parser = ["tinyconfig", "defconfig"])]
    base: String,

    #[command(flatten)]
    fragments: FragmentOptions,

    /// Also prepare the tree modules are built against (adds the modules fragment), for
    /// images with kernel_headers = true
    #[arg(long)]
    headers: bool,

    /// Build a tarball as it is, without the project's patches (kernel-configs/patches/:
    /// `lapic_timer_period=` and unpoisoned init memory, for faster emulated boots). A
    /// tree given as --source is never patched
    #[arg(long)]
    no_patches: bool,

    /// Parallel compile jobs [default: every core]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,

    /// Build again even when the cache has this kernel
    #[arg(long)]
    force: bool,
}

/// Check a .config against the fragments: did every requested option survive?
///
/// Lists each option whose value is not the one the fragments ask for, with the reason
/// when --source gives the kernel's Kconfig files (an unmet dependency and the values of
/// the options it names, a hidden prompt, an option that is only selected, an option
/// this kernel does not have). Exits 0 when everything survived, 1 when something was
/// lost.
///
/// Without CONFIG, the configuration is made from the source as a build makes it (base
/// configuration, fragments, olddefconfig) and checked, without compiling: this verifies
/// a series' adjustments against a source you bring (--series 5.15 --source
/// linux-5.15.160.tar.xz), or against Debian's source of the series, fetched if needed.
#[derive(clap::Args)]
struct CheckArgs {
    /// The resolved configuration (after olddefconfig), e.g. a build's `config` or
    /// /boot/config-$(uname -r) [default: made from the source]
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,

    #[command(flatten)]
    fragments: FragmentOptions,

    /// Kernel source tree or tarball whose Kconfig files explain what was lost (a
    /// tarball is extracted into the cache once)
    #[arg(long, value_name = "DIR|TARBALL")]
    source: Option<PathBuf>,

    /// Without CONFIG: extract a tarball without applying the project's patches (as
    /// `kernel build --no-patches` builds it)
    #[arg(long)]
    no_patches: bool,
}

/// List the fragments, or print them merged.
#[derive(clap::Args)]
struct FragmentsArgs {
    #[command(flatten)]
    fragments: FragmentOptions,

    /// Print the merged fragments (base, the ones given and the series' adjustments) as
    /// one fragment, e.g. for scripts/kconfig/merge_config.sh
    #[arg(long)]
    merged: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        KernelCommand::Build(args) => build(args),
        KernelCommand::Check(args) => check(args),
        KernelCommand::Fragments(args) => fragments(args),
        KernelCommand::Cache(args) => cache(args),
    }
}

fn cache(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let cache_dir = kernel::default_cache_dir()?;
    match args.action.unwrap_or(CacheAction::List) {
        CacheAction::List => {
            let entries = kernel::cache::survey(&cache_dir)?;
            print_cache(&cache_dir, &entries);
        }
        CacheAction::Prune { dry_run, all } => {
            let (verb, gone) = if dry_run {
                let entries = kernel::cache::survey(&cache_dir)?;
                ("would remove", entries.into_iter().filter(|e| all || !e.keep).collect())
            } else {
                ("removed", kernel::cache::prune(&cache_dir, all)?)
            };
            for e in &gone {
                println!("{verb} {} {} ({}): {}", e.kind.name(), e.name, human_size(e.bytes), e.why);
            }
            let bytes = human_size(gone.iter().map(|e| e.bytes).sum());
            if dry_run {
                println!("{} entries, {bytes} would be freed (--dry-run: nothing removed)", gone.len());
            } else {
                println!("{} entries removed, {bytes} freed", gone.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cache as a table, with the totals.
fn print_cache(cache_dir: &Path, entries: &[kernel::cache::Entry]) {
    println!(
        "kernel cache: {} and {}",
        cache_dir.join(kernel::KERNELS_DIR).display(),
        cache_dir.join(kernel::source::CACHE_DIR).display()
    );
    if entries.is_empty() {
        println!("(empty)");
        return;
    }
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    println!("{:<8}  {:<width$}  {:>9}  {:<16}  PRUNE", "KIND", "NAME", "SIZE", "BUILT");
    for e in entries {
        let built = e
            .built_at
            .and_then(|t| jiff::Timestamp::from_second(t as i64).ok())
            .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let verdict = if e.keep { "keeps" } else { "removes" };
        println!(
            "{:<8}  {:<width$}  {:>9}  {:<16}  {verdict}: {}",
            e.kind.name(),
            e.name,
            human_size(e.bytes),
            built,
            e.why
        );
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let freed: u64 = entries.iter().filter(|e| !e.keep).map(|e| e.bytes).sum();
    println!("total {}; `appliance kernel cache prune` would free {}", human_size(total), human_size(freed));
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let request = Request {
        source: args.source,
        series: args.fragments.series()?,
        base: args.base.parse::<Base>().map_err(anyhow::Error::msg)?,
        fragments: args.fragments.args(),
        without_base: args.fragments.no_base,
        headers: args.headers,
        patches: !args.no_patches,
        cache_dir: kernel::default_cache_dir()?,
    };
    let progress = progress_sink();
    let plan = kbuild::plan_fetching(&request, &progress)?;
    let built = kbuild::build(&plan, args.jobs, args.force, &progress)?;
    let size = std::fs::metadata(&built.bzimage).map_or(0, |m| m.len());
    if built.cached {
        log::info!("kernel {} from the cache ({}, bzImage {})", built.release, built.dir.display(), human_size(size));
    } else {
        log::info!(
            "built kernel {} in {} s: bzImage {}, all {} requested options kept ({})",
            built.release,
            built.facts.build_seconds,
            human_size(size),
            built.facts.checked,
            built.dir.display()
        );
    }
    if let Some(headers) = &built.headers {
        log::info!("headers for building modules: {}", headers.display());
    }
    println!("{}", built.bzimage.display());
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(config_path) = &args.config else {
        return check_source(args);
    };
    let text =
        std::fs::read_to_string(config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = Config::parse(&text, &config_path.display().to_string())?;
    let series = match args.fragments.series()? {
        Some(series) => series,
        None => Config::series_from_header(&text).unwrap_or_else(|| {
            log::warn!(
                "{} does not say its kernel version: checking against series {}",
                config_path.display(),
                kbuild::DEFAULT_SERIES
            );
            kbuild::DEFAULT_SERIES.to_owned()
        }),
    };
    let fragments = kbuild::fragments(&series, &args.fragments.args(), !args.fragments.no_base)?;
    let (wanted, _) = kbuild::merge(&fragments)?;
    let kconfig = match &args.source {
        Some(source) => Some(load_kconfig(source, &series)?),
        None => None,
    };
    let report = kconfig::check(&wanted, &config, kconfig.as_ref());
    let names: Vec<&str> = fragments.iter().map(|f| f.name.as_str()).collect();
    if report.is_ok() {
        println!("{}: all {} requested options kept ({})", config_path.display(), report.checked, names.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    print!("{report}");
    println!(
        "{}: {} of {} requested options lost ({})",
        config_path.display(),
        report.lost.len(),
        report.checked,
        names.join(", ")
    );
    Ok(ExitCode::from(1))
}

/// `kernel check` without a configuration: the one a build of the source would compile.
fn check_source(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let request = Request {
        source: args.source,
        series: args.fragments.series()?,
        base: Base::Tinyconfig,
        fragments: args.fragments.args(),
        without_base: args.fragments.no_base,
        headers: false,
        patches: !args.no_patches,
        cache_dir: kernel::default_cache_dir()?,
    };
    let progress = progress_sink();
    let plan = kbuild::plan_fetching(&request, &progress)?;
    let (config, report) = kbuild::resolve_only(&plan, &progress)?;
    let names: Vec<&str> = plan.fragments.iter().map(|f| f.name.as_str()).collect();
    if report.is_ok() {
        println!(
            "series {}: all {} requested options kept ({}; {})",
            plan.series,
            report.checked,
            names.join(", "),
            config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{report}");
    println!(
        "series {}: {} of {} requested options lost ({}; {})",
        plan.series,
        report.lost.len(),
        report.checked,
        names.join(", "),
        config.display()
    );
    Ok(ExitCode::from(1))
}

/// The Kconfig files of a tree, or of a tarball extracted into the cache.
fn load_kconfig(source: &Path, series: &str) -> anyhow::Result<Kconfig> {
    let mut request = Request::series(series, kernel::default_cache_dir()?);
    request.source = Some(source.to_owned());
    let plan = kbuild::plan(&request)?;
    let tree = kbuild::prepare_source(&plan, &progress_sink())?;
    let kconfig = Kconfig::load(&tree)?;
    log::debug!("read {} options from the Kconfig files of {}", kconfig.symbol_count(), tree.display());
    Ok(kconfig)
}

fn fragments(args: FragmentsArgs) -> anyhow::Result<ExitCode> {
    let series = args.fragments.series()?.unwrap_or_else(|| kbuild::DEFAULT_SERIES.to_owned());
    if args.merged {
        let fragments = kbuild::fragments(&series, &args.fragments.args(), !args.fragments.no_base)?;
        let (wanted, redefinitions) = kbuild::merge(&fragments)?;
        for redefinition in redefinitions {
            log::info!("{redefinition}");
        }
        let names: Vec<&str> = fragments.iter().map(|f| f.name.as_str()).collect();
        println!("# appliance kernel fragments, series {series}: {}", names.join(" + "));
        print!("{}", wanted.render());
        return Ok(ExitCode::SUCCESS);
    }
    println!("topics (appliance kernel build --fragment NAME):");
    for name in kbuild::topics() {
        let text = kbuild::topic(name).unwrap_or_default();
        let summary = text.lines().next().unwrap_or_default().trim_start_matches('#').trim();
        let count = Config::parse(text, name).map_or(0, |c| c.len());
        println!("  {name:<8} {count:>3} options  {summary}");
    }
    println!("series with adjustments (--series, {}):", kbuild::SERIES_ENV);
    for series in kbuild::SERIES {
        let adjusted: Vec<&str> = kbuild::topics().filter(|t| kbuild::adjustment(series, t).is_some()).collect();
        println!("  {series:<5} adjusts {}", adjusted.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The compile's progress: a bar on a terminal (its length is the previous compile's
/// step count, a spinner the first time), a line every half minute otherwise (CI logs),
/// nothing with --quiet.
pub fn progress_sink() -> ProgressSink {
    let quiet = log::max_level() < log::LevelFilter::Info;
    let terminal = std::io::stderr().is_terminal();
    let state = Arc::new(Mutex::new(Display { bar: None, last_line: Instant::now(), started: Instant::now() }));
    ProgressSink(Arc::new(move |progress| {
        if quiet {
            return;
        }
        let Ok(mut display) = state.lock() else { return };
        display.show(progress, terminal);
    }))
}

struct Display {
    bar: Option<ProgressBar>,
    last_line: Instant,
    started: Instant,
}

/// How often a step count is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(30);

impl Display {
    fn show(&mut self, progress: &Progress, terminal: bool) {
        match progress {
            Progress::Stage(stage) => {
                self.finish();
                self.started = Instant::now();
                self.last_line = Instant::now();
                log::info!("kernel: {stage}");
            }
            Progress::Step { done, total, line } => {
                if !terminal {
                    if self.last_line.elapsed() >= LINE_EVERY {
                        self.last_line = Instant::now();
                        let of = total.map(|t| format!("/~{t}")).unwrap_or_default();
                        log::info!("kernel: {done}{of} steps, {} s: {line}", self.started.elapsed().as_secs());
                    }
                    return;
                }
                let bar = self.bar.get_or_insert_with(|| new_bar(*total));
                // A compile may take more steps than the last one did.
                if let Some(length) = bar.length()
                    && *done > length
                {
                    bar.set_length(*done);
                }
                bar.set_position(*done);
                bar.set_message(line.clone());
            }
            Progress::Finished => self.finish(),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} ~{eta} left\n{wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {pos} steps (first build of this source) {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
