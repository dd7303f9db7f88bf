//! `appliance image`: an app dir as a disk image that UEFI firmware boots.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use appliance_host::deploy::{cmdline, disk, uki};

/// Write an app dir as a bootable disk image (GPT, EFI system partition, UEFI).
///
/// The disk's only partition is an EFI system partition (FAT32) holding one unified kernel
/// image at \EFI\BOOT\BOOTX64.EFI: systemd's EFI stub with the app dir's kernel, initrd
/// and the kernel command line `appliance run` would pass (console=ttyS0 panic=-1 quiet,
/// the app dir's cmdline, then EXTRA). Any UEFI machine or hypervisor boots it without a
/// boot entry; legacy BIOS does not. Written without root, and byte for byte the same for
/// the same inputs and SOURCE_DATE_EPOCH (the files' time; 1980-01-01 without it).
///
/// Formats: raw; qcow2 (QEMU, OpenStack); vmdk (VMware, streamOptimized); vdi
/// (VirtualBox); vhdx (Hyper-V); vpc (Azure, fixed VHD). All but raw are converted with
/// qemu-img. `appliance run FILE` boots the result under OVMF.
#[derive(clap::Args)]
pub struct Args {
    /// App dir (vmlinuz, initrd, cmdline) or image (built first)
    #[arg(value_name = "APP_DIR")]
    target: String,

    /// Disk format
    #[arg(long, value_name = "FORMAT", default_value = "raw", value_parser = ["raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc"])]
    format: String,

    /// The disk image to write
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// The EFI stub the unified kernel image starts from
    #[arg(long, value_name = "FILE", default_value = uki::STUB)]
    stub: PathBuf,

    /// Extra kernel command-line words, after `--`
    #[arg(last = true, value_name = "EXTRA")]
    extra: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let app_dir = super::run::app_dir(&args.target)?;
    let format = disk::Format::from_name(&args.format)?;
    let line = cmdline::kernel_line(&app_dir, false, &[], &args.extra)?;
    for d in appliance_cmdline::parse(line.as_bytes()).diagnostics {
        log::warn!("kernel command line: {d}");
    }
    let epoch = disk::source_date_epoch()?;
    let request =
        disk::ImageRequest { app_dir: &app_dir, cmdline: &line, stub: &args.stub, format, out: &args.output, epoch };
    let layout = disk::build(&request, &|step| log::info!("{step}"))
        .with_context(|| format!("cannot write the disk image {}", args.output.display()))?;
    let size = std::fs::metadata(&args.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "appliance: {} ({}, {} on disk; a {} MiB disk whose system partition holds a {} KiB unified kernel image)",
        args.output.display(),
        format.name(),
        appliance_host::host::size::human_size(size),
        layout.disk_bytes >> 20,
        layout.uki_bytes >> 10
    );
    eprintln!("appliance: boot it with `appliance run {}`", shown(&args.output));
    Ok(ExitCode::SUCCESS)
}

fn shown(path: &Path) -> String {
    appliance_cmdline::quote_word(&path.display().to_string())
}
