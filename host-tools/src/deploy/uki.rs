//! A unified kernel image: systemd's EFI stub (`linuxx64.efi.stub`, Debian's
//! `systemd-boot-efi`) with the kernel, the initrd and the command line added as PE
//! sections (`.linux`, `.initrd`, `.cmdline`). Firmware starts it as any EFI application;
//! the stub hands the kernel its initrd and command line. One file that boots by itself as
//! `\EFI\BOOT\BOOTX64.EFI`, with no boot loader, loader entry or firmware variable to set
//! up, is why the disk images use one (see `docs/disk-images.md`).
//!
//! The sections are added by binutils' `objcopy`, the tool systemd documents for this; the
//! addresses they load at are computed here from the stub's own section table (goblin), so
//! they follow the stub wherever a newer one puts its sections. objcopy stamps the image
//! with the time it ran (and ignores `SOURCE_DATE_EPOCH`): [`set_timestamp`] puts a fixed
//! one back, so the same inputs give the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::fs_error::{FsError, io_error};
use crate::host::process::find_program;

/// Where Debian's `systemd-boot-efi` installs the stub.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The added sections start on page boundaries, as the ones systemd's `ukify` adds.
const SECTION_ALIGN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error(
        "no EFI stub at {}: install systemd's (Debian/Ubuntu: `apt-get install systemd-boot-efi`)",
        path.display()
    )]
    NoStub { path: PathBuf },
    #[error("{} is not a PE image: {reason}", path.display())]
    NotPe { path: PathBuf, reason: String },
    #[error("objcopy not found in PATH: install binutils (Debian/Ubuntu: `apt-get install binutils`)")]
    NoObjcopy,
    #[error("objcopy failed to write {}: {stderr}", out.display())]
    Objcopy { out: PathBuf, stderr: String },
    #[error(transparent)]
    Io(#[from] FsError),
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct UkiParts<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
}

/// One section to add: its name, the file holding it and the address it loads at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: &'static str,
    pub file: PathBuf,
    pub vma: u64,
}

/// Where the sections go: after the stub's last section, each on the next page boundary
/// after the one before. `stub_end` is the stub's image base plus the end of its last
/// section; `sizes` the files' sizes in order.
pub fn place(stub_end: u64, sections: &[(&'static str, PathBuf, u64)]) -> Vec<Placed> {
    let mut at = stub_end;
    sections
        .iter()
        .map(|(name, file, size)| {
            let vma = at.next_multiple_of(SECTION_ALIGN);
            at = vma + size;
            Placed { name, file: file.clone(), vma }
        })
        .collect()
}

/// The image base plus the end of the last section of the PE image in `bytes`.
pub fn stub_end(bytes: &[u8]) -> Result<u64, String> {
    let pe = goblin::pe::PE::parse(bytes).map_err(|e| e.to_string())?;
    let end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.size_of_raw_data)))
        .max()
        .ok_or("it has no sections")?;
    Ok(pe.image_base + end)
}

/// Sets the COFF header's time stamp of the PE image in `bytes` to `stamp`, and its
/// checksum to match. Written here: no crate edits a PE image in place, and both fields sit
/// at fixed offsets. Fails when `bytes` is not a PE image.
pub fn set_timestamp(bytes: &mut [u8], stamp: u32) -> Result<(), String> {
    let pe = bytes
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|&pe| bytes.get(pe..pe + 4) == Some(b"PE\0\0"))
        .ok_or("no PE header")?;
    // The COFF header follows the signature; its time stamp is at offset 4. The optional
    // header follows the 20-byte COFF header; its checksum is at offset 64 (PE32 and PE32+).
    let (stamp_at, sum_at) = (pe + 8, pe + 24 + 64);
    if bytes.len() < sum_at + 4 {
        return Err("truncated PE header".into());
    }
    bytes[stamp_at..stamp_at + 4].copy_from_slice(&stamp.to_le_bytes());
    bytes[sum_at..sum_at + 4].fill(0);
    let sum = pe_checksum(bytes);
    bytes[sum_at..sum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE checksum (as `imagehlp`'s `CheckSumMappedFile`): the 16-bit words of the file,
/// with the checksum field zero, added with end-around carry, plus the file's length.
fn pe_checksum(bytes: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    for chunk in bytes.chunks(2) {
        let word = u64::from(chunk[0]) | chunk.get(1).map_or(0, |&b| u64::from(b) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(bytes.len() as u32)
}

/// Writes the unified kernel image `out`, using `tmp` for the command line's file; `stamp`
/// is its PE time stamp.
pub fn build(parts: &UkiParts<'_>, out: &Path, tmp: &Path, stamp: u32) -> Result<(), UkiError> {
    if !parts.stub.exists() {
        return Err(UkiError::NoStub { path: parts.stub.to_path_buf() });
    }
    let objcopy = find_program("objcopy").ok_or(UkiError::NoObjcopy)?;
    let stub = std::fs::read(parts.stub).map_err(io_error("read", parts.stub))?;
    let end = stub_end(&stub).map_err(|reason| UkiError::NotPe { path: parts.stub.to_path_buf(), reason })?;
    let cmdline = tmp.join("cmdline");
    std::fs::write(&cmdline, parts.cmdline).map_err(io_error("write", &cmdline))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io_error("read", p));
    let sections = [
        (".cmdline", cmdline.clone(), parts.cmdline.len() as u64),
        (".linux", parts.kernel.to_path_buf(), size(parts.kernel)?),
        (".initrd", parts.initrd.to_path_buf(), size(parts.initrd)?),
    ];
    let mut command = Command::new(objcopy);
    for s in place(end, &sections) {
        command.arg("--add-section").arg(format!("{}={}", s.name, s.file.display()));
        command.arg("--change-section-vma").arg(format!("{}={:#x}", s.name, s.vma));
    }
    command.arg(parts.stub).arg(out);
    let output = command.output().map_err(io_error("run objcopy for", out))?;
    if !output.status.success() {
        return Err(UkiError::Objcopy {
            out: out.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let mut image = std::fs::read(out).map_err(io_error("read", out))?;
    set_timestamp(&mut image, stamp).map_err(|reason| UkiError::NotPe { path: out.to_path_buf(), reason })?;
    std::fs::write(out, image).map_err(io_error("write", out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_the_stub_on_page_boundaries() {
        let placed =
            place(0x19134, &[(".cmdline", "c".into(), 10), (".linux", "k".into(), 0x1000), (".initrd", "i".into(), 5)]);
        let vmas: Vec<u64> = placed.iter().map(|p| p.vma).collect();
        assert_eq!(vmas, [0x1a000, 0x1b000, 0x1c000]);
        assert_eq!(place(0x2000, &[(".linux", "k".into(), 1)])[0].vma, 0x2000);
    }

    #[test]
    fn a_file_that_is_not_pe_is_refused() {
        assert!(stub_end(b"\x7fELF not a PE").is_err());
        assert!(set_timestamp(&mut b"\x7fELF not a PE".to_vec(), 0).is_err());
    }

    /// The stub as Debian ships it carries time stamp 0 and a valid checksum: setting the
    /// same stamp again gives the same bytes.
    #[test]
    fn the_checksum_after_a_new_time_stamp_is_the_one_linkers_write() {
        let Ok(stub) = std::fs::read(STUB) else {
            eprintln!("skipped: no {STUB} (apt-get install systemd-boot-efi)");
            return;
        };
        let mut copy = stub.clone();
        set_timestamp(&mut copy, 0).unwrap();
        assert_eq!(copy, stub);
        set_timestamp(&mut copy, 1_700_000_000).unwrap();
        assert_ne!(copy, stub);
        assert_eq!(goblin::pe::PE::parse(&copy).unwrap().header.coff_header.time_date_stamp, 1_700_000_000);
    }
}
