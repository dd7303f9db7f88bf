//! `appliance publish`: an app dir to an OCI registry, with signed TUF metadata.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use appliance_host::host::size::human_size;
use appliance_host::publish::{self, Event, PublishOptions, Reference, Reporter, tuf};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Publish an app dir to an OCI registry as REGISTRY/REPO:VERSION, signed with TUF.
///
/// Pushes vmlinuz, initrd, cmdline and appliance.json as one OCI artifact (artifactType
/// application/vnd.appliance.app.v1, one blob per file; blobs the registry has already
/// are not sent again), then signs the repository's TUF metadata anew with the online
/// keys of --keys and pushes it to the same repository (tag _tuf). Clients verify
/// everything against the root key, so the registry itself need not be trusted.
///
/// Registry credentials: APPLIANCE_REGISTRY_USER and APPLIANCE_REGISTRY_PASSWORD, else
/// ~/.docker/config.json (`auths`); never on the command line. Registries on 127.0.0.1 or
/// localhost are spoken to over plain HTTP, others over HTTPS unless --insecure.
/// APPLIANCE_PUBLISH_TIME (RFC 3339) signs as if at that time: expiries count from it.
#[derive(clap::Args)]
pub struct Args {
    /// The app dir to publish
    #[arg(value_name = "APP_DIR")]
    app_dir: PathBuf,

    /// Where: REGISTRY/REPO:VERSION (e.g. registry.example.com/lab/hello:1.2)
    #[arg(value_name = "REGISTRY/REPO:VERSION")]
    reference: String,

    /// The directory `appliance keys init` made (its online keys and root.json)
    #[arg(long, value_name = "DIR", env = "APPLIANCE_KEYS")]
    keys: PathBuf,

    /// Replace VERSION if it is already published
    #[arg(long)]
    force: bool,

    /// How long the targets metadata (the list of versions) stays valid
    #[arg(long, value_name = "LIFETIME", env = "APPLIANCE_TARGETS_LIFETIME", default_value = "90d")]
    targets_lifetime: String,

    /// How long the snapshot metadata stays valid
    #[arg(long, value_name = "LIFETIME", env = "APPLIANCE_SNAPSHOT_LIFETIME", default_value = "30d")]
    snapshot_lifetime: String,

    /// How long the timestamp metadata stays valid: clients refuse a repository whose
    /// timestamp has not been renewed (by publishing) within this time
    #[arg(long, value_name = "LIFETIME", env = "APPLIANCE_TIMESTAMP_LIFETIME", default_value = "7d")]
    timestamp_lifetime: String,

    /// Speak plain HTTP to the registry
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let lifetimes = tuf::Lifetimes {
        targets: tuf::parse_lifetime(&args.targets_lifetime)?,
        snapshot: tuf::parse_lifetime(&args.snapshot_lifetime)?,
        timestamp: tuf::parse_lifetime(&args.timestamp_lifetime)?,
    };
    let now = match std::env::var("APPLIANCE_PUBLISH_TIME") {
        Ok(text) => text
            .parse::<jiff::Timestamp>()
            .with_context(|| format!("APPLIANCE_PUBLISH_TIME={text:?} is not an RFC 3339 time"))?,
        Err(_) => jiff::Timestamp::now(),
    };
    let options = PublishOptions { keys: args.keys, lifetimes, force: args.force, insecure: args.insecure, now };
    let done = publish::publish(&args.app_dir, &reference, &options, &reporter())?;
    let sent: u64 = done.pushed.iter().map(|(_, n)| n).sum();
    let kept: u64 = done.reused.iter().map(|(_, n)| n).sum();
    log::info!(
        "published {} ({}): {} in {} blob(s) sent, {} in {} blob(s) already there, {} of metadata; targets version {}, timestamp valid until {}",
        done.reference,
        done.manifest_digest,
        human_size(sent),
        done.pushed.len(),
        human_size(kept),
        done.reused.len(),
        human_size(done.metadata_bytes),
        done.targets_version,
        done.timestamp_expires
    );
    println!("{}", done.reference);
    Ok(ExitCode::SUCCESS)
}

/// Progress on stderr: a bar per file on a terminal, a line per file otherwise, nothing
/// with --quiet.
pub fn reporter() -> Reporter {
    let quiet = log::max_level() < log::LevelFilter::Info;
    if quiet {
        return publish::quiet();
    }
    let terminal = std::io::stderr().is_terminal();
    let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::default();
    Arc::new(move |event| {
        let mut bar = bar.lock().expect("not poisoned");
        match event {
            Event::Start { file, total, upload } => {
                let verb = if upload { "pushing" } else { "pulling" };
                if terminal {
                    let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
                        ProgressStyle::with_template("{msg:20} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_message(format!("{verb} {file}"));
                    *bar = Some(b);
                } else {
                    log::info!("{verb} {file} ({})", human_size(total));
                }
            }
            Event::Progress { done } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(done);
                }
            }
            Event::Done => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            Event::Reused { file, bytes } => log::info!("{file} ({}) is in the registry already", human_size(bytes)),
        }
    })
}
