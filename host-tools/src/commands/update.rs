//! `appliance update`: an app dir to the newest signed version, and back.

use std::path::PathBuf;
use std::process::ExitCode;

use appliance_host::host::size::human_size;
use appliance_host::publish::{self, Updated};

/// Move a pulled app dir to the newest signed version of its repository.
///
/// Reads where APP_DIR came from (its origin.json, written by `appliance pull`), verifies
/// the repository's metadata as pull does, and if a newer version is signed, downloads it
/// and swaps it in atomically; the version it replaces is kept as APP_DIR.previous. Never
/// moves to an older version. --rollback swaps APP_DIR and APP_DIR.previous back (a
/// second --rollback undoes the first).
#[derive(clap::Args)]
pub struct Args {
    /// An app dir made by `appliance pull`
    #[arg(value_name = "APP_DIR")]
    app_dir: PathBuf,

    /// Go back to the version the last update replaced
    #[arg(long)]
    rollback: bool,

    #[command(flatten)]
    trust: super::pull::Trust,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.rollback {
        let (from, to) = publish::rollback(&args.app_dir)?;
        log::info!("{}: rolled back from {from} to {to}", args.app_dir.display());
        println!("{to}");
        return Ok(ExitCode::SUCCESS);
    }
    match publish::update(&args.app_dir, &args.trust.options(), &super::publish::reporter())? {
        Updated::AlreadyNewest { version } => {
            log::info!("{}: {version} is the newest signed version", args.app_dir.display());
            println!("{version}");
        }
        Updated::Updated { from, to, previous, downloaded } => {
            log::info!(
                "{}: updated from {from} to {to} ({}); {from} kept in {}",
                args.app_dir.display(),
                human_size(downloaded),
                previous.display()
            );
            println!("{to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
