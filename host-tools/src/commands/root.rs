//! `appliance root`: reference roots: make one with mmdebstrap, enter it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use clap::builder::PossibleValuesParser;

use appliance_host::kernel;
use appliance_host::rootfs::create::{self, Options};
use appliance_host::rootfs::shell;
use appliance_host::rootfs::sources::{self, Source};

/// Make and enter reference roots: the Debian trees that `appliance trace --root` and an
/// image's `[trace] root` take an application's files from.
///
/// The workflow: `appliance root create DIR`, then `appliance root shell DIR -- apt-get
/// install -y PACKAGE...` (or an interactive `appliance root shell DIR`), then trace the
/// application there. Both need root.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: RootCommand,
}

#[derive(Subcommand)]
enum RootCommand {
    Create(CreateArgs),
    Shell(ShellArgs),
}

/// Make a reference root: a Debian tree, with mmdebstrap.
///
/// The packages come from the mirrors the host's apt uses for the suite (its
/// sources.list and sources.list.d; the suite's -updates and -security too when the host
/// has them), else from the host's Debian mirror, else deb.debian.org; --mirror names
/// another. They are cached in the tool's cache (~/.cache/appliance/apt/SUITE), so a
/// second root of the same suite downloads only what changed. The host's apt
/// configuration is never changed. The tree is made beside DIR and moved there when
/// complete. Needs root and mmdebstrap (apt-get install mmdebstrap).
#[derive(clap::Args)]
struct CreateArgs {
    /// Where to make it: a missing or empty directory (or any, with --force)
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// The Debian release (a codename, or stable, testing, unstable)
    #[arg(long, default_value = create::DEFAULT_SUITE)]
    suite: String,

    /// The package set: mmdebstrap's variants, smallest first; important is what
    /// debootstrap makes
    #[arg(long, default_value = create::DEFAULT_VARIANT, value_parser = PossibleValuesParser::new(create::VARIANTS))]
    variant: String,

    /// Packages to install as well (comma-separated, repeatable)
    #[arg(long, value_name = "PKG,...", value_delimiter = ',')]
    include: Vec<String>,

    /// A mirror to take the suite from (its main component) instead of the host's
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,

    /// Replace DIR even when it is not empty
    #[arg(long)]
    force: bool,
}

/// Run a shell, or a command, inside a reference root.
///
/// The root gets /proc, /sys (read-only), the host's /dev and the host's resolver
/// (/etc/resolv.conf, read-only), in a PID and a mount namespace of their own: every
/// process started inside (the daemons a package's installation starts) is killed when
/// the shell or command exits, and everything mounted for it is unmounted. The
/// environment is fresh (PATH, HOME=/root, LANG=C.UTF-8), keeping only TERM and the
/// proxy variables. The exit status is the command's (127 when it is not found in the
/// root). Needs root.
#[derive(clap::Args)]
struct ShellArgs {
    /// The root
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// The command, after `--` (default: an interactive shell, bash or sh)
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        RootCommand::Create(args) => run_create(args),
        RootCommand::Shell(args) => run_shell(args),
    }
}

fn run_create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let sources = match &args.mirror {
        Some(uri) => vec![Source { uri: uri.clone(), suite: args.suite.clone(), components: vec!["main".into()] }],
        None => sources::for_suite(&sources::read(Path::new(sources::HOST_APT_DIR)), &args.suite),
    };
    let options =
        Options { suite: args.suite, variant: args.variant, include: args.include, sources, force: args.force };
    log::info!(
        "making a {} root ({}) in {} from {}",
        options.suite,
        options.variant,
        args.dir.display(),
        options.sources.iter().map(Source::line).collect::<Vec<_>>().join("; ")
    );
    let cache_dir = kernel::default_cache_dir()?;
    let created = create::create(&args.dir, &options, &cache_dir, &mut |line| log::info!("mmdebstrap: {line}"))?;
    log::info!(
        "{} made in {:.0} s; enter it with `appliance root shell {}`",
        created.dir.display(),
        created.took.as_secs_f64(),
        args.dir.display()
    );
    println!("{}", created.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn run_shell(args: ShellArgs) -> anyhow::Result<ExitCode> {
    shell::check_privileges()?;
    let outcome = shell::plan(&args.dir, &args.command, std::env::vars_os()).and_then(|plan| {
        for note in &plan.notes {
            log::warn!("{note}");
        }
        if args.command.is_empty() {
            log::info!("a shell in {}: whatever it starts ends when it exits", plan.root.display());
        }
        shell::enter(&plan)
    });
    match outcome {
        Ok(status) => Ok(ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))),
        // A command that could not run ends as a shell says: 127 or 126.
        Err(err) => match err.command_status() {
            Some(status) => {
                eprintln!("appliance: error: {:#}", anyhow::Error::new(err));
                Ok(ExitCode::from(status))
            }
            None => Err(err.into()),
        },
    }
}
