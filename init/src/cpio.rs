//! The newc ("070701") cpio format, written: the format of the results stream
//! (`appResultsTo=serial:NAME`), which `appliance run` reads back with its own reader
//! (`archive::cpio` of the host tools) and unpacks. Only what a stream of results needs:
//! headers for directories, regular files and symbolic links, padding, the trailer.
//!
//! Pure: the caller writes the bytes where they go.

use alloc::format;
use alloc::vec::Vec;

/// The name of the member that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// `S_IFDIR`, `S_IFREG` and `S_IFLNK`.
pub const DIRECTORY: u32 = 0o040_000;
pub const REGULAR: u32 = 0o100_000;
pub const SYMLINK: u32 = 0o120_000;

/// One member's header fields: the rest (owner, devices, checksum) are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub mtime: u32,
    /// Bytes of data that follow: a file's contents, a symbolic link's target.
    pub size: u32,
}

/// The header of `h` with its name, NUL-terminated and padded so that the data starts on a
/// multiple of 4 bytes.
pub fn header(h: &Header<'_>) -> Vec<u8> {
    let nlink = if h.mode & 0o170_000 == DIRECTORY { 2 } else { 1 };
    let namesize = h.name.len() + 1;
    let fields = [h.ino, h.mode, 0, 0, nlink, h.mtime, h.size, 0, 0, 0, 0, namesize as u32, 0];
    let mut out = Vec::with_capacity(110 + namesize + 3);
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(h.name.as_bytes());
    out.push(0);
    out.resize(out.len() + padding(out.len() as u64), 0);
    out
}

/// The zero bytes that bring `len` to a multiple of 4 (after a member's data).
pub fn padding(len: u64) -> usize {
    ((4 - len % 4) % 4) as usize
}

/// The trailer member that ends the archive.
pub fn trailer(ino: u32) -> Vec<u8> {
    header(&Header { name: TRAILER, ino, mode: 0, mtime: 0, size: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field at `index` (0 is the inode) of a header, as text.
    fn field(h: &[u8], index: usize) -> &str {
        core::str::from_utf8(&h[6 + 8 * index..14 + 8 * index]).unwrap()
    }

    #[test]
    fn headers_are_newc_with_padded_names() {
        let h = header(&Header { name: "run-1/output", ino: 2, mode: REGULAR | 0o644, mtime: 0x5f5e_1000, size: 5 });
        assert_eq!(&h[..6], b"070701");
        let fields: Vec<&str> = (0..13).map(|i| field(&h, i)).collect();
        assert_eq!(
            fields,
            [
                "00000002", "000081a4", "00000000", "00000000", "00000001", "5f5e1000", "00000005", "00000000",
                "00000000", "00000000", "00000000", "0000000d", "00000000"
            ]
        );
        assert_eq!(&h[110..123], b"run-1/output\0");
        // 110 + 13 bytes of name, padded to 124: the data starts on a multiple of 4.
        assert_eq!(h.len(), 124);
        let d = header(&Header { name: "r", ino: 1, mode: DIRECTORY | 0o755, mtime: 0, size: 0 });
        assert_eq!(field(&d, 4), "00000002", "a directory's nlink");
        assert_eq!(d.len(), 112);
        let t = trailer(9);
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        assert_eq!((padding(0), padding(1), padding(3), padding(4), padding(6)), (0, 3, 1, 0, 2));
    }
}
