//! Looking at archives: the differences between two ([`diff`]), the largest members
//! ([`du`]) and how an archive differs from a directory tree ([`fsck`]).
//!
//! All work on the archive as the kernel leaves it unpacked ([`effective`]): a later member
//! replaces an earlier one at the same path, names are normalised ("./usr" is "usr").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::read::{FileType, Member, ReadArchive};

/// The members by normalised path, the last of each path winning. Names with a `..`
/// component are kept under their raw name, so they still show up in comparisons.
pub fn effective(archive: &ReadArchive) -> BTreeMap<String, &Member> {
    let mut map = BTreeMap::new();
    for member in &archive.members {
        match member.path() {
            Ok(Some(path)) => map.insert(path, member),
            Ok(None) => None,
            Err(_) => map.insert(member.name.clone(), member),
        };
    }
    map
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// One difference between two archives, or between an archive and a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// In the first (the archive, for fsck) only.
    Removed(String),
    /// In the second (the tree, for fsck with extras) only.
    Added(String),
    /// In both, different: what differs, "type file -> symlink" and the like.
    Changed { path: String, changes: Vec<String> },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Removed(path) => write!(f, "- /{path}"),
            Difference::Added(path) => write!(f, "+ /{path}"),
            Difference::Changed { path, changes } => write!(f, "~ /{path}: {}", changes.join(", ")),
        }
    }
}

/// What one member or file looks like, for comparing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    file_type: FileType,
    permissions: u32,
    size: u64,
    /// Of a file's contents or a link's target.
    sha256: Option<String>,
    device: Option<(u32, u32)>,
}

impl Shape {
    fn of_member(member: &Member) -> Shape {
        let file_type = member.file_type();
        let has_data = matches!(file_type, FileType::Regular | FileType::Symlink);
        let is_device = matches!(file_type, FileType::CharDevice | FileType::BlockDevice);
        Shape {
            file_type,
            permissions: member.permissions(),
            size: if has_data { member.data.len() as u64 } else { 0 },
            sha256: has_data.then(|| sha256_hex(&member.data)),
            device: is_device.then_some((member.rdev_major, member.rdev_minor)),
        }
    }

    /// The differences from `self` to `other`, in words.
    fn changes(&self, other: &Shape) -> Vec<String> {
        let mut changes = Vec::new();
        if self.file_type != other.file_type {
            changes.push(format!("type {} -> {}", self.file_type, other.file_type));
            return changes;
        }
        // Symlink permissions mean nothing on Linux.
        if self.permissions != other.permissions && self.file_type != FileType::Symlink {
            changes.push(format!("mode {:04o} -> {:04o}", self.permissions, other.permissions));
        }
        if self.size != other.size {
            changes.push(format!("size {} -> {}", self.size, other.size));
        }
        if let (Some(a), Some(b)) = (&self.sha256, &other.sha256)
            && a != b
        {
            changes.push(format!("sha256 {} -> {}", &a[..16], &b[..16]));
        }
        if self.device != other.device
            && let (Some(a), Some(b)) = (self.device, other.device)
        {
            changes.push(format!("device {}:{} -> {}:{}", a.0, a.1, b.0, b.1));
        }
        changes
    }
}

/// The differences from `a` to `b`: names only, or with `content` also type, mode, size
/// and SHA-256 of the contents of members in both.
pub fn diff(a: &ReadArchive, b: &ReadArchive, content: bool) -> Vec<Difference> {
    let (a, b) = (effective(a), effective(b));
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut differences = Vec::new();
    for name in names {
        match (a.get(name), b.get(name)) {
            (Some(_), None) => differences.push(Difference::Removed(name.clone())),
            (None, Some(_)) => differences.push(Difference::Added(name.clone())),
            (Some(x), Some(y)) if content => {
                let changes = Shape::of_member(x).changes(&Shape::of_member(y));
                if !changes.is_empty() {
                    differences.push(Difference::Changed { path: name.clone(), changes });
                }
            }
            _ => {}
        }
    }
    differences
}

/// One line of [`du`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub path: String,
    pub bytes: u64,
    /// Members counted: 1 for a file, everything below for a directory.
    pub members: u64,
}

/// Sizes of regular files (and, with `directories`, of every directory: the sum of
/// everything below it), largest first, ties by path.
pub fn du(archive: &ReadArchive, directories: bool) -> Vec<Usage> {
    let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (path, member) in effective(archive) {
        let bytes = if member.file_type() == FileType::Regular { member.data.len() as u64 } else { 0 };
        if directories {
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                let total = usage.entry(up.to_owned()).or_default();
                total.0 += bytes;
                total.1 += 1;
                parent = up;
            }
            if member.file_type() != FileType::Directory {
                usage.insert(path, (bytes, 1));
            }
        } else if member.file_type() == FileType::Regular {
            usage.insert(path, (bytes, 1));
        }
    }
    let mut lines: Vec<Usage> =
        usage.into_iter().map(|(path, (bytes, members))| Usage { path, bytes, members }).collect();
    lines.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
    lines
}

/// Errors of [`fsck`] itself, not differences it finds.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct FsckError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// How the tree under `dir` differs from the archive: members missing from the tree
/// ([`Difference::Removed`]), different in type, mode, size, contents, link target or
/// device numbers ([`Difference::Changed`], archive -> tree); with `extra`, files in
/// the tree that the archive lacks ([`Difference::Added`]). Owners and times are not
/// compared: archives written by this toolkit normalise them.
pub fn fsck(archive: &ReadArchive, dir: &Path, extra: bool) -> Result<Vec<Difference>, FsckError> {
    let members = effective(archive);
    let mut differences = Vec::new();
    for (path, member) in &members {
        let full = dir.join(path);
        let metadata = match fs::symlink_metadata(&full) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                differences.push(Difference::Removed(path.clone()));
                continue;
            }
            Err(source) => return Err(FsckError { path: full.display().to_string(), source }),
        };
        let read_error = |source| FsckError { path: full.display().to_string(), source };
        let file_type = FileType::from_mode(metadata.mode());
        let expected = Shape::of_member(member);
        let data = match file_type {
            FileType::Regular if expected.file_type == FileType::Regular => Some(fs::read(&full).map_err(read_error)?),
            FileType::Symlink => Some(fs::read_link(&full).map_err(read_error)?.into_os_string().into_encoded_bytes()),
            _ => None,
        };
        let device = matches!(file_type, FileType::CharDevice | FileType::BlockDevice)
            .then(|| (rustix::fs::major(metadata.rdev()), rustix::fs::minor(metadata.rdev())));
        let found = Shape {
            file_type,
            permissions: metadata.mode() & super::PERMISSION_BITS,
            size: data.as_ref().map_or(0, |data| data.len() as u64),
            sha256: data.as_deref().map(sha256_hex),
            device,
        };
        let changes = expected.changes(&found);
        if !changes.is_empty() {
            differences.push(Difference::Changed { path: path.clone(), changes });
        }
    }
    if extra {
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((host, inner)) = stack.pop() {
            let entries =
                fs::read_dir(&host).map_err(|source| FsckError { path: host.display().to_string(), source })?;
            for entry in entries {
                let entry = entry.map_err(|source| FsckError { path: host.display().to_string(), source })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if inner.is_empty() { name } else { format!("{inner}/{name}") };
                if !members.contains_key(&path) {
                    differences.push(Difference::Added(path.clone()));
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), path));
                }
            }
        }
        differences.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    }
    Ok(differences)
}

fn sort_key(difference: &Difference) -> &str {
    match difference {
        Difference::Removed(path) | Difference::Added(path) | Difference::Changed { path, .. } => path,
    }
}
