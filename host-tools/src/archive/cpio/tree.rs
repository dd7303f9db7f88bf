//! Between archives and directory trees: [`pack_dir`] turns a tree into writer entries,
//! [`unpack`] writes an archive's members into a directory without ever writing outside it.
//!
//! Unpacking treats the archive as hostile. Every name is checked before anything is
//! written (a `..` component refuses the whole archive; a leading `/` is stripped, as the
//! kernel does, so "/etc/x" lands in `<dir>/etc/x`). Each parent directory is checked with
//! `symlink_metadata` component by component: a symlink on the way is followed only when
//! it resolves to a directory inside the tree, so "a -> /etc" followed by "a/passwd" is an
//! error, not a write to /etc/passwd. The last component is never followed: whatever is
//! there is removed and the new file created with `O_EXCL | O_NOFOLLOW`. Device nodes are
//! created only as root (they are skipped and reported otherwise); directory modes are set
//! last, so a read-only directory still receives its files. Hard links come out as copies.
//!
//! The checks and the writes are separate system calls, so a tree that someone else
//! changes while we unpack into it is out of scope: unpack into a directory you own.

use crate::host::fs_error::FsError;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::read::{FileType, Member, PathError, ReadArchive};
use super::{Archive, Entry, Kind};

/// Errors of packing a directory.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("cannot add {}", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: super::Error,
    },
}

/// What [`pack_dir`] left out.
#[derive(Debug, Default)]
pub struct PackReport {
    /// Sockets: a cpio archive can hold them, but nothing can recreate one from it.
    pub skipped: Vec<PathBuf>,
}

/// Adds every file, directory, symlink, device node and fifo under `dir` to `archive`
/// at its path relative to `dir` (plus `prefix`, e.g. "" or "usr/local"), replacing
/// entries already there. Regular files are streamed from disk while writing.
pub fn pack_dir(dir: &Path, prefix: &str, archive: &mut Archive) -> Result<PackReport, PackError> {
    let mut report = PackReport::default();
    let metadata =
        fs::metadata(dir).map_err(|source| PackError::Io(FsError { action: "read", path: dir.to_owned(), source }))?;
    if !metadata.is_dir() {
        return Err(PackError::Io(FsError {
            action: "pack",
            path: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }));
    }
    walk(dir, prefix.trim_matches('/'), archive, &mut report)?;
    Ok(report)
}

fn walk(dir: &Path, prefix: &str, archive: &mut Archive, report: &mut PackReport) -> Result<(), PackError> {
    let list_error = |source| PackError::Io(FsError { action: "list", path: dir.to_owned(), source });
    let entries = fs::read_dir(dir).map_err(list_error)?;
    for entry in entries {
        let entry = entry.map_err(list_error)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| {
            PackError::Io(FsError {
                action: "pack",
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, "the name is not UTF-8"),
            })
        })?;
        let inner = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
        if let Some(entry) = entry_for(&path, &inner, report)? {
            let is_dir = *entry.kind() == Kind::Directory;
            archive.insert(entry).map_err(|source| PackError::Archive { path: path.clone(), source })?;
            if is_dir {
                walk(&path, &inner, archive, report)?;
            }
        }
    }
    Ok(())
}

/// The entry for the host file at `path`, stored at `inner`; `None` for what cannot be
/// archived (recorded in `report`).
pub fn entry_for(path: &Path, inner: &str, report: &mut PackReport) -> Result<Option<Entry>, PackError> {
    let metadata = fs::symlink_metadata(path)
        .map_err(|source| PackError::Io(FsError { action: "read", path: path.to_owned(), source }))?;
    let mode = metadata.mode();
    let file_type = FileType::from_mode(mode);
    let (major, minor) = (rustix::fs::major(metadata.rdev()), rustix::fs::minor(metadata.rdev()));
    let kind = match file_type {
        FileType::Directory => Kind::Directory,
        FileType::Regular => Kind::File { source: path.to_owned() },
        FileType::Symlink => Kind::Symlink {
            target: fs::read_link(path)
                .map_err(|source| PackError::Io(FsError { action: "read the link", path: path.to_owned(), source }))?,
        },
        FileType::CharDevice => Kind::CharDevice { major, minor },
        FileType::BlockDevice => Kind::BlockDevice { major, minor },
        FileType::Fifo => Kind::Fifo,
        FileType::Socket | FileType::Unknown => {
            report.skipped.push(path.to_owned());
            return Ok(None);
        }
    };
    Ok(Some(Entry::new(inner, mode, kind)))
}

/// Errors of [`unpack`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("refusing to write {member:?}: {} is a symlink to {} (outside the tree or not a directory)", link.display(), target.display())]
    ThroughSymlink { member: String, link: PathBuf, target: PathBuf },
    #[error("cannot write {member:?}: {} is not a directory", parent.display())]
    NotDirectory { member: String, parent: PathBuf },
    #[error("cannot {action} {} (member {member:?})", path.display())]
    Io {
        action: &'static str,
        member: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How [`unpack`] treats what needs privileges.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Create device nodes (needs root); otherwise they are skipped and reported.
    pub devices: bool,
    /// Give files the archive's owners (needs root).
    pub owners: bool,
}

impl UnpackOptions {
    /// Devices and owners exactly when running as root.
    pub fn for_current_user() -> UnpackOptions {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions { devices: root, owners: root }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Default)]
pub struct UnpackReport {
    /// Members written.
    pub written: usize,
    /// Members not written, with the reason, and the members themselves so that `edit`
    /// can carry them over.
    pub skipped: Vec<(Member, &'static str)>,
}

/// Unpacks every member of `archive` into `target` (created when missing); see the
/// module documentation for what is refused.
pub fn unpack(archive: &ReadArchive, target: &Path, options: UnpackOptions) -> Result<UnpackReport, UnpackError> {
    // Every name first: a hostile name refuses the archive before anything is written.
    let mut paths = Vec::with_capacity(archive.members.len());
    for member in &archive.members {
        paths.push(member.path()?);
    }
    let mut writer = TreeWriter::new(target, options)?;
    for (member, path) in archive.members.iter().zip(paths) {
        let Some(path) = path else { continue };
        writer.0.member(member, &path)?;
    }
    writer.finish()
}

/// [`unpack`] one member at a time, for members read one at a time from a stream
/// ([`super::read::Stream`]). The caller checks every name first, as [`unpack`] does, so
/// that a hostile name refuses the archive before anything is written.
pub struct TreeWriter(Unpacker);

impl TreeWriter {
    /// Unpacks into `target`, created when missing.
    pub fn new(target: &Path, options: UnpackOptions) -> Result<TreeWriter, UnpackError> {
        let root_error =
            |action| move |source| UnpackError::Io { action, member: String::new(), path: target.to_owned(), source };
        fs::create_dir_all(target).map_err(root_error("create"))?;
        let root = target.canonicalize().map_err(root_error("resolve"))?;
        Ok(TreeWriter(Unpacker { root, options, report: UnpackReport::default(), directories: Vec::new() }))
    }

    /// Writes `member` (the archive's root, ".", is skipped).
    pub fn member(&mut self, member: &Member) -> Result<(), UnpackError> {
        match member.path()? {
            Some(path) => self.0.member(member, &path),
            None => Ok(()),
        }
    }

    /// Gives the directories their modes and times; what was written and skipped.
    pub fn finish(self) -> Result<UnpackReport, UnpackError> {
        self.0.finish()
    }
}

/// An unpack under way: what was written, and the directories whose mode and time are
/// set at the end.
struct Unpacker {
    root: PathBuf,
    options: UnpackOptions,
    report: UnpackReport,
    /// Each directory with the mode and time it gets once everything is in it.
    directories: Vec<(PathBuf, u32, SystemTime)>,
}

impl Unpacker {
    /// Writes one member at `path` (checked, relative to the root), replacing what is
    /// there.
    fn member(&mut self, member: &Member, path: &str) -> Result<(), UnpackError> {
        let full = self.root.join(path);
        prepare_parents(&self.root, path, member)?;
        let file_type = member.file_type();
        clear_place(member, &full)?;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(member.mtime.into());
        match file_type {
            FileType::Regular => write_file(member, &full, mtime)?,
            FileType::Directory => {
                if !full.is_dir() {
                    fs::create_dir(&full).map_err(member_error("create", member, &full))?;
                }
                self.directories.push((full.clone(), member.permissions(), mtime));
            }
            FileType::Symlink => {
                let target = member.symlink_target().unwrap_or(Path::new(""));
                std::os::unix::fs::symlink(target, &full).map_err(member_error("create", member, &full))?;
            }
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo => {
                if file_type != FileType::Fifo && !self.options.devices {
                    self.report.skipped.push((member.clone(), "device nodes are created only as root"));
                    return Ok(());
                }
                make_node(member, &full)?;
            }
            FileType::Socket | FileType::Unknown => {
                self.report.skipped.push((member.clone(), "sockets and unknown types cannot be created"));
                return Ok(());
            }
        }
        if self.options.owners {
            std::os::unix::fs::lchown(&full, Some(member.uid), Some(member.gid)).map_err(member_error(
                "set the owner of",
                member,
                &full,
            ))?;
        }
        self.report.written += 1;
        Ok(())
    }

    /// Gives the directories their modes and times, now that nothing more is written
    /// into them.
    fn finish(self) -> Result<UnpackReport, UnpackError> {
        // Deepest first, so that setting a parent's time is not undone by its children.
        for (dir, mode, mtime) in self.directories.into_iter().rev() {
            let io_error = |action| {
                let dir = dir.clone();
                move |source| UnpackError::Io { action, member: String::new(), path: dir, source }
            };
            fs::File::open(&dir).and_then(|file| file.set_modified(mtime)).map_err(io_error("set the time of"))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_error("set the mode of"))?;
        }
        Ok(self.report)
    }
}

/// For `map_err`: the I/O error of `action` on `path`, the file of `member`.
fn member_error(action: &'static str, member: &Member, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let (member, path) = (member.name.clone(), path.to_owned());
    move |source| UnpackError::Io { action, member, path, source }
}

/// Removes whatever is at `full`, unless it is a directory and `member` one too (its
/// files stay).
fn clear_place(member: &Member, full: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(full) {
        Ok(existing) if existing.is_dir() && member.file_type() == FileType::Directory => Ok(()),
        Ok(existing) if existing.is_dir() => fs::remove_dir(full).map_err(member_error("replace", member, full)),
        Ok(_) => fs::remove_file(full).map_err(member_error("replace", member, full)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(member_error("inspect", member, full)(err)),
    }
}

/// Creates a regular file, never following a symlink, with the member's data, mode and
/// time.
fn write_file(member: &Member, full: &Path, mtime: SystemTime) -> Result<(), UnpackError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(member.permissions())
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(full)
        .map_err(member_error("create", member, full))?;
    file.write_all(&member.data).map_err(member_error("write", member, full))?;
    // The umask applied at creation; the archive's mode is what counts.
    file.set_permissions(fs::Permissions::from_mode(member.permissions())).map_err(member_error(
        "set the mode of",
        member,
        full,
    ))?;
    file.set_modified(mtime).map_err(member_error("set the time of", member, full))
}

/// Creates a device node or a fifo.
fn make_node(member: &Member, full: &Path) -> Result<(), UnpackError> {
    let node_type = match member.file_type() {
        FileType::CharDevice => rustix::fs::FileType::CharacterDevice,
        FileType::BlockDevice => rustix::fs::FileType::BlockDevice,
        _ => rustix::fs::FileType::Fifo,
    };
    let device = rustix::fs::makedev(member.rdev_major, member.rdev_minor);
    rustix::fs::mknodat(rustix::fs::CWD, full, node_type, rustix::fs::Mode::from_raw_mode(member.permissions()), device)
        .map_err(|err| member_error("create", member, full)(err.into()))
}

/// Makes sure every parent of `path` under `root` is a directory inside the tree,
/// creating missing ones.
fn prepare_parents(root: &Path, path: &str, member: &Member) -> Result<(), UnpackError> {
    let Some((parents, _)) = path.rsplit_once('/') else { return Ok(()) };
    let mut current = root.to_path_buf();
    for component in parents.split('/') {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let resolved =
                    current.canonicalize().ok().filter(|resolved| resolved.starts_with(root) && resolved.is_dir());
                if resolved.is_none() {
                    let target = fs::read_link(&current).unwrap_or_default();
                    return Err(UnpackError::ThroughSymlink { member: member.name.clone(), link: current, target });
                }
            }
            Ok(_) => return Err(UnpackError::NotDirectory { member: member.name.clone(), parent: current }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| UnpackError::Io {
                    action: "create",
                    member: member.name.clone(),
                    path: current.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(UnpackError::Io { action: "inspect", member: member.name.clone(), path: current, source });
            }
        }
    }
    Ok(())
}
