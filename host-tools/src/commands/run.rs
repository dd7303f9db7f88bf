//! `appliance run`: boot an app dir (or an image, built first) in QEMU and exit with the
//! application's status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_cmdline::{End, check_len, render_param};
use appliance_host::kbuild;
use appliance_host::qemu::{self, Accel, PortForward, UserNet, VmSpec};
use appliance_host::{running, stop, vm};

/// Boot an appliance in QEMU, with its console on this terminal.
///
/// TARGET is an app dir in the original layout (vmlinuz, initrd, cmdline; symlinks
/// are fine) or an image (a directory with appliance.toml, or a name under ./images/),
/// which is built into out/<name> first. The kernel command line is: console=ttyS0
/// panic=-1 [quiet], the app dir's cmdline, the options below, then EXTRA words; for a
/// parameter given twice the last one wins.
///
/// Exits with the status of /app/run; 124 when --timeout killed the VM; 125 when the
/// guest ended without reporting (kernel panic, crash).
///
/// Stopping: `appliance stop APP_DIR`, or SIGINT/SIGTERM/SIGHUP to this process, presses
/// the guest's power button (the init shuts down cleanly) and kills QEMU after
/// --stop-grace seconds. On a terminal, Ctrl-C goes to the guest's console; Ctrl-A X
/// quits QEMU at once, Ctrl-A C opens QEMU's monitor (`system_powerdown` there is the
/// graceful way). While it runs, APP_DIR/running.json tells `appliance stop` and
/// `appliance ssh` where the VM is.
#[derive(clap::Args)]
pub struct Args {
    /// App dir or image to boot
    #[arg(value_name = "TARGET")]
    target: String,

    /// What the init does after postrun (appEnd)
    #[arg(long, value_name = "ACTION", value_parser = ["halt", "poweroff", "reboot", "shell", "bash", "sshd"])]
    end: Option<String>,

    /// Stop at a console shell before prerun (appDebug)
    #[arg(long)]
    debug: bool,

    /// Forward this loopback port (default: a free one, printed) to the guest's SSH
    /// port, with QEMU user networking; passes appIp=10.0.2.15/24 unless the app dir's
    /// cmdline or EXTRA sets appIp. Use with --end sshd and `appliance ssh APP_DIR`.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "0")]
    ssh: Option<u16>,

    /// Seconds a graceful stop (appliance stop, SIGINT, SIGTERM) waits for the guest to
    /// power off before killing QEMU
    #[arg(long, value_name = "SECONDS", default_value_t = appliance_host::stop::DEFAULT_GRACE.as_secs())]
    stop_grace: u64,

    /// Commands to run before /app/run, ':'-separated (appCmds)
    #[arg(long, value_name = "CMDS")]
    cmds: Option<String>,

    /// Arguments of /app/run, split like a shell does (appArgs)
    #[arg(long = "args", value_name = "ARGS", allow_hyphen_values = true)]
    app_args: Option<String>,

    /// Guest memory in MiB
    #[arg(short, long, value_name = "MIB", default_value_t = 512)]
    memory: u32,

    /// Guest CPUs
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,

    /// Kill the VM after this many seconds and fail (exit 124); 0 waits forever
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    timeout: u64,

    /// Boot this kernel instead of the app dir's vmlinuz: a bzImage (or a vmlinux, which
    /// boots through PVH), or build:<series> for the project's own (built on demand)
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,

    /// Accelerator: auto uses KVM only when it really works
    #[arg(long, value_name = "ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    accel: String,

    /// Keep the status record (JSON lines) in this file
    #[arg(long, value_name = "FILE")]
    status: Option<PathBuf>,

    /// Show the kernel's messages (no `quiet`)
    #[arg(long)]
    kernel_log: bool,

    /// Print the QEMU command line instead of running it
    #[arg(long)]
    dry_run: bool,

    /// Extra QEMU argument (repeatable)
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    qemu_args: Vec<String>,

    /// Extra kernel command-line words, after `--`
    #[arg(last = true, value_name = "EXTRA")]
    extra: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let app_dir = app_dir(&args.target)?;
    let kernel = match &args.kernel {
        Some(k) => kernel_file(k, args.dry_run)?,
        None => app_dir.join("vmlinuz"),
    };
    let initrd = app_dir.join("initrd");
    for (what, path) in [("kernel", &kernel), ("initrd", &initrd)] {
        if !path.exists() {
            bail!("no {what} at {}: build the image with `appliance build`, or pass --kernel", path.display());
        }
    }
    let ssh_port = match args.ssh {
        Some(0) if !args.dry_run => Some(free_port()?),
        other => other,
    };
    let append = kernel_cmdline(&args, &app_dir)?;
    let (accel, why) = match args.accel.as_str() {
        "kvm" => (Accel::Kvm, "--accel kvm".to_string()),
        "tcg" => (Accel::Tcg, "--accel tcg".to_string()),
        _ => qemu::detect_accel(),
    };
    log::debug!("accelerator {}: {why}", accel.as_str());
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let status_file = args.status.clone().unwrap_or_else(|| tmp.path().join("status.jsonl"));
    let spec = VmSpec {
        qemu: if args.dry_run {
            qemu::find_qemu().unwrap_or_else(|_| "qemu-system-x86_64".into())
        } else {
            qemu::find_qemu().map_err(anyhow::Error::msg)?
        },
        kernel,
        initrd,
        append,
        memory_mib: args.memory,
        cpus: args.cpus,
        accel,
        status_file,
        net: ssh_port.map(|port| UserNet { mac: None, forwards: vec![PortForward { host: port, guest: 22 }] }),
        shares: Vec::new(),
        // A short path: Unix socket paths are limited to 107 bytes.
        qmp: (!args.dry_run).then(|| tmp.path().join("qmp.sock")),
        extra: args.qemu_args.clone(),
    };
    if args.dry_run {
        println!("{}", qemu::shell_line(&spec.qemu, &qemu::argv(&spec)));
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    running::claim(&app_dir)?;
    if let Some(port) = ssh_port {
        eprintln!(
            "appliance: ssh: 127.0.0.1:{port} forwards to the guest's port 22: `appliance ssh {}`",
            app_dir.display()
        );
    } else if args.end.as_deref() == Some("sshd") {
        log::warn!("--end sshd without --ssh: nothing forwards a port to the guest's sshd");
    }
    // After the build: threads it started are gone, and later ones inherit the mask.
    let signals = stop::catch_stop_signals().context("cannot set up signal handling")?;
    let qmp = spec.qmp.clone().unwrap_or_default();
    let grace = Duration::from_secs(args.stop_grace);
    let mut watch = stop::GracefulStop::new(signals, &app_dir, &qmp, ssh_port, grace);
    let report = vm::run_watched(&spec, timeout, &mut watch)?;
    drop(watch);
    for line in &report.garbled {
        log::warn!("unreadable status line: {line}");
    }
    if report.timed_out {
        eprintln!("appliance: the VM did not finish within {} s: killed it", args.timeout);
    }
    eprintln!("{}", report.summary());
    Ok(ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1)))
}

/// The guest's address under QEMU user networking (slirp's default, gateway 10.0.2.2).
const GUEST_IP: &str = "10.0.2.15/24";

/// A loopback port nobody listens on now. Another program may take it before QEMU
/// does; QEMU then fails to start and says so.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free loopback port")?;
    Ok(listener.local_addr().context("cannot find a free loopback port")?.port())
}

/// The file `--kernel` names: a path, or `build:<series>` from the cache (built now if
/// needed; a dry run only says where it will be).
fn kernel_file(kernel: &Path, dry_run: bool) -> anyhow::Result<PathBuf> {
    let Some(series) = kernel.to_str().and_then(kbuild::parse_build_name) else {
        return Ok(kernel.to_path_buf());
    };
    let request = kbuild::Request::series(&series?, appliance_host::kernel::default_cache_dir()?);
    let plan = kbuild::plan(&request)?;
    if dry_run {
        return Ok(kbuild::cached(&plan).map_or_else(|| plan.result.join("bzImage"), |built| built.bzimage));
    }
    Ok(kbuild::build(&plan, None, false, &super::kernel::progress_sink())?.bzimage)
}

/// The app dir for TARGET, building an image first.
fn app_dir(target: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(target);
    if path.join("initrd").exists() || path.join("vmlinuz").exists() {
        return Ok(path.to_path_buf());
    }
    if path.join(appliance_host::manifest::FILE_NAME).exists() || !path.exists() {
        return super::build::build_image(target, None, None, None, None);
    }
    bail!("{target} is neither an app dir (vmlinuz, initrd, cmdline) nor an image (appliance.toml)")
}

/// console/panic/quiet, the app dir's cmdline, the options, the extra words.
fn kernel_cmdline(args: &Args, app_dir: &Path) -> anyhow::Result<String> {
    let mut words: Vec<String> = qemu::base_kernel_params(args.kernel_log).into_iter().map(String::from).collect();
    if args.ssh.is_some() {
        // QEMU user networking's guest address; before the app dir's cmdline and the
        // extra words, so an appIp there wins (the last one does).
        words.push(format!("appIp={GUEST_IP}"));
    }
    let file = app_dir.join("cmdline");
    if file.exists() {
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        words.extend(text.split('\n').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    if let Some(end) = &args.end {
        let end: End = end.parse()?;
        words.push(render_param("appEnd", end.as_str())?);
    }
    if args.debug {
        words.push("appDebug".to_string());
    }
    if let Some(cmds) = &args.cmds {
        words.push(render_param("appCmds", cmds)?);
    }
    if let Some(a) = &args.app_args {
        words.push(render_param("appArgs", a)?);
    }
    words.extend(args.extra.iter().cloned());
    let line = words.join(" ");
    check_len(&line)?;
    // Problems the init will report too; say so before booting, and boot anyway (the
    // init falls back to the defaults and reports them).
    for d in appliance_cmdline::parse(line.as_bytes()).diagnostics {
        log::warn!("kernel command line: {d}");
    }
    Ok(line)
}
