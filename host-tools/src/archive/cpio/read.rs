//! Reading newc archives as the kernel does: compressed or not, told apart by magic
//! bytes, several archives back to back with zero padding between them.
//!
//! The whole input is decoded into memory (initramfs images are tens of megabytes), every
//! compressed segment and every uncompressed archive appended to one plain stream, and that
//! stream is parsed as a series of archives, each ended by its `TRAILER!!!`. Like the
//! kernel, the parse carries on across segment boundaries, so an archive split over several
//! gzip members reads as one.
//!
//! Every length is checked against the input before it is used: this module reads
//! untrusted bytes (`fuzz/fuzz_targets/read.rs` in `host-tools/fuzz` drives it).
//! Member names are kept as stored; [`member_path`] turns one into a safe relative path.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Entry, HEADER_LEN, Kind, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, TRAILER};
use crate::archive::compress::{self, Compression, DecodeError};

const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;

/// Errors of reading an archive. Offsets are in the decompressed stream unless the
/// message says "input".
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot decompress the segment at input offset {offset}")]
    Decode {
        offset: usize,
        #[source]
        source: DecodeError,
    },
    #[error(
        "not a newc cpio header at offset {offset}: found {found:02x?} (only newc, 070701 and 070702, is supported)"
    )]
    BadMagic { offset: usize, found: Vec<u8> },
    #[error("corrupt header at offset {offset}: field {field} is {value:?}, not 8 hex digits")]
    BadField { offset: usize, field: &'static str, value: String },
    #[error("archive truncated at offset {offset}: {what} needs {needed} bytes, {left} left")]
    Truncated { offset: usize, what: &'static str, needed: u64, left: usize },
    #[error("corrupt member name at offset {offset}: {reason}")]
    BadName { offset: usize, reason: &'static str },
    #[error("empty input: no archive")]
    Empty,
    #[error("cannot read the stream at offset {offset}")]
    Stream {
        offset: usize,
        #[source]
        source: io::Error,
    },
}

/// Errors of turning a member name into a path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("member name {name:?} has a `..` component: refusing a path that could leave the tree")]
    DotDot { name: String },
    #[error("member {name:?} is a socket, which an archive cannot recreate")]
    Socket { name: String },
    #[error("member {name:?} has an unknown file type in mode {mode:#o}")]
    UnknownType { name: String, mode: u32 },
}

/// What a member is, from the type bits of its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl FileType {
    pub fn from_mode(mode: u32) -> FileType {
        match mode & S_IFMT {
            S_IFREG => FileType::Regular,
            S_IFDIR => FileType::Directory,
            S_IFLNK => FileType::Symlink,
            S_IFCHR => FileType::CharDevice,
            S_IFBLK => FileType::BlockDevice,
            S_IFIFO => FileType::Fifo,
            S_IFSOCK => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// The first letter of `ls -l`.
    pub fn letter(self) -> char {
        match self {
            FileType::Regular => '-',
            FileType::Directory => 'd',
            FileType::Symlink => 'l',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
            FileType::Unknown => '?',
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileType::Regular => "file",
            FileType::Directory => "directory",
            FileType::Symlink => "symlink",
            FileType::CharDevice => "character device",
            FileType::BlockDevice => "block device",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::Unknown => "unknown type",
        })
    }
}

/// One member as stored, hard links resolved: every name of a hard-linked file carries
/// the file's contents (GNU cpio stores them with the last name only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// File contents, or a symlink's target.
    pub data: Arc<[u8]>,
}

impl Member {
    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode)
    }

    /// Permission, setuid, setgid and sticky bits.
    pub fn permissions(&self) -> u32 {
        self.mode & super::PERMISSION_BITS
    }

    pub fn symlink_target(&self) -> Option<&Path> {
        (self.file_type() == FileType::Symlink).then(|| Path::new(std::ffi::OsStr::from_bytes(&self.data)))
    }

    /// The member's path relative to the archive root; see [`member_path`].
    pub fn path(&self) -> Result<Option<String>, PathError> {
        member_path(&self.name)
    }

    /// The writer's entry for this member at its normalised path, owner and time
    /// dropped (the writer sets them); `None` for the root directory itself.
    pub fn to_entry(&self) -> Result<Option<Entry>, PathError> {
        let Some(path) = self.path()? else { return Ok(None) };
        let mode = self.permissions();
        let kind = match self.file_type() {
            FileType::Regular => Kind::Data(self.data.to_vec()),
            FileType::Directory => Kind::Directory,
            FileType::Symlink => Kind::Symlink { target: PathBuf::from(std::ffi::OsStr::from_bytes(&self.data)) },
            FileType::CharDevice => Kind::CharDevice { major: self.rdev_major, minor: self.rdev_minor },
            FileType::BlockDevice => Kind::BlockDevice { major: self.rdev_major, minor: self.rdev_minor },
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => return Err(PathError::Socket { name: self.name.clone() }),
            FileType::Unknown => return Err(PathError::UnknownType { name: self.name.clone(), mode: self.mode }),
        };
        Ok(Some(Entry::new(path, mode, kind)))
    }
}

/// A member name as a path relative to the archive root: leading `/` stripped (the
/// kernel unpacks "/x" as "x" under its root, and so do we), empty and `.` components
/// dropped ("./usr" from `find . | cpio` is "usr"), `None` for the root itself, and any
/// `..` component refused.
pub fn member_path(name: &str) -> Result<Option<String>, PathError> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::DotDot { name: name.to_owned() }),
            _ => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Everything read from one input.
#[derive(Clone, Debug, Default)]
pub struct ReadArchive {
    /// Each segment of the input in order: a compressed stream or an uncompressed archive.
    pub segments: Vec<Compression>,
    /// Every member of every archive, in input order, trailers left out.
    pub members: Vec<Member>,
    /// Size of the decompressed stream.
    pub plain_size: u64,
}

impl ReadArchive {
    /// The compression to write this archive back with: that of its first compressed
    /// segment (an uncompressed early-microcode archive often comes first), else none.
    pub fn compression(&self) -> Compression {
        self.segments.iter().copied().find(|c| *c != Compression::None).unwrap_or(Compression::None)
    }

    /// The archive as the kernel would leave it unpacked, as writer entries: a later
    /// member replaces an earlier one at the same path.
    pub fn to_archive(&self) -> Result<super::Archive, ArchiveError> {
        let mut archive = super::Archive::new();
        for member in &self.members {
            if let Some(entry) = member.to_entry()? {
                archive.insert(entry)?;
            }
        }
        Ok(archive)
    }
}

/// Errors of [`ReadArchive::to_archive`].
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Archive(#[from] super::Error),
}

/// Reads the archive file at `path`.
pub fn read_file(path: &Path) -> Result<ReadArchive, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io { path: path.to_owned(), source })?;
    read_bytes(&bytes)
}

/// Reads archives from `input`: segments back to back, each a compressed stream
/// (gzip, zstd, xz, lz4) or an uncompressed newc archive, zero bytes between them skipped.
pub fn read_bytes(input: &[u8]) -> Result<ReadArchive, ReadError> {
    let (segments, plain) = decode(input, usize::MAX, false)?.ok_or(ReadError::Empty)?;
    let mut members = Vec::new();
    let mut offset = 0;
    while offset < plain.len() {
        if plain[offset] == 0 {
            offset += 1;
            continue;
        }
        let (archive, consumed) = parse_archive(&plain[offset..], offset)?;
        members.extend(archive);
        offset += consumed;
    }
    Ok(ReadArchive { segments, members, plain_size: plain.len() as u64 })
}

/// `input` as one uncompressed stream that the kernel unpacks to the same files: every
/// segment decoded, each padded with zeros to a multiple of four bytes (the kernel looks
/// for the next archive's header at such an offset and skips zeros up to it). `None` when
/// the stream would be longer than `limit` bytes, or when `input` has nothing compressed.
pub fn decompressed(input: &[u8], limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
    Ok(unpacked(input, limit)?.filter(|u| u.compressed).map(|u| u.plain))
}

/// `input` as the kernel sees it once it has decompressed it, as for [`decompressed`],
/// whether or not anything in it was compressed.
#[derive(Debug)]
pub struct Unpacked {
    /// Whether any segment was compressed.
    pub compressed: bool,
    /// The segments decoded, each padded to four bytes.
    pub plain: Vec<u8>,
}

/// [`Unpacked`] `input`; `None` when it would be longer than `limit` bytes.
pub fn unpacked(input: &[u8], limit: usize) -> Result<Option<Unpacked>, ReadError> {
    Ok(decode(input, limit, true)?
        .map(|(segments, plain)| Unpacked { compressed: segments.iter().any(|c| *c != Compression::None), plain }))
}

/// The compression of each segment, and their contents end to end.
type Decoded = (Vec<Compression>, Vec<u8>);

/// The segments of `input` decoded, each `pad`ded to four bytes; `None` past `limit`
/// bytes. Empty input is [`ReadError::Empty`].
fn decode(input: &[u8], limit: usize, pad: bool) -> Result<Option<Decoded>, ReadError> {
    let mut plain = Vec::new();
    let mut segments = Vec::new();
    let mut offset = 0;
    while offset < input.len() {
        let rest = &input[offset..];
        if rest[0] == 0 {
            offset += 1;
            continue;
        }
        if rest.starts_with(b"0707") {
            let (_, consumed) = parse_archive(rest, 0)?;
            plain.extend_from_slice(&rest[..consumed]);
            segments.push(Compression::None);
            offset += consumed;
        } else {
            let segment = compress::decode_segment(rest).map_err(|source| ReadError::Decode { offset, source })?;
            plain.extend_from_slice(&segment.data);
            segments.push(segment.compression);
            // Every format consumes at least its magic.
            offset += segment.consumed.max(1);
        }
        if pad {
            plain.resize(plain.len().next_multiple_of(4), 0);
        }
        if plain.len() > limit {
            return Ok(None);
        }
    }
    if segments.is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(Some((segments, plain)))
}

/// Parses one archive at the start of `bytes` up to and including its trailer; `base`
/// is its offset, for messages. Returns the members and the bytes consumed.
fn parse_archive(bytes: &[u8], base: usize) -> Result<(Vec<Member>, usize), ReadError> {
    let mut members: Vec<Member> = Vec::new();
    let mut offset = 0usize;
    loop {
        let at = base + offset;
        let rest = &bytes[offset..];
        let header = rest.get(..HEADER_LEN as usize).ok_or(ReadError::Truncated {
            offset: at,
            what: "a header",
            needed: HEADER_LEN,
            left: rest.len(),
        })?;
        let fields = header_fields(header, at)?;
        let (filesize, namesize) = (fields[FILESIZE], fields[NAMESIZE]);
        let namesize = namesize as usize;
        let name_end = HEADER_LEN as usize + namesize;
        let name_bytes = rest.get(HEADER_LEN as usize..name_end).ok_or(ReadError::Truncated {
            offset: at,
            what: "the member name",
            needed: namesize as u64,
            left: rest.len() - HEADER_LEN as usize,
        })?;
        let name = member_name(name_bytes, at)?;
        let data_start = name_end.next_multiple_of(4);
        let data_end =
            data_start.checked_add(filesize as usize).filter(|end| *end <= rest.len()).ok_or(ReadError::Truncated {
                offset: at,
                what: "the member's data",
                needed: filesize.into(),
                left: rest.len().saturating_sub(data_start),
            })?;
        let data: Arc<[u8]> = Arc::from(&rest[data_start..data_end]);
        // The last member may end unpadded at the end of the input.
        offset += data_end.next_multiple_of(4).min(rest.len());
        if name == TRAILER {
            resolve_hard_links(&mut members);
            return Ok((members, offset));
        }
        members.push(member_of(&fields, name, data));
    }
}

/// The thirteen fields of the newc header `header` (its 110 bytes), found at `at`.
fn header_fields(header: &[u8], at: usize) -> Result<[u32; 13], ReadError> {
    if &header[..6] != b"070701" && &header[..6] != b"070702" {
        return Err(ReadError::BadMagic { offset: at, found: header[..6].to_vec() });
    }
    const FIELDS: [&str; 13] = [
        "ino",
        "mode",
        "uid",
        "gid",
        "nlink",
        "mtime",
        "filesize",
        "devmajor",
        "devminor",
        "rdevmajor",
        "rdevminor",
        "namesize",
        "check",
    ];
    let mut fields = [0u32; 13];
    for (i, field) in FIELDS.iter().enumerate() {
        let text = &header[6 + 8 * i..14 + 8 * i];
        fields[i] = std::str::from_utf8(text)
            .ok()
            .filter(|text| text.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|text| u32::from_str_radix(text, 16).ok())
            .ok_or_else(|| ReadError::BadField {
                offset: at,
                field,
                value: String::from_utf8_lossy(text).into_owned(),
            })?;
    }
    Ok(fields)
}

/// Where a header's fields hold the data's and the name's sizes.
const FILESIZE: usize = 6;
const NAMESIZE: usize = 11;

/// The member with these header fields, name and data.
fn member_of(fields: &[u32; 13], name: String, data: Arc<[u8]>) -> Member {
    let [ino, mode, uid, gid, nlink, mtime, _, dev_major, dev_minor, rdev_major, rdev_minor, _, _] = *fields;
    Member { name, ino, mode, uid, gid, nlink, mtime, dev_major, dev_minor, rdev_major, rdev_minor, data }
}

/// The name in `bytes` (the header's namesize bytes, its NUL included), of the member at
/// `at`.
fn member_name(bytes: &[u8], at: usize) -> Result<String, ReadError> {
    let Some((0, name)) = bytes.split_last() else {
        return Err(ReadError::BadName { offset: at, reason: "not ended by a NUL byte" });
    };
    if name.contains(&0) {
        return Err(ReadError::BadName { offset: at, reason: "contains a NUL byte" });
    }
    Ok(std::str::from_utf8(name).map_err(|_| ReadError::BadName { offset: at, reason: "not UTF-8" })?.to_owned())
}

/// The members of uncompressed newc archives read one at a time from `input`, each with
/// its size: memory for one member's data, not for the whole stream (a results stream can
/// hold gigabytes). Archives may follow each other with zero bytes between them; a
/// compressed segment is an error here ([`read_bytes`] reads those). With `data` false
/// the members' data is read past, not kept. Hard links come as stored: the data with
/// one name only (the init's results stream has none).
pub struct Stream<R> {
    input: R,
    data: bool,
    /// Bytes read so far, and where the current archive started.
    offset: usize,
    archive_start: Option<usize>,
    /// An error ends the stream.
    failed: bool,
}

impl<R: std::io::BufRead> Stream<R> {
    pub fn new(input: R, data: bool) -> Stream<R> {
        Stream { input, data, offset: 0, archive_start: None, failed: false }
    }

    fn io_error(&self, source: io::Error) -> ReadError {
        ReadError::Stream { offset: self.offset, source }
    }

    /// Reads exactly `buf.len()` bytes of `what`, for the member at `at`.
    fn read(&mut self, buf: &mut [u8], what: &'static str, at: usize) -> Result<(), ReadError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(ReadError::Truncated { offset: at, what, needed: buf.len() as u64, left: got });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.offset += got;
        Ok(())
    }

    /// Reads up to the next multiple of four bytes from the archive's start.
    fn pad(&mut self, at: usize) -> Result<(), ReadError> {
        let since = self.offset - self.archive_start.unwrap_or(self.offset);
        let mut pad = [0u8; 3];
        let n = since.next_multiple_of(4) - since;
        self.read(&mut pad[..n], "padding", at)
    }

    /// Skips zero bytes; whether anything follows them.
    fn skip_zeros(&mut self) -> Result<bool, ReadError> {
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            if buf.is_empty() {
                return Ok(false);
            }
            let zeros = buf.iter().take_while(|b| **b == 0).count();
            let more = zeros < buf.len();
            self.input.consume(zeros);
            self.offset += zeros;
            if more {
                return Ok(true);
            }
        }
    }

    fn next_member(&mut self) -> Result<Option<(Member, u64)>, ReadError> {
        loop {
            if self.archive_start.is_none() {
                if !self.skip_zeros()? {
                    return Ok(None);
                }
                self.archive_start = Some(self.offset);
            }
            let at = self.offset;
            let mut header = [0u8; HEADER_LEN as usize];
            self.read(&mut header, "a header", at)?;
            if compress::detect(&header).is_some() {
                return Err(ReadError::BadMagic { offset: at, found: header[..6].to_vec() });
            }
            let fields = header_fields(&header, at)?;
            let (filesize, namesize) = (fields[FILESIZE], fields[NAMESIZE]);
            let mut name = vec![0u8; namesize as usize];
            self.read(&mut name, "the member name", at)?;
            let name = member_name(&name, at)?;
            self.pad(at)?;
            // The data, kept or read past: memory for this member only.
            let mut data = Vec::new();
            let mut limited = (&mut self.input).take(filesize.into());
            let got = if self.data {
                limited.read_to_end(&mut data)
            } else {
                io::copy(&mut limited, &mut io::sink()).map(|n| n as usize)
            };
            let got = got.map_err(|e| self.io_error(e))?;
            self.offset += got;
            if got < filesize as usize {
                return Err(ReadError::Truncated {
                    offset: at,
                    what: "the member's data",
                    needed: filesize.into(),
                    left: got,
                });
            }
            if name == TRAILER {
                self.archive_start = None;
                continue;
            }
            self.pad(at)?;
            return Ok(Some((member_of(&fields, name, data.into()), filesize.into())));
        }
    }
}

impl<R: std::io::BufRead> Iterator for Stream<R> {
    type Item = Result<(Member, u64), ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_member();
        self.failed = next.is_err();
        next.transpose()
    }
}

/// Gives every name of a hard-linked regular file the contents stored with one of them
/// (the last, for GNU cpio; the kernel too keeps the last contents written).
fn resolve_hard_links(members: &mut [Member]) {
    let mut contents: HashMap<(u32, u32, u32), Arc<[u8]>> = HashMap::new();
    let linked = |member: &Member| member.nlink > 1 && member.file_type() == FileType::Regular;
    for member in members.iter().filter(|m| linked(m) && !m.data.is_empty()) {
        contents.insert((member.dev_major, member.dev_minor, member.ino), member.data.clone());
    }
    for member in members.iter_mut().filter(|m| linked(m) && m.data.is_empty()) {
        if let Some(data) = contents.get(&(member.dev_major, member.dev_minor, member.ino)) {
            member.data = data.clone();
        }
    }
}

/// `ls -l` style permissions, "rwxr-xr-x" with setuid, setgid and sticky bits.
pub fn permission_string(mode: u32) -> String {
    let mut out = String::with_capacity(9);
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::Encoder;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        super::super::write_archive(
            &mut out,
            [
                Entry::data("/etc/motd", "hello\n", 0o644),
                Entry::symlink("/bin", "usr/bin"),
                Entry::char_device("/dev/null", 0o666, 1, 3),
            ],
            7,
        )
        .unwrap();
        out
    }

    #[test]
    fn member_path_table() {
        let cases = [
            ("/init", Some(Some("init"))),
            ("./usr//bin/", Some(Some("usr/bin"))),
            (".", Some(None)),
            ("/", Some(None)),
            ("../x", None),
            ("a/../../x", None),
            ("a/..", None),
            ("..a/b", Some(Some("..a/b"))),
        ];
        for (name, expected) in cases {
            let got = member_path(name).ok();
            assert_eq!(got.as_ref().map(|p| p.as_deref()), expected, "{name:?}");
        }
    }

    #[test]
    fn reads_what_the_writer_wrote() {
        let archive = read_bytes(&sample()).unwrap();
        let names: Vec<&str> = archive.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["bin", "dev", "dev/null", "etc", "etc/motd"]);
        let motd = &archive.members[4];
        assert_eq!(&*motd.data, b"hello\n");
        assert_eq!((motd.mode, motd.mtime), (S_IFREG | 0o644, 7));
        assert_eq!(archive.members[0].symlink_target(), Some(Path::new("usr/bin")));
        assert_eq!((archive.members[2].rdev_major, archive.members[2].rdev_minor), (1, 3));
        assert_eq!(archive.segments, [Compression::None]);
    }

    #[test]
    fn every_compression_concatenated_with_padding() {
        let plain = sample();
        let mut input = Vec::new();
        for compression in Compression::ALL {
            let mut encoder = Encoder::new(Vec::new(), compression).unwrap();
            encoder.write_all(&plain).unwrap();
            input.extend(encoder.finish().unwrap());
            input.extend([0u8; 7]);
        }
        let archive = read_bytes(&input).unwrap();
        assert_eq!(archive.segments, Compression::ALL);
        assert_eq!(archive.members.len(), 5 * Compression::ALL.len());
        assert_eq!(archive.compression(), Compression::Gzip);
    }

    #[test]
    fn decompressed_is_one_plain_stream_with_every_archive_four_byte_aligned() {
        let plain = sample();
        let mut zstd = Encoder::new(Vec::new(), Compression::Zstd).unwrap();
        // Three zeros after the archive: the next one would start off the 4-byte grid.
        zstd.write_all(&[plain.as_slice(), &[0; 3]].concat()).unwrap();
        let mut gzip = Encoder::new(Vec::new(), Compression::Gzip).unwrap();
        gzip.write_all(&plain).unwrap();
        let input = [zstd.finish().unwrap(), gzip.finish().unwrap(), plain.clone()].concat();
        let out = decompressed(&input, usize::MAX).unwrap().expect("compressed input");
        assert!(out.starts_with(b"070701"));
        let starts: Vec<usize> = out.windows(6).enumerate().filter(|(_, w)| *w == b"070701").map(|(i, _)| i).collect();
        assert!(starts.len() >= 15 && starts.iter().all(|i| i % 4 == 0), "{starts:?}");
        let (a, b) = (read_bytes(&input).unwrap(), read_bytes(&out).unwrap());
        let names = |r: &ReadArchive| r.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_eq!(b.segments, [Compression::None; 3]);
        // Over the limit, or nothing to decompress: the input stays as it is.
        assert!(decompressed(&input, out.len() - 1).unwrap().is_none());
        assert!(decompressed(&plain, usize::MAX).unwrap().is_none());
        assert!(decompressed(b"junk", usize::MAX).is_err());
        // What the kernel unpacks, compressed or not.
        let u = unpacked(&input, usize::MAX).unwrap().unwrap();
        assert!(u.compressed);
        assert_eq!(u.plain, out);
        let u = unpacked(&plain, usize::MAX).unwrap().unwrap();
        assert!(!u.compressed);
        assert_eq!(u.plain.len(), plain.len().next_multiple_of(4));
        assert!(unpacked(&input, out.len() - 1).unwrap().is_none());
    }

    #[test]
    fn a_stream_reads_member_by_member_what_read_bytes_reads_at_once() {
        let plain = sample();
        let input = [plain.as_slice(), &[0; 9], &plain].concat();
        let whole = read_bytes(&input).unwrap();
        for data in [true, false] {
            let streamed: Vec<(Member, u64)> = Stream::new(input.as_slice(), data).collect::<Result<_, _>>().unwrap();
            assert_eq!(streamed.len(), whole.members.len());
            for ((member, size), expected) in streamed.iter().zip(&whole.members) {
                assert_eq!((&member.name, member.mode, member.mtime), (&expected.name, expected.mode, expected.mtime));
                assert_eq!(*size, expected.data.len() as u64);
                assert_eq!(&*member.data, if data { &*expected.data } else { &[] });
            }
        }
        // Cut anywhere inside: an error that names the offset, then nothing more.
        let mut cut = Stream::new(&input[..plain.len() - 140], true);
        let errors: Vec<_> = cut.by_ref().filter_map(Result::err).collect();
        assert!(matches!(errors.as_slice(), [ReadError::Truncated { .. }]), "{errors:?}");
        assert!(cut.next().is_none());
        // A compressed segment is not read as a stream.
        let mut zstd = Encoder::new(Vec::new(), Compression::Zstd).unwrap();
        zstd.write_all(&plain).unwrap();
        let compressed = zstd.finish().unwrap();
        let first = Stream::new([plain.as_slice(), &compressed].concat().as_slice(), false).last().unwrap();
        assert!(matches!(first, Err(ReadError::BadMagic { .. })), "{first:?}");
        assert!(Stream::new(&[0u8; 16][..], true).next().is_none(), "zeros only: nothing");
    }

    #[test]
    fn an_archive_split_over_gzip_members_reads_as_one() {
        let plain = sample();
        let mut input = Vec::new();
        for half in [&plain[..100], &plain[100..]] {
            let mut encoder = Encoder::new(Vec::new(), Compression::Gzip).unwrap();
            encoder.write_all(half).unwrap();
            input.extend(encoder.finish().unwrap());
        }
        assert_eq!(read_bytes(&input).unwrap().members.len(), 5);
    }

    #[test]
    fn errors_name_the_problem() {
        let plain = sample();
        let err = read_bytes(&plain[..plain.len() - 130]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut bad = plain.clone();
        bad[8] = b'x';
        let err = read_bytes(&bad).unwrap_err();
        assert!(err.to_string().contains("field ino"), "{err}");
        let err = read_bytes(b"PK\x03\x04").unwrap_err();
        assert!(err.to_string().contains("input offset 0"), "{err}");
        assert!(matches!(read_bytes(&[0; 16]), Err(ReadError::Empty)));
    }

    #[test]
    fn permission_strings() {
        assert_eq!(permission_string(0o755), "rwxr-xr-x");
        assert_eq!(permission_string(0o4755), "rwsr-xr-x");
        assert_eq!(permission_string(0o1777), "rwxrwxrwt");
        assert_eq!(permission_string(0o2644), "rw-r-Sr--");
    }
}
