//! Compression of the initramfs: the formats the kernel can unpack, behind one `Write`.
//!
//! Every encoder here is deterministic (no timestamps or file names in headers), so a
//! reproducible cpio stays reproducible once compressed. [`decode_segment`] reads one
//! compressed stream of any of these formats, told apart by magic bytes, and says where it
//! ended, so that concatenated streams can be read as the kernel reads them.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use flate2::write::GzEncoder;

/// How the initramfs is compressed. The kernel must have the matching
/// `CONFIG_RD_*` decompressor built in; Debian's kernels have all of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    /// The default: the best ratio of the four and fast to unpack at boot.
    #[default]
    Zstd,
    /// The fastest to unpack, the largest image.
    Lz4,
    /// The smallest image, the slowest to pack and unpack.
    Xz,
    None,
}

impl Compression {
    pub const ALL: [Compression; 5] =
        [Compression::Gzip, Compression::Zstd, Compression::Lz4, Compression::Xz, Compression::None];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    /// The level `appliance cpio` uses when given none: output no larger than the
    /// standard tool's at its default (`gzip -6`, `zstd -3`, `xz -6`), and faster. gzip 6
    /// is libdeflate's, smaller than gzip's own 6; zstd 1 comes with long-distance matching
    /// over an 8 MiB window (see [`Encoder::with_level`]), smaller than plain zstd 3 on
    /// trees of programs and libraries and about half the work.
    pub fn tool_default_level(self) -> Option<u32> {
        match self {
            Compression::Gzip => Some(6),
            Compression::Zstd => Some(1),
            Compression::Xz => Some(6),
            Compression::Lz4 | Compression::None => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown compression {value:?}: expected gzip, zstd, lz4, xz or none")]
pub struct UnknownCompression {
    pub value: String,
}

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(value: &str) -> Result<Compression, UnknownCompression> {
        Compression::ALL
            .into_iter()
            .find(|compression| compression.name() == value)
            .ok_or_else(|| UnknownCompression { value: value.to_owned() })
    }
}

/// gzip at its best ratio: images are built once and booted many times.
const GZIP_LEVEL: u32 = 9;
/// zstd's highest level below the "ultra" ones (20-22), which need a window larger
/// than the kernel's zstd decompressor is guaranteed to be given at boot.
const ZSTD_LEVEL: i32 = 19;
/// 8 MiB: the window of level 19, for the faster levels with long-distance matching.
const ZSTD_PACK_WINDOW_LOG: u32 = 23;
/// The input each zstd worker compresses as one job, for the faster levels. zstd's own
/// choice with long-distance matching at level 1 is 2 MiB, too short for the matching to
/// find much: 16 MiB made a 101 MiB tree of libraries 12% smaller and no slower. Fixed,
/// not derived from the core count, so the output stays the same on every machine.
const ZSTD_PACK_JOB_SIZE: u32 = 16 << 20;
/// xz's own default; the kernel's xz decoder allocates the dictionary for initramfs
/// dynamically, so the 8 MiB of level 6 is fine.
const XZ_LEVEL: u32 = 6;

/// A compressing writer; call [`Encoder::finish`] to write the end of the stream.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Gzip(GzEncoder<W>),
    GzipMembers(GzipMembersEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lz4(Lz4LegacyEncoder<W>),
    Xz(xz2::write::XzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    /// The encoder `appliance build` uses: every format at its best ratio, as an image
    /// is built once and booted many times.
    pub fn new(out: W, compression: Compression) -> io::Result<Encoder<W>> {
        Encoder::with_level(out, compression, None)
    }

    /// Like [`Encoder::new`], at `level` when given. gzip at a given level is compressed
    /// on all cores (see [`GzipMembersEncoder`]), for cpio archives only.
    pub fn with_level(out: W, compression: Compression, level: Option<u32>) -> io::Result<Encoder<W>> {
        let inner = match (compression, level) {
            // GzEncoder writes mtime 0 and no file name: reproducible as is.
            (Compression::Gzip, None) => Inner::Gzip(GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL))),
            (Compression::Gzip, Some(level)) => Inner::GzipMembers(GzipMembersEncoder::new(out, level)?),
            (Compression::Zstd, level) => {
                let mut encoder =
                    zstd::stream::write::Encoder::new(out, level.map_or(ZSTD_LEVEL, |level| level.min(19) as i32))?;
                if level.is_some() {
                    // Libraries repeat each other from megabytes apart; the window is the one
                    // level 19 uses anyway, so the kernel allocates no more to unpack it.
                    encoder.long_distance_matching(true)?;
                    encoder.window_log(ZSTD_PACK_WINDOW_LOG)?;
                    encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_PACK_JOB_SIZE))?;
                }
                // Level 19 is slow; workers make it bearable. zstd's output is the same
                // for any number of workers >= 1, so this does not hurt reproducibility.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                encoder.multithread(workers as u32)?;
                encoder.include_checksum(true)?;
                Inner::Zstd(encoder)
            }
            (Compression::Lz4, _) => Inner::Lz4(Lz4LegacyEncoder::new(out)),
            (Compression::Xz, level) => {
                // CRC32, not xz's default CRC64: the kernel's decoder checks only CRC32.
                let stream =
                    xz2::stream::Stream::new_easy_encoder(level.unwrap_or(XZ_LEVEL).min(9), xz2::stream::Check::Crc32)
                        .map_err(io::Error::other)?;
                Inner::Xz(xz2::write::XzEncoder::new_stream(out, stream))
            }
            (Compression::None, _) => Inner::None(out),
        };
        Ok(Encoder { inner })
    }

    /// Ends the compressed stream and returns the underlying writer (flushed).
    pub fn finish(self) -> io::Result<W> {
        let mut out = match self.inner {
            Inner::Gzip(encoder) => encoder.finish()?,
            Inner::GzipMembers(encoder) => encoder.finish()?,
            Inner::Zstd(encoder) => encoder.finish()?,
            Inner::Lz4(encoder) => encoder.finish()?,
            Inner::Xz(encoder) => encoder.finish()?,
            Inner::None(out) => out,
        };
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(encoder) => encoder.write(buf),
            Inner::GzipMembers(encoder) => encoder.write(buf),
            Inner::Zstd(encoder) => encoder.write(buf),
            Inner::Lz4(encoder) => encoder.write(buf),
            Inner::Xz(encoder) => encoder.write(buf),
            Inner::None(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip(encoder) => encoder.flush(),
            Inner::GzipMembers(encoder) => encoder.flush(),
            Inner::Zstd(encoder) => encoder.flush(),
            Inner::Lz4(encoder) => encoder.flush(),
            Inner::Xz(encoder) => encoder.flush(),
            Inner::None(out) => out.flush(),
        }
    }
}

/// Magic number of the legacy lz4 format, written little-endian.
pub const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Each legacy block holds at most 8 MiB of input; the kernel sizes its output buffer
/// to exactly this.
pub const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The legacy lz4 format (`lz4 -l`): the magic, then blocks of
/// `[u32 little-endian compressed size][lz4 block]`, each from at most 8 MiB of input,
/// until the end of the stream.
///
/// Written here because the kernel's initramfs decompressor (`lib/decompress_unlz4.c`)
/// understands only this format, not the lz4 frame format that `lz4_flex`'s frame
/// encoder and today's `lz4` tool produce.
pub struct Lz4LegacyEncoder<W: Write> {
    out: W,
    pending: Vec<u8>,
    wrote_magic: bool,
}

impl<W: Write> Lz4LegacyEncoder<W> {
    pub fn new(out: W) -> Lz4LegacyEncoder<W> {
        Lz4LegacyEncoder { out, pending: Vec::new(), wrote_magic: false }
    }

    /// Writes the last, partial block and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_magic()?;
        if !self.pending.is_empty() {
            self.write_block()?;
        }
        Ok(self.out)
    }

    fn write_magic(&mut self) -> io::Result<()> {
        if !self.wrote_magic {
            self.out.write_all(&LZ4_LEGACY_MAGIC.to_le_bytes())?;
            self.wrote_magic = true;
        }
        Ok(())
    }

    fn write_block(&mut self) -> io::Result<()> {
        self.write_magic()?;
        let block = lz4_flex::block::compress(&self.pending);
        let size = u32::try_from(block.len()).map_err(io::Error::other)?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&block)?;
        self.pending.clear();
        Ok(())
    }
}

impl<W: Write> Write for Lz4LegacyEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = LZ4_LEGACY_BLOCK - self.pending.len();
        let taken = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..taken]);
        if self.pending.len() == LZ4_LEGACY_BLOCK {
            self.write_block()?;
        }
        Ok(taken)
    }

    /// Flushes only the underlying writer: ending a block early would change the output
    /// depending on when callers flush, and the format gains nothing from it.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Input per gzip member, at least: a member ends at the first cpio entry boundary after
/// this many bytes. Fixed, so the output does not depend on the number of threads.
pub const GZIP_MEMBER: usize = 1 << 20;

/// gzip for cpio archives on all cores: the archive is cut into members of about
/// [`GZIP_MEMBER`] bytes, each compressed by libdeflate on its own thread.
///
/// Members end only between cpio entries. The kernel unpacks each gzip member as a segment
/// and checks that its cpio state machine is between entries at the end of each one ("junk
/// at the end of compressed archive" otherwise); `gzip -d` joins the members into the one
/// archive GNU cpio expects (it stops at the first trailer, so one archive it must be). To
/// find the boundaries the encoder follows the newc headers going through it; input that
/// is not newc becomes a single member.
///
/// libdeflate at a level is faster than zlib and no larger, so with the threads this packs
/// several times faster than the `gzip` tool at its own default level, at the same size.
pub struct GzipMembersEncoder<W: Write> {
    out: W,
    level: libdeflater::CompressionLvl,
    threads: usize,
    /// Input not yet compressed; `pending_start` is the offset of its first byte.
    pending: Vec<u8>,
    pending_start: u64,
    /// Offsets of the entry headers seen after `pending_start`: where members may end.
    cuts: std::collections::VecDeque<u64>,
    /// Offset of the next header to parse; `None` once the input proved not to be newc.
    next_header: Option<u64>,
}

impl<W: Write> GzipMembersEncoder<W> {
    pub fn new(out: W, level: u32) -> io::Result<GzipMembersEncoder<W>> {
        let level = libdeflater::CompressionLvl::new(level as i32).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("invalid gzip level {level}: expected 1 to 12"))
        })?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(GzipMembersEncoder {
            out,
            level,
            threads,
            pending: Vec::new(),
            pending_start: 0,
            cuts: std::collections::VecDeque::new(),
            next_header: Some(0),
        })
    }

    /// Compresses the rest as members (the last one running to the end) and returns the
    /// underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.parse_headers();
        let mut members = self.complete_members();
        members.push(self.pending.len());
        self.compress(&members)?;
        Ok(self.out)
    }

    /// Records the header offsets that the pending input now covers.
    fn parse_headers(&mut self) {
        let end = self.pending_start + self.pending.len() as u64;
        while let Some(at) = self.next_header {
            if at + 110 > end {
                return;
            }
            let header = &self.pending[(at - self.pending_start) as usize..][..110];
            let field = |index: usize| {
                std::str::from_utf8(&header[6 + 8 * index..14 + 8 * index])
                    .ok()
                    .and_then(|text| u64::from_str_radix(text, 16).ok())
            };
            self.next_header = match (header.starts_with(b"0707"), field(11), field(6)) {
                (true, Some(namesize), Some(filesize)) => {
                    self.cuts.push_back(at);
                    Some((at + 110 + namesize).next_multiple_of(4) + filesize.next_multiple_of(4))
                }
                _ => None,
            };
        }
    }

    /// Ends (relative to `pending`) of the members that are complete: each the first
    /// cut at least [`GZIP_MEMBER`] past the member's start.
    fn complete_members(&self) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut start = self.pending_start;
        for &cut in &self.cuts {
            if cut >= start + GZIP_MEMBER as u64 {
                ends.push((cut - self.pending_start) as usize);
                start = cut;
            }
        }
        ends
    }

    /// Compresses `pending` up to each of `ends` as one member each, in parallel, writes
    /// them in order and drops that input.
    fn compress(&mut self, ends: &[usize]) -> io::Result<()> {
        let Some(&last) = ends.last() else { return Ok(()) };
        let level = self.level;
        let pending = &self.pending;
        let mut members = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in ends {
            members.push(&pending[start..end]);
            start = end;
        }
        // A queue, not fixed batches: members differ in size (a large file is one member).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut compressed: Vec<(usize, io::Result<Vec<u8>>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.threads.min(members.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut compressor = libdeflater::Compressor::new(level);
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(member) = members.get(i) else { return done };
                            let mut out = vec![0; compressor.gzip_compress_bound(member.len())];
                            let result =
                                compressor.gzip_compress(member, &mut out).map_err(io::Error::other).map(|len| {
                                    out.truncate(len);
                                    out
                                });
                            done.push((i, result));
                        }
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
        });
        if compressed.len() != members.len() {
            return Err(io::Error::other("a gzip worker panicked"));
        }
        compressed.sort_by_key(|(i, _)| *i);
        for (_, member) in compressed {
            self.out.write_all(&member?)?;
        }
        self.pending.drain(..last);
        self.pending_start += last as u64;
        while self.cuts.front().is_some_and(|cut| *cut < self.pending_start) {
            self.cuts.pop_front();
        }
        Ok(())
    }
}

impl<W: Write> Write for GzipMembersEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        // Several members per thread at a time, so that the queue can even out their sizes.
        if self.pending.len() >= 8 * GZIP_MEMBER * self.threads {
            self.parse_headers();
            let members = self.complete_members();
            if members.len() >= 4 * self.threads {
                self.compress(&members)?;
            }
        }
        Ok(buf.len())
    }

    /// Like the lz4 encoder: ending a member early would make the output depend on
    /// when callers flush.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Magic of the lz4 frame format (`lz4` without `-l`), little-endian.
pub const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// The old gzip magic the kernel also accepts.
const GZIP_OLD_MAGIC: &[u8] = &[0x1f, 0x9e];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The compression of a stream starting with `bytes`, by its magic number; `None` for
/// anything else (an uncompressed cpio starts with "0707", which callers check).
pub fn detect(bytes: &[u8]) -> Option<Compression> {
    if bytes.starts_with(GZIP_MAGIC) || bytes.starts_with(GZIP_OLD_MAGIC) {
        Some(Compression::Gzip)
    } else if bytes.starts_with(ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if bytes.starts_with(XZ_MAGIC) {
        Some(Compression::Xz)
    } else if bytes.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) || bytes.starts_with(&LZ4_FRAME_MAGIC.to_le_bytes()) {
        Some(Compression::Lz4)
    } else {
        None
    }
}

/// Errors of [`decode_segment`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no known compression magic at this offset (starts with {start:02x?})")]
    UnknownMagic { start: Vec<u8> },
    #[error("corrupt {compression} stream")]
    Corrupt {
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("corrupt lz4 stream: {reason}")]
    Lz4 { reason: String },
}

/// One decoded stream: its format, its contents and how many input bytes it took.
#[derive(Debug)]
pub struct Segment {
    pub compression: Compression,
    pub data: Vec<u8>,
    pub consumed: usize,
}

/// Decodes the one compressed stream (gzip member, zstd frame, xz stream, lz4 legacy or
/// frame stream) at the start of `input`, leaving whatever follows it alone.
pub fn decode_segment(input: &[u8]) -> Result<Segment, DecodeError> {
    let compression =
        detect(input).ok_or_else(|| DecodeError::UnknownMagic { start: input[..input.len().min(8)].to_vec() })?;
    let corrupt = |source| DecodeError::Corrupt { compression, source };
    let mut data = Vec::new();
    let rest: &[u8] = match compression {
        Compression::Gzip => {
            let mut decoder = flate2::bufread::GzDecoder::new(input);
            decoder.read_to_end(&mut data).map_err(corrupt)?;
            decoder.into_inner()
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?.single_frame();
            // Archives made with long-distance matching use windows up to 2 GiB.
            decoder.window_log_max(31).map_err(corrupt)?;
            decoder.read_to_end(&mut data).map_err(corrupt)?;
            decoder.finish()
        }
        Compression::Xz => &input[xz_stream(input, &mut data).map_err(corrupt)?..],
        Compression::Lz4 if input.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) => lz4_legacy(&input[4..], &mut data)?,
        Compression::Lz4 => lz4_frame(&input[4..], &mut data)?,
        Compression::None => unreachable!("detect never says None"),
    };
    Ok(Segment { compression, data, consumed: input.len() - rest.len() })
}

/// Decodes one xz stream, returning the input bytes it took. By hand, because xz2's
/// readers treat whatever follows the stream as corruption.
fn xz_stream(input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other)?;
    loop {
        if out.capacity() - out.len() < 64 << 10 {
            out.reserve(out.len().max(256 << 10));
        }
        let consumed = stream.total_in() as usize;
        let produced = out.len();
        let action = if consumed == input.len() { Action::Finish } else { Action::Run };
        let status = stream
            .process_vec(&input[consumed..], out, action)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        if status == Status::StreamEnd {
            return Ok(stream.total_in() as usize);
        }
        if stream.total_in() as usize == consumed && out.len() == produced && out.capacity() > out.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the xz stream ends early"));
        }
    }
}

fn lz4_error(reason: impl Into<String>) -> DecodeError {
    DecodeError::Lz4 { reason: reason.into() }
}

fn take_u32(input: &[u8]) -> Option<(u32, &[u8])> {
    let (bytes, rest) = input.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*bytes), rest))
}

/// The legacy format has no end marker: like the kernel, stop at the end of the input,
/// at another legacy magic, or at anything that cannot be a block size (the start of
/// whatever was concatenated after it).
fn lz4_legacy<'a>(mut input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], DecodeError> {
    while let Some((size, rest)) = take_u32(input) {
        let size = size as usize;
        if size == 0 || size > rest.len() || size > lz4_flex::block::get_maximum_output_size(LZ4_LEGACY_BLOCK) {
            break;
        }
        if detect(input).is_some() || input.starts_with(b"0707") {
            break;
        }
        let block = lz4_flex::block::decompress(&rest[..size], LZ4_LEGACY_BLOCK)
            .map_err(|err| lz4_error(format!("legacy block at +{}: {err}", out.len())))?;
        out.extend_from_slice(&block);
        input = &rest[size..];
    }
    Ok(input)
}

/// The frame format, checksums not verified: blocks may refer back to the previous
/// 64 KiB of output ("linked" blocks), which the dictionary argument provides.
fn lz4_frame<'a>(input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], DecodeError> {
    let [flags, block_descriptor, ..] = *input else { return Err(lz4_error("frame header truncated")) };
    if flags >> 6 != 1 {
        return Err(lz4_error(format!("unsupported frame version in flags {flags:#04x}")));
    }
    let block_checksum = flags & 0x10 != 0;
    let content_size = flags & 0x08 != 0;
    let content_checksum = flags & 0x04 != 0;
    let dictionary_id = flags & 0x01 != 0;
    let block_max = match (block_descriptor >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        other => return Err(lz4_error(format!("invalid block size code {other}"))),
    };
    let header = 2 + if content_size { 8 } else { 0 } + if dictionary_id { 4 } else { 0 } + 1;
    let mut input = input.get(header..).ok_or_else(|| lz4_error("frame header truncated"))?;
    let start = out.len();
    loop {
        let (size, rest) = take_u32(input).ok_or_else(|| lz4_error("frame truncated before its end mark"))?;
        input = rest;
        if size == 0 {
            break;
        }
        let stored = size & 0x8000_0000 != 0;
        let size = (size & 0x7fff_ffff) as usize;
        let block = input.get(..size).ok_or_else(|| lz4_error("block truncated"))?;
        if stored {
            out.extend_from_slice(block);
        } else {
            let dictionary = &out[out.len().saturating_sub(64 << 10).max(start)..];
            let plain = lz4_flex::block::decompress_with_dict(block, block_max, dictionary)
                .map_err(|err| lz4_error(format!("frame block at +{}: {err}", out.len() - start)))?;
            out.extend_from_slice(&plain);
        }
        input = &input[size..];
        if block_checksum {
            input = input.get(4..).ok_or_else(|| lz4_error("block checksum truncated"))?;
        }
    }
    if content_checksum {
        input = input.get(4..).ok_or_else(|| lz4_error("content checksum truncated"))?;
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn names_round_trip() {
        for compression in Compression::ALL {
            assert_eq!(compression.to_string().parse::<Compression>().unwrap(), compression);
        }
        let err = "bzip2".parse::<Compression>().unwrap_err();
        assert_eq!(err.to_string(), "unknown compression \"bzip2\": expected gzip, zstd, lz4, xz or none");
        assert_eq!(Compression::default(), Compression::Zstd);
    }

    /// The claim that lets us use all cores: zstd's multithreaded output does not depend
    /// on the number of workers.
    #[test]
    fn zstd_output_does_not_depend_on_worker_count() {
        let input: Vec<u8> = (0..3_000_000u32).flat_map(|i| (i % 1013).to_le_bytes()).collect();
        let compress = |workers: u32| {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            encoder.multithread(workers).unwrap();
            encoder.write_all(&input).unwrap();
            encoder.finish().unwrap()
        };
        assert_eq!(compress(1), compress(2));
        assert_eq!(compress(1), compress(4));
        // And so with the long-distance matching of `appliance cpio`'s levels.
        let compress = |workers: u32| {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            encoder.long_distance_matching(true).unwrap();
            encoder.window_log(ZSTD_PACK_WINDOW_LOG).unwrap();
            encoder.multithread(workers).unwrap();
            encoder.write_all(&input).unwrap();
            encoder.finish().unwrap()
        };
        assert_eq!(compress(1), compress(2));
        assert_eq!(compress(1), compress(3));
    }

    fn gzip_members(input: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut encoder = GzipMembersEncoder::new(Vec::new(), 6).unwrap();
        encoder.threads = threads;
        for chunk in input.chunks(write_size) {
            encoder.write_all(chunk).unwrap();
        }
        encoder.finish().unwrap()
    }

    /// Members end between cpio entries, whatever the threads and write sizes, and the
    /// members together are the archive.
    #[test]
    fn gzip_members_end_between_entries_independent_of_threads() {
        let mut entries = Vec::new();
        for i in 0..40u32 {
            let data: Vec<u8> = (0..(i * 97_003) % 400_000).map(|j| (j * 7 + i) as u8 ^ (j / 4096) as u8).collect();
            entries.push(crate::archive::cpio::Entry::data(format!("/f{i}"), data, 0o644));
        }
        let mut archive = Vec::new();
        crate::archive::cpio::write_archive(&mut archive, entries, 0).unwrap();
        let reference = gzip_members(&archive, 1, 1 << 20);
        for (threads, write_size) in [(2, 4096), (3, 1_000_003), (4, archive.len())] {
            assert_eq!(gzip_members(&archive, threads, write_size), reference, "{threads} threads");
        }
        let mut rest = &reference[..];
        let mut joined = Vec::new();
        let mut members = 0;
        while !rest.is_empty() {
            let segment = decode_segment(rest).unwrap();
            // Each member on its own holds whole entries: it reads as entries up to its end.
            assert!(segment.data.starts_with(b"070701"), "member {members} starts with a header");
            joined.extend_from_slice(&segment.data);
            rest = &rest[segment.consumed..];
            members += 1;
        }
        assert!(members > 3, "{members} members");
        assert_eq!(joined, archive);
        // Not newc: one member, still correct.
        let noise: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let one = gzip_members(&noise, 2, 65536);
        let segment = decode_segment(&one).unwrap();
        assert_eq!((segment.consumed, segment.data == noise), (one.len(), true));
        if Command::new("gzip").arg("--version").output().is_ok() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("x.gz"), &reference).unwrap();
            let output = Command::new("gzip").arg("-dc").arg(dir.path().join("x.gz")).output().unwrap();
            assert!(output.status.success());
            assert_eq!(output.stdout, archive);
        }
    }

    /// Decodes our legacy stream by hand, so the block layout itself is checked.
    #[test]
    fn lz4_legacy_layout_and_block_limit() {
        let input: Vec<u8> = (0..LZ4_LEGACY_BLOCK * 2 + 1000).map(|i| (i % 253) as u8 ^ (i / 4096) as u8).collect();
        let mut encoder = Lz4LegacyEncoder::new(Vec::new());
        // Odd-sized writes, so block boundaries do not line up with write calls.
        for chunk in input.chunks(1_000_003) {
            encoder.write_all(chunk).unwrap();
        }
        let out = encoder.finish().unwrap();
        assert_eq!(out[..4], LZ4_LEGACY_MAGIC.to_le_bytes());
        let mut rest = &out[4..];
        let mut decoded = Vec::new();
        let mut blocks = 0;
        while !rest.is_empty() {
            let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let block = &rest[4..4 + size];
            let plain = lz4_flex::block::decompress(block, LZ4_LEGACY_BLOCK).unwrap();
            assert!(plain.len() <= LZ4_LEGACY_BLOCK);
            decoded.extend_from_slice(&plain);
            rest = &rest[4 + size..];
            blocks += 1;
        }
        assert_eq!(blocks, 3);
        assert_eq!(decoded, input);
    }

    #[test]
    fn lz4_cli_reads_our_legacy_stream() {
        if Command::new("lz4").arg("--version").output().is_err() {
            panic!("cannot run: the lz4 tool is not installed (tests/run installs what the tests need)");
        }
        for len in [0usize, 1, LZ4_LEGACY_BLOCK, LZ4_LEGACY_BLOCK + 17] {
            let input: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut encoder = Encoder::new(Vec::new(), Compression::Lz4).unwrap();
            encoder.write_all(&input).unwrap();
            let compressed = encoder.finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("in.lz4");
            std::fs::write(&file, &compressed).unwrap();
            let output = Command::new("lz4").args(["-dc"]).arg(&file).stderr(Stdio::piped()).output().unwrap();
            assert!(output.status.success(), "lz4 -d on {len} bytes: {}", String::from_utf8_lossy(&output.stderr));
            assert_eq!(output.stdout, input, "{len} bytes");
        }
    }
}
