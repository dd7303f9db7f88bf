//! Kernel sources from Debian's archive: the `linux-source-<series>` package of the
//! release that ships each series, fetched with apt into the tool's cache when the
//! host has not installed it.
//!
//! The fetch never touches the host's apt configuration: each suite gets a private
//! `sources.list` (naming the mirror the host uses for Debian, see
//! [`crate::rootfs::sources::for_suite`]), its own package lists and its own package
//! cache, and apt is pointed at them with `-o Dir::...`. Everything else is the host's:
//! its proxy settings (`apt.conf.d`) and its trusted keys, with which apt verifies the
//! suite's signed `Release` file (Debian 12's `debian-archive-keyring` trusts the keys
//! of bullseye and of bookworm's backports).
//!
//! Cache layout, under `<cache>/apt-src/<suite>/` (see [`crate::kernel::default_cache_dir`]):
//! - `sources.list`, `sources.list.d/` (empty): apt's private configuration;
//! - `lists/`, `archives/`, `pkgcache.bin`, `srcpkgcache.bin`: apt's private state while
//!   fetching, removed once the tarball is in place (the next fetch reads the lists
//!   again anyway);
//! - `linux-source-<series>.tar.xz`: the tarball taken out of the package, renamed into
//!   place once complete, so that its presence means a finished fetch;
//! - `.lock`: held while fetching, so concurrent builds fetch once.
//!
//! This module does not build or extract the tarball: [`crate::kernel::kbuild`] does.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::fs_error::{FsError, io_error, remove_any};
use crate::host::process::find_program;
use crate::rootfs::sources;

/// The series Debian's archive ships as `linux-source-<series>`, and the suite of each.
pub const DEBIAN_SOURCES: [(&str, &str); 3] =
    [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "bookworm-backports")];

/// Where `linux-source-<series>` puts its tarball when installed on the host.
const INSTALLED_DIR: &str = "/usr/src";
/// The directory of the fetched sources in the cache, a subdirectory per suite.
pub const CACHE_DIR: &str = "apt-src";
/// A suite's lock file, held while fetching.
pub const LOCK_FILE: &str = ".lock";
/// What stays in a suite's directory besides the tarballs: the private configuration and
/// the lock. The rest is apt's lists and caches, needed only while fetching.
pub const KEPT: [&str; 3] = ["sources.list", "sources.list.d", LOCK_FILE];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Debian's archive has no kernel source for series {series} (it has {}): pass --source DIR|TARBALL \
         (a kernel.org tarball, for instance)",
        known()
    )]
    NoDebianSource { series: String },
    #[error("{tool} not found, so linux-source-{series} cannot be fetched: install apt and dpkg, or pass --source")]
    ToolMissing { tool: &'static str, series: String },
    #[error(
        "cannot read the package lists of {suite} from {mirrors} (no network, or a mirror or proxy \
         that does not answer?): {stderr}"
    )]
    Update { suite: String, mirrors: String, stderr: String },
    #[error("cannot download {package} from {suite}: {stderr}")]
    Download { package: String, suite: String, stderr: String },
    #[error("{package} holds no {}", tarball.display())]
    NoTarball { package: String, tarball: PathBuf },
    #[error(transparent)]
    Run(#[from] super::Error),
    #[error(transparent)]
    Io(#[from] FsError),
}

/// The series with a source package, with their suites: "5.10 (bullseye), ...".
fn known() -> String {
    DEBIAN_SOURCES.iter().map(|(series, suite)| format!("{series} ({suite})")).collect::<Vec<_>>().join(", ")
}

/// The suite whose `linux-source-<series>` package is the series' source.
pub fn suite(series: &str) -> Option<&'static str> {
    DEBIAN_SOURCES.iter().find(|(s, _)| *s == series).map(|(_, suite)| *suite)
}

/// Debian's source package of a series.
pub fn package(series: &str) -> String {
    format!("linux-source-{series}")
}

/// The tarball an installed `linux-source-<series>` package provides.
pub fn installed(series: &str) -> PathBuf {
    Path::new(INSTALLED_DIR).join(format!("{}.tar.xz", package(series)))
}

/// The private apt directory of a suite.
fn suite_dir(cache_dir: &Path, suite: &str) -> PathBuf {
    cache_dir.join(CACHE_DIR).join(suite)
}

/// Where [`fetch`] leaves the tarball of a series.
pub fn fetched(cache_dir: &Path, series: &str) -> Option<PathBuf> {
    Some(suite_dir(cache_dir, suite(series)?).join(format!("{}.tar.xz", package(series))))
}

/// Debian's tarball of a series if it is here: installed on the host (older releases
/// shipped bzip2), else fetched into the cache before.
pub fn find(series: &str, cache_dir: &Path) -> Option<PathBuf> {
    let installed = installed(series);
    [Some(installed.clone()), Some(installed.with_extension("bz2")), fetched(cache_dir, series)]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
}

/// The private `sources.list` of a suite: the host's entries for it when it has them,
/// else the suite from the host's Debian mirror (Debian's redirector without one).
pub fn sources_list(host: &[sources::Source], suite: &str) -> String {
    let mut text = format!("# {suite}, for linux-source; written by appliance, read only by its own apt calls\n");
    for source in sources::for_suite(host, suite) {
        text.push_str(&source.line());
        text.push('\n');
    }
    text
}

/// The options that give apt the suite's private directory instead of the host's
/// sources, lists and package cache.
pub fn apt_options(dir: &Path) -> Vec<String> {
    let option = |name: &str, value: &Path| format!("{name}={}", value.display());
    let mut options = Vec::new();
    for (name, value) in [
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", dir.join("sources.list.d")),
        ("Dir::State::Lists", dir.join("lists")),
        // Also where apt keeps its binary caches of the lists.
        ("Dir::Cache", dir.to_owned()),
        ("Dir::Cache::Archives", dir.join("archives")),
    ] {
        options.push("-o".to_owned());
        options.push(option(name, &value));
    }
    // apt downloads as the _apt user when run as root, and that user cannot write to
    // a cache under the user's home: download as ourselves.
    options.extend(["-o".to_owned(), "APT::Sandbox::User=root".to_owned()]);
    options
}

/// Fetches `linux-source-<series>` from its suite into the cache (once; later calls
/// return the tarball at once) and returns the tarball. `stage` hears what is being
/// done, for progress.
pub fn fetch(series: &str, cache_dir: &Path, stage: &dyn Fn(String)) -> Result<PathBuf, Error> {
    let suite = suite(series).ok_or_else(|| Error::NoDebianSource { series: series.to_owned() })?;
    let tarball = fetched(cache_dir, series).unwrap_or_default();
    if tarball.is_file() {
        return Ok(tarball);
    }
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if find_program(tool).is_none() {
            return Err(Error::ToolMissing { tool, series: series.to_owned() });
        }
    }
    let dir = suite_dir(cache_dir, suite);
    for sub in ["sources.list.d", "lists/partial", "archives/partial"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(io_error("create", &path))?;
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io_error("create", &lock_path))?;
    if lock.try_lock().is_err() {
        stage(format!("waiting for another fetch of {suite}'s kernel source"));
        lock.lock().map_err(io_error("lock", &lock_path))?;
    }
    if tarball.is_file() {
        return Ok(tarball);
    }

    let host = sources::read(Path::new(sources::HOST_APT_DIR));
    let list = sources_list(&host, suite);
    let list_path = dir.join("sources.list");
    fs::write(&list_path, &list).map_err(io_error("write", &list_path))?;
    let mirrors: Vec<String> = sources::for_suite(&host, suite).into_iter().map(|s| s.uri).collect();
    let mirrors = mirrors.join(", ");
    let options = apt_options(&dir);

    stage(format!("reading the package lists of {suite} from {mirrors}"));
    // `--error-on=any`: a list that cannot be fetched is an error, not a warning
    // followed by stale or missing lists.
    let update = super::run(Command::new("apt-get").args(["-q", "--error-on=any"]).args(&options).arg("update"));
    match update {
        Err(super::Error::Command { stderr, .. }) => {
            return Err(Error::Update { suite: suite.to_owned(), mirrors, stderr: problems(&stderr) });
        }
        other => other?,
    };

    let package = package(series);
    let show = super::run(Command::new("apt-cache").args(&options).args(["show", "--no-all-versions", &package]));
    let (version, size) = match show {
        Ok(text) => (field(&text, "Version").unwrap_or_default(), field(&text, "Size").unwrap_or_default()),
        Err(super::Error::Command { stderr, .. }) => {
            return Err(Error::Download { package, suite: suite.to_owned(), stderr: problems(&stderr) });
        }
        Err(err) => return Err(err.into()),
    };
    let size = size.parse::<u64>().map(crate::host::size::human_size).unwrap_or_else(|_| "?".to_owned());
    stage(format!("downloading {package} {version} ({size}) from {suite}"));
    let work =
        tempfile::Builder::new().prefix(".fetch-").tempdir_in(&dir).map_err(io_error("create a directory in", &dir))?;
    let download = super::run(
        Command::new("apt-get").arg("-q").args(&options).arg("download").arg(&package).current_dir(work.path()),
    );
    match download {
        Err(super::Error::Command { stderr, .. }) => {
            return Err(Error::Download { package, suite: suite.to_owned(), stderr: problems(&stderr) });
        }
        other => other?,
    };
    let deb = fs::read_dir(work.path())
        .map_err(io_error("read", work.path()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| Error::NoTarball { package: package.clone(), tarball: installed(series) })?;

    stage(format!("unpacking {}", deb.file_name().unwrap_or_default().to_string_lossy()));
    let root = work.path().join("root");
    super::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let inside = root.join(installed(series).strip_prefix("/").unwrap_or(Path::new("")));
    if !inside.is_file() {
        return Err(Error::NoTarball { package, tarball: installed(series) });
    }
    fs::rename(&inside, &tarball).map_err(|source| FsError {
        action: "move the tarball to",
        path: tarball.clone(),
        source,
    })?;
    // The package was only the tarball's wrapping: the work directory goes with it, and
    // so do apt's lists and caches of the suite (tens of megabytes; a later fetch, of a
    // newer version after a prune, runs `apt-get update` first anyway).
    drop(work);
    forget_apt_state(&dir);
    Ok(tarball)
}

/// Removes everything in a suite's directory but its tarballs and [`KEPT`]; what cannot
/// be removed stays for `appliance kernel cache prune` to name.
fn forget_apt_state(dir: &Path) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if KEPT.contains(&name.as_str()) || is_tarball(&name) {
            continue;
        }
        let path = entry.path();
        if let Err(e) = remove_any(&path) {
            log::debug!("{}: not removed: {e}", path.display());
        }
    }
}

/// Whether a file of a suite's directory is a fetched tarball.
pub fn is_tarball(name: &str) -> bool {
    name.starts_with("linux-source-") && name.ends_with(".tar.xz")
}

/// A field of `apt-cache show`'s first paragraph.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().take_while(|line| !line.is_empty()).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// The lines of apt's error output that say what went wrong (`E:` and `W:`), or all of
/// it when it has none.
fn problems(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|line| line.starts_with("E:") || line.starts_with("W:")).collect();
    if lines.is_empty() { stderr.trim().to_owned() } else { lines.join("\n") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str, suite: &str) -> sources::Source {
        sources::Source { uri: uri.into(), suite: suite.into(), components: vec!["main".into()] }
    }

    #[test]
    fn after_a_fetch_only_the_tarball_and_the_configuration_stay() {
        let dir = tempfile::tempdir().unwrap();
        let suite = dir.path();
        for sub in ["sources.list.d", "lists/partial", "archives/partial", ".fetch-x"] {
            fs::create_dir_all(suite.join(sub)).unwrap();
        }
        for file in ["sources.list", LOCK_FILE, "linux-source-5.10.tar.xz", "pkgcache.bin", "lists/x_Packages"] {
            fs::write(suite.join(file), "x").unwrap();
        }
        forget_apt_state(suite);
        let mut left: Vec<String> =
            fs::read_dir(suite).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [LOCK_FILE, "linux-source-5.10.tar.xz", "sources.list", "sources.list.d"]);
    }

    #[test]
    fn series_map_to_their_debian_suites() {
        assert_eq!(suite("5.10"), Some("bullseye"));
        assert_eq!(suite("6.1"), Some("bookworm"));
        assert_eq!(suite("6.12"), Some("bookworm-backports"));
        assert_eq!(suite("5.15"), None);
        assert_eq!(package("6.12"), "linux-source-6.12");
        assert_eq!(installed("5.10"), Path::new("/usr/src/linux-source-5.10.tar.xz"));
    }

    #[test]
    fn a_series_without_a_debian_source_says_which_have_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch("5.15", dir.path(), &|_| {}).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("series 5.15"), "{message}");
        assert!(message.contains("5.10 (bullseye), 6.1 (bookworm), 6.12 (bookworm-backports)"), "{message}");
        assert!(message.contains("--source"), "{message}");
    }

    #[test]
    fn a_fetched_tarball_is_found_without_apt() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = fetched(dir.path(), "6.12").unwrap();
        assert_eq!(tarball, dir.path().join("apt-src/bookworm-backports/linux-source-6.12.tar.xz"));
        assert_eq!(fetched(dir.path(), "5.4"), None);
        fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        fs::write(&tarball, b"").unwrap();
        assert_eq!(fetch("6.12", dir.path(), &|stage| panic!("{stage}")).unwrap(), tarball);
        if !installed("6.12").exists() {
            assert_eq!(find("6.12", dir.path()), Some(tarball));
        }
    }

    #[test]
    fn the_private_list_names_the_hosts_mirror_for_the_suite() {
        let host = [
            source("http://mirror.example/debian", "bookworm"),
            source("http://mirror.example/debian", "bookworm-updates"),
        ];
        let list = sources_list(&host, "bullseye");
        assert!(list.lines().any(|line| line == "deb http://mirror.example/debian bullseye main"), "{list}");
        assert_eq!(list.lines().filter(|line| line.starts_with("deb ")).count(), 1, "{list}");
        let list = sources_list(&host, "bookworm-backports");
        assert!(list.lines().any(|line| line == "deb http://mirror.example/debian bookworm-backports main"), "{list}");
        let list = sources_list(&[], "bullseye");
        assert!(list.contains(&format!("deb {} bullseye main", sources::DEFAULT_MIRROR)), "{list}");
    }

    #[test]
    fn apt_reads_only_the_private_sources_lists_and_cache() {
        let options = apt_options(Path::new("/c/apt-src/bullseye"));
        let pairs: Vec<&str> = options.iter().skip(1).step_by(2).map(String::as_str).collect();
        assert!(options.iter().step_by(2).all(|o| o == "-o"), "{options:?}");
        for expected in [
            "Dir::Etc::SourceList=/c/apt-src/bullseye/sources.list",
            "Dir::Etc::SourceParts=/c/apt-src/bullseye/sources.list.d",
            "Dir::State::Lists=/c/apt-src/bullseye/lists",
            "Dir::Cache=/c/apt-src/bullseye",
            "Dir::Cache::Archives=/c/apt-src/bullseye/archives",
        ] {
            assert!(pairs.contains(&expected), "{expected} in {pairs:?}");
        }
    }

    #[test]
    fn apt_show_fields_and_error_lines() {
        let show = "Package: linux-source-5.10\nVersion: 5.10.223-1\nSize: 121562870\n\nPackage: x\nVersion: 2\n";
        assert_eq!(field(show, "Version").as_deref(), Some("5.10.223-1"));
        assert_eq!(field(show, "Size").as_deref(), Some("121562870"));
        assert_eq!(field(show, "Depends"), None);
        let stderr = "Reading package lists...\nW: Failed to fetch http://x/dists/bullseye/InRelease  Temporary failure resolving 'x'\nE: Some index files failed to download.\n";
        assert_eq!(problems(stderr).lines().count(), 2);
        assert_eq!(problems("just this\n"), "just this");
    }
}
