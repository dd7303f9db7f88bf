//! Host files into an image's archive: a host program with the loader, libraries and
//! interpreter it needs, a host path with every symlink met on the way to it, paths of a
//! reference root as they are there, and whole directory trees.
//!
//! Host files keep their host paths, and every symlink met on the way to them is
//! recreated, so `/bin/bash` on a merged-/usr host arrives as the symlink `bin -> usr/bin`
//! plus the file `usr/bin/bash`, and works under either name.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::cpio::{self, Archive, Entry};
use crate::host::fs_error::{FsError, io_error};
use crate::rootfs;
use crate::rootfs::elf::{self, Resolver};

/// The loader's cache, needed in the image only for libraries outside its built-in
/// directories.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// Interpreters followed from one program: `#!/usr/bin/env python3` chains are short,
/// and a loop of scripts naming each other as interpreters is not worth following far.
const MAX_INTERPRETERS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(transparent)]
    Path(#[from] rootfs::path::Error),
    #[error(transparent)]
    Archive(#[from] cpio::Error),
    #[error(transparent)]
    Elf(#[from] elf::Error),
    #[error(
        "{what} {} is dynamically linked: it would need a loader and libraries the image \
         does not have; build it static",
        path.display()
    )]
    NotStatic { what: String, path: PathBuf },
    #[error("host file {} is a directory: list the files it should contribute", path.display())]
    HostDirectory { path: PathBuf },
    #[error("{}: only regular files, directories and symlinks can go into an image", path.display())]
    UnsupportedFileType { path: PathBuf },
}

/// Fails unless `path` is a statically linked ELF program: the image has no loader or
/// libraries for the workspace's own programs.
pub fn require_static(what: &str, path: &Path) -> Result<(), Error> {
    if elf::inspect_elf(path)?.is_static() {
        Ok(())
    } else {
        Err(Error::NotStatic { what: what.to_owned(), path: path.to_owned() })
    }
}

/// Adds a host file with what it needs to run: for an ELF program its loader and
/// libraries, for a `#!` script its interpreter (and that one's libraries).
pub fn add_host_program(archive: &mut Archive, resolver: &mut Resolver, path: &Path) -> Result<(), Error> {
    let mut queue = VecDeque::from([path.to_owned()]);
    let mut guard = 0;
    while let Some(path) = queue.pop_front() {
        let real = add_host_path(archive, &path)?;
        if add_host_libraries(archive, resolver, &real)? {
            continue;
        } else if let Some(interpreter) = shebang(&real)? {
            guard += 1;
            if guard < MAX_INTERPRETERS {
                queue.push_back(interpreter);
            }
        }
    }
    Ok(())
}

/// Adds the loader and the shared libraries (with `ld.so.cache` when it is needed) that
/// the host file `program` needs, wherever the image holds `program` itself; returns
/// whether it is an ELF file (a static one needs nothing).
pub fn add_host_libraries(archive: &mut Archive, resolver: &mut Resolver, program: &Path) -> Result<bool, Error> {
    let Some(object) = elf::inspect(program)? else { return Ok(false) };
    if object.is_static() {
        return Ok(true);
    }
    let deps = resolver.resolve(program)?;
    if let Some(loader) = &deps.interpreter {
        add_host_path(archive, loader)?;
    }
    for library in &deps.libraries {
        add_host_path(archive, library)?;
    }
    if deps.needs_ld_cache && Path::new(LD_SO_CACHE).is_file() {
        add_host_path(archive, Path::new(LD_SO_CACHE))?;
    }
    Ok(true)
}

/// The absolute interpreter path of a `#!` script, if it is one. Reads at most 256
/// bytes: the kernel looks no further for the `#!` line.
fn shebang(path: &Path) -> Result<Option<PathBuf>, Error> {
    Ok(shebang_of(&head(path)?))
}

/// The first 256 bytes of the host file `path`: as far as the kernel looks for a `#!` line.
pub(crate) fn head(path: &Path) -> Result<Vec<u8>, Error> {
    let file = fs::File::open(path).map_err(io_error("read", path))?;
    let mut head = Vec::new();
    file.take(256).read_to_end(&mut head).map_err(io_error("read", path))?;
    Ok(head)
}

/// The absolute interpreter path of the `#!` line that starts `head`, if any.
pub(crate) fn shebang_of(head: &[u8]) -> Option<PathBuf> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .split_whitespace()
        .next()
        .filter(|interpreter| interpreter.starts_with('/'))
        .map(PathBuf::from)
}

/// Adds the host file `path` at the same path in the image, recreating each symlink met
/// on the way (in the directories leading to it and the file itself, chains included),
/// so the file is reachable in the image under every name it has on the host. Returns
/// the file's real path.
pub fn add_host_path(archive: &mut Archive, path: &Path) -> Result<PathBuf, Error> {
    let walk = rootfs::path::walk(Path::new("/"), path)?;
    for link in &walk.links {
        archive.add(Entry::symlink(image_path(&link.path), &link.target))?;
    }
    let resolved = walk.real;
    let metadata = fs::metadata(&resolved).map_err(io_error("read", &resolved))?;
    if metadata.is_dir() {
        return Err(Error::HostDirectory { path: path.to_owned() });
    }
    if !metadata.is_file() {
        return Err(Error::UnsupportedFileType { path: resolved });
    }
    archive.add(Entry::file(image_path(&resolved), &resolved, metadata.mode()))?;
    Ok(resolved)
}

/// Adds each in-root path of `paths` as it is in `root` (directory, symlink or file,
/// with its mode) at the same path in the image, unless the image already has it.
/// Device nodes, sockets and pipes are left out.
pub fn add_root_paths(archive: &mut Archive, root: &Path, paths: &BTreeSet<PathBuf>) -> Result<usize, Error> {
    let mut added = 0;
    for path in paths {
        let name = image_path(path);
        if archive.get(&name).is_some() {
            continue;
        }
        let host = rootfs::path::host_path(root, path);
        let metadata = fs::symlink_metadata(&host).map_err(io_error("read", &host))?;
        let file_type = metadata.file_type();
        let entry = if file_type.is_symlink() {
            Entry::symlink(name, fs::read_link(&host).map_err(io_error("read the link", &host))?)
        } else if file_type.is_dir() {
            Entry::directory(name, metadata.mode())
        } else if file_type.is_file() {
            Entry::file(name, host, metadata.mode())
        } else {
            log::info!("{}: not a file, directory or symlink; left out", path.display());
            continue;
        };
        archive.add(entry)?;
        added += 1;
    }
    Ok(added)
}

fn image_path(host_path: &Path) -> String {
    host_path.to_string_lossy().into_owned()
}

/// Adds the host directory `dir` as `image_dir` and everything below it, keeping modes
/// and symlinks as they are.
pub fn add_tree(archive: &mut Archive, dir: &Path, image_dir: &str) -> Result<(), Error> {
    let metadata = fs::metadata(dir).map_err(io_error("read", dir))?;
    archive.add(Entry::directory(image_dir, metadata.mode()))?;
    let mut children: Vec<fs::DirEntry> =
        fs::read_dir(dir).map_err(io_error("read", dir))?.collect::<Result<_, _>>().map_err(io_error("read", dir))?;
    children.sort_by_key(fs::DirEntry::file_name);
    for child in children {
        let path = child.path();
        let name = child.file_name();
        let image_child = format!("{}/{}", image_dir.trim_end_matches('/'), name.to_string_lossy());
        let metadata = fs::symlink_metadata(&path).map_err(io_error("read", &path))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(io_error("read the link", &path))?;
            archive.add(Entry::symlink(image_child, target))?;
        } else if file_type.is_dir() {
            add_tree(archive, &path, &image_child)?;
        } else if file_type.is_file() {
            archive.add(Entry::file(image_child, &path, metadata.mode()))?;
        } else {
            return Err(Error::UnsupportedFileType { path });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::archive::cpio::Kind;
    use std::os::unix::fs::{PermissionsExt, symlink};

    pub(crate) fn symlink_target<'a>(archive: &'a Archive, path: &str) -> Option<&'a Path> {
        match archive.get(path)?.kind() {
            Kind::Symlink { target } => Some(target),
            _ => None,
        }
    }

    pub(crate) fn is_file(archive: &Archive, path: &str) -> bool {
        matches!(archive.get(path).map(Entry::kind), Some(Kind::File { .. }))
    }

    #[test]
    fn symlink_chains_and_dot_dot_are_recreated() {
        let dir = tempfile::tempdir().unwrap();
        // The temporary directory itself may sit behind a symlink; work from its real path.
        let root = dir.path().canonicalize().unwrap();
        fs::create_dir(root.join("real")).unwrap();
        fs::write(root.join("real/file"), "data").unwrap();
        symlink("real", root.join("dirlink")).unwrap();
        symlink("../dirlink/file", root.join("real/up")).unwrap();
        symlink("up", root.join("real/chain")).unwrap();
        symlink(root.join("real/chain"), root.join("absolute")).unwrap();

        let mut archive = Archive::new();
        let real = add_host_path(&mut archive, &root.join("absolute")).unwrap();
        assert_eq!(real, root.join("real/file"));
        let image = |path: &Path| path.to_string_lossy().into_owned();
        assert_eq!(symlink_target(&archive, &image(&root.join("absolute"))), Some(root.join("real/chain").as_path()));
        assert_eq!(symlink_target(&archive, &image(&root.join("real/chain"))), Some(Path::new("up")));
        assert_eq!(symlink_target(&archive, &image(&root.join("real/up"))), Some(Path::new("../dirlink/file")));
        assert_eq!(symlink_target(&archive, &image(&root.join("dirlink"))), Some(Path::new("real")));
        assert!(is_file(&archive, &image(&root.join("real/file"))));
        // Only what lies on the way, not the whole directory.
        assert_eq!(archive.len(), 5);
    }

    #[test]
    fn symlink_loops_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let err = add_host_path(&mut Archive::new(), &root.join("a")).unwrap_err();
        assert!(matches!(err, Error::Path(rootfs::path::Error::SymlinkLoop { .. })), "{err}");
        let err = add_host_path(&mut Archive::new(), &root).unwrap_err();
        assert!(matches!(err, Error::HostDirectory { .. }), "{err}");
    }

    /// Debian 12 merges /usr: /bin/bash must arrive as `bin -> usr/bin` plus the file.
    #[test]
    fn merged_usr_bin_bash() {
        let Ok(bin_target) = fs::read_link("/bin") else {
            panic!("cannot run: /bin is not a symlink on this host (tests/run installs what the tests need)");
        };
        let mut archive = Archive::new();
        let mut resolver = Resolver::host().unwrap();
        add_host_program(&mut archive, &mut resolver, Path::new("/bin/bash")).unwrap();
        assert_eq!(symlink_target(&archive, "bin"), Some(bin_target.as_path()));
        let real = fs::canonicalize("/bin/bash").unwrap();
        assert!(is_file(&archive, real.to_str().unwrap()));
        let has = |suffix: &str| archive.entries().any(|e| e.path().ends_with(suffix));
        assert!(has("/libc.so.6") && has("ld-linux-x86-64.so.2"));
        // The loader is reachable by the name in PT_INTERP: every link on the way exists.
        let loader = elf::inspect_elf(Path::new("/bin/bash")).unwrap().interpreter.unwrap();
        let first = loader.components().nth(1).unwrap().as_os_str().to_str().unwrap();
        assert!(archive.get(first).is_some(), "{first}");
    }

    #[test]
    fn scripts_bring_their_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let script = root.join("script");
        fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        assert_eq!(shebang(&script).unwrap(), Some(PathBuf::from("/bin/sh")));
        fs::write(root.join("plain"), "echo hi\n").unwrap();
        assert_eq!(shebang(&root.join("plain")).unwrap(), None);
        fs::write(root.join("relative"), "#!sh\n").unwrap();
        assert_eq!(shebang(&root.join("relative")).unwrap(), None);

        if !Path::new("/bin/sh").exists() {
            return;
        }
        let mut archive = Archive::new();
        let mut resolver = Resolver::host().unwrap();
        add_host_program(&mut archive, &mut resolver, &script).unwrap();
        let sh = fs::canonicalize("/bin/sh").unwrap();
        assert!(is_file(&archive, sh.to_str().unwrap()));
    }

    #[test]
    fn root_paths_keep_their_kind_and_yield_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/tool"), "x").unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::write(root.join("motd"), "root's").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        let mut archive = Archive::new();
        archive.add(Entry::data("/motd", "image's", 0o644)).unwrap();
        let paths: BTreeSet<PathBuf> =
            ["/bin", "/usr", "/usr/bin", "/usr/bin/tool", "/motd"].iter().map(PathBuf::from).collect();
        assert_eq!(add_root_paths(&mut archive, root, &paths).unwrap(), 4);
        assert_eq!(symlink_target(&archive, "bin"), Some(Path::new("usr/bin")));
        assert_eq!(*archive.get("usr/bin").unwrap().kind(), Kind::Directory);
        assert!(is_file(&archive, "usr/bin/tool"));
        assert_eq!(archive.get("usr/bin/tool").unwrap().mode() & 0o7777, 0o751);
        assert!(matches!(archive.get("motd").unwrap().kind(), Kind::Data(_)));
    }
}
