//! `appliance ssh`: log in to a running appliance.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use appliance_host::vm::{running, ssh};

/// Log in as root to the appliance running from APP_DIR (`appliance run APP_DIR --ssh
/// --end sshd`), or run COMMAND there.
///
/// Uses the forwarded port from the run, the key pair `appliance build` generated in
/// APP_DIR/ssh/ (else ssh's own keys, for `build --ssh-key`), and checks the host key the
/// build recorded in APP_DIR/ssh/known_hosts strictly: no prompt, no blind trust.
#[derive(clap::Args)]
pub struct Args {
    /// The app dir `appliance run` was given
    #[arg(value_name = "APP_DIR")]
    app_dir: PathBuf,

    /// Extra ssh option (repeatable), e.g. --ssh-arg=-v
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    ssh_args: Vec<String>,

    /// The command to run instead of a login shell
    #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let record = running::read(&args.app_dir)?;
    let Some(port) = record.ssh_port else {
        bail!("{} runs without a forwarded SSH port: start it with `appliance run --ssh`", args.app_dir.display());
    };
    let known_hosts = ssh::known_hosts(&args.app_dir);
    let text = std::fs::read_to_string(&known_hosts)
        .with_context(|| format!("cannot read {}: was the image built with [ssh]?", known_hosts.display()))?;
    let alias = ssh::recorded_alias(&text).with_context(|| format!("{} is empty", known_hosts.display()))?;
    let mut ssh_args = ssh::client_args(&args.app_dir, alias, port);
    let destination = ssh_args.pop().unwrap_or_default();
    ssh_args.extend(args.ssh_args);
    ssh_args.push(destination);
    if !args.command.is_empty() {
        // One word, as ssh would join them anyway; `--` keeps ssh from reading options.
        ssh_args.push("--".to_owned());
        ssh_args.extend(args.command);
    }
    let err = Command::new("ssh").args(&ssh_args).exec();
    Err(err).context("cannot run ssh (install openssh-client)")
}
