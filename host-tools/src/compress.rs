//! Compression of the initramfs: the formats the kernel can unpack, behind one `Write`.
//!
//! Every encoder here is deterministic (no timestamps or file names in headers), so a
//! reproducible cpio stays reproducible once compressed.

use std::fmt;
use std::io::{self, Write};
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
    None,
}

impl Compression {
    pub const ALL: [Compression; 4] = [Compression::Gzip, Compression::Zstd, Compression::Lz4, Compression::None];

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::None => "none",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown compression {value:?}: expected gzip, zstd, lz4 or none")]
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

/// A compressing writer; call [`Encoder::finish`] to write the end of the stream.
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Gzip(GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lz4(Lz4LegacyEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W, compression: Compression) -> io::Result<Encoder<W>> {
        let inner = match compression {
            // GzEncoder writes mtime 0 and no file name: reproducible as is.
            Compression::Gzip => Inner::Gzip(GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL))),
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                // Level 19 is slow; workers make it bearable. zstd's output is the same
                // for any number of workers >= 1, so this does not hurt reproducibility.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                encoder.multithread(workers as u32)?;
                encoder.include_checksum(true)?;
                Inner::Zstd(encoder)
            }
            Compression::Lz4 => Inner::Lz4(Lz4LegacyEncoder::new(out)),
            Compression::None => Inner::None(out),
        };
        Ok(Encoder { inner })
    }

    /// Ends the compressed stream and returns the underlying writer (flushed).
    pub fn finish(self) -> io::Result<W> {
        let mut out = match self.inner {
            Inner::Gzip(encoder) => encoder.finish()?,
            Inner::Zstd(encoder) => encoder.finish()?,
            Inner::Lz4(encoder) => encoder.finish()?,
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
            Inner::Zstd(encoder) => encoder.write(buf),
            Inner::Lz4(encoder) => encoder.write(buf),
            Inner::None(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip(encoder) => encoder.flush(),
            Inner::Zstd(encoder) => encoder.flush(),
            Inner::Lz4(encoder) => encoder.flush(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn names_round_trip() {
        for compression in Compression::ALL {
            assert_eq!(compression.to_string().parse::<Compression>().unwrap(), compression);
        }
        let err = "xz".parse::<Compression>().unwrap_err();
        assert_eq!(err.to_string(), "unknown compression \"xz\": expected gzip, zstd, lz4 or none");
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
