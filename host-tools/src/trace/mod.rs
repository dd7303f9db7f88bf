//! Trace-based file selection: run an application once in a reference root (a full
//! Debian tree, or the host's `/`) and keep only the files it touched.
//!
//! - [`ptrace`]: the tracer. Every process the command starts is followed, and every path
//!   it opens, executes, maps, stats or reads a link of is written down (no access times:
//!   no strict atime needed, and nothing read through an old mapping is missed).
//! - [`select`]: from the traced paths to the list: the directories and symlink chains
//!   leading to each path, the ELF loader and libraries of every traced executable and
//!   library (so a code path the trace did not exercise still finds its libraries), extra
//!   paths, minus exclusions (locales, documentation, caches, logs, virtual filesystems by
//!   default). Only what exists in the root is kept.
//! - [`render_list`] and [`parse_list`]: the list file, one path per line, sorted,
//!   editable (`#` comments and blank lines are ignored).
//!
//! Turning a list into an initramfs is [`crate::image`]'s job. Only x86-64 hosts are
//! supported (the system call table is x86-64's), and chrooting needs root.

mod ptrace;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use nix::libc;

use crate::host::glob::{self, Globs};
use crate::rootfs;
use crate::rootfs::elf::{self, Resolver};

pub use ptrace::{Traced, run};

/// Excluded unless asked otherwise: virtual filesystems and scratch space (the appliance
/// mounts its own), and what the original excluded: locales, documentation, caches, logs.
pub const DEFAULT_EXCLUDES: [&str; 12] = [
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/usr/share/locale",
    "/usr/lib/locale",
    "/usr/share/doc",
    "/usr/share/man",
    "/usr/share/info",
    "/var/cache",
    "/var/log",
];

/// The shell that runs each scripted command (`sh -c LINE`) inside the root.
pub const SHELL: &str = "/bin/sh";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use {} as the reference root", root.display())]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no command to trace")]
    EmptyCommand,
    #[error("cannot start `{command}` under ptrace")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("ptrace: cannot {what}")]
    Ptrace {
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("extra path {} does not exist in {}", path.display(), root.display())]
    MissingExtra {
        path: PathBuf,
        root: PathBuf,
        #[source]
        source: rootfs::path::Error,
    },
    #[error("extra path {} must be absolute", path.display())]
    RelativeExtra { path: PathBuf },
    #[error(transparent)]
    Elf(#[from] elf::Error),
    #[error(transparent)]
    Glob(#[from] glob::Error),
}

/// Where a system call names its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathArg {
    /// A path in argument N, relative to the working directory.
    Path(usize),
    /// A directory descriptor in the first argument index, a path relative to it in the
    /// second (`*at` calls).
    At(usize, usize),
    /// A file descriptor in argument N (mmap of a file).
    Fd(usize),
}

/// The x86-64 system calls that name a file the program needs, and where the name is.
pub fn path_argument(nr: i64) -> Option<PathArg> {
    Some(match nr {
        libc::SYS_open | libc::SYS_stat | libc::SYS_lstat | libc::SYS_access | libc::SYS_readlink => PathArg::Path(0),
        libc::SYS_execve | libc::SYS_uselib => PathArg::Path(0),
        libc::SYS_openat
        | libc::SYS_openat2
        | libc::SYS_newfstatat
        | libc::SYS_statx
        | libc::SYS_faccessat
        | libc::SYS_faccessat2
        | libc::SYS_readlinkat
        | libc::SYS_execveat => PathArg::At(0, 1),
        // mmap(addr, length, prot, flags, fd, offset)
        libc::SYS_mmap => PathArg::Fd(4),
        _ => return None,
    })
}

/// Runs each command with `sh -c` in `root`, traced, and returns them with what they did.
pub fn run_scripted(root: &Path, commands: &[String]) -> Result<Vec<Traced>, Error> {
    commands
        .iter()
        .map(|command| run(root, &[OsString::from(SHELL), OsString::from("-c"), OsString::from(command)]))
        .collect()
}

/// The commands of a commands file: one per line, blank lines and `#` comments skipped.
pub fn parse_commands(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_owned).collect()
}

/// Exclusion patterns, in the dialect of [`crate::host::glob`] (`*` and `?` within one
/// path component, `**` across components, `[a-z]`, `{a,b}`); a pattern that matches a
/// directory excludes everything below it.
#[derive(Clone, Debug, Default)]
pub struct Exclusions {
    globs: Globs,
}

impl Exclusions {
    /// `patterns`, plus [`DEFAULT_EXCLUDES`] when `defaults` is set.
    pub fn new(patterns: &[String], defaults: bool) -> Result<Exclusions, glob::Error> {
        let defaults = if defaults { &DEFAULT_EXCLUDES[..] } else { &[] };
        let all: Vec<&str> = defaults.iter().copied().chain(patterns.iter().map(String::as_str)).collect();
        Ok(Exclusions { globs: Globs::new(&all)? })
    }

    /// Whether `path` or one of the directories above it matches a pattern.
    pub fn excludes(&self, path: &Path) -> bool {
        self.globs.covers(path)
    }
}

/// From traced paths to the image's list: each path that exists in `root` with the
/// directories and symlinks leading to it, the loader and libraries of every ELF
/// executable and library among them, then `extra` (added even where excluded), minus
/// `exclude`. `/` itself is never listed.
pub fn select(
    root: &Path,
    accessed: &BTreeSet<PathBuf>,
    extra: &[PathBuf],
    exclude: &Exclusions,
) -> Result<BTreeSet<PathBuf>, Error> {
    let root = root.canonicalize().map_err(|source| Error::Root { root: root.to_owned(), source })?;
    let mut selected = BTreeSet::new();
    let mut files = BTreeSet::new();
    for path in accessed {
        if exclude.excludes(path) {
            continue;
        }
        let Ok(walk) = rootfs::path::walk(&root, path) else {
            continue;
        };
        if exclude.excludes(&walk.real) {
            continue;
        }
        add_walk(&root, walk, &mut selected, &mut files);
    }
    let mut resolver = Resolver::in_root(&root)?;
    for file in files.clone() {
        let host = rootfs::path::host_path(&root, &file);
        let Ok(Some(object)) = elf::inspect(&host) else {
            continue;
        };
        if object.is_static() {
            continue;
        }
        let deps = match resolver.resolve(&file) {
            Ok(deps) => deps,
            Err(err) => {
                log::warn!("{}: {err}; keeping what the trace saw", file.display());
                continue;
            }
        };
        let mut needed: Vec<PathBuf> = deps.libraries;
        needed.extend(deps.interpreter);
        if deps.needs_ld_cache {
            needed.push(PathBuf::from("/etc/ld.so.cache"));
        }
        for path in needed {
            if let Ok(walk) = rootfs::path::walk(&root, &path) {
                add_walk(&root, walk, &mut selected, &mut files);
            }
        }
    }
    for path in extra {
        if !path.is_absolute() {
            return Err(Error::RelativeExtra { path: path.clone() });
        }
        let walk = rootfs::path::walk(&root, path).map_err(|source| Error::MissingExtra {
            path: path.clone(),
            root: root.clone(),
            source,
        })?;
        add_walk(&root, walk, &mut selected, &mut files);
    }
    selected.remove(Path::new("/"));
    Ok(selected)
}

fn add_walk(root: &Path, walk: rootfs::path::Walk, selected: &mut BTreeSet<PathBuf>, files: &mut BTreeSet<PathBuf>) {
    selected.extend(walk.visited);
    if rootfs::path::host_path(root, &walk.real).is_file() {
        files.insert(walk.real.clone());
    }
    selected.insert(walk.real);
}

/// The list file: sorted paths, one a line. Paths that cannot be written on one line
/// (a newline in the name) are left out.
pub fn render_list(paths: &BTreeSet<PathBuf>) -> String {
    let mut text = String::new();
    for path in paths {
        let Some(line) = path.to_str() else {
            log::warn!("{}: not UTF-8, left out of the list", path.display());
            continue;
        };
        if line.contains('\n') {
            log::warn!("{line:?}: a newline in the name, left out of the list");
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Reads a list file: one absolute path a line; blank lines and `#` comments skipped.
pub fn parse_list(text: &str) -> BTreeSet<PathBuf> {
    text.lines().filter(|line| line.starts_with('/')).map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn syscall_table() {
        assert_eq!(path_argument(libc::SYS_openat), Some(PathArg::At(0, 1)));
        assert_eq!(path_argument(libc::SYS_execve), Some(PathArg::Path(0)));
        assert_eq!(path_argument(libc::SYS_mmap), Some(PathArg::Fd(4)));
        assert_eq!(path_argument(libc::SYS_statx), Some(PathArg::At(0, 1)));
        assert_eq!(path_argument(libc::SYS_write), None);
    }

    #[test]
    fn exclusion_table() {
        let exclusions = Exclusions::new(&["/etc/*.conf".to_owned(), "/opt/**/cache".to_owned()], true).unwrap();
        let cases = [
            ("/usr/share/locale", true),
            ("/usr/share/locale/de/LC_MESSAGES/bash.mo", true),
            ("/usr/share/localeX", false),
            ("/var/log/syslog", true),
            ("/proc/self/maps", true),
            ("/etc/ld.so.conf", true),
            ("/etc/ld.so.conf.d/x.conf", false),
            ("/etc/passwd", false),
            ("/opt/a/b/cache/x", true),
            ("/opt/cache", true),
            ("/opt/cached", false),
            ("/usr/bin/bash", false),
        ];
        for (path, excluded) in cases {
            assert_eq!(exclusions.excludes(Path::new(path)), excluded, "{path}");
        }
        assert!(!Exclusions::new(&[], false).unwrap().excludes(Path::new("/proc/1")));
    }

    #[test]
    fn commands_file() {
        assert_eq!(parse_commands("# setup\nls /\n\n  date  \n"), ["ls /", "date"]);
    }

    #[test]
    fn selection_keeps_links_directories_and_existing_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/share/doc/x")).unwrap();
        fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        fs::write(root.join("usr/share/doc/x/README"), "").unwrap();
        fs::write(root.join("usr/bin/extra"), "").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        let accessed: BTreeSet<PathBuf> = ["/bin/tool", "/bin/missing", "/usr/share/doc/x/README", "/proc/self/maps"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let selected =
            select(root, &accessed, &[PathBuf::from("/usr/bin/extra")], &Exclusions::new(&[], true).unwrap()).unwrap();
        let listed: Vec<&str> = selected.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(listed, ["/bin", "/usr", "/usr/bin", "/usr/bin/extra", "/usr/bin/tool"]);

        let err = select(root, &accessed, &[PathBuf::from("/nope")], &Exclusions::default()).unwrap_err();
        assert!(err.to_string().contains("/nope does not exist"), "{err}");
    }

    proptest! {
        #[test]
        fn list_round_trip(paths in proptest::collection::btree_set("(/[a-zA-Z0-9_. -]{1,8}){1,4}", 0..20)) {
            let paths: BTreeSet<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
            let text = render_list(&paths);
            prop_assert_eq!(parse_list(&text), paths);
        }
    }
}
