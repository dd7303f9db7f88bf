//! `appliance`: builds single-application Linux appliances (a kernel, an initramfs
//! holding one application, and its kernel command line).
//!
//! Thin on purpose: parsing arguments and reporting errors live here, the work lives in
//! the `appliance_host` library. Each subcommand is one file under `commands/` and one
//! variant of [`Command`].

mod commands;
mod logger;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The exit status for every error of the tool itself; clap also uses 2 for usage errors.
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "Build single-application Linux appliances",
    long_about = "Build single-application Linux appliances: a Linux kernel plus an \
                  initramfs holding one application, started by appliance-init as PID 1.\n\n\
                  An image is a directory with an appliance.toml (see images/ in the source \
                  tree); building it writes an app dir with vmlinuz, initrd, cmdline and \
                  appliance.json."
)]
struct Cli {
    /// Print only warnings and errors, not progress.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// Also say why: the machine and accelerator chosen, the initrd handed to QEMU, and
    /// other decisions.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(commands::build::Args),
    Run(commands::run::Args),
    Image(commands::image::Args),
    Netboot(commands::netboot::Args),
    Stop(commands::stop::Args),
    Ssh(commands::ssh::Args),
    Kernel(commands::kernel::Args),
    Cpio(commands::cpio::Args),
    Trace(commands::trace::Args),
    Root(commands::root::Args),
    Keys(commands::keys::Args),
    Publish(commands::publish::Args),
    Pull(commands::pull::Args),
    Update(commands::update::Args),
    Exp(commands::exp::Args),
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            eprintln!("appliance: error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    logger::init(match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Warn,
        (_, true) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Info,
    });
    match cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Image(args) => commands::image::run(args),
        Command::Netboot(args) => commands::netboot::run(args),
        Command::Stop(args) => commands::stop::run(args),
        Command::Ssh(args) => commands::ssh::run(args),
        Command::Kernel(args) => commands::kernel::run(args),
        Command::Cpio(args) => commands::cpio::run(args),
        Command::Trace(args) => commands::trace::run(args),
        Command::Root(args) => commands::root::run(args),
        Command::Keys(args) => commands::keys::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Update(args) => commands::update::run(args),
        Command::Exp(args) => commands::exp::run(args),
    }
}
