//! `appliance image`: a GPT disk whose only partition, the EFI system partition (FAT32),
//! holds the app dir as a unified kernel image at `\EFI\BOOT\BOOTX64.EFI`, the path UEFI
//! firmware boots from a disk without any boot entry. Written into a plain file with the
//! `gpt` and `fatfs` crates (no root, loop device or mount), and converted with `qemu-img`
//! to the formats hypervisors take.
//!
//! Reproducible: the same inputs and `SOURCE_DATE_EPOCH` give the same bytes. The GPT's
//! identifiers and the FAT volume id are derived from a hash of the unified kernel image,
//! the files' times are `SOURCE_DATE_EPOCH` (the FAT epoch, 1980-01-01, without it), and
//! the stub the image starts from carries no time stamp.
//!
//! Legacy BIOS is not supported: a BIOS boots the first sector's code, which would need a
//! second boot loader (syslinux's `gptmbr.bin` and an installed `ldlinux.sys`, whose
//! installer patches sector lists into the file system) beside the unified kernel image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use sha2::{Digest, Sha256};

use crate::deploy::uki::{self, UkiError, UkiParts};
use crate::host::fs_error::{FsError, io_error};
use crate::host::process::find_program;

const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// The partition starts 1 MiB in (the alignment every partitioning tool uses), and 1 MiB
/// is left after it for the backup GPT.
const ESP_START: u64 = MIB;
/// FAT32 needs at least 65525 clusters: 33 MiB or more with 512-byte clusters. FAT32
/// because it is the file system UEFI requires of a system partition on a fixed disk.
const MIN_ESP: u64 = 64 * MIB;
/// The partition's name in the GPT and the file system's label.
const ESP_NAME: &str = "EFI system partition";
const LABEL: [u8; 11] = *b"APPLIANCE  ";
/// The path firmware boots from a disk without a boot entry (x86-64).
pub const BOOT_PATH: [&str; 3] = ["EFI", "BOOT", "BOOTX64.EFI"];

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("unknown disk format `{0}`: expected raw, qcow2, vmdk, vdi, vhdx or vpc")]
    UnknownFormat(String),
    #[error("no {what} in the app dir {}: build it with `appliance build`", app_dir.display())]
    NotAnAppDir { app_dir: PathBuf, what: &'static str },
    #[error("SOURCE_DATE_EPOCH `{0}` is not a number of seconds")]
    BadEpoch(String),
    #[error(transparent)]
    Uki(#[from] UkiError),
    #[error("cannot write the GPT of {}: {source}", path.display())]
    Gpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("cannot write the protective MBR of {}: {source}", path.display())]
    Mbr {
        path: PathBuf,
        #[source]
        source: gpt::mbr::MBRError,
    },
    #[error("cannot write the FAT file system of {}", path.display())]
    Fat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img not found in PATH: install it (Debian/Ubuntu: `apt-get install qemu-utils`)")]
    NoQemuImg,
    #[error("qemu-img {action} {} failed: {stderr}", path.display())]
    QemuImg { action: &'static str, path: PathBuf, stderr: String },
    #[error("qemu-img info {} printed no format: {output}", path.display())]
    NoFormat { path: PathBuf, output: String },
    #[error(transparent)]
    Io(#[from] FsError),
}

/// The formats `appliance image` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    /// QEMU, libvirt, OpenStack.
    Qcow2,
    /// VMware, as `streamOptimized` (the subformat of OVA files and vSphere imports).
    Vmdk,
    /// VirtualBox.
    Vdi,
    /// Hyper-V.
    Vhdx,
    /// Azure: a fixed-size VHD, its size as given (`force_size`).
    Vpc,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Raw, Format::Qcow2, Format::Vmdk, Format::Vdi, Format::Vhdx, Format::Vpc];

    /// The name `--format` and `qemu-img` use.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
            Format::Vhdx => "vhdx",
            Format::Vpc => "vpc",
        }
    }

    pub fn from_name(name: &str) -> Result<Format, DiskError> {
        Format::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| DiskError::UnknownFormat(name.to_string()))
    }

    /// `qemu-img convert` options for this format, after `-O NAME`.
    pub fn create_options(self) -> &'static [&'static str] {
        match self {
            Format::Vmdk => &["-o", "subformat=streamOptimized"],
            // Azure takes fixed VHDs only, of a whole number of MiB (ours are).
            Format::Vpc => &["-o", "subformat=fixed,force_size=on"],
            _ => &[],
        }
    }
}

/// The clock of the files written into the FAT file system.
#[derive(Debug)]
struct FixedClock(fatfs::DateTime);

impl fatfs::TimeProvider for FixedClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// The FAT date and time of `epoch` (UTC), clamped to FAT's range (1980 to 2107). Written
/// here because fatfs takes a date only through chrono, whose clock is the host's.
pub fn fat_time(epoch: u64) -> fatfs::DateTime {
    const FAT_FIRST: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    const FAT_LAST: u64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = epoch.clamp(FAT_FIRST, FAT_LAST);
    let (days, secs) = (t / 86_400, t % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    let time =
        fatfs::Time { hour: (secs / 3600) as u16, min: (secs / 60 % 60) as u16, sec: (secs % 60) as u16, millis: 0 };
    fatfs::DateTime { date: fatfs::Date { year, month, day }, time }
}

/// `SOURCE_DATE_EPOCH`, when set.
pub fn source_date_epoch() -> Result<Option<u64>, DiskError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| DiskError::BadEpoch(s)),
        Err(_) => Ok(None),
    }
}

/// The size of the system partition for a unified kernel image of `uki_len` bytes: the
/// image, a tenth more for the file system's own structures, rounded up to whole MiB.
pub fn esp_size(uki_len: u64) -> u64 {
    (uki_len + uki_len / 10 + MIB).next_multiple_of(MIB).max(MIN_ESP)
}

/// What a raw disk holds, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_bytes: u64,
    pub esp_bytes: u64,
    pub uki_bytes: u64,
    pub disk_guid: uuid::Uuid,
}

/// Writes a raw GPT disk at `out` whose system partition holds `uki` as the default boot
/// file, with `epoch` as the files' time.
pub fn write_raw(uki: &Path, out: &Path, epoch: Option<u64>) -> Result<Layout, DiskError> {
    let uki_bytes = std::fs::metadata(uki).map_err(io_error("read", uki))?.len();
    let digest = hash_file(uki)?;
    let ids = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[range]);
        uuid::Builder::from_random_bytes(b).into_uuid()
    };
    let (disk_guid, part_guid) = (ids(0..16), ids(16..32));
    let volume_id = u32::from_le_bytes([digest[0], digest[5], digest[10], digest[15]]);
    let esp_bytes = esp_size(uki_bytes);
    let disk_bytes = ESP_START + esp_bytes + MIB;

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io_error("create", out))?;
    // Sparse: the zeros are holes.
    file.set_len(disk_bytes).map_err(io_error("write", out))?;
    let mbr_size = u32::try_from(disk_bytes / SECTOR - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(mbr_size)
        .overwrite_lba0(&mut file)
        .map_err(|source| DiskError::Mbr { path: out.to_path_buf(), source })?;
    let gpt_err = |source| DiskError::Gpt { path: out.to_path_buf(), source };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut file, Some(disk_guid))
        .map_err(gpt_err)?;
    let first_lba = ESP_START / SECTOR;
    disk.add_partition_at(ESP_NAME, 1, first_lba, esp_bytes / SECTOR, gpt::partition_types::EFI, 0).map_err(gpt_err)?;
    let mut partitions = disk.take_partitions();
    for p in partitions.values_mut() {
        p.part_guid = part_guid;
    }
    disk.update_partitions(partitions).map_err(gpt_err)?;
    disk.write().map_err(gpt_err)?;

    let fat_err = |source| DiskError::Fat { path: out.to_path_buf(), source };
    let esp = fscommon::StreamSlice::new(&mut file, ESP_START, ESP_START + esp_bytes).map_err(fat_err)?;
    let mut esp = fscommon::BufStream::new(esp);
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .bytes_per_cluster(512)
        .volume_id(volume_id)
        .volume_label(LABEL);
    fatfs::format_volume(&mut esp, options).map_err(fat_err)?;
    // fatfs keeps its clock for the life of the file system as a `&'static`: one small
    // leak per disk written.
    let clock: &'static FixedClock = Box::leak(Box::new(FixedClock(fat_time(epoch.unwrap_or(0)))));
    {
        let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new().time_provider(clock)).map_err(fat_err)?;
        {
            let mut dir = fs.root_dir();
            let [efi, boot, name] = BOOT_PATH;
            for part in [efi, boot] {
                dir = dir.create_dir(part).map_err(fat_err)?;
            }
            let mut target = dir.create_file(name).map_err(fat_err)?;
            let mut source = File::open(uki).map_err(io_error("read", uki))?;
            std::io::copy(&mut source, &mut target).map_err(fat_err)?;
            target.flush().map_err(fat_err)?;
        }
        fs.unmount().map_err(fat_err)?;
    }
    esp.flush().map_err(fat_err)?;
    drop(esp);
    file.sync_all().map_err(io_error("write", out))?;
    Ok(Layout { disk_bytes, esp_bytes, uki_bytes, disk_guid })
}

fn hash_file(path: &Path) -> Result<[u8; 32], FsError> {
    let mut file = File::open(path).map_err(io_error("read", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Reads back the boot file of a raw disk written by [`write_raw`] (for checks).
pub fn read_boot_file(disk: &Path) -> Result<Vec<u8>, DiskError> {
    let fat_err = |source| DiskError::Fat { path: disk.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(disk).map_err(io_error("open", disk))?;
    let len = file.seek(SeekFrom::End(0)).map_err(io_error("read", disk))?;
    let esp = fscommon::StreamSlice::new(&mut file, ESP_START, len - MIB).map_err(fat_err)?;
    let fs = fatfs::FileSystem::new(esp, fatfs::FsOptions::new()).map_err(fat_err)?;
    let mut f = fs.root_dir().open_file(&BOOT_PATH.join("/")).map_err(fat_err)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(fat_err)?;
    Ok(bytes)
}

/// Converts the raw disk `raw` to `format` at `out` with `qemu-img convert`.
pub fn convert(raw: &Path, format: Format, out: &Path) -> Result<(), DiskError> {
    let mut command = qemu_img()?;
    command.args(["convert", "-f", "raw", "-O", format.name()]).args(format.create_options()).arg(raw).arg(out);
    run_qemu_img(command, "convert", out).map(drop)
}

/// The format `qemu-img info` sees in `path` (`raw`, `qcow2`, ...).
pub fn probe_format(path: &Path) -> Result<String, DiskError> {
    let mut command = qemu_img()?;
    command.args(["info", "--output=json"]).arg(path);
    let output = run_qemu_img(command, "info", path)?;
    serde_json::from_str::<serde_json::Value>(&output)
        .ok()
        .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(String::from))
        .ok_or(DiskError::NoFormat { path: path.to_path_buf(), output })
}

fn qemu_img() -> Result<Command, DiskError> {
    Ok(Command::new(find_program("qemu-img").ok_or(DiskError::NoQemuImg)?))
}

fn run_qemu_img(mut command: Command, action: &'static str, path: &Path) -> Result<String, DiskError> {
    let output = command.output().map_err(io_error("run qemu-img for", path))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(DiskError::QemuImg { action, path: path.to_path_buf(), stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What [`build`] needs besides the app dir.
#[derive(Debug, Clone)]
pub struct ImageRequest<'a> {
    pub app_dir: &'a Path,
    /// The kernel command line, as `appliance run` would build it.
    pub cmdline: &'a str,
    pub stub: &'a Path,
    pub format: Format,
    pub out: &'a Path,
    pub epoch: Option<u64>,
}

/// The app dir as a bootable disk in `request.format`, with `progress` told each step.
pub fn build(request: &ImageRequest<'_>, progress: &dyn Fn(&str)) -> Result<Layout, DiskError> {
    let kernel = request.app_dir.join("vmlinuz");
    let initrd = request.app_dir.join("initrd");
    for (what, path) in [("vmlinuz", &kernel), ("initrd", &initrd)] {
        if !path.exists() {
            return Err(DiskError::NotAnAppDir { app_dir: request.app_dir.to_path_buf(), what });
        }
    }
    let tmp = tempfile::tempdir().map_err(io_error("create a temporary directory for", request.out))?;
    let uki_path = tmp.path().join("BOOTX64.EFI");
    progress("unified kernel image");
    let parts = UkiParts { stub: request.stub, kernel: &kernel, initrd: &initrd, cmdline: request.cmdline };
    let stamp = u32::try_from(request.epoch.unwrap_or(0)).unwrap_or(u32::MAX);
    uki::build(&parts, &uki_path, tmp.path(), stamp)?;
    progress("GPT disk with an EFI system partition");
    let raw = match request.format {
        Format::Raw => request.out.to_path_buf(),
        _ => tmp.path().join("disk.raw"),
    };
    let layout = write_raw(&uki_path, &raw, request.epoch)?;
    if request.format != Format::Raw {
        progress(&format!("qemu-img convert to {}", request.format.name()));
        convert(&raw, request.format, request.out)?;
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_of_epochs() {
        let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = fat_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day, t.time.hour), (1980, 1, 1, 0));
        let t = fat_time(951_782_400); // 2000-02-29
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        assert_eq!(fat_time(u64::MAX).date.year, 2107);
    }

    #[test]
    fn formats_by_name() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()).unwrap(), f);
        }
        assert!(Format::from_name("iso").unwrap_err().to_string().contains("`iso`"));
        assert_eq!(Format::Vmdk.create_options(), ["-o", "subformat=streamOptimized"]);
    }

    #[test]
    fn the_system_partition_holds_the_image_and_is_fat32_sized() {
        assert_eq!(esp_size(1), MIN_ESP);
        assert_eq!(esp_size(100 * MIB), 111 * MIB);
    }

    /// The disk holds the boot file where firmware looks, and two writes are the same bytes.
    #[test]
    fn a_raw_disk_is_reproducible_and_holds_the_boot_file() {
        let dir = tempfile::tempdir().unwrap();
        let uki = dir.path().join("uki");
        std::fs::write(&uki, b"MZ not really a PE, but bytes to carry".repeat(1000)).unwrap();
        let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        let layout = write_raw(&uki, &a, Some(1_700_000_000)).unwrap();
        write_raw(&uki, &b, Some(1_700_000_000)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(layout.disk_bytes, std::fs::metadata(&a).unwrap().len());
        assert_eq!(read_boot_file(&a).unwrap(), std::fs::read(&uki).unwrap());
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[512..520], b"EFI PART");
        assert_eq!(&bytes[510..512], [0x55, 0xaa]);
        write_raw(&uki, &b, Some(1_800_000_000)).unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the epoch is the files' time");
    }
}
