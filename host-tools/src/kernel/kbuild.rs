//! The project's own kernels: built from a kernel source tree or tarball with the
//! fragments of `kernel-configs/`, checked, and cached.
//!
//! A build starts from `make tinyconfig` (or `defconfig`), merges the fragments over it
//! as `scripts/kconfig/merge_config.sh` does, resolves the result with `make
//! olddefconfig`, and refuses to go on when an option the fragments asked for did not
//! survive ([`crate::kernel::kconfig::check`], with the dependency that dropped it). Then `make
//! bzImage` on every core, with progress reported through a callback (this module draws
//! nothing).
//!
//! The fragments are compiled into the tool (`include_str!` of `kernel-configs/`), so
//! the CLI works outside a checkout; a user's own fragment is a file.
//!
//! Cache layout, under `<cache>/kernels/build/` (see [`crate::kernel::default_cache_dir`]):
//! - `<series>-<base>-<key>/`: one finished kernel (`bzImage`, `vmlinux`, `config`,
//!   `System.map`, `build.json`; `modules/lib/modules/<release>/` for a kernel with
//!   module support, `headers/` when asked for); `key` hashes the
//!   source's identity, the base and the merged settings (comments do not count), so an
//!   unchanged build is a directory lookup. Written in a temporary directory renamed into place.
//! - `src/<name>-<id>/`: a tarball extracted once, with the project's patches applied
//!   (`id` covers both);
//! - `obj/<series>-<id>/`: the object directory (`make O=`) of one source, base and set
//!   of fragments, kept so that an edited fragment recompiles only what changed;
//! - `.lock`: held while building, so concurrent builds take turns.

use crate::host::fs_error::{FsError, io_error};
use crate::host::process::find_program;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::kernel::kconfig::{self, Config, Kconfig, Redefinition, Report};
use crate::kernel::source;

/// The project's kernel patches (`kernel-configs/patches/`), applied with `patch -p1` to
/// every tarball it extracts, in this order. A tree given as `--source` is the user's
/// and is built as it is. Each patch's text is in the cache key.
const PATCHES: [(&str, &str); 2] = [
    ("lapic-timer-period", include_str!("../../../kernel-configs/patches/lapic-timer-period.patch")),
    ("no-initmem-poison", include_str!("../../../kernel-configs/patches/no-initmem-poison.patch")),
];
/// The patch that adds `lapic_timer_period=`: a kernel built with it (its `build.json`
/// lists it) can be given the APIC timer's period instead of calibrating it.
pub const LAPIC_TIMER_PERIOD_PATCH: &str = "lapic-timer-period";

/// Series with adjustments in `kernel-configs/series/`.
pub const SERIES: [&str; 6] = ["5.4", "5.10", "5.15", "6.1", "6.6", "6.12"];
/// The series built when nothing says otherwise: Debian 12's `linux-source-6.1`.
pub const DEFAULT_SERIES: &str = "6.1";
/// Picks the series, as the original's environment variable did; `--series` wins.
pub const SERIES_ENV: &str = "APPLIANCE_KERNEL_SERIES";
/// The manifest's and `--kernel`'s prefix for a kernel built here: `build:6.1`.
pub const BUILD_PREFIX: &str = "build:";

/// Bump when the build recipe changes in a way the key does not see.
const RECIPE: &str = "appliance-kbuild-1";
pub const BUILD_DIR: &str = "kernels/build";
pub const LOCK_FILE: &str = ".lock";
pub const FACTS: &str = "build.json";
/// Under [`BUILD_DIR`]: the extracted sources, and the object directories.
pub const SOURCES_DIR: &str = "src";
pub const OBJECTS_DIR: &str = "obj";
/// The prefixes of a build's temporary directories, left behind by a build that was killed.
pub const STAGING_PREFIXES: [&str; 2] = [".install-", ".extract-"];
/// Where the step count of the last compile is kept, for the next progress bar.
const STEPS_FILE: &str = ".appliance-steps";
/// Lines of make's output quoted in an error.
const TAIL_LINES: usize = 25;

/// The built-in topic fragments: `kernel-configs/<name>.config`.
const TOPICS: [(&str, &str); 6] = [
    ("base", include_str!("../../../kernel-configs/base.config")),
    ("net", include_str!("../../../kernel-configs/net.config")),
    ("debug", include_str!("../../../kernel-configs/debug.config")),
    ("bench", include_str!("../../../kernel-configs/bench.config")),
    ("modules", include_str!("../../../kernel-configs/modules.config")),
    ("kexec", include_str!("../../../kernel-configs/kexec.config")),
];

/// Per-series adjustments: `kernel-configs/series/<series>/<topic>.config`.
const ADJUSTMENTS: [(&str, &str, &str); 9] = [
    ("5.4", "base", include_str!("../../../kernel-configs/series/5.4/base.config")),
    ("5.4", "debug", include_str!("../../../kernel-configs/series/5.4/debug.config")),
    ("5.10", "base", include_str!("../../../kernel-configs/series/5.10/base.config")),
    ("5.10", "debug", include_str!("../../../kernel-configs/series/5.10/debug.config")),
    ("5.15", "base", include_str!("../../../kernel-configs/series/5.15/base.config")),
    ("5.15", "debug", include_str!("../../../kernel-configs/series/5.15/debug.config")),
    ("6.1", "base", include_str!("../../../kernel-configs/series/6.1/base.config")),
    ("6.6", "base", include_str!("../../../kernel-configs/series/6.6/base.config")),
    ("6.12", "base", include_str!("../../../kernel-configs/series/6.12/base.config")),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] kconfig::Error),
    #[error("no kernel source at {}: pass --source DIR|TARBALL", path.display())]
    NoSource { path: PathBuf },
    #[error(
        "no source for series {series} here ({} is not installed, nor fetched): `appliance kernel build \
         --series {series}` fetches it from Debian's archive, or pass --source DIR|TARBALL",
        source::package(series)
    )]
    NotFetched { series: String },
    #[error(transparent)]
    Fetch(#[from] source::Error),
    #[error("{} is neither a kernel source tree (Makefile and Kconfig) nor a tarball", path.display())]
    NotASource { path: PathBuf },
    #[error("the source in {} is Linux {version}, not the series {series} asked for: pass --series {found}", path.display())]
    SeriesMismatch { path: PathBuf, version: String, series: String, found: String },
    #[error("invalid series {0:?}: expected major.minor, such as 6.1")]
    BadSeries(String),
    #[error(
        "no fragment {name:?}: neither a built-in one ({}) nor a file",
        TOPICS.map(|(name, _)| name).join(", ")
    )]
    NoFragment { name: String },
    #[error("building a kernel needs {}: install them (Debian: `apt-get install {}`)", tools.join(", "), packages.join(" "))]
    ToolsMissing { tools: Vec<String>, packages: Vec<String> },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("`{command}` could not be started")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot extract {}: {stderr}", tarball.display())]
    Extract { tarball: PathBuf, stderr: String },
    #[error("{} holds no kernel source tree (no top directory with a Makefile and Kconfig)", tarball.display())]
    EmptyTarball { tarball: PathBuf },
    #[error(
        "the project's patch {name}.patch does not apply to {}:\n{output}\nbuild it without the project's \
         patches (--no-patches), or from a tree you patch yourself (--source DIR)",
        tarball.display()
    )]
    Patch { name: String, tarball: PathBuf, output: String },
    #[error("`make {target}` failed ({status}); the whole log is {}; its end:\n{tail}", log.display())]
    Make { target: String, status: ExitStatus, log: PathBuf, tail: String },
    #[error(
        "the resolved configuration lost {} of the {} requested option(s), so it was not built \
         (it is in {}):\n{report}",
        report.lost.len(),
        report.checked,
        config.display()
    )]
    Lost { report: Report, config: PathBuf },
    #[error("make left no {} behind", path.display())]
    NoOutput { path: PathBuf },
}

/// The configuration a build starts from, before the fragments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Base {
    /// Everything off that can be: small and fast to build; the fragments add the rest.
    #[default]
    Tinyconfig,
    /// The architecture's default configuration: bigger, with many drivers.
    Defconfig,
}

impl Base {
    pub fn name(self) -> &'static str {
        match self {
            Base::Tinyconfig => "tinyconfig",
            Base::Defconfig => "defconfig",
        }
    }
}

impl std::str::FromStr for Base {
    type Err = String;
    fn from_str(name: &str) -> Result<Base, String> {
        match name {
            "tinyconfig" => Ok(Base::Tinyconfig),
            "defconfig" => Ok(Base::Defconfig),
            other => Err(format!("unknown base {other:?}: tinyconfig or defconfig")),
        }
    }
}

/// A fragment as named on the command line: a built-in topic or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentArg {
    Topic(&'static str),
    File(PathBuf),
}

impl From<&str> for FragmentArg {
    /// A built-in topic's name (`net`, `net.config`) or else a path.
    fn from(arg: &str) -> FragmentArg {
        let topic = arg.strip_suffix(".config").unwrap_or(arg);
        match TOPICS.iter().find(|(name, _)| *name == topic) {
            Some((name, _)) if !arg.contains('/') && !Path::new(arg).exists() => FragmentArg::Topic(name),
            _ => FragmentArg::File(PathBuf::from(arg)),
        }
    }
}

/// A fragment's name (for origins and the cache key) and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub name: String,
    pub text: String,
}

/// The names of the built-in topic fragments.
pub fn topics() -> impl Iterator<Item = &'static str> {
    TOPICS.iter().map(|(name, _)| *name)
}

/// A built-in topic fragment's text.
pub fn topic(name: &str) -> Option<&'static str> {
    TOPICS.iter().find(|(topic, _)| *topic == name).map(|(_, text)| *text)
}

/// The series' adjustment of a topic, if it has one.
pub fn adjustment(series: &str, topic: &str) -> Option<&'static str> {
    ADJUSTMENTS.iter().find(|(s, t, _)| *s == series && *t == topic).map(|(_, _, text)| *text)
}

/// Whether `kernel-configs/series/` has this series.
pub fn known_series(series: &str) -> bool {
    SERIES.contains(&series)
}

/// The series to use: `--series`, else `$APPLIANCE_KERNEL_SERIES`, else `None`.
pub fn series_from(arg: Option<&str>, env: Option<String>) -> Result<Option<String>, Error> {
    let chosen = arg.map(str::to_owned).or_else(|| env.filter(|value| !value.trim().is_empty()));
    match chosen {
        None => Ok(None),
        Some(series) => {
            let series = series.trim().to_owned();
            match kconfig::series_of(&series) {
                Some(normalised) if normalised == series => Ok(Some(series)),
                _ => Err(Error::BadSeries(series)),
            }
        }
    }
}

/// The fragments of a build or a check, in merge order: `base` (unless `with_base` is
/// false), then the requested ones; each built-in topic is followed by the series'
/// adjustment of it.
pub fn fragments(series: &str, requested: &[FragmentArg], with_base: bool) -> Result<Vec<Fragment>, Error> {
    let mut args: Vec<FragmentArg> = Vec::new();
    if with_base {
        args.push(FragmentArg::Topic("base"));
    }
    for arg in requested {
        if !args.contains(arg) {
            args.push(arg.clone());
        }
    }
    if !known_series(series) {
        log::warn!(
            "kernel-configs/ has no adjustments for series {series} (known: {}): using the fragments as they are",
            SERIES.join(", ")
        );
    }
    let mut out = Vec::new();
    for arg in args {
        match arg {
            FragmentArg::Topic(name) => {
                let text = topic(name).ok_or_else(|| Error::NoFragment { name: name.to_owned() })?;
                out.push(Fragment { name: format!("{name}.config"), text: text.to_owned() });
                if let Some(text) = adjustment(series, name) {
                    out.push(Fragment { name: format!("series/{series}/{name}.config"), text: text.to_owned() });
                }
            }
            FragmentArg::File(path) => {
                if !path.is_file() {
                    return Err(Error::NoFragment { name: path.display().to_string() });
                }
                let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
                out.push(Fragment { name: path.display().to_string(), text });
            }
        }
    }
    Ok(out)
}

/// The fragments merged into one request, and the values later fragments changed.
pub fn merge(fragments: &[Fragment]) -> Result<(Config, Vec<Redefinition>), Error> {
    let mut wanted = Config::new();
    let mut changed = Vec::new();
    for fragment in fragments {
        changed.extend(wanted.merge(&Config::parse(&fragment.text, &fragment.name)?));
    }
    Ok((wanted, changed))
}

/// Where a kernel's source comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Tarball(PathBuf),
    Tree(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Tarball(path) | Source::Tree(path) => path,
        }
    }
}

/// `--source` or, without it, Debian's tarball for the series: installed on the host
/// or fetched into `cache_dir` before (see [`source::find`]; [`plan_fetching`] fetches it).
pub fn resolve_source(arg: Option<&Path>, series: &str, cache_dir: &Path) -> Result<Source, Error> {
    let Some(path) = arg else {
        return source::find(series, cache_dir)
            .map(Source::Tarball)
            .ok_or_else(|| Error::NotFetched { series: series.to_owned() });
    };
    if path.is_dir() {
        if path.join("Makefile").is_file() && path.join("Kconfig").is_file() {
            return Ok(Source::Tree(path.to_owned()));
        }
        return Err(Error::NotASource { path: path.to_owned() });
    }
    if path.is_file() {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.contains(".tar") || name.ends_with(".tgz") {
            return Ok(Source::Tarball(path.to_owned()));
        }
        return Err(Error::NotASource { path: path.to_owned() });
    }
    Err(Error::NoSource { path: path.to_owned() })
}

/// The series a source announces without extracting it: a tree's Makefile, or a
/// version in a tarball's name (`linux-source-6.1.tar.xz`, `linux-6.6.30.tar.xz`).
pub fn series_of_source(source: &Source) -> Option<String> {
    match source {
        Source::Tree(dir) => makefile_version(dir).ok().and_then(|v| kconfig::series_of(&v)),
        Source::Tarball(path) => {
            let name = path.file_name()?.to_string_lossy().into_owned();
            let start = name.find(|c: char| c.is_ascii_digit())?;
            let version: String = name[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            kconfig::series_of(version.trim_end_matches('.'))
        }
    }
}

/// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from a tree's top Makefile.
pub fn makefile_version(tree: &Path) -> Result<String, Error> {
    let path = tree.join("Makefile");
    let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
    let field = |name: &str| {
        text.lines()
            .take(20)
            .find_map(|line| {
                let (key, value) = line.split_once('=')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
            .unwrap_or_default()
    };
    Ok(format!("{}.{}.{}{}", field("VERSION"), field("PATCHLEVEL"), field("SUBLEVEL"), field("EXTRAVERSION")))
}

/// Everything that decides a build.
#[derive(Clone, Debug)]
pub struct Request {
    /// `--source`; Debian's tarball for the series when `None`.
    pub source: Option<PathBuf>,
    /// `--series` or `$APPLIANCE_KERNEL_SERIES`; else the source's, else 6.1.
    pub series: Option<String>,
    pub base: Base,
    /// Fragments on top of `base.config` (and the series' adjustments).
    pub fragments: Vec<FragmentArg>,
    /// Leave out `base.config`.
    pub without_base: bool,
    /// Also prepare the tree modules are built against (adds the `modules` fragment).
    pub headers: bool,
    /// Apply the project's patches to a tarball source (not to a tree).
    pub patches: bool,
    /// The tool's cache directory.
    pub cache_dir: PathBuf,
}

impl Request {
    /// The default build of a series (`build:6.1`): Debian's source, tinyconfig, base.
    pub fn series(series: &str, cache_dir: PathBuf) -> Request {
        Request {
            source: None,
            series: Some(series.to_owned()),
            base: Base::Tinyconfig,
            fragments: Vec::new(),
            without_base: false,
            headers: false,
            patches: true,
            cache_dir,
        }
    }
}

/// A resolved [`Request`]: what will be built and where the result lives. Making one
/// reads the fragments and stats the source, nothing more, so a cache hit is instant.
#[derive(Clone, Debug)]
pub struct Plan {
    pub series: String,
    pub source: Source,
    pub base: Base,
    pub fragments: Vec<Fragment>,
    /// The merged fragments: what the check compares the resolved config with.
    pub wanted: Config,
    pub redefinitions: Vec<Redefinition>,
    pub headers: bool,
    /// The project's patches applied to the source, by name (none for a tree).
    pub patches: Vec<&'static str>,
    /// `<cache>/kernels/build`.
    pub root: PathBuf,
    /// The finished kernel's directory.
    pub result: PathBuf,
    source_id: String,
}

impl Plan {
    /// The object directory's name: one per source, base and *set* of fragments, so
    /// that editing a fragment recompiles only what changed, while builds with other
    /// fragments (a debug kernel next to the default one) do not undo each other's
    /// objects.
    fn object_dir_name(&self) -> String {
        let mut hash = Fnv::new();
        for part in [self.source_id.as_str(), self.base.name()]
            .into_iter()
            .chain(self.fragments.iter().map(|f| f.name.as_str()))
        {
            hash.write(part.as_bytes());
            hash.write(&[0]);
        }
        format!("{}-{:016x}", self.series, hash.finish())
    }
}

/// A finished kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel, bootable through PVH (`qemu -kernel vmlinux`).
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
    pub facts: Facts,
    /// The tree to put at `/lib/modules/<release>/build`, when asked for.
    pub headers: Option<PathBuf>,
    /// `lib/modules/<release>` of a kernel with module support.
    pub modules_dir: Option<PathBuf>,
    /// Whether it was taken from the cache.
    pub cached: bool,
}

/// `build.json`: how a kernel was built.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    pub release: String,
    pub version: String,
    pub series: String,
    pub base: String,
    pub fragments: Vec<String>,
    pub source: String,
    pub key: String,
    /// Options compared by the check, all kept.
    pub checked: usize,
    /// The project's patches in the kernel (`kernel-configs/patches/`), by name.
    #[serde(default)]
    pub patches: Vec<String>,
    pub build_seconds: u64,
    /// Lines of compiler output (CC, LD, ...), for the next build's progress bar.
    pub steps: u64,
    pub built_at: u64,
    /// The extracted source under `src/` and the object directory under `obj/` it was
    /// built in, which `appliance kernel cache prune` keeps for it (not recorded before
    /// that command existed, nor for a tree given as `--source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tree: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_dir: Option<String>,
}

/// What a build reports while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A new stage: extracting, configuring, compiling, installing.
    Stage(String),
    /// One more line of make's output during the compile; `total` is the step count
    /// of the last compile of this source, when known.
    Step { done: u64, total: Option<u64>, line: String },
    /// The stage's output is done.
    Finished,
}

/// A callback receiving [`Progress`]; cheap to clone, for options structs.
#[derive(Clone)]
pub struct ProgressSink(pub Arc<dyn Fn(&Progress) + Send + Sync>);

impl ProgressSink {
    /// A sink that logs stages and, every 500 steps, a count.
    pub fn log() -> ProgressSink {
        ProgressSink(Arc::new(|progress| match progress {
            Progress::Stage(stage) => log::info!("kernel: {stage}"),
            Progress::Step { done, total, .. } if done % 500 == 0 => match total {
                Some(total) => log::info!("kernel: compiled {done}/{total}"),
                None => log::info!("kernel: compiled {done}"),
            },
            _ => {}
        }))
    }

    fn send(&self, progress: Progress) {
        (self.0)(&progress);
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// Resolves a request: the series, the source, the fragments and the cache key.
pub fn plan(request: &Request) -> Result<Plan, Error> {
    let series = request_series(request);
    let source = resolve_source(request.source.as_deref(), &series, &request.cache_dir)?;
    // Headers are for building modules, which needs a kernel that loads them.
    let mut requested = request.fragments.clone();
    if request.headers && !requested.contains(&FragmentArg::Topic("modules")) {
        requested.push(FragmentArg::Topic("modules"));
    }
    let fragments = fragments(&series, &requested, !request.without_base)?;
    let (wanted, redefinitions) = merge(&fragments)?;
    let patches: Vec<(&'static str, &'static str)> = match source {
        Source::Tarball(_) if request.patches => PATCHES.to_vec(),
        _ => Vec::new(),
    };
    // The patches are part of the source's identity: a patched tree is extracted apart
    // from an unpatched one, and a changed patch rebuilds everything. Their diffs count,
    // not the descriptions above them (as a fragment's comments do not).
    let mut source_id = source_identity(&source)?;
    for (name, text) in &patches {
        let diff = text.find("\n--- ").map_or(*text, |start| &text[start..]);
        source_id.push_str(&format!("+{name}:{}", short_id(diff)));
    }
    let mut key = Fnv::new();
    for part in [RECIPE, &source_id, request.base.name()] {
        key.write(part.as_bytes());
        key.write(&[0]);
    }
    // The merged settings, not the fragments' text: editing a comment keeps the kernel.
    key.write(wanted.render().as_bytes());
    let root = request.cache_dir.join(BUILD_DIR);
    let result = root.join(format!("{series}-{}-{:016x}", request.base.name(), key.finish()));
    Ok(Plan {
        series,
        source,
        base: request.base,
        fragments,
        wanted,
        redefinitions,
        headers: request.headers,
        patches: patches.iter().map(|(name, _)| *name).collect(),
        root,
        result,
        source_id,
    })
}

/// The series a request builds: its own, else its source's, else the default.
fn request_series(request: &Request) -> String {
    match &request.series {
        Some(series) => series.clone(),
        None => match &request.source {
            Some(path) => resolve_source(Some(path), DEFAULT_SERIES, &request.cache_dir)
                .ok()
                .and_then(|source| series_of_source(&source))
                .unwrap_or_else(|| DEFAULT_SERIES.to_owned()),
            None => DEFAULT_SERIES.to_owned(),
        },
    }
}

/// [`plan`], after fetching Debian's source of the series (see [`source::fetch`]) when
/// the request names no source and none is here yet.
pub fn plan_fetching(request: &Request, progress: &ProgressSink) -> Result<Plan, Error> {
    match plan(request) {
        Err(Error::NotFetched { series }) => {
            source::fetch(&series, &request.cache_dir, &|stage| progress.send(Progress::Stage(stage)))?;
            plan(request)
        }
        other => other,
    }
}

/// The finished kernel of `plan`, if the cache has it (with headers when asked for).
pub fn cached(plan: &Plan) -> Option<Built> {
    let facts = facts_in(&plan.result)?;
    let built = built_from(&plan.result, facts, true);
    let complete = built.bzimage.is_file() && (!plan.headers || built.headers.is_some());
    complete.then_some(built)
}

/// The `build.json` of a kernel built in `dir`, if it is one.
pub fn facts_in(dir: &Path) -> Option<Facts> {
    serde_json::from_slice(&fs::read(dir.join(FACTS)).ok()?).ok()
}

fn built_from(dir: &Path, facts: Facts, cached: bool) -> Built {
    let headers = dir.join("headers");
    let modules = dir.join("modules/lib/modules").join(&facts.release);
    Built {
        modules_dir: modules.is_dir().then_some(modules),
        dir: dir.to_owned(),
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        config: dir.join("config"),
        release: facts.release.clone(),
        headers: headers.is_dir().then_some(headers),
        facts,
        cached,
    }
}

/// Returns the cached kernel of `plan`, or builds it. `jobs` defaults to every core.
pub fn build(plan: &Plan, jobs: Option<usize>, force: bool, progress: &ProgressSink) -> Result<Built, Error> {
    if !force && let Some(built) = cached(plan) {
        return Ok(record_dirs(plan, built));
    }
    check_tools(plan)?;
    let lock = lock_cache(plan, progress)?;
    // Whoever held the lock may have built this very kernel.
    if !force && let Some(built) = cached(plan) {
        return Ok(built);
    }
    let facts = build_locked(plan, jobs, progress)?;
    progress.send(Progress::Finished);
    drop(lock);
    Ok(built_from(&plan.result, facts, false))
}

/// Takes the cache's lock, waiting (and saying so) while another build holds it.
fn lock_cache(plan: &Plan, progress: &ProgressSink) -> Result<File, Error> {
    fs::create_dir_all(&plan.root).map_err(io_error("create", &plan.root))?;
    let lock_path = plan.root.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io_error("create", &lock_path))?;
    if lock.try_lock().is_err() {
        progress.send(Progress::Stage("waiting for another kernel build to finish".into()));
        lock.lock().map_err(io_error("lock", &lock_path))?;
    }
    Ok(lock)
}

/// The source tree (unpacked if needed, its version checked against the series) and the
/// object directory, with a fresh `build.log` in it: what configuring starts from.
fn configure_dirs(plan: &Plan, progress: &ProgressSink) -> Result<(PathBuf, PathBuf, String), Error> {
    let tree = prepare_source(plan, progress)?;
    let version = checked_version(plan, &tree)?;
    let obj = plan.root.join(OBJECTS_DIR).join(plan.object_dir_name());
    fs::create_dir_all(&obj).map_err(io_error("create", &obj))?;
    let log = obj.join("build.log");
    File::create(&log).map_err(io_error("create", &log))?;
    progress.send(Progress::Stage(format!("configuring Linux {version}: {} + fragments", plan.base.name())));
    Ok((tree, obj, version))
}

/// The build itself, under the cache's lock: configure, check, compile, install into
/// `plan.result`.
fn build_locked(plan: &Plan, jobs: Option<usize>, progress: &ProgressSink) -> Result<Facts, Error> {
    let started = Instant::now();
    let (tree, obj, version) = configure_dirs(plan, progress)?;
    let make = Make { tree: &tree, obj: &obj, log: obj.join("build.log") };
    let (resolved, report) = configure(plan, &make, progress)?;
    let modules = resolved.get("MODULES") == Some(&kconfig::Value::Yes);
    let steps = compile(plan, &make, jobs, modules, progress)?;
    let release = make.output(&["-s", "kernelrelease"])?.trim().to_owned();

    progress.send(Progress::Stage(format!("installing {release} in {}", plan.result.display())));
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIXES[0])
        .tempdir_in(&plan.root)
        .map_err(io_error("create a directory in", &plan.root))?;
    install(plan, &make, &release, modules, staging.path(), progress)?;
    let facts = Facts {
        release,
        version,
        series: plan.series.clone(),
        base: plan.base.name().to_owned(),
        fragments: plan.fragments.iter().map(|f| f.name.clone()).collect(),
        source: plan.source.path().display().to_string(),
        key: plan.result.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        checked: report.checked,
        patches: plan.patches.iter().map(|p| p.to_string()).collect(),
        build_seconds: started.elapsed().as_secs(),
        steps,
        built_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        source_tree: source_tree_name(plan),
        object_dir: Some(plan.object_dir_name()),
    };
    write_facts(&facts, &staging.path().join(FACTS))?;
    publish(staging, &plan.result)?;
    Ok(facts)
}

/// The tree's kernel version, when it is of the series the plan asked for.
fn checked_version(plan: &Plan, tree: &Path) -> Result<String, Error> {
    let version = makefile_version(tree)?;
    let found = kconfig::series_of(&version).unwrap_or_default();
    if found != plan.series {
        return Err(Error::SeriesMismatch {
            path: plan.source.path().to_owned(),
            version,
            series: plan.series.clone(),
            found,
        });
    }
    Ok(version)
}

/// The base configuration with the fragments merged over it, resolved by `make
/// olddefconfig`; refused when it lost an option the fragments asked for. Returns the
/// resolved configuration and the check's report.
fn configure(plan: &Plan, make: &Make, progress: &ProgressSink) -> Result<(Config, Report), Error> {
    let (resolved, report) = resolve(plan, make, progress)?;
    if !report.is_ok() {
        return Err(Error::Lost { report, config: make.obj.join(".config") });
    }
    Ok((resolved, report))
}

/// Steps 1 to 4 of a build without the compile: the base configuration with the
/// fragments merged over it, resolved by `make olddefconfig` in the build's object
/// directory, and the check's report (lost options included, not an error). What
/// `kernel check` runs when given a source and no configuration, so that a series'
/// adjustments can be verified without compiling it. Returns the resolved `.config`.
pub fn resolve_only(plan: &Plan, progress: &ProgressSink) -> Result<(PathBuf, Report), Error> {
    check_tools(plan)?;
    let _lock = lock_cache(plan, progress)?;
    let (tree, obj, _) = configure_dirs(plan, progress)?;
    let make = Make { tree: &tree, obj: &obj, log: obj.join("build.log") };
    let (_, report) = resolve(plan, &make, progress)?;
    Ok((obj.join(".config"), report))
}

/// The merge and `make olddefconfig` of [`configure`], and the check of the result.
fn resolve(plan: &Plan, make: &Make, progress: &ProgressSink) -> Result<(Config, Report), Error> {
    make.run(&[plan.base.name()], None, progress)?;
    let dot_config = make.obj.join(".config");
    let mut config = Config::load(&dot_config)?;
    for redefinition in &plan.redefinitions {
        log::info!("{redefinition}");
    }
    config.merge(&plan.wanted);
    config.save(&dot_config)?;
    make.run(&["olddefconfig"], None, progress)?;
    let resolved = Config::load(&dot_config)?;
    let kconfig = Kconfig::load(make.tree)?;
    let report = kconfig::check(&plan.wanted, &resolved, Some(&kconfig));
    Ok((resolved, report))
}

/// `make bzImage` (and the modules, and what headers need) on `jobs` cores, reporting
/// each step against the last compile's count. Returns this compile's step count.
fn compile(
    plan: &Plan,
    make: &Make,
    jobs: Option<usize>,
    modules: bool,
    progress: &ProgressSink,
) -> Result<u64, Error> {
    let steps_file = make.obj.join(STEPS_FILE);
    let total = fs::read_to_string(&steps_file).ok().and_then(|text| text.trim().parse().ok());
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    progress.send(Progress::Stage(format!("compiling bzImage with {jobs} job(s)")));
    let jobs_arg = format!("-j{jobs}");
    let mut targets = vec![jobs_arg.as_str(), "bzImage"];
    if modules {
        targets.push("modules");
    }
    if plan.headers {
        targets.push("modules_prepare");
    }
    let steps = make.run(&targets, Some(total), progress)?;
    if steps > 0 {
        let _ = fs::write(&steps_file, format!("{steps}\n"));
    }
    Ok(steps)
}

/// Copies the kernel, its configuration and symbols into `staging`, with the modules
/// and the headers when the build has them.
fn install(
    plan: &Plan,
    make: &Make,
    release: &str,
    modules: bool,
    staging: &Path,
    progress: &ProgressSink,
) -> Result<(), Error> {
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
        ("vmlinux", "vmlinux"),
        (".config", "config"),
        ("System.map", "System.map"),
    ] {
        let from = make.obj.join(from);
        if !from.is_file() {
            return Err(Error::NoOutput { path: from });
        }
        let to = staging.join(to);
        fs::copy(&from, &to).map_err(io_error("copy the kernel to", &to))?;
    }
    if modules {
        // The modules directory (`modules.builtin`, and any module a fragment made `=m`),
        // where `modules = [...]` in a manifest finds them.
        let root = staging.join("modules");
        make.run(
            &["modules_install", &format!("INSTALL_MOD_PATH={}", root.display()), "INSTALL_MOD_STRIP=1"],
            None,
            progress,
        )?;
        // Links back into the build machine's trees, which the image must not follow.
        let dir = root.join("lib/modules").join(release);
        for link in ["build", "source"] {
            let _ = fs::remove_file(dir.join(link));
        }
    }
    if plan.headers {
        install_headers(make.tree, make.obj, &staging.join("headers"))?;
    }
    Ok(())
}

/// A kernel built before `build.json` recorded its source and object directories gets
/// them written in when they are still there, so that `appliance kernel cache prune`
/// keeps them. Best effort: the kernel is returned either way.
fn record_dirs(plan: &Plan, mut built: Built) -> Built {
    if built.facts.source_tree.is_some() || built.facts.object_dir.is_some() {
        return built;
    }
    let objects = plan.object_dir_name();
    built.facts.object_dir = plan.root.join(OBJECTS_DIR).join(&objects).is_dir().then_some(objects);
    built.facts.source_tree =
        source_tree_name(plan).filter(|name| plan.root.join(SOURCES_DIR).join(name).join("Makefile").is_file());
    if built.facts.source_tree.is_some() || built.facts.object_dir.is_some() {
        // Written beside, then renamed over: a reader never sees half a file. Readable by
        // all, as the build wrote it.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        if let Ok(tmp) = tempfile::Builder::new().permissions(mode).tempfile_in(&built.dir)
            && write_facts(&built.facts, tmp.path()).is_ok()
        {
            let _ = tmp.persist(built.dir.join(FACTS));
        }
    }
    built
}

/// The name under `src/` a tarball source is extracted to (`None` for a tree).
fn source_tree_name(plan: &Plan) -> Option<String> {
    let Source::Tarball(tarball) = &plan.source else { return None };
    let stem = tarball.file_name().unwrap_or_default().to_string_lossy();
    let stem = stem.split(".tar").next().unwrap_or("linux");
    Some(format!("{stem}-{}", short_id(&plan.source_id)))
}

fn write_facts(facts: &Facts, path: &Path) -> Result<(), Error> {
    let mut json = serde_json::to_string_pretty(facts)
        .map_err(|err| Error::Io(FsError { action: "serialise", path: path.to_owned(), source: err.into() }))?;
    json.push('\n');
    fs::write(path, json).map_err(io_error("write", path))?;
    Ok(())
}

/// Moves the finished kernel from `staging` to `result`, replacing an older one.
fn publish(staging: tempfile::TempDir, result: &Path) -> Result<(), Error> {
    if result.exists() {
        fs::remove_dir_all(result).map_err(io_error("replace", result))?;
    }
    let staging = staging.keep();
    fs::rename(&staging, result).map_err(io_error("move the kernel to", result))?;
    Ok(())
}

/// The tools a build runs, and the Debian packages that bring them.
const TOOLS: [(&str, &str); 6] =
    [("make", "make"), ("gcc", "gcc"), ("flex", "flex"), ("bison", "bison"), ("bc", "bc"), ("perl", "perl")];

fn check_tools(plan: &Plan) -> Result<(), Error> {
    let source = &plan.source;
    let mut tools = Vec::new();
    let mut packages = Vec::new();
    for (tool, package) in TOOLS {
        if find_program(tool).is_none() {
            tools.push(tool.to_owned());
            packages.push(package.to_owned());
        }
    }
    // objtool and the ORC unwinder need libelf's headers.
    if !Path::new("/usr/include/libelf.h").exists() && !Path::new("/usr/include/elfutils").exists() {
        tools.push("libelf headers".to_owned());
        packages.push("libelf-dev".to_owned());
    }
    if let Source::Tarball(path) = source {
        let name = path.to_string_lossy();
        for (suffix, tool, package) in [(".xz", "xz", "xz-utils"), (".bz2", "bzip2", "bzip2"), (".gz", "gzip", "gzip")]
        {
            if name.ends_with(suffix) && find_program(tool).is_none() {
                tools.push(tool.to_owned());
                packages.push(package.to_owned());
            }
        }
        if find_program("tar").is_none() {
            tools.push("tar".to_owned());
            packages.push("tar".to_owned());
        }
    }
    if !plan.patches.is_empty() && find_program("patch").is_none() {
        tools.push("patch".to_owned());
        packages.push("patch".to_owned());
    }
    if tools.is_empty() { Ok(()) } else { Err(Error::ToolsMissing { tools, packages }) }
}

/// The source tree: the directory itself, or the tarball extracted into the cache and
/// patched (once; later builds reuse it).
pub fn prepare_source(plan: &Plan, progress: &ProgressSink) -> Result<PathBuf, Error> {
    let tarball = match &plan.source {
        Source::Tree(dir) => return Ok(dir.clone()),
        Source::Tarball(path) => path,
    };
    let dir = plan.root.join(SOURCES_DIR).join(source_tree_name(plan).unwrap_or_default());
    if dir.join("Makefile").is_file() {
        return Ok(dir);
    }
    let parent = plan.root.join(SOURCES_DIR);
    fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
    progress.send(Progress::Stage(format!("extracting {}", tarball.display())));
    let work = tempfile::Builder::new()
        .prefix(STAGING_PREFIXES[1])
        .tempdir_in(&parent)
        .map_err(io_error("create a directory in", &parent))?;
    let output = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(work.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { command: format!("tar -xf {}", tarball.display()), source })?;
    if !output.status.success() {
        return Err(Error::Extract {
            tarball: tarball.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let top = fs::read_dir(work.path())
        .map_err(io_error("read", work.path()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.join("Makefile").is_file() && path.join("Kconfig").is_file())
        .ok_or_else(|| Error::EmptyTarball { tarball: tarball.clone() })?;
    if !plan.patches.is_empty() {
        progress.send(Progress::Stage(format!("applying the project's patches: {}", plan.patches.join(", "))));
    }
    for (name, text) in PATCHES.iter().filter(|(name, _)| plan.patches.contains(name)) {
        apply_patch(&top, name, text, tarball)?;
    }
    if let Err(err) = fs::rename(&top, &dir) {
        // A concurrent extraction (`kernel check` takes no lock) may have won.
        if !dir.join("Makefile").is_file() {
            return Err(Error::Io(FsError { action: "move the extracted source to", path: dir, source: err }));
        }
    }
    Ok(dir)
}

/// Applies the project's patch `name` (its `text`) to the tree `top` with `patch -p1`,
/// refusing fuzz (offsets are fine: the series differ in line numbers, not in the code
/// patched).
fn apply_patch(top: &Path, name: &str, text: &str, tarball: &Path) -> Result<(), Error> {
    let command = format!("patch -p1 --forward --batch --fuzz=0 -d {} < {name}.patch", top.display());
    let mut child = Command::new("patch")
        .args(["-p1", "--forward", "--batch", "--fuzz=0", "-d"])
        .arg(top)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    // The patches are small (a few hundred bytes): the pipe takes them whole.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(|source| Error::Spawn { command: command.clone(), source })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn { command, source })?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    said.push_str(String::from_utf8_lossy(&output.stderr).trim());
    Err(Error::Patch { name: name.to_owned(), tarball: tarball.to_owned(), output: said })
}

/// The source's identity for the cache key: a tarball's path, size and modification
/// time; a tree's path and the newest modification time of its files.
fn source_identity(source: &Source) -> Result<String, Error> {
    let path = source.path();
    let canonical = path.canonicalize().map_err(io_error("resolve", path))?;
    let mtime =
        |m: &fs::Metadata| m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    match source {
        Source::Tarball(_) => {
            let metadata = fs::metadata(&canonical).map_err(io_error("read", &canonical))?;
            let modified = mtime(&metadata);
            Ok(format!(
                "tarball:{}:{}:{}.{}",
                canonical.display(),
                metadata.len(),
                modified.as_secs(),
                modified.subsec_nanos()
            ))
        }
        Source::Tree(_) => {
            let mut newest = std::time::Duration::ZERO;
            let mut stack = vec![canonical.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else { continue };
                for entry in entries.filter_map(Result::ok) {
                    let Ok(metadata) = entry.metadata() else { continue };
                    if metadata.is_dir() {
                        if entry.file_name() != OsStr::new(".git") {
                            stack.push(entry.path());
                        }
                    } else {
                        newest = newest.max(mtime(&metadata));
                    }
                }
            }
            Ok(format!("tree:{}:{}.{}", canonical.display(), newest.as_secs(), newest.subsec_nanos()))
        }
    }
}

fn short_id(source_id: &str) -> String {
    let mut hash = Fnv::new();
    hash.write(source_id.as_bytes());
    format!("{:016x}", hash.finish())
}

/// FNV-1a, 64 bits: a stable hash for cache keys (std's hasher may change between
/// Rust releases, and a key must not).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `make -C <tree> O=<obj> ARCH=x86_64 ...`, its output appended to a log.
struct Make<'a> {
    tree: &'a Path,
    obj: &'a Path,
    log: PathBuf,
}

impl Make<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(self.tree)
            .arg(format!("O={}", self.obj.display()))
            .arg("ARCH=x86_64")
            .args(args)
            // The same user and host in every build: `uname -v` does not name the
            // machine that built it.
            .env("KBUILD_BUILD_USER", "appliance")
            .env("KBUILD_BUILD_HOST", "appliance")
            .stdin(Stdio::null());
        command
    }

    fn describe(args: &[&str]) -> String {
        args.iter().filter(|arg| !arg.starts_with("-j")).copied().collect::<Vec<_>>().join(" ")
    }

    /// Runs make, logging its output; with `steps` (`Some(total)`), reports each line
    /// as a step. Returns the number of compile steps seen.
    fn run(&self, args: &[&str], steps: Option<Option<u64>>, progress: &ProgressSink) -> Result<u64, Error> {
        let mut log =
            fs::OpenOptions::new().append(true).create(true).open(&self.log).map_err(io_error("write", &self.log))?;
        let _ = writeln!(log, "== make {}", args.join(" "));
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { command: format!("make {}", args.join(" ")), source })?;
        let (sender, lines) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(forward_lines(stdout, sender.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(forward_lines(stderr, sender.clone()));
        }
        drop(sender);
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut done = 0u64;
        for line in lines {
            let _ = writeln!(log, "{line}");
            if let Some(total) = steps
                && is_step(&line)
            {
                done += 1;
                progress.send(Progress::Step { done, total, line: line.trim().to_owned() });
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        for reader in readers {
            let _ = reader.join();
        }
        let status = child.wait().map_err(|source| Error::Spawn { command: "make".into(), source })?;
        if !status.success() {
            return Err(Error::Make {
                target: Self::describe(args),
                status,
                log: self.log.clone(),
                tail: Vec::from(tail).join("\n"),
            });
        }
        Ok(done)
    }

    /// Runs make and returns its stdout.
    fn output(&self, args: &[&str]) -> Result<String, Error> {
        let output = self
            .command(args)
            .output()
            .map_err(|source| Error::Spawn { command: format!("make {}", args.join(" ")), source })?;
        if !output.status.success() {
            return Err(Error::Make {
                target: Self::describe(args),
                status: output.status,
                log: self.log.clone(),
                tail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn forward_lines(stream: impl io::Read + Send + 'static, sender: mpsc::Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            if sender.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                break;
            }
        }
    })
}

/// Whether a line of Kbuild's output is one step: `  CC      kernel/fork.o`.
fn is_step(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  ") else { return false };
    let word: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The tree external modules are built against (`make -C /lib/modules/<release>/build
/// M=...`), as Debian's `linux-headers-*` packages hold it (scripts/package/builddeb):
/// the source's Makefiles, `include/`, `scripts/` and the architecture's headers, plus
/// the object directory's generated headers, built scripts, `.config` and
/// `Module.symvers`.
pub fn install_headers(tree: &Path, obj: &Path, dest: &Path) -> Result<(), Error> {
    let arch = Path::new("arch/x86");
    let mut from_tree: Vec<PathBuf> = Vec::new();
    for dir in [Path::new(""), arch] {
        for entry in fs::read_dir(tree.join(dir)).map_err(io_error("read", &tree.join(dir)))?.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with("Makefile") {
                from_tree.push(dir.join(entry.file_name()));
            }
        }
    }
    from_tree.extend(walk(tree, Path::new("include"), &|_| true));
    from_tree.extend(walk(tree, Path::new("scripts"), &|_| true));
    from_tree.extend(walk(tree, arch, &|path| {
        let name = path.file_name().unwrap_or_default();
        name == "Kbuild.platforms"
            || name == "Platform"
            || path.components().any(|c| c.as_os_str() == "include" || c.as_os_str() == "scripts")
    }));
    // Object files and make's command records are not needed to build modules.
    let wanted_object = |path: &Path| {
        let name = path.to_string_lossy();
        !name.ends_with(".o") && !name.ends_with(".cmd")
    };
    let mut from_obj: Vec<PathBuf> = Vec::new();
    for dir in ["arch/x86/include", "include", "scripts"] {
        from_obj.extend(walk(obj, Path::new(dir), &wanted_object));
    }
    for file in ["Module.symvers", "tools/objtool/objtool"] {
        if obj.join(file).is_file() {
            from_obj.push(PathBuf::from(file));
        }
    }
    for (root, files) in [(tree, &from_tree), (obj, &from_obj)] {
        for relative in files {
            copy_entry(&root.join(relative), &dest.join(relative))?;
        }
    }
    let config = dest.join(".config");
    fs::copy(obj.join(".config"), &config).map_err(io_error("write", &config))?;
    Ok(())
}

/// Files and symlinks under `root/dir`, relative to `root`, that `keep` accepts.
fn walk(root: &Path, dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    let mut seen = HashSet::new();
    while let Some(relative) = stack.pop() {
        let Ok(entries) = fs::read_dir(root.join(&relative)) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let path = relative.join(entry.file_name());
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                if seen.insert(path.clone()) {
                    stack.push(path);
                }
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn copy_entry(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    let metadata = fs::symlink_metadata(from).map_err(io_error("read", from))?;
    if metadata.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(io_error("read the link", from))?;
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(target, to).map_err(io_error("create", to))?;
    } else {
        fs::copy(from, to).map_err(io_error("copy", to))?;
    }
    Ok(())
}

/// The kernel `build:<series>` names: the default build of the series, from the cache
/// or built now.
pub fn obtain_series(series: &str, headers: bool, cache_dir: &Path, progress: &ProgressSink) -> Result<Built, Error> {
    let mut request = Request::series(series, cache_dir.to_owned());
    request.headers = headers;
    let plan = plan_fetching(&request, progress)?;
    build(&plan, None, false, progress)
}

/// The series in a `build:<series>` kernel name (`build` alone: the environment's or
/// the default series).
pub fn parse_build_name(name: &str) -> Option<Result<String, Error>> {
    if name == "build" {
        return Some(
            series_from(None, std::env::var(SERIES_ENV).ok()).map(|s| s.unwrap_or_else(|| DEFAULT_SERIES.to_owned())),
        );
    }
    let series = name.strip_prefix(BUILD_PREFIX)?;
    Some(series_from(Some(series), None).map(|s| s.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_has_a_base_adjustment_and_fragments_parse() {
        for series in SERIES {
            assert!(adjustment(series, "base").is_some(), "{series}");
        }
        for (name, text) in TOPICS {
            Config::parse(text, name).unwrap();
        }
        for (series, topic, text) in ADJUSTMENTS {
            assert!(self::topic(topic).is_some(), "{series}/{topic} adjusts no topic");
            Config::parse(text, topic).unwrap();
        }
    }

    /// Every option of a fragment has its reason above it: a comment line directly
    /// before it or before the group it belongs to.
    #[test]
    fn every_option_has_a_reason() {
        for (name, text) in TOPICS {
            let mut commented = false;
            for line in text.lines() {
                let setting = line.starts_with(kconfig::PREFIX) || line.ends_with(" is not set");
                if setting {
                    assert!(commented, "{name}.config: {line} has no comment above it");
                } else {
                    commented = line.starts_with('#');
                    if line.is_empty() {
                        commented = false;
                    }
                }
                if setting {
                    // A group of options shares the comment above the first.
                    commented = true;
                }
            }
        }
    }

    /// `appEnd=kexec` needs kexec_file_load and what it depends on; base.config stays
    /// without them (its kernels' cache keys do not change).
    #[test]
    fn kexec_topic_has_kexec_file_load_and_its_dependencies() {
        let kexec = Config::parse(topic("kexec").unwrap(), "kexec").unwrap();
        for name in ["KEXEC_FILE", "CRYPTO", "CRYPTO_SHA256"] {
            assert_eq!(kexec.get(name).map(ToString::to_string).as_deref(), Some("y"), "{name}");
        }
        let base = Config::parse(topic("base").unwrap(), "base").unwrap();
        assert!(base.get("KEXEC_FILE").is_none());
    }

    #[test]
    fn base_has_what_the_init_needs() {
        let base = Config::parse(topic("base").unwrap(), "base").unwrap();
        for name in [
            "BLK_DEV_INITRD",
            "RD_GZIP",
            "RD_ZSTD",
            "RD_LZ4",
            "DEVTMPFS",
            "SERIAL_8250",
            "SERIAL_8250_CONSOLE",
            "SIGNALFD",
            "UNIX",
            "TMPFS",
            "PROC_FS",
            "SYSFS",
            "UNIX98_PTYS",
            "ACPI",
            "BINFMT_ELF",
            "BINFMT_SCRIPT",
            "PVH",
            "VIRTIO_PCI",
            "VIRTIO_MMIO",
            "VIRTIO_NET",
            "VIRTIO_BLK",
            "VIRTIO_CONSOLE",
            "VIRTIO_VSOCKETS",
            "9P_FS",
            "NFS_V3",
            "NFS_V4",
            "KEXEC",
            "FUTEX",
            "EPOLL",
            "TIMERFD",
            "EVENTFD",
            "INET",
            "IPV6",
            "PRINTK",
            "TTY",
        ] {
            assert_eq!(base.get(name), Some(&kconfig::Value::Yes), "{name}");
        }
        assert!(base.get("MODULES").is_none(), "the base kernel has no modules");
    }

    #[test]
    fn fragments_in_merge_order_with_series_adjustments() {
        let names = |series: &str, args: &[FragmentArg], base: bool| {
            fragments(series, args, base).unwrap().into_iter().map(|f| f.name).collect::<Vec<_>>()
        };
        assert_eq!(names("6.1", &[], true), ["base.config", "series/6.1/base.config"]);
        assert_eq!(
            names("5.4", &[FragmentArg::from("debug"), FragmentArg::from("base")], true),
            ["base.config", "series/5.4/base.config", "debug.config", "series/5.4/debug.config"]
        );
        assert_eq!(names("6.12", &[FragmentArg::from("net.config")], false), ["net.config"]);
        let err = fragments("6.1", &[FragmentArg::from("no-such-topic")], true).unwrap_err();
        assert!(err.to_string().contains("neither a built-in one (base, net, debug, bench, modules, kexec)"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine.config");
        fs::write(&mine, "CONFIG_EXT4_FS=y\n").unwrap();
        let all = fragments("6.1", &[FragmentArg::from(mine.to_str().unwrap())], true).unwrap();
        assert_eq!(all.last().unwrap().text, "CONFIG_EXT4_FS=y\n");
    }

    #[test]
    fn the_5_4_adjustment_replaces_zstd() {
        let (wanted, redefinitions) = merge(&fragments("5.4", &[], true).unwrap()).unwrap();
        assert_eq!(wanted.get("KERNEL_ZSTD"), Some(&kconfig::Value::No));
        assert_eq!(wanted.get("KERNEL_XZ"), Some(&kconfig::Value::Yes));
        assert_eq!(wanted.get("RD_ZSTD"), Some(&kconfig::Value::No));
        let changed: Vec<&str> = redefinitions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(changed, ["KERNEL_ZSTD", "RD_ZSTD", "VIRTIO_MENU"]);
    }

    #[test]
    fn series_choice() {
        assert_eq!(series_from(Some("5.10"), Some("6.6".into())).unwrap().as_deref(), Some("5.10"));
        assert_eq!(series_from(None, Some("6.6".into())).unwrap().as_deref(), Some("6.6"));
        assert_eq!(series_from(None, Some(" ".into())).unwrap(), None);
        assert!(series_from(Some("6.1.192"), None).is_err());
        assert!(series_from(Some("six"), None).is_err());
        assert_eq!(parse_build_name("build:5.15").unwrap().unwrap(), "5.15");
        assert!(parse_build_name("debian-cloud").is_none());
        assert!(parse_build_name("build:x").unwrap().is_err());
    }

    #[test]
    fn sources() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let err = resolve_source(Some(&dir.path().join("absent")), "6.1", &cache).unwrap_err();
        assert!(matches!(err, Error::NoSource { .. }), "{err}");
        let err = resolve_source(None, "5.4", &cache).unwrap_err();
        assert!(err.to_string().contains("no source for series 5.4 here (linux-source-5.4"), "{err}");
        assert!(matches!(resolve_source(Some(dir.path()), "6.1", &cache), Err(Error::NotASource { .. })));
        fs::write(dir.path().join("Makefile"), "VERSION = 6\nPATCHLEVEL = 6\nSUBLEVEL = 30\nEXTRAVERSION =\n").unwrap();
        fs::write(dir.path().join("Kconfig"), "").unwrap();
        let tree = resolve_source(Some(dir.path()), "6.1", &cache).unwrap();
        assert_eq!(tree, Source::Tree(dir.path().to_owned()));
        assert_eq!(makefile_version(dir.path()).unwrap(), "6.6.30");
        assert_eq!(series_of_source(&tree).as_deref(), Some("6.6"));
        for (name, series) in
            [("linux-source-6.1.tar.xz", Some("6.1")), ("linux-5.10.209.tar.gz", Some("5.10")), ("kernel.tar", None)]
        {
            let source = Source::Tarball(PathBuf::from(name));
            assert_eq!(series_of_source(&source).as_deref(), series, "{name}");
        }
    }

    /// A request for 6.1 from a stand-in tarball (`plan` stats it, nothing reads it), with
    /// its cache, in `dir`.
    fn tarball_request(dir: &Path) -> (PathBuf, Request) {
        let tarball = dir.join("linux-source-6.1.tar.xz");
        fs::write(&tarball, "not really").unwrap();
        let mut request = Request::series("6.1", dir.join("cache"));
        request.source = Some(tarball.clone());
        (tarball, request)
    }

    #[test]
    fn plan_keys_follow_fragments_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let (tarball, mut request) = tarball_request(dir.path());
        let first = plan(&request).unwrap();
        assert_eq!(plan(&request).unwrap().result, first.result, "the key is stable");
        assert!(first.result.starts_with(dir.path().join("cache/kernels/build")));
        assert!(first.result.file_name().unwrap().to_string_lossy().starts_with("6.1-tinyconfig-"));
        request.fragments.push(FragmentArg::from("net"));
        assert_ne!(plan(&request).unwrap().result, first.result, "a fragment changes the key");
        request.fragments.clear();
        let mut commented = first.clone();
        commented.fragments[0].text.insert_str(0, "# A new comment.\n");
        let (wanted, _) = merge(&commented.fragments).unwrap();
        assert_eq!(wanted.render(), first.wanted.render(), "comments are not settings");
        fs::write(&tarball, "a different source").unwrap();
        assert_ne!(plan(&request).unwrap().result, first.result, "the source changes the key");
        // A cache hit needs the finished kernel, nothing else.
        assert!(cached(&first).is_none());
        // Editing a fragment keeps the object directory (an incremental build); another
        // set of fragments gets its own.
        let mut edited = first.clone();
        edited.fragments[0].text.push_str("CONFIG_EXT4_FS=y\n");
        assert_eq!(edited.object_dir_name(), first.object_dir_name());
        let plain = plan(&request).unwrap();
        request.fragments.push(FragmentArg::from("debug"));
        let debug = plan(&request).unwrap();
        assert_ne!(debug.object_dir_name(), plain.object_dir_name());
    }

    #[test]
    fn the_projects_patches_go_into_tarball_builds_and_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut request) = tarball_request(dir.path());
        let patched = plan(&request).unwrap();
        assert_eq!(patched.patches, ["lapic-timer-period", "no-initmem-poison"]);
        assert!(patched.patches.contains(&LAPIC_TIMER_PERIOD_PATCH));
        request.patches = false;
        let stock = plan(&request).unwrap();
        assert!(stock.patches.is_empty());
        assert_ne!(stock.result, patched.result, "the patches are in the key");
        assert_ne!(stock.object_dir_name(), patched.object_dir_name());
        // Each patch's diff is in the key, its description is not.
        for (_, text) in PATCHES {
            let start = text.find("\n--- ").expect("a description, then the diff");
            assert!(text[..start].lines().count() > 2, "a patch says what it does and why");
        }
        // A tree is the user's, built as it is.
        let tree = dir.path().join("linux");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n").unwrap();
        fs::write(tree.join("Kconfig"), "").unwrap();
        request.patches = true;
        request.source = Some(tree);
        assert!(plan(&request).unwrap().patches.is_empty());
    }

    #[test]
    fn a_patch_that_does_not_apply_is_named_with_what_to_do() {
        // `patch` is a build tool (host-tools/deps.sh installs it).
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        fs::create_dir_all(tree.join("arch/x86/mm")).unwrap();
        fs::write(tree.join("arch/x86/mm/init.c"), "int main(void) { return 0; }\n").unwrap();
        let (name, text) = PATCHES[1];
        assert_eq!(name, "no-initmem-poison");
        let err = apply_patch(&tree, name, text, Path::new("/src/linux-5.4.tar.xz")).unwrap_err();
        let said = err.to_string();
        assert!(said.contains("no-initmem-poison.patch does not apply to /src/linux-5.4.tar.xz"), "{said}");
        assert!(said.contains("--no-patches"), "{said}");
        assert!(said.contains("FAILED"), "patch's own words are quoted: {said}");
    }

    #[test]
    fn headers_tree_has_what_external_modules_need() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, obj, dest) = (dir.path().join("src"), dir.path().join("obj"), dir.path().join("headers"));
        let files = [
            (&tree, "Makefile"),
            (&tree, "Kconfig"),
            (&tree, "kernel/fork.c"),
            (&tree, "include/linux/module.h"),
            (&tree, "scripts/Makefile.modpost"),
            (&tree, "arch/x86/Makefile"),
            (&tree, "arch/x86/Makefile_32.cpu"),
            (&tree, "arch/x86/include/asm/io.h"),
            (&tree, "arch/x86/kernel/head_64.S"),
            (&obj, ".config"),
            (&obj, "Module.symvers"),
            (&obj, "include/generated/autoconf.h"),
            (&obj, "arch/x86/include/generated/asm/orc_hash.h"),
            (&obj, "scripts/mod/modpost"),
            (&obj, "scripts/mod/modpost.o"),
            (&obj, "scripts/mod/.modpost.cmd"),
            (&obj, "kernel/fork.o"),
        ];
        for (root, file) in files {
            let path = root.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, file).unwrap();
        }
        std::os::unix::fs::symlink("../include", tree.join("scripts/include-link")).unwrap();
        install_headers(&tree, &obj, &dest).unwrap();
        for present in [
            "Makefile",
            ".config",
            "Module.symvers",
            "include/linux/module.h",
            "include/generated/autoconf.h",
            "scripts/Makefile.modpost",
            "scripts/mod/modpost",
            "arch/x86/Makefile",
            "arch/x86/Makefile_32.cpu",
            "arch/x86/include/asm/io.h",
            "arch/x86/include/generated/asm/orc_hash.h",
        ] {
            assert!(dest.join(present).is_file(), "{present} missing");
        }
        for absent in [
            "Kconfig",
            "kernel/fork.c",
            "kernel/fork.o",
            "scripts/mod/modpost.o",
            "scripts/mod/.modpost.cmd",
            "arch/x86/kernel/head_64.S",
        ] {
            assert!(!dest.join(absent).exists(), "{absent} copied");
        }
        assert_eq!(fs::read_link(dest.join("scripts/include-link")).unwrap(), Path::new("../include"));
    }

    #[test]
    fn make_output_steps() {
        assert!(is_step("  CC      kernel/fork.o"));
        assert!(is_step("  LD [M]  fs/foo.ko"));
        assert!(is_step("  HOSTCC  scripts/basic/fixdep"));
        assert!(!is_step("make[1]: Entering directory '/x'"));
        assert!(!is_step("kernel/fork.c:12: warning: unused"));
        assert!(!is_step("  "));
    }

    #[test]
    fn fnv_is_the_reference_function() {
        let mut hash = Fnv::new();
        hash.write(b"a");
        assert_eq!(hash.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
