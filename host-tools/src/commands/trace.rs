//! `appliance trace`: run a command in a reference root under ptrace and list the files
//! it needs.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use appliance_host::trace::{self, Exclusions, Traced};

/// Trace a program in a reference root and list the files it touched.
///
/// The command runs chrooted into ROOT (or in the host's / with `--root /`; chrooting
/// needs root), every process it starts is followed with ptrace, and each file it opens,
/// executes, maps, stats or reads a link of is recorded, with the directories and
/// symlinks leading there and the ELF libraries of every traced program and library.
/// The list (one path per line, sorted, editable) goes to --out or stdout; use it as
/// `[trace] list` in an image's appliance.toml. The exit status is the command's.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["command", "shell", "commands"])))]
pub struct Args {
    /// The reference root: a full system tree (debootstrap), or / for the host
    #[arg(long, value_name = "DIR")]
    root: PathBuf,

    /// Write the list here instead of stdout
    #[arg(short, long, value_name = "LIST")]
    out: Option<PathBuf>,

    /// An interactive shell in the root; everything run in it is traced
    #[arg(long)]
    shell: bool,

    /// Run each line of FILE with `/bin/sh -c` in the root (blank lines and # comments skipped)
    #[arg(long, value_name = "FILE")]
    commands: Option<PathBuf>,

    /// Also list this path of the root (repeatable)
    #[arg(long, value_name = "PATH")]
    extra: Vec<PathBuf>,

    /// Leave out paths matching this glob, and what is below them (repeatable): * and ? within
    /// a component, ** across, [a-z], {a,b}
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

    /// Do not exclude /proc, /sys, /dev, /run, /tmp, locales, docs, caches and logs
    #[arg(long)]
    no_default_excludes: bool,

    /// The command to trace, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runs: Vec<Traced> = if args.shell {
        let shell = if appliance_host::rootfs::path::walk(&args.root, Path::new("/bin/bash")).is_ok() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        log::info!("tracing an interactive {shell} in {}; exit it to write the list", args.root.display());
        vec![trace::run(&args.root, &[OsString::from(shell), OsString::from("-i")])?]
    } else if let Some(file) = &args.commands {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let commands = trace::parse_commands(&text);
        anyhow::ensure!(!commands.is_empty(), "{} has no commands", file.display());
        let runs = trace::run_scripted(&args.root, &commands)?;
        for (command, traced) in commands.iter().zip(&runs) {
            if traced.status != 0 {
                log::warn!("`{command}` exited with status {}", traced.status);
            }
        }
        runs
    } else {
        vec![trace::run(&args.root, &args.command)?]
    };
    let accessed: BTreeSet<PathBuf> = runs.iter().flat_map(|run| run.accessed.iter().cloned()).collect();
    let exclusions = Exclusions::new(&args.exclude, !args.no_default_excludes)?;
    let selected = trace::select(&args.root, &accessed, &args.extra, &exclusions)?;
    let list = trace::render_list(&selected);
    let processes: usize = runs.iter().map(|run| run.processes).sum();
    match &args.out {
        Some(out) => std::fs::write(out, &list).with_context(|| format!("cannot write {}", out.display()))?,
        None => print!("{list}"),
    }
    log::info!(
        "traced {processes} process(es), {} path(s) named, {} listed{}",
        accessed.len(),
        selected.len(),
        args.out.as_ref().map(|out| format!(" in {}", out.display())).unwrap_or_default()
    );
    let status = runs.iter().map(|run| run.status).find(|&status| status != 0).unwrap_or(0);
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}
