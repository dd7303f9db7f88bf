//! `appliance cpio <verb>`: list, pack, unpack, add to, merge, compare, filter, check and
//! edit initramfs archives. Input compression is detected by magic bytes; output is
//! written reproducibly (sorted, inodes numbered in order, owner root, times from
//! SOURCE_DATE_EPOCH or 0) to a temporary file renamed into place.

use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use appliance_host::archive::compress::{Compression, Encoder};
use appliance_host::archive::cpio::compare::{self, Difference};
use appliance_host::archive::cpio::read::{self, FileType, ReadArchive, permission_string};
use appliance_host::archive::cpio::tree::{self, PackReport, UnpackOptions};
use appliance_host::archive::cpio::{self, Archive};
use appliance_host::host::glob::Globs;
use appliance_host::host::size::human_size;

/// Inspect and change initramfs archives (newc; gzip, zstd, xz, lz4 or uncompressed,
/// detected by magic; concatenated archives are read as one).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Args)]
struct Output {
    /// Compression of the output [default: that of the input; zstd for pack]
    #[arg(
        long,
        short = 'c',
        value_name = "FORMAT",
        value_parser = PossibleValuesParser::new(Compression::ALL.map(Compression::name))
            .try_map(|name| name.parse::<Compression>()),
    )]
    compression: Option<Compression>,

    /// Compression level [default: gzip 6, zstd 1 with long-distance matching, xz 6: no larger than gzip -6, zstd -3, xz -6]
    #[arg(long, value_name = "N")]
    level: Option<u32>,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// List the members: type and mode, size, name, symlink target
    Ls {
        archive: PathBuf,
        /// Also owner, time, inode, link count and device numbers
        #[arg(short, long)]
        long: bool,
    },
    /// Pack a directory into an archive
    Pack {
        dir: PathBuf,
        #[arg(short, long, value_name = "OUT")]
        out: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Unpack an archive into a directory, never writing outside it
    Unpack { archive: PathBuf, dir: PathBuf },
    /// Add files or directories (recursively), replacing members at the same paths
    Add {
        archive: PathBuf,
        /// Host paths, stored at their path relative to --directory ("/x" as "x")
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Resolve FILES relative to this directory, like tar -C
        #[arg(short = 'C', long, value_name = "DIR", default_value = ".")]
        directory: PathBuf,
        /// Write here instead of replacing ARCHIVE
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
    /// Merge two archives, B's members replacing A's
    Merge {
        a: PathBuf,
        b: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Compare the names of two archives (exit 1 when they differ)
    Diff {
        a: PathBuf,
        b: PathBuf,
        /// Also compare type, mode, size and SHA-256 of members in both
        #[arg(long)]
        content: bool,
    },
    /// The largest members first
    Du {
        archive: PathBuf,
        /// Also directories, with everything below them
        #[arg(short, long)]
        dirs: bool,
        /// Show this many lines (0: all)
        #[arg(short = 'n', long, default_value_t = 20)]
        top: usize,
    },
    /// Drop members matching shell patterns (and everything below them)
    Filter {
        archive: PathBuf,
        /// Pattern: * and ? within a component, ** across, [a-z], {a,b}; "usr/share/locale"
        #[arg(long, required = true, num_args = 1.., value_name = "GLOB")]
        drop: Vec<String>,
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Compare an archive against a directory tree (exit 1 on differences)
    Fsck {
        archive: PathBuf,
        dir: PathBuf,
        /// Also report files in the tree that the archive lacks
        #[arg(long)]
        extra: bool,
    },
    /// Unpack into a temporary directory, run a shell there, repack
    Edit {
        archive: PathBuf,
        /// Run this with `sh -c` instead of an interactive $SHELL
        #[arg(long, value_name = "COMMAND")]
        command: Option<String>,
        /// Write here instead of replacing ARCHIVE
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        output: Output,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.verb {
        Verb::Ls { archive, long } => ls(&archive, long),
        Verb::Pack { dir, out, output } => pack(&dir, &out, &output),
        Verb::Unpack { archive, dir } => unpack(&archive, &dir),
        Verb::Add { archive, files, directory, out, output } => add(&archive, &files, &directory, out, &output),
        Verb::Merge { a, b, out, output } => merge(&a, &b, &out, &output),
        Verb::Diff { a, b, content } => {
            let differences = compare::diff(&open(&a)?, &open(&b)?, content);
            report_differences(&differences)
        }
        Verb::Du { archive, dirs, top } => du(&archive, dirs, top),
        Verb::Filter { archive, drop, out, output } => filter(&archive, &drop, &out, &output),
        Verb::Fsck { archive, dir, extra } => {
            let differences = compare::fsck(&open(&archive)?, &dir, extra)?;
            report_differences(&differences)
        }
        Verb::Edit { archive, command, out, output } => edit(&archive, command.as_deref(), out, &output),
    }
}

fn open(path: &Path) -> anyhow::Result<ReadArchive> {
    read::read_file(path).with_context(|| format!("cannot read the archive {}", path.display()))
}

fn ls(path: &Path, long: bool) -> anyhow::Result<ExitCode> {
    let archive = open(path)?;
    to_stdout(|out| list(&archive, long, out))?;
    Ok(ExitCode::SUCCESS)
}

fn list(archive: &ReadArchive, long: bool, out: &mut dyn Write) -> std::io::Result<()> {
    for member in &archive.members {
        let file_type = member.file_type();
        let kind = format!("{}{}", file_type.letter(), permission_string(member.mode));
        let size = match file_type {
            FileType::CharDevice | FileType::BlockDevice => format!("{},{}", member.rdev_major, member.rdev_minor),
            _ => member.data.len().to_string(),
        };
        let target = member.symlink_target().map(|t| format!(" -> {}", t.display())).unwrap_or_default();
        if long {
            writeln!(
                out,
                "{kind} {:>4} {:>5} {:>5} {:>10} {:>10} {:>8} {}{target}",
                member.nlink, member.uid, member.gid, size, member.mtime, member.ino, member.name
            )?;
        } else {
            writeln!(out, "{kind} {size:>10} {}{target}", member.name)?;
        }
    }
    Ok(())
}

/// Writes through a buffer to standard output; an error says that was what failed.
fn to_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    write(&mut out).and_then(|()| out.flush()).context("cannot write to standard output")
}

fn pack(dir: &Path, out: &Path, output: &Output) -> anyhow::Result<ExitCode> {
    let mut archive = Archive::new();
    let report = tree::pack_dir(dir, "", &mut archive)?;
    note_skipped(&report);
    write(&archive, out, output.compression.unwrap_or(Compression::Zstd), output)?;
    Ok(ExitCode::SUCCESS)
}

fn note_skipped(report: &PackReport) {
    for path in &report.skipped {
        log::warn!("skipped {}: sockets cannot be archived", path.display());
    }
}

fn unpack(path: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let archive = open(path)?;
    let report = tree::unpack(&archive, dir, UnpackOptions::for_current_user())
        .with_context(|| format!("cannot unpack {} into {}", path.display(), dir.display()))?;
    for (member, reason) in &report.skipped {
        log::warn!("skipped {}: {reason}", member.name);
    }
    log::info!("unpacked {} members into {}", report.written, dir.display());
    Ok(ExitCode::SUCCESS)
}

fn add(path: &Path, files: &[PathBuf], base: &Path, out: Option<PathBuf>, output: &Output) -> anyhow::Result<ExitCode> {
    let input = open(path)?;
    let mut archive = input.to_archive().with_context(|| format!("cannot rewrite {}", path.display()))?;
    let mut report = PackReport::default();
    for file in files {
        let host = base.join(file);
        let inner = read::member_path(&file.to_string_lossy())
            .with_context(|| format!("cannot add {}", file.display()))?
            .with_context(|| format!("cannot add {}: it names the archive root", file.display()))?;
        let entry = tree::entry_for(&host, &inner, &mut report)?;
        if let Some(entry) = entry {
            let is_dir = *entry.kind() == cpio::Kind::Directory;
            archive.insert(entry).with_context(|| format!("cannot add {}", host.display()))?;
            if is_dir {
                let sub = tree::pack_dir(&host, &inner, &mut archive)?;
                report.skipped.extend(sub.skipped);
            }
        }
    }
    note_skipped(&report);
    let out = out.unwrap_or_else(|| path.to_owned());
    write(&archive, &out, output.compression.unwrap_or(input.compression()), output)?;
    Ok(ExitCode::SUCCESS)
}

fn merge(a: &Path, b: &Path, out: &Path, output: &Output) -> anyhow::Result<ExitCode> {
    let first = open(a)?;
    let mut archive = first.to_archive().with_context(|| format!("cannot rewrite {}", a.display()))?;
    for member in &open(b)?.members {
        if let Some(entry) = member.to_entry().with_context(|| format!("cannot merge {}", b.display()))? {
            // A directory in B over a directory in A keeps A's children.
            archive.insert(entry).with_context(|| format!("cannot merge {}", b.display()))?;
        }
    }
    write(&archive, out, output.compression.unwrap_or(first.compression()), output)?;
    Ok(ExitCode::SUCCESS)
}

fn du(path: &Path, dirs: bool, top: usize) -> anyhow::Result<ExitCode> {
    let archive = open(path)?;
    let lines = compare::du(&archive, dirs);
    let total: u64 =
        archive.members.iter().filter(|m| m.file_type() == FileType::Regular).map(|m| m.data.len() as u64).sum();
    let shown = if top == 0 { lines.len() } else { top.min(lines.len()) };
    to_stdout(|out| {
        for line in &lines[..shown] {
            writeln!(out, "{:>12} {:>10}  /{}", line.bytes, human_size(line.bytes), line.path)?;
        }
        writeln!(out, "{total:>12} {:>10}  total in {} members", human_size(total), archive.members.len())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn filter(path: &Path, patterns: &[String], out: &Path, output: &Output) -> anyhow::Result<ExitCode> {
    let input = open(path)?;
    let mut archive = input.to_archive().with_context(|| format!("cannot rewrite {}", path.display()))?;
    let globs = Globs::new(patterns)?;
    let before = archive.len();
    archive.retain(|entry| !globs.covers(entry.path()));
    log::info!("dropped {} of {before} members", before - archive.len());
    write(&archive, out, output.compression.unwrap_or(input.compression()), output)?;
    Ok(ExitCode::SUCCESS)
}

fn edit(path: &Path, command: Option<&str>, out: Option<PathBuf>, output: &Output) -> anyhow::Result<ExitCode> {
    let input = open(path)?;
    let scratch = appliance_host::host::scratch::dir("appliance-cpio-edit-")
        .with_context(|| format!("cannot create a directory in {}", std::env::temp_dir().display()))?;
    let root = scratch.path().join("root");
    let report = tree::unpack(&input, &root, UnpackOptions::for_current_user())
        .with_context(|| format!("cannot unpack {} into {}", path.display(), root.display()))?;
    let mut shell = match command {
        Some(command) => {
            let mut shell = std::process::Command::new("/bin/sh");
            shell.args(["-c", command]);
            shell
        }
        None => {
            let program = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
            log::info!(
                "editing {} in {}; exit the shell to repack (exit 1 to discard)",
                path.display(),
                root.display()
            );
            std::process::Command::new(program)
        }
    };
    let status = shell
        .current_dir(&root)
        .status()
        .with_context(|| format!("cannot start {}", shell.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("the shell ended with {status}: {} left unchanged", path.display());
    }
    let mut archive = Archive::new();
    note_skipped(&tree::pack_dir(&root, "", &mut archive)?);
    // What could not be unpacked here (device nodes without root) is carried over,
    // unless the edit put something at its path.
    for (member, _) in &report.skipped {
        let carry_error = || format!("cannot carry {} over from {}", member.name, path.display());
        if let Some(entry) = member.to_entry().with_context(carry_error)?
            && archive.get(entry.path()).is_none()
            && !root.join(entry.path()).exists()
        {
            archive.insert(entry).with_context(carry_error)?;
        }
    }
    let out = out.unwrap_or_else(|| path.to_owned());
    write(&archive, &out, output.compression.unwrap_or(input.compression()), output)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints each difference; exit 1 when there are any, like diff(1).
fn report_differences(differences: &[Difference]) -> anyhow::Result<ExitCode> {
    to_stdout(|out| differences.iter().try_for_each(|difference| writeln!(out, "{difference}")))?;
    Ok(if differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Writes `archive` compressed to `out` through a temporary file in the same directory,
/// so a failure never leaves a truncated archive (and `add` can replace its input).
fn write(archive: &Archive, out: &Path, compression: Compression, output: &Output) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = tempfile::Builder::new()
        .prefix(".cpio-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let level = output.level.or(compression.tool_default_level());
    let mtime = cpio::mtime_from_env()?;
    let write_error = || format!("cannot write {}", out.display());
    let summary = {
        let encoder = Encoder::with_level(BufWriter::with_capacity(1 << 20, temporary.as_file()), compression, level)
            .with_context(write_error)?;
        let mut progress = Progress::new(encoder, out);
        let summary = archive
            .write(&mut progress, mtime)
            .map_err(|err| match err {
                // Its message names no file, and the context below does.
                cpio::Error::Write(source) => anyhow::Error::new(source),
                other => anyhow::Error::new(other),
            })
            .with_context(write_error)?;
        progress.done();
        let Progress { inner: encoder, .. } = progress;
        encoder.finish().and_then(|mut buffered| buffered.flush()).with_context(write_error)?;
        summary
    };
    let size = temporary.as_file().metadata().with_context(write_error)?.len();
    // tempfile creates 0600; an archive is no secret.
    temporary.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).with_context(write_error)?;
    temporary.persist(out).with_context(write_error)?;
    log::info!(
        "wrote {}: {} entries, {} -> {} {compression} in {:.2} s",
        out.display(),
        summary.entries,
        human_size(summary.bytes),
        human_size(size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Counts what goes through and, when stderr is a terminal and the log shows progress,
/// keeps one line there up to date: packing hundreds of megabytes takes seconds.
struct Progress<'a, W> {
    inner: W,
    out: &'a Path,
    bytes: u64,
    next_report: u64,
    enabled: bool,
}

impl<'a, W> Progress<'a, W> {
    const STEP: u64 = 32 << 20;

    fn new(inner: W, out: &'a Path) -> Progress<'a, W> {
        use std::io::IsTerminal;
        let enabled = std::io::stderr().is_terminal() && log::log_enabled!(log::Level::Info);
        Progress { inner, out, bytes: 0, next_report: Self::STEP, enabled }
    }

    fn done(&self) {
        if self.enabled && self.bytes >= Self::STEP {
            eprintln!();
        }
    }
}

impl<W: Write> Write for Progress<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.enabled && self.bytes >= self.next_report {
            eprint!("\rappliance: writing {}: {} archived", self.out.display(), human_size(self.bytes));
            self.next_report = self.bytes + Self::STEP;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
