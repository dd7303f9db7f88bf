//! `appliance stop`: power off a running appliance gracefully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use appliance_host::vm::stop::{self, Outcome};

/// Power off the appliance that `appliance run` is running from APP_DIR.
///
/// Presses the guest's ACPI power button and Ctrl-Alt-Del over QEMU's control socket (QMP
/// system_powerdown and send-key; a kernel hears one or the other without a module for
/// it): the init stops the running program (SIGTERM, or SIGINT for Ctrl-Alt-Del, then
/// SIGKILL after appStopGrace seconds, 5 by default), skips the remaining phases, writes
/// the end of the status record and powers off. QEMU is killed if that takes longer than
/// --grace seconds. `appliance run` then exits as usual, with the run's status.
#[derive(clap::Args)]
pub struct Args {
    /// The app dir `appliance run` was given
    #[arg(value_name = "APP_DIR")]
    app_dir: PathBuf,

    /// Seconds to wait for the guest to power off before killing QEMU; keep it above the
    /// guest's appStopGrace (5 s by default; warned otherwise). Default: the run's own
    /// (`appliance run --stop-grace`, 30 s unless given)
    #[arg(long, value_name = "SECONDS")]
    grace: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match stop::stop(&args.app_dir, args.grace.map(Duration::from_secs))? {
        Outcome::PoweredOff(took) => {
            eprintln!("appliance: {} powered off in {:.1} s", args.app_dir.display(), took.as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Killed(grace) => {
            eprintln!(
                "appliance: {}: QEMU killed: the guest did not power off within {} s of the stop request",
                args.app_dir.display(),
                grace.as_secs()
            );
            Ok(ExitCode::from(1))
        }
    }
}
