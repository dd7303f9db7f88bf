//! A reference root made with Debian's `mmdebstrap`: a Debian tree to install an
//! application's packages into (with [`crate::rootfs::shell`]) and to trace it in.
//!
//! It runs as root, in mmdebstrap's root mode. mmdebstrap can work unprivileged in a
//! user namespace (`--mode=unshare`), but a directory made that way belongs to the
//! user's subordinate IDs on the host: root inside the tree is not root, and neither
//! `dpkg` in a later shell nor a set-user-ID program works there. Everything else done
//! with a reference root (entering it, tracing a program chrooted in it) needs root too.
//!
//! The packages come from the mirrors the host's apt uses for the suite
//! ([`crate::rootfs::sources`]), and both the package lists and the downloaded `.deb`s
//! are kept in a cache per suite, copied into the new tree before apt runs and back out
//! after it: a second root of the same suite downloads only what changed, and what the
//! suite no longer offers (superseded by an update) leaves the cache. The tree is
//! made in a directory beside the target and renamed into place when complete, so an
//! interrupted create never leaves a half-made root that looks finished.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::host::fs_error::{FsError, io_error};
use crate::host::process::{IgnoreInterrupts, as_our_child, find_program};
use crate::rootfs::mounts::mounted_under;
use crate::rootfs::sources::Source;

/// The program that makes the tree.
pub const TOOL: &str = "mmdebstrap";

/// The suite when none is named: Debian 12.
pub const DEFAULT_SUITE: &str = "bookworm";

/// mmdebstrap's package sets, smallest first; `important` is what `debootstrap` makes
/// by default (the original workflow's reference roots), `minbase` only the essential
/// packages and apt.
pub const VARIANTS: [&str; 6] = ["minbase", "apt", "required", "buildd", "important", "standard"];

/// The variant when none is named.
pub const DEFAULT_VARIANT: &str = "important";

/// Under the tool's cache directory: `apt/<suite>/{archives,lists}` and `apt/<suite>.lock`.
const CACHE_DIR: &str = "apt";

/// Lines of mmdebstrap's output kept for an error message.
const LOG_LINES: usize = 40;

/// What to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub suite: String,
    pub variant: String,
    /// Packages installed on top of the variant's (names, or anything apt-get install takes).
    pub include: Vec<String>,
    /// The apt entries of the root (see [`crate::rootfs::sources::for_suite`]); they
    /// become its `/etc/apt/sources.list`.
    pub sources: Vec<Source>,
    /// Replace a directory that is not empty.
    pub force: bool,
}

/// A root made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub dir: PathBuf,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "creating a reference root needs root: its files must belong to root for dpkg and \
         set-user-ID programs to work in it (run it with sudo)"
    )]
    NotRoot,
    #[error("{TOOL} not found: install it (`apt-get install {TOOL}`; Debian 11, Ubuntu 20.04 and later)")]
    ToolMissing,
    #[error("invalid {what} `{value}`: {why}")]
    Invalid { what: &'static str, value: String, why: &'static str },
    #[error("{} exists and is not empty: pass --force to replace it", dir.display())]
    NotEmpty { dir: PathBuf },
    #[error("{} exists and is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("{} has file systems mounted in it ({mounts}): unmount them first", dir.display())]
    Mounted { dir: PathBuf, mounts: String },
    #[error(
        "unknown suite `{suite}`: {mirrors} has no Release file for it (name a Debian release: \
         bookworm, trixie, sid, stable, testing, ...; or pass --mirror)"
    )]
    UnknownSuite { suite: String, mirrors: String },
    #[error("no package {names} in {suite} on {mirrors}")]
    UnknownPackages { names: String, suite: String, mirrors: String },
    #[error("{TOOL} failed ({status}); its last lines:\n{log}")]
    Failed { status: ExitStatus, log: String },
    #[error("{TOOL} could not be started")]
    Spawn(#[source] io::Error),
    #[error(transparent)]
    Io(#[from] FsError),
}

/// What is at the target path before the create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Missing,
    Empty,
    /// Not empty, with --force.
    Replace,
}

/// Makes a root of `options.suite` at `dir`, with the package cache under `cache_dir`
/// (the tool's cache). Each line mmdebstrap reports (`downloading packages`,
/// `installing essential packages`, ...) goes to `progress`.
pub fn create(
    dir: &Path,
    options: &Options,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Created, Error> {
    check(options)?;
    if !rustix::process::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    if find_program(TOOL).is_none() {
        return Err(Error::ToolMissing);
    }
    let dir = std::path::absolute(dir).map_err(io_error("resolve", dir))?;
    let target = inspect_target(&dir, options.force)?;
    let parent = dir.parent().ok_or_else(|| Error::Invalid {
        what: "directory",
        value: dir.display().to_string(),
        why: "the root of the host cannot be replaced",
    })?;
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;

    let cache = cache_dir.join(CACHE_DIR).join(&options.suite);
    for sub in ["archives", "lists"] {
        let path = cache.join(sub);
        fs::create_dir_all(&path).map_err(io_error("create", &path))?;
    }
    // One create per suite at a time: two would copy the same cache out over each other.
    let lock_path = cache_dir.join(CACHE_DIR).join(format!("{}.lock", options.suite));
    let lock = fs::File::create(&lock_path).map_err(io_error("create", &lock_path))?;
    if let Err(fs::TryLockError::WouldBlock) = lock.try_lock() {
        progress(&format!("waiting for another create of a {} root to finish", options.suite));
    }
    lock.lock().map_err(io_error("lock", &lock_path))?;

    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let work = tempfile::Builder::new()
        .prefix(&format!(".{name}.create-"))
        .tempdir_in(parent)
        .map_err(io_error("create a directory in", parent))?
        .keep();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).map_err(io_error("set the mode of", &work))?;

    let started = Instant::now();
    if let Err(err) = run_mmdebstrap(&work, &cache, options, progress) {
        remove_tree(&work);
        return Err(err);
    }
    install(&work, &dir, target)?;
    Ok(Created { dir, took: started.elapsed() })
}

/// Refuses names that mmdebstrap would read as something else.
fn check(options: &Options) -> Result<(), Error> {
    let suite_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !suite_ok(&options.suite) {
        return Err(Error::Invalid {
            what: "suite",
            value: options.suite.clone(),
            why: "a suite is a release name such as bookworm",
        });
    }
    if !VARIANTS.contains(&options.variant.as_str()) {
        return Err(Error::Invalid { what: "variant", value: options.variant.clone(), why: "not one of mmdebstrap's" });
    }
    for package in &options.include {
        if package.is_empty() || package.contains([',', ' ', '\t', '\n']) {
            return Err(Error::Invalid {
                what: "package",
                value: package.clone(),
                why: "a package name has no spaces or commas",
            });
        }
    }
    Ok(())
}

fn inspect_target(dir: &Path, force: bool) -> Result<Target, Error> {
    let metadata = match fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Target::Missing),
        Err(err) => return Err(io_error("inspect", dir)(err).into()),
    };
    if !metadata.is_dir() {
        return Err(Error::NotADirectory { dir: dir.to_owned() });
    }
    if fs::read_dir(dir).map_err(io_error("read", dir))?.next().is_none() {
        return Ok(Target::Empty);
    }
    if !force {
        return Err(Error::NotEmpty { dir: dir.to_owned() });
    }
    let mounts = mounted_under(dir)?;
    if !mounts.is_empty() {
        let mounts = mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(Error::Mounted { dir: dir.to_owned(), mounts });
    }
    Ok(Target::Replace)
}

/// mmdebstrap's arguments for making `work`, with the cache directories `archives` and
/// `lists` relative to its working directory (the suite's cache: hooks take paths
/// relative to it, which needs no quoting).
pub fn mmdebstrap_args(work: &Path, options: &Options) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--mode=root".to_owned(),
        "--format=directory".to_owned(),
        format!("--variant={}", options.variant),
        // Keep the packages that the essential step installed in the tree until the
        // customize hook has copied them out.
        "--skip=essential/unlink".to_owned(),
        // No fsync per file while unpacking: a create that dies is thrown away whole.
        // Taken out of the tree at the end, so that later installs in it are safe.
        "--dpkgopt=force-unsafe-io".to_owned(),
        // The package lists stay, as debootstrap leaves them: `apt-get install` in the
        // root works at once, without an `apt-get update` first.
        "--skip=cleanup/apt/lists".to_owned(),
        r#"--setup-hook=mkdir -p "$1"/var/cache/apt/archives "$1"/var/lib/apt/lists"#.to_owned(),
        "--setup-hook=sync-in archives /var/cache/apt/archives/".to_owned(),
        "--setup-hook=sync-in lists /var/lib/apt/lists/".to_owned(),
        // The cache keeps what the suite still offers: the tree's apt removes the
        // packages its lists no longer name (superseded by an update), the cache's copy
        // is emptied, and what the tree kept goes out. Without this every point release
        // left its packages behind in the cache for good.
        r#"--customize-hook=chroot "$1" apt-get -q autoclean"#.to_owned(),
        "--customize-hook=find archives -maxdepth 1 -name '*.deb' -delete".to_owned(),
        "--customize-hook=sync-out /var/cache/apt/archives archives".to_owned(),
        "--customize-hook=sync-out /var/lib/apt/lists lists".to_owned(),
        r#"--customize-hook=rm -f "$1"/etc/dpkg/dpkg.cfg.d/99mmdebstrap"#.to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if !options.include.is_empty() {
        args.push(format!("--include={}", options.include.join(",")).into());
    }
    // Everything after `--` is the suite, the target and the mirrors.
    args.push("--".into());
    args.push(options.suite.clone().into());
    args.push(work.as_os_str().to_owned());
    args.extend(options.sources.iter().map(|source| OsString::from(source.line())));
    args
}

fn run_mmdebstrap(work: &Path, cache: &Path, options: &Options, progress: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let mut command = Command::new(TOOL);
    command.args(mmdebstrap_args(work, options)).current_dir(cache).stdin(Stdio::null()).stderr(Stdio::piped());
    // Its standard output (hooks, apt) must not mix with ours.
    if let Ok(stderr) = io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(stderr);
    }
    as_our_child(&mut command);
    let mut child = command.spawn().map_err(Error::Spawn)?;
    // A Ctrl-C reaches mmdebstrap too, which then unmounts what it mounted in the tree
    // and exits: wait for that, then remove the tree.
    let _interrupts = IgnoreInterrupts::install();
    let mut log: VecDeque<String> = VecDeque::with_capacity(LOG_LINES);
    let mut unknown_suite = false;
    let mut unknown_packages: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(info) = line.strip_prefix("I: ") {
                progress(info);
            } else if line.starts_with("W: ") {
                progress(&line);
            }
            unknown_suite |= line.contains("does not have a Release file");
            if let Some(name) = unknown_package(&line)
                && !unknown_packages.iter().any(|known| known == name)
            {
                unknown_packages.push(name.to_owned());
            }
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    }
    let status = child.wait().map_err(Error::Spawn)?;
    if status.success() {
        return Ok(());
    }
    let mirrors = options.sources.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>().join(", ");
    if unknown_suite {
        return Err(Error::UnknownSuite { suite: options.suite.clone(), mirrors });
    }
    if !unknown_packages.is_empty() {
        return Err(Error::UnknownPackages {
            names: unknown_packages.join(", "),
            suite: options.suite.clone(),
            mirrors,
        });
    }
    Err(Error::Failed { status, log: Vec::from(log).join("\n") })
}

/// The package an apt error line says it cannot find.
fn unknown_package(line: &str) -> Option<&str> {
    if let Some(name) = line.strip_prefix("E: Unable to locate package ") {
        return Some(name.trim());
    }
    line.strip_prefix("E: Package '")?.split_once("' has no installation candidate").map(|(name, _)| name)
}

/// Puts the finished tree `work` at `dir`.
fn install(work: &Path, dir: &Path, target: Target) -> Result<(), Error> {
    if target == Target::Replace {
        // The old tree goes aside first, so that `dir` is never missing a root for
        // longer than two renames.
        let old = work.with_extension("old");
        fs::rename(dir, &old).map_err(io_error("move aside", dir))?;
        fs::rename(work, dir).map_err(io_error("move the new root to", dir))?;
        remove_tree(&old);
        return Ok(());
    }
    // rename(2) replaces an empty directory.
    fs::rename(work, dir).map_err(io_error("move the new root to", dir))?;
    Ok(())
}

/// Removes a tree of ours, unless something is mounted in it: a bind mount of `/dev`
/// would take the host's device nodes with it.
fn remove_tree(dir: &Path) {
    match mounted_under(dir) {
        Ok(mounts) if mounts.is_empty() => {
            if let Err(err) = fs::remove_dir_all(dir) {
                log::warn!("cannot remove {}: {err}", dir.display());
            }
        }
        Ok(mounts) => log::warn!("{} left in place: {} still mounted in it", dir.display(), mounts[0].display()),
        Err(err) => log::warn!("{} left in place: {err}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: vec![],
            sources: vec![Source {
                uri: "http://m/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into()],
            }],
            force: false,
        }
    }

    #[test]
    fn mmdebstrap_gets_the_suite_the_target_and_the_hosts_entries_after_the_options() {
        let mut options = options();
        options.include = vec!["hello".into(), "bash".into()];
        let args: Vec<String> = mmdebstrap_args(Path::new("/r/.x.create-1"), &options)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dashes + 1..], ["bookworm", "/r/.x.create-1", "deb http://m/debian bookworm main"]);
        assert!(args[..dashes].contains(&"--include=hello,bash".to_owned()), "{args:?}");
        assert!(args[..dashes].contains(&"--variant=minbase".to_owned()), "{args:?}");
        assert!(args[..dashes].contains(&"--mode=root".to_owned()), "{args:?}");
        // The cache goes in before apt runs and comes out before mmdebstrap cleans it.
        let sync_in = args.iter().position(|a| a.contains("sync-in archives")).unwrap();
        let sync_out = args.iter().position(|a| a.contains("sync-out /var/cache/apt/archives")).unwrap();
        assert!(args[sync_in].starts_with("--setup-hook=") && args[sync_out].starts_with("--customize-hook="));
        // Superseded packages go first, from the tree and from the cache's copy.
        let autoclean = args.iter().position(|a| a.contains("apt-get -q autoclean")).unwrap();
        let emptied = args.iter().position(|a| a.contains("find archives")).unwrap();
        assert!(autoclean < emptied && emptied < sync_out, "{args:?}");
    }

    #[test]
    fn names_mmdebstrap_would_misread_are_refused() {
        for (change, what) in [
            ((|o: &mut Options| o.suite = "--help".into()) as fn(&mut Options), "invalid suite"),
            (|o| o.suite = String::new(), "invalid suite"),
            (|o| o.suite = "a b".into(), "invalid suite"),
            (|o| o.variant = "huge".into(), "invalid variant"),
            (|o| o.include = vec!["a,b".into()], "invalid package"),
            (|o| o.include = vec![String::new()], "invalid package"),
        ] {
            let mut options = options();
            change(&mut options);
            let err = check(&options).unwrap_err().to_string();
            assert!(err.starts_with(what), "{err}");
        }
        assert!(check(&options()).is_ok());
    }

    #[test]
    fn a_directory_with_files_is_kept_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("root");
        assert_eq!(inspect_target(&dir, false).unwrap(), Target::Missing);
        fs::create_dir(&dir).unwrap();
        assert_eq!(inspect_target(&dir, false).unwrap(), Target::Empty);
        fs::write(dir.join("precious"), "x").unwrap();
        let err = inspect_target(&dir, false).unwrap_err().to_string();
        assert!(err.ends_with("exists and is not empty: pass --force to replace it"), "{err}");
        assert_eq!(inspect_target(&dir, true).unwrap(), Target::Replace);
        let err = inspect_target(&dir.join("precious"), true).unwrap_err().to_string();
        assert!(err.ends_with("exists and is not a directory"), "{err}");
    }

    #[test]
    fn a_replaced_root_is_swapped_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, dir) = (tmp.path().join(".root.create-1"), tmp.path().join("root"));
        fs::create_dir_all(work.join("etc")).unwrap();
        fs::create_dir_all(dir.join("old")).unwrap();
        install(&work, &dir, Target::Replace).unwrap();
        assert!(dir.join("etc").is_dir() && !dir.join("old").exists() && !work.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn apts_complaints_about_packages_name_them() {
        assert_eq!(unknown_package("E: Unable to locate package nosuch-pkg"), Some("nosuch-pkg"));
        assert_eq!(unknown_package("E: Package 'gone' has no installation candidate"), Some("gone"));
        assert_eq!(unknown_package("E: apt-get update failed"), None);
    }
}
