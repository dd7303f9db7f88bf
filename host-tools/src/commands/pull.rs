//! `appliance pull`: an app dir from an OCI registry, verified with TUF.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use appliance_host::host::size::human_size;
use appliance_host::publish::{self, PullOptions, Reference};

/// Pull a published app dir, verified against the publisher's root key.
///
/// Fetches the repository's TUF metadata from the registry and verifies it from the
/// pinned root (--root-key or --root the first time; afterwards the root trusted then,
/// kept with the trusted metadata in $XDG_STATE_HOME/appliance/tuf/REGISTRY/REPO, default
/// ~/.local/state/appliance). Only then downloads the version's blobs, checks each against
/// its signed hash and length, and writes APP_DIR in one step: on any failure APP_DIR is
/// left exactly as it was. Without VERSION, the newest signed version.
///
/// Refused, with the reason: a blob changed in the registry, a version or file the
/// metadata does not sign, expired metadata, metadata older than what was trusted before
/// (rollback), a timestamp that stopped advancing (freeze), metadata signed by the wrong
/// key or by too few keys, an artifact of an unexpected type.
#[derive(clap::Args)]
pub struct Args {
    /// REGISTRY/REPO[:VERSION]
    #[arg(value_name = "REGISTRY/REPO[:VERSION]")]
    reference: String,

    /// The app dir to write (replaced as a whole)
    #[arg(short, long, value_name = "APP_DIR", required_unless_present = "list")]
    out: Option<PathBuf>,

    /// List the signed versions instead of pulling one
    #[arg(long, conflicts_with = "out")]
    list: bool,

    #[command(flatten)]
    trust: Trust,
}

/// How the metadata is trusted; shared with `appliance update`.
#[derive(clap::Args)]
pub struct Trust {
    /// The publisher's root public key (root.pub from `appliance keys init`), pinned on the
    /// first pull of a repository
    #[arg(long, value_name = "FILE", env = "APPLIANCE_ROOT_KEY", conflicts_with = "root")]
    root_key: Option<PathBuf>,

    /// The publisher's root metadata (root.json), pinned instead of the key
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,

    /// Speak plain HTTP to the registry (127.0.0.1 and localhost always are)
    #[arg(long)]
    insecure: bool,
}

impl Trust {
    pub fn options(&self) -> PullOptions {
        PullOptions {
            root_pin: self.root_key.clone().or_else(|| self.root.clone()),
            insecure: self.insecure,
            state_dir: None,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let options = args.trust.options();
    if args.list {
        if reference.version.is_some() {
            bail!("--list lists every version of {}: leave out :VERSION", reference.repository_name());
        }
        for offered in publish::list(&reference, &options)? {
            let total: u64 = offered.files.iter().map(|(_, n)| n).sum();
            let files: Vec<&str> = offered.files.iter().map(|(f, _)| f.as_str()).collect();
            println!("{}\t{}\t{}", offered.version, human_size(total), files.join(" "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = args.out.expect("clap requires --out without --list");
    let pulled = publish::pull(&reference, &out, &options, &super::publish::reporter())?;
    if pulled.downloaded == 0 {
        log::info!("{} holds {} already", out.display(), pulled.reference);
    } else {
        log::info!("pulled {} into {} ({})", pulled.reference, out.display(), human_size(pulled.downloaded));
    }
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
