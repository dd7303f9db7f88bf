//! `appliance build`: image directory in, app dir out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use appliance_host::archive::compress::Compression;
use appliance_host::archive::cpio;
use appliance_host::host::size::human_size;
use appliance_host::image::manifest::KernelSource;
use appliance_host::image::{self, BuildOptions, Tools};

/// Build an app dir (vmlinuz, initrd, cmdline, appliance.json) from an image.
///
/// The app dir's path is printed on stdout, progress on stderr. Environment:
/// APPLIANCE_INIT (the init binary; by default the one next to this executable, built
/// first when this runs from a checkout's target directory), APPLIANCE_PROGRAM_DIR
/// (where [programs] are found), APPLIANCE_CACHE (the kernel cache), SOURCE_DATE_EPOCH
/// (file times in the initrd, default 0).
#[derive(clap::Args)]
pub struct Args {
    /// The image: a directory holding appliance.toml, or the name of one under ./images/
    /// or in the toolkit's own images/ (the checkout this appliance was built in)
    #[arg(value_name = "IMAGE")]
    image: String,

    /// Where to write the app dir [default: out/<image-name>]
    #[arg(short, long, value_name = "APP_DIR")]
    out: Option<PathBuf>,

    /// Compress the initrd with this instead of the manifest's choice
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = PossibleValuesParser::new(Compression::ALL.map(Compression::name))
            .try_map(|name| name.parse::<Compression>()),
    )]
    compression: Option<Compression>,

    /// Boot this bzImage instead of the manifest's kernel ("debian-cloud" for the
    /// default, "build:<series>" for the project's own, built on demand)
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<String>,

    /// For an image with [ssh]: accept logins with this public key (e.g.
    /// ~/.ssh/id_ed25519.pub) instead of a key pair generated in APP_DIR/ssh/
    #[arg(long, value_name = "PUBKEY")]
    ssh_key: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let out = build_image(&args.image, args.out, args.compression, args.kernel, args.ssh_key)?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Builds `image` (a directory, or a name under ./images/ or the toolkit's images/) into `out`
/// (default `out/<name>`) and returns the app dir. Shared with `appliance run`.
pub fn build_image(
    image: &str,
    out: Option<PathBuf>,
    compression: Option<Compression>,
    kernel: Option<String>,
    ssh_key: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let image_dir = image::locate_image(image, &cwd)?;
    let name = image::image_name(&image_dir)?;
    let out = out.unwrap_or_else(|| PathBuf::from("out").join(&name));
    let options = BuildOptions {
        compression,
        kernel: kernel.map(KernelSource::from),
        tools: Tools::from_env()?,
        cache_dir: None,
        mtime: cpio::mtime_from_env()?,
        kernel_progress: Some(super::kernel::progress_sink()),
        ssh_key,
    };
    let report = image::build(&image_dir, &out, &options)?;
    log::info!(
        "built {}: initrd {} ({}, {} entries), kernel {}",
        report.image,
        human_size(report.initrd_size),
        report.compression,
        report.entries,
        report.kernel_version
    );
    Ok(out)
}
