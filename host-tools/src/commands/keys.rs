//! `appliance keys init`: the TUF keys of a repository.

use std::path::PathBuf;
use std::process::ExitCode;

use appliance_host::publish::{keys, tuf};

/// Manage the signing keys of published appliances.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Init(InitArgs),
}

/// Make the keys of the four TUF roles (root, targets, snapshot, timestamp) and the signed
/// root metadata, for `appliance publish --keys DIR`.
///
/// Writes DIR/root/root.pem (the root key: keep it offline, publishing never reads it),
/// DIR/online/{targets,snapshot,timestamp}.pem (the keys publishing signs with), all mode
/// 0600, and DIR/root.json and DIR/root.pub, which are public: give root.pub to the
/// machines that pull (`appliance pull --root-key root.pub`). A key is encrypted with a
/// passphrase when APPLIANCE_<ROLE>_KEY_PASSPHRASE is set (e.g.
/// APPLIANCE_TARGETS_KEY_PASSPHRASE); publishing then needs the same variable. Existing
/// keys are never overwritten.
#[derive(clap::Args)]
struct InitArgs {
    /// Directory for the keys (created)
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// How long the root metadata stays valid (s, m, h, d, w)
    #[arg(long, value_name = "LIFETIME", env = "APPLIANCE_ROOT_LIFETIME", default_value = "365d")]
    root_lifetime: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Init(args) => {
            let lifetime = tuf::parse_lifetime(&args.root_lifetime)?;
            let made = keys::init(&args.dir, jiff::Timestamp::now() + lifetime)?;
            for (role, path, id) in &made.keys {
                let locked = if made.encrypted.contains(role) { ", encrypted" } else { "" };
                eprintln!("appliance: {role} key {} ({}{locked})", path.display(), &id[..16]);
            }
            eprintln!("appliance: root metadata {}", made.root_metadata.display());
            eprintln!(
                "appliance: root public key {}: clients pin it with `appliance pull --root-key`",
                made.root_public_key.display()
            );
            println!("{}", made.root_public_key.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
