//! A writer for newc ("070701") cpio archives, the format the kernel unpacks into the
//! initramfs.
//!
//! Written by hand on purpose: the cpio crates available either only read archives or are
//! unmaintained, and reproducible images need exact control over every header field
//! (inode numbers, owners, times, order). The format is small enough that owning it is
//! cheaper than working around a dependency.
//!
//! The caller hands over entries in any order; [`Archive::write`] sorts them by path,
//! creates every missing parent directory before its children, numbers inodes
//! sequentially, sets every owner to root and every time to one fixed value. Writing the
//! same entries twice gives the same bytes. Device nodes are written as headers only, so
//! an archive can hold `/dev/console` without root privileges on the host.
//!
//! Reading archives is [`read`]'s job; [`tree`] packs a directory and unpacks an archive
//! safely, [`compare`] holds the comparisons behind `appliance cpio diff`, `du` and
//! `fsck`; the patterns of `appliance cpio filter` are [`crate::host::glob`]'s.

pub mod compare;
pub mod read;
pub mod tree;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The newc magic; "070702" would add checksums that the kernel ignores anyway.
const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
/// 6 bytes of magic and 13 fields of 8 hex digits.
const HEADER_LEN: u64 = 110;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFIFO: u32 = 0o010_000;
/// Permission bits plus setuid, setgid and sticky: what an entry's `mode` may carry.
const PERMISSION_BITS: u32 = 0o7777;
/// Mode of the parent directories the writer creates on its own.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// What an archive entry is and where its contents come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    /// A regular file whose contents are streamed from a host file while writing.
    File {
        source: PathBuf,
    },
    /// A regular file with contents held in memory (generated files, tests).
    Data(Vec<u8>),
    /// A symbolic link; the target is stored as given, not resolved.
    Symlink {
        target: PathBuf,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Directory => f.write_str("a directory"),
            Kind::File { source } => write!(f, "the file {}", source.display()),
            Kind::Data(data) => write!(f, "{} bytes of generated data", data.len()),
            Kind::Symlink { target } => write!(f, "a symlink to {}", target.display()),
            Kind::CharDevice { major, minor } => write!(f, "character device {major}:{minor}"),
            Kind::BlockDevice { major, minor } => write!(f, "block device {major}:{minor}"),
            Kind::Fifo => f.write_str("a named pipe"),
        }
    }
}

/// One archive member: a path inside the archive, permission bits and a [`Kind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    path: String,
    mode: u32,
    kind: Kind,
}

impl Entry {
    /// `path` is the path inside the archive; a leading `/` is allowed and dropped.
    /// `mode` keeps only the permission, setuid, setgid and sticky bits.
    pub fn new(path: impl Into<String>, mode: u32, kind: Kind) -> Entry {
        Entry { path: path.into(), mode: mode & PERMISSION_BITS, kind }
    }

    pub fn directory(path: impl Into<String>, mode: u32) -> Entry {
        Entry::new(path, mode, Kind::Directory)
    }

    pub fn file(path: impl Into<String>, source: impl Into<PathBuf>, mode: u32) -> Entry {
        Entry::new(path, mode, Kind::File { source: source.into() })
    }

    pub fn data(path: impl Into<String>, data: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry::new(path, mode, Kind::Data(data.into()))
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<PathBuf>) -> Entry {
        Entry::new(path, 0o777, Kind::Symlink { target: target.into() })
    }

    pub fn char_device(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Entry {
        Entry::new(path, mode, Kind::CharDevice { major, minor })
    }

    pub fn block_device(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Entry {
        Entry::new(path, mode, Kind::BlockDevice { major, minor })
    }

    /// The path inside the archive, without a leading `/` once added to an [`Archive`].
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn mode(&self) -> u32 {
        self.mode
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Directory => S_IFDIR,
            Kind::File { .. } | Kind::Data(_) => S_IFREG,
            Kind::Symlink { .. } => S_IFLNK,
            Kind::CharDevice { .. } => S_IFCHR,
            Kind::BlockDevice { .. } => S_IFBLK,
            Kind::Fifo => S_IFIFO,
        }
    }
}

/// Errors of building and writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("conflicting entries for /{path}: {existing} and {new}")]
    Conflict { path: String, existing: Kind, new: Kind },
    #[error("cannot add /{path}: /{parent} is {kind}, not a directory")]
    ParentNotDirectory { path: String, parent: String, kind: Kind },
    #[error("cannot read {} for /{path}", source_path.display())]
    ReadSource {
        path: String,
        source_path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file (needed for /{path})", source_path.display())]
    NotRegular { path: String, source_path: PathBuf },
    #[error("{} changed size while it was being archived", source_path.display())]
    SourceChanged { source_path: PathBuf },
    #[error("/{path} is too large for a newc archive ({size} bytes, the limit is 4 GiB)")]
    TooLarge { path: String, size: u64 },
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
    #[error("invalid SOURCE_DATE_EPOCH {value:?}: expected whole seconds since 1970 below 2^32")]
    SourceDateEpoch { value: String },
}

/// What [`Archive::write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Members written, implied parent directories included, the trailer not.
    pub entries: usize,
    /// Uncompressed archive size in bytes.
    pub bytes: u64,
}

/// The set of entries of one archive, keyed by normalised path.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds an entry. Adding an identical entry again is a no-op (libraries shared by
    /// several programs arrive once per program); a different entry at the same path is
    /// an error naming both.
    pub fn add(&mut self, mut entry: Entry) -> Result<(), Error> {
        entry.path = normalize(&entry.path)?;
        match self.entries.get(&entry.path) {
            Some(existing) if *existing == entry => Ok(()),
            Some(existing) => {
                Err(Error::Conflict { path: entry.path, existing: existing.kind.clone(), new: entry.kind })
            }
            None => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
        }
    }

    /// Adds an entry, replacing whatever was at its path (`appliance cpio merge` and
    /// `add`: the later archive wins, as when the kernel unpacks both). Returns the
    /// replaced entry.
    pub fn insert(&mut self, mut entry: Entry) -> Result<Option<Entry>, Error> {
        entry.path = normalize(&entry.path)?;
        Ok(self.entries.insert(entry.path.clone(), entry))
    }

    /// Removes and returns the entry at `path` (with or without a leading `/`).
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        self.entries.remove(path.trim_start_matches('/'))
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.entries.retain(|_, entry| keep(entry));
    }

    /// The entry at `path` (with or without a leading `/`), if one was added.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// The entry `path` names once the archive is unpacked: symlinks inside the archive
    /// followed (absolute targets from the archive's root, as the kernel will see them),
    /// `.` and `..` resolved. `None` when nothing is there, or after 40 symlinks (a loop).
    pub fn resolve(&self, path: &str) -> Option<&Entry> {
        let mut pending: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut at: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    at.pop();
                    continue;
                }
                _ => at.push(part),
            }
            if let Some(Kind::Symlink { target }) = self.get(&at.join("/")).map(Entry::kind) {
                links += 1;
                if links > 40 {
                    return None;
                }
                at.pop();
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    at.clear();
                }
                for part in target.split('/').rev() {
                    pending.push_front(part.to_owned());
                }
            }
        }
        self.get(&at.join("/"))
    }

    /// Number of entries added (parents the writer will create are not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The added entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Writes the archive: all entries sorted by path, each missing parent directory
    /// (mode 0755) before its first child, then the trailer. Every member gets owner and
    /// group 0 and modification time `mtime` (see [`mtime_from_env`]).
    pub fn write<W: Write>(&self, out: W, mtime: u32) -> Result<Summary, Error> {
        let complete = self.with_parents()?;
        let mut writer = NewcWriter { out, offset: 0, next_ino: 1, mtime };
        for entry in complete.values() {
            writer.entry(entry)?;
        }
        writer.trailer()?;
        Ok(Summary { entries: complete.len(), bytes: writer.offset })
    }

    /// All entries plus the parent directories nobody added. Sorting by path already
    /// puts every parent before its children, as a parent's path is a prefix of theirs.
    fn with_parents(&self) -> Result<BTreeMap<String, Entry>, Error> {
        let mut complete = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                parent = up;
                match complete.get(parent) {
                    Some(entry) if entry.kind == Kind::Directory => {}
                    Some(entry) => {
                        return Err(Error::ParentNotDirectory {
                            path: path.clone(),
                            parent: parent.to_owned(),
                            kind: entry.kind.clone(),
                        });
                    }
                    None => {
                        complete.insert(parent.to_owned(), Entry::directory(parent, IMPLIED_DIR_MODE));
                    }
                }
            }
        }
        Ok(complete)
    }
}

/// Writes `entries` as one archive; see [`Archive::write`].
pub fn write_archive<W: Write>(out: W, entries: impl IntoIterator<Item = Entry>, mtime: u32) -> Result<Summary, Error> {
    let mut archive = Archive::new();
    for entry in entries {
        archive.add(entry)?;
    }
    archive.write(out, mtime)
}

/// The modification time for archive members: `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention), else 0, so that rebuilding unchanged inputs gives
/// an identical initramfs.
pub fn mtime_from_env() -> Result<u32, Error> {
    parse_source_date_epoch(std::env::var_os("SOURCE_DATE_EPOCH"))
}

fn parse_source_date_epoch(value: Option<OsString>) -> Result<u32, Error> {
    let Some(value) = value else { return Ok(0) };
    let text = value.to_string_lossy();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u32>().map_err(|_| Error::SourceDateEpoch { value: text.into_owned() })
}

/// Archive paths are relative ("usr/bin/bash"): the kernel accepts both forms, but GNU
/// cpio refuses to extract absolute names without an extra flag.
fn normalize(path: &str) -> Result<String, Error> {
    let invalid = |reason| Error::InvalidPath { path: path.to_owned(), reason };
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return Err(invalid("the root itself cannot be an entry"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in relative.split('/') {
        match part {
            "" => {} // "a//b" and "a/" mean "a/b" and "a"
            "." | ".." => return Err(invalid("contains a `.` or `..` component")),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

struct NewcWriter<W> {
    out: W,
    offset: u64,
    next_ino: u32,
    mtime: u32,
}

struct Header<'a> {
    name: &'a str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> NewcWriter<W> {
    fn entry(&mut self, entry: &Entry) -> Result<(), Error> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut header = Header {
            name: &entry.path,
            ino,
            mode: entry.type_bits() | entry.mode,
            // A directory's own "." plus its entry in the parent; nobody counts
            // subdirectories' "..", and the kernel ignores the field anyway.
            nlink: if entry.kind == Kind::Directory { 2 } else { 1 },
            mtime: self.mtime,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        match &entry.kind {
            Kind::Directory | Kind::Fifo => self.header(&header),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                header.rdev_major = *major;
                header.rdev_minor = *minor;
                self.header(&header)
            }
            Kind::Data(data) => {
                header.size = size_field(&entry.path, data.len() as u64)?;
                self.header(&header)?;
                self.body(data)
            }
            Kind::Symlink { target } => {
                let target = target.as_os_str().as_bytes();
                header.size = size_field(&entry.path, target.len() as u64)?;
                self.header(&header)?;
                self.body(target)
            }
            Kind::File { source } => self.file(&mut header, &entry.path, source),
        }
    }

    fn file(&mut self, header: &mut Header<'_>, path: &str, source: &Path) -> Result<(), Error> {
        let read_error = |source_err| Error::ReadSource {
            path: path.to_owned(),
            source_path: source.to_owned(),
            source: source_err,
        };
        let mut file = File::open(source).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(Error::NotRegular { path: path.to_owned(), source_path: source.to_owned() });
        }
        let size = metadata.len();
        header.size = size_field(path, size)?;
        self.header(header)?;
        // The header already promised `size` bytes; a file that grew or shrank meanwhile
        // would corrupt every member after it, so check rather than trust. A hand-written
        // loop (not io::copy) tells read errors from write errors.
        let mut buffer = vec![0; 64 * 1024];
        let mut copied = 0u64;
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(read_error(err)),
            };
            copied += n as u64;
            if copied > size {
                break;
            }
            self.out.write_all(&buffer[..n]).map_err(Error::Write)?;
        }
        if copied != size {
            return Err(Error::SourceChanged { source_path: source.to_owned() });
        }
        self.offset += size;
        self.pad()
    }

    fn trailer(&mut self) -> Result<(), Error> {
        self.header(&Header {
            name: TRAILER,
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
        })?;
        self.out.flush().map_err(Error::Write)
    }

    fn header(&mut self, header: &Header<'_>) -> Result<(), Error> {
        // namesize counts the terminating NUL.
        let namesize = header.name.len() as u32 + 1;
        let fields = [
            header.ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            header.mtime,
            header.size,
            0, // devmajor: the device the file came from means nothing in an image
            0, // devminor
            header.rdev_major,
            header.rdev_minor,
            namesize,
            0, // check: only used by the "070702" variant
        ];
        let mut bytes = Vec::with_capacity(HEADER_LEN as usize + header.name.len() + 4);
        bytes.extend_from_slice(MAGIC);
        for field in fields {
            bytes.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        bytes.extend_from_slice(header.name.as_bytes());
        bytes.push(0);
        self.write_all(&bytes)?;
        // The name is padded so that header plus name end on a multiple of four.
        self.pad()
    }

    fn body(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_all(data)?;
        self.pad()
    }

    fn pad(&mut self) -> Result<(), Error> {
        let padding = (4 - self.offset % 4) % 4;
        self.write_all(&[0; 3][..padding as usize])
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(Error::Write)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

fn size_field(path: &str, size: u64) -> Result<u32, Error> {
    u32::try_from(size).map_err(|_| Error::TooLarge { path: path.to_owned(), size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::{Compression, Encoder};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    /// A parsed newc header, for checking what the writer produced.
    #[derive(Debug)]
    struct Parsed {
        name: String,
        fields: [u32; 13],
        data: Vec<u8>,
    }

    fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut members = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&bytes[..6], MAGIC, "magic at offset {offset}");
            let mut fields = [0u32; 13];
            for (i, field) in fields.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                *field = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = fields[11] as usize;
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1]).unwrap().to_owned();
            assert_eq!(bytes[110 + namesize - 1], 0);
            let data_start = (110 + namesize).next_multiple_of(4);
            let size = fields[6] as usize;
            let data = bytes[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            offset += next;
            bytes = &bytes[next..];
            let done = name == TRAILER;
            members.push(Parsed { name, fields, data });
            if done {
                assert!(bytes.is_empty(), "bytes after the trailer");
                return members;
            }
        }
    }

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hello, world\n").unwrap();
        let script = dir.path().join("run");
        std::fs::write(&script, "#!/bin/sh\necho run\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Sizes around the padding boundary.
        for len in [0usize, 1, 2, 3, 4, 5, 4099] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(dir.path().join(format!("blob{len}")), data).unwrap();
        }
        dir
    }

    fn sample_entries(tree: &Path) -> Vec<Entry> {
        let mut entries = vec![
            Entry::file("/app/run", tree.join("run"), 0o755),
            Entry::file("/etc/motd", tree.join("hello.txt"), 0o644),
            Entry::data("/etc/generated", "generated\n", 0o600),
            Entry::symlink("/bin", "usr/bin"),
            Entry::directory("/tmp", 0o1777),
            Entry::directory("/proc", 0o555),
            Entry::file("/usr/share/deep/nested/file", tree.join("hello.txt"), 0o644),
        ];
        for len in [0usize, 1, 2, 3, 4, 5, 4099] {
            entries.push(Entry::file(format!("/data/blob{len}"), tree.join(format!("blob{len}")), 0o644));
        }
        entries
    }

    fn archive_bytes(entries: Vec<Entry>, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write_archive(&mut out, entries, mtime).unwrap();
        out
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    #[test]
    fn normalize_table() {
        let cases = [
            ("/init", Some("init")),
            ("init", Some("init")),
            ("//usr//bin/", Some("usr/bin")),
            ("/", None),
            ("", None),
            ("/a/../b", None),
            ("/a/./b", None),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input).ok().as_deref(), expected, "{input:?}");
        }
    }

    #[test]
    fn source_date_epoch_table() {
        assert_eq!(parse_source_date_epoch(None).unwrap(), 0);
        assert_eq!(parse_source_date_epoch(Some("".into())).unwrap(), 0);
        assert_eq!(parse_source_date_epoch(Some("1700000000".into())).unwrap(), 1_700_000_000);
        for bad in ["-1", "soon", "99999999999"] {
            let err = parse_source_date_epoch(Some(bad.into())).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn headers_padding_and_trailer() {
        let bytes =
            archive_bytes(vec![Entry::data("/a", "xyz", 0o644), Entry::char_device("/dev/console", 0o600, 5, 1)], 42);
        assert_eq!(bytes.len() % 4, 0);
        let members = parse(&bytes);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "dev", "dev/console", TRAILER]);
        let a = &members[0];
        assert_eq!(a.fields[1], S_IFREG | 0o644);
        assert_eq!((a.fields[2], a.fields[3], a.fields[4]), (0, 0, 1));
        assert_eq!(a.fields[5], 42);
        assert_eq!(a.data, b"xyz");
        let dev = &members[1];
        assert_eq!(dev.fields[1], S_IFDIR | 0o755);
        assert_eq!(dev.fields[4], 2);
        let console = &members[2];
        assert_eq!(console.fields[1], S_IFCHR | 0o600);
        assert_eq!((console.fields[9], console.fields[10]), (5, 1));
        let inodes: Vec<u32> = members.iter().map(|m| m.fields[0]).collect();
        assert_eq!(inodes, [1, 2, 3, 0]);
    }

    #[test]
    fn parents_are_created_before_children() {
        let bytes = archive_bytes(
            vec![
                Entry::data("/z/y/x/file", "", 0o644),
                Entry::data("/a-b", "", 0o644),
                Entry::directory("/a", 0o700),
                Entry::data("/a/b/c", "", 0o644),
            ],
            0,
        );
        let members = parse(&bytes);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let at = names.iter().position(|n| *n == parent).expect(parent);
                assert!(at < i, "{parent} after {name} in {names:?}");
            }
        }
        assert!(names.contains(&"z/y/x"));
        // A parent given explicitly keeps its own mode.
        let a = members.iter().find(|m| m.name == "a").unwrap();
        assert_eq!(a.fields[1], S_IFDIR | 0o700);
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let tree = sample_tree();
        let first = archive_bytes(sample_entries(tree.path()), 0);
        let mut reversed = sample_entries(tree.path());
        reversed.reverse();
        let second = archive_bytes(reversed, 0);
        assert_eq!(first, second);
        for compression in Compression::ALL {
            let compress = |bytes: &[u8]| {
                let mut encoder = Encoder::new(Vec::new(), compression).unwrap();
                encoder.write_all(bytes).unwrap();
                encoder.finish().unwrap()
            };
            assert_eq!(compress(&first), compress(&second), "{compression}");
        }
    }

    #[test]
    fn duplicates_and_conflicts() {
        let mut archive = Archive::new();
        archive.add(Entry::symlink("/bin", "usr/bin")).unwrap();
        archive.add(Entry::symlink("bin", "usr/bin")).unwrap();
        assert_eq!(archive.len(), 1);
        let err = archive.add(Entry::directory("/bin", 0o755)).unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }));
        assert!(err.to_string().contains("/bin"), "{err}");

        archive.add(Entry::data("/bin/sh", "", 0o755)).unwrap();
        let err = archive.write(Vec::new(), 0).unwrap_err();
        assert!(err.to_string().contains("cannot add /bin/sh: /bin is a symlink to usr/bin"), "{err}");
    }

    #[test]
    fn resolve_follows_symlinks_inside_the_archive() {
        let mut archive = Archive::new();
        archive.add(Entry::symlink("/bin", "usr/bin")).unwrap();
        archive.add(Entry::data("/usr/bin/bash", "elf", 0o755)).unwrap();
        archive.add(Entry::symlink("/usr/bin/sh", "bash")).unwrap();
        archive.add(Entry::symlink("/usr/local/bin/env", "/bin/../bin/./sh")).unwrap();
        archive.add(Entry::symlink("/loop/a", "b")).unwrap();
        archive.add(Entry::symlink("/loop/b", "a")).unwrap();
        for path in ["/bin/sh", "bin/bash", "/usr/bin/sh", "/usr/local/bin/env", "/usr/../bin//sh"] {
            assert_eq!(archive.resolve(path).map(Entry::path), Some("usr/bin/bash"), "{path}");
        }
        for path in ["/bin/dash", "/usr/lib/ld.so", "/loop/a", "/"] {
            assert!(archive.resolve(path).is_none(), "{path}");
        }
    }

    #[test]
    fn unreadable_sources_are_named() {
        let err = write_archive(Vec::new(), [Entry::file("/missing", "/nonexistent/file", 0o644)], 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
        let err = write_archive(Vec::new(), [Entry::file("/dir", "/", 0o644)], 0).unwrap_err();
        assert!(matches!(err, Error::NotRegular { .. }), "{err}");
    }

    #[test]
    fn a_file_that_changes_size_is_an_error_not_a_corrupt_archive() {
        // procfs files report size 0 but have contents: the same as a file that grew.
        let err = write_archive(Vec::new(), [Entry::file("/status", "/proc/self/status", 0o644)], 0).unwrap_err();
        assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    }

    /// Decompresses with the command-line tool and extracts with GNU cpio, then compares
    /// the tree: the interop test that matters, since the kernel's unpacker is stricter
    /// than our own parser above.
    #[test]
    fn gnu_cpio_extracts_what_we_write() {
        if !have("cpio") {
            panic!("cannot run: GNU cpio is not installed (tests/run installs what the tests need)");
        }
        let tree = sample_tree();
        let plain = archive_bytes(sample_entries(tree.path()), 1_234_567);
        for compression in Compression::ALL {
            let tool = match compression {
                Compression::Gzip => Some("gzip"),
                Compression::Zstd => Some("zstd"),
                Compression::Lz4 => Some("lz4"),
                Compression::Xz => Some("xz"),
                Compression::None => None,
            };
            if let Some(tool) = tool
                && !have(tool)
            {
                panic!(
                    "cannot run: {tool} is not installed; {compression} interop not checked (tests/run installs what the tests need)"
                );
            }
            let mut encoder = Encoder::new(Vec::new(), compression).unwrap();
            encoder.write_all(&plain).unwrap();
            let compressed = encoder.finish().unwrap();
            let decompressed = match tool {
                Some(tool) => run_filter(Command::new(tool).arg("-dc"), &compressed),
                None => compressed,
            };
            assert_eq!(decompressed, plain, "{compression} round trip");

            let out = tempfile::tempdir().unwrap();
            let mut cpio = Command::new("cpio");
            cpio.args(["-idm", "--quiet"]).current_dir(out.path());
            run_filter(&mut cpio, &decompressed);
            let root = out.path();
            assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hello, world\n");
            assert_eq!(std::fs::read(root.join("usr/share/deep/nested/file")).unwrap(), b"hello, world\n");
            assert_eq!(std::fs::read(root.join("etc/generated")).unwrap(), b"generated\n");
            for len in [0usize, 1, 2, 3, 4, 5, 4099] {
                let name = format!("blob{len}");
                assert_eq!(
                    std::fs::read(root.join("data").join(&name)).unwrap(),
                    std::fs::read(tree.path().join(&name)).unwrap(),
                    "{name}"
                );
            }
            let run = std::fs::metadata(root.join("app/run")).unwrap();
            assert_eq!(run.permissions().mode() & 0o777, 0o755);
            let motd = std::fs::metadata(root.join("etc/motd")).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(motd.mtime(), 1_234_567, "cpio -m keeps our mtime");
            assert_eq!(std::fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
            assert!(root.join("tmp").is_dir());
        }
    }

    #[test]
    fn gnu_cpio_lists_device_nodes() {
        if !have("cpio") {
            panic!("cannot run: GNU cpio is not installed (tests/run installs what the tests need)");
        }
        let bytes = archive_bytes(
            vec![
                Entry::char_device("/dev/console", 0o600, 5, 1),
                Entry::char_device("/dev/null", 0o666, 1, 3),
                Entry::block_device("/dev/vda", 0o660, 254, 0),
            ],
            0,
        );
        let listing = String::from_utf8(run_filter(Command::new("cpio").arg("-tv"), &bytes)).unwrap();
        let line = |name: &str| {
            listing
                .lines()
                .find(|line| line.ends_with(name))
                .unwrap_or_else(|| panic!("{name} not in {listing}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let console = line("dev/console");
        assert!(console.starts_with("crw------- 1 root root 5, 1 "), "{console}");
        let null = line("dev/null");
        assert!(null.starts_with("crw-rw-rw- 1 root root 1, 3 "), "{null}");
        let vda = line("dev/vda");
        assert!(vda.starts_with("brw-rw---- 1 root root 254, 0 "), "{vda}");
    }

    proptest::proptest! {
        /// Round trip: whatever entries go in come out of our own reader with the same
        /// contents and modes, sorted, each parent before its children.
        #[test]
        fn round_trip(
            files in proptest::collection::btree_map(
                "[a-c]{1,2}(/[a-c]{1,2}){0,3}",
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0u32..0o7777),
                1..12,
            ),
            mtime in proptest::prelude::any::<u32>(),
        ) {
            let mut archive = Archive::new();
            let mut expected = BTreeMap::new();
            for (path, (data, mode)) in &files {
                // A path that is another one's parent can only be a directory.
                let is_parent = files.keys().any(|other| other.starts_with(&format!("{path}/")));
                let entry = if is_parent {
                    Entry::directory(path.as_str(), *mode)
                } else {
                    Entry::data(path.as_str(), data.clone(), *mode)
                };
                expected.insert(path.clone(), entry.clone());
                archive.add(entry).unwrap();
            }
            let mut out = Vec::new();
            let summary = archive.write(&mut out, mtime).unwrap();
            proptest::prop_assert_eq!(summary.bytes, out.len() as u64);
            let members = parse(&out);
            proptest::prop_assert_eq!(members.len(), summary.entries + 1);
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            for (i, member) in members[..members.len() - 1].iter().enumerate() {
                proptest::prop_assert_eq!(member.fields[5], mtime);
                proptest::prop_assert_eq!(member.fields[0], i as u32 + 1);
                if let Some((parent, _)) = member.name.rsplit_once('/') {
                    let at = names.iter().position(|n| *n == parent);
                    proptest::prop_assert!(at.is_some_and(|at| at < i), "{} before {}", parent, member.name);
                }
                match expected.get(&member.name) {
                    Some(entry) => {
                        proptest::prop_assert_eq!(member.fields[1], entry.type_bits() | entry.mode());
                        if let Kind::Data(data) = entry.kind() {
                            proptest::prop_assert_eq!(&member.data, data);
                        }
                    }
                    None => proptest::prop_assert_eq!(member.fields[1], S_IFDIR | IMPLIED_DIR_MODE),
                }
            }
            let mut sorted = names[..names.len() - 1].to_vec();
            sorted.sort_unstable();
            proptest::prop_assert_eq!(&sorted[..], &names[..names.len() - 1]);
        }
    }

    fn run_filter(command: &mut Command, input: &[u8]) -> Vec<u8> {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }
}
