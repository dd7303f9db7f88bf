//! Paths inside a reference root: resolved the way a process chrooted there sees them,
//! absolute symlink targets included, without ever leaving the root. The host's own
//! files are the root `/`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::host::fs_error::{FsError, io_error};

/// Linux's own limit on symlinks followed while resolving one path.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

impl Error {
    /// Whether the path, or a directory on the way, does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io(err) if err.source.kind() == io::ErrorKind::NotFound)
    }
}

/// What resolving one path in a root met on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The directories and symlinks passed through, in the order met (in-root paths).
    pub visited: Vec<PathBuf>,
    /// The symlinks followed, in the order met, each once per time it was followed.
    pub links: Vec<Link>,
    /// Where the path really is: no symlink left in it.
    pub real: PathBuf,
}

/// A symlink met on a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The link itself, as an in-root path.
    pub path: PathBuf,
    /// Its target, as stored in the link.
    pub target: PathBuf,
}

/// The host path of the in-root path `path`.
pub fn host_path(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        return path.to_owned();
    }
    let relative = path.strip_prefix("/").unwrap_or(path);
    if relative.as_os_str().is_empty() { root.to_owned() } else { root.join(relative) }
}

/// Resolves the absolute in-root path `path`, following symlinks inside `root` (an
/// absolute target means the root's `/`, and `..` stops at the root). A relative `path`
/// is taken from the root. Fails when any component is missing
/// ([`Error::is_not_found`]).
pub fn walk(root: &Path, path: &Path) -> Result<Walk, Error> {
    let mut resolved = PathBuf::from("/");
    let mut pending: VecDeque<OsString> = parts(path);
    let mut visited = Vec::new();
    let mut links = Vec::new();
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            // `resolved` holds no symlinks, so its lexical parent is its real parent.
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let host = host_path(root, &candidate);
        let metadata = fs::symlink_metadata(&host).map_err(io_error("read", &host))?;
        if metadata.file_type().is_symlink() {
            if links.len() == MAX_SYMLINKS {
                return Err(Error::SymlinkLoop { path: path.to_owned() });
            }
            let target = fs::read_link(&host).map_err(io_error("read the link", &host))?;
            visited.push(candidate.clone());
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            for part in parts(&target).into_iter().rev() {
                pending.push_front(part);
            }
            links.push(Link { path: candidate, target });
        } else {
            if !pending.is_empty() {
                if !metadata.is_dir() {
                    return Err(Error::NotADirectory { path: candidate });
                }
                visited.push(candidate.clone());
            }
            resolved = candidate;
        }
    }
    Ok(Walk { visited, links, real: resolved })
}

/// `host`, a path as the host sees it, as a path inside `root`; `None` when it lies
/// outside (or is no path at all, like `pipe:[1234]`).
pub fn in_root(root: &Path, host: &Path) -> Option<PathBuf> {
    if !host.is_absolute() {
        return None;
    }
    if root == Path::new("/") {
        return Some(host.to_owned());
    }
    let rest = host.strip_prefix(root).ok()?;
    Some(Path::new("/").join(rest))
}

/// Lexically joins `path` to the absolute `base` unless it is absolute itself; `.` is
/// dropped, `..` kept (it means something after a symlink).
pub fn join(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { base.join(path) }
}

fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/bash"), "").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/bin/bash", root.join("usr/bin/sh")).unwrap();
        symlink("../../../../../usr", root.join("usr/up")).unwrap();

        let walk_ = walk(root, Path::new("/usr/bin/sh")).unwrap();
        assert_eq!(walk_.real, Path::new("/usr/bin/bash"));
        let visited: Vec<&str> = walk_.visited.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(visited, ["/usr", "/usr/bin", "/usr/bin/sh", "/bin", "/usr", "/usr/bin"]);
        assert_eq!(walk(root, Path::new("/usr/up/bin/bash")).unwrap().real, Path::new("/usr/bin/bash"));
        assert_eq!(walk(root, Path::new("/")).unwrap().real, Path::new("/"));
        let links: Vec<(&str, &str)> =
            walk_.links.iter().map(|l| (l.path.to_str().unwrap(), l.target.to_str().unwrap())).collect();
        assert_eq!(links, [("/usr/bin/sh", "/bin/bash"), ("/bin", "usr/bin")]);
        let missing = walk(root, Path::new("/usr/bin/zsh")).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        let through_a_file = walk(root, Path::new("/usr/bin/bash/x")).unwrap_err();
        assert!(matches!(through_a_file, Error::NotADirectory { .. }), "{through_a_file}");
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = walk(dir.path(), Path::new("/a")).unwrap_err();
        assert!(matches!(err, Error::SymlinkLoop { .. }), "{err}");
    }

    #[test]
    fn host_and_root_paths() {
        let root = Path::new("/srv/root");
        assert_eq!(host_path(root, Path::new("/etc/passwd")), Path::new("/srv/root/etc/passwd"));
        assert_eq!(host_path(root, Path::new("/")), root);
        assert_eq!(in_root(root, Path::new("/srv/root/etc")), Some(PathBuf::from("/etc")));
        assert_eq!(in_root(root, Path::new("/srv/root")), Some(PathBuf::from("/")));
        assert_eq!(in_root(root, Path::new("/srv/rootless")), None);
        assert_eq!(in_root(root, Path::new("pipe:[12]")), None);
        assert_eq!(in_root(Path::new("/"), Path::new("/etc")), Some(PathBuf::from("/etc")));
        assert_eq!(join(Path::new("/home"), Path::new("a/../b")), Path::new("/home/a/../b"));
        assert_eq!(join(Path::new("/home"), Path::new("/b")), Path::new("/b"));
    }
}
