//! `appliance run`: boot an app dir (or an image, built first) in QEMU and exit with the
//! application's status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use appliance_cmdline::{End, render_param};
use appliance_host::kernel::kbuild;
use appliance_host::publish;
use appliance_host::vm::machine::{self, Machine};
use appliance_host::vm::qemu::{self, Accel, PortForward, UserNet, VmSpec};
use appliance_host::vm::{self, TimedOut, nfs, results, running, stop};

/// Boot an appliance in QEMU, with its console on this terminal.
///
/// TARGET is an app dir in the original layout (vmlinuz, initrd, cmdline; symlinks
/// are fine), an image (a directory with appliance.toml, or a name under ./images/ or the
/// toolkit's own images/),
/// which is built into out/<name> first, a disk image written by `appliance image` (any
/// format qemu-img reads), booted under UEFI firmware (OVMF) with the command line it
/// holds, or REGISTRY/REPO:VERSION, pulled first as `appliance pull` does (into
/// ~/.cache/appliance/pulled; the root key pinned by an earlier pull, or
/// APPLIANCE_ROOT_KEY). The kernel command line is: console=ttyS0
/// panic=-1 [quiet], the app dir's cmdline, the options below, then EXTRA words; for a
/// parameter given twice the last one wins.
///
/// Exits with the status of /app/run; 123 when --results was given and the results did
/// not arrive in full (the message says why and what run's status was); 124 when
/// --timeout ran out (the guest is stopped as by `appliance stop`, with its results
/// saved, and killed only after --stop-grace seconds); 125 when the guest ended without
/// reporting (kernel panic, crash).
///
/// Stopping: `appliance stop APP_DIR`, or SIGINT/SIGTERM/SIGHUP to this process, presses
/// the guest's power button and Ctrl-Alt-Del (the init shuts down cleanly) and kills QEMU
/// after --stop-grace seconds. On a terminal, Ctrl-C goes to the guest's console; Ctrl-A X
/// quits QEMU at once, Ctrl-A C opens QEMU's monitor (`system_powerdown` or `sendkey
/// ctrl-alt-delete` there is the graceful way). While it runs, APP_DIR/running.json tells
/// `appliance stop` and `appliance ssh` where the VM is.
#[derive(clap::Args)]
pub struct Args {
    /// App dir or image to boot
    #[arg(value_name = "TARGET")]
    target: String,

    /// What the init does after postrun (appEnd); kexec takes the app dir at --kexec URL
    #[arg(long, value_name = "ACTION", value_parser = ["halt", "poweroff", "reboot", "shell", "bash", "sshd", "kexec"])]
    end: Option<String>,

    /// The app dir to kexec into after postrun (appKexec; an http:// URL of a served app
    /// dir or boot tree); implies --end kexec
    #[arg(long, value_name = "URL")]
    kexec: Option<String>,

    /// Stop at a console shell before prerun (appDebug)
    #[arg(long)]
    debug: bool,

    /// Forward this loopback port (default: a free one, printed) to the guest's SSH
    /// port, with QEMU user networking; passes appIp=10.0.2.15/24 unless the app dir's
    /// cmdline or EXTRA sets appIp. Use with --end sshd and `appliance ssh APP_DIR`.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "0")]
    ssh: Option<u16>,

    /// Seconds a graceful stop (appliance stop, SIGINT, SIGTERM, --timeout) waits for the
    /// guest to power off before killing QEMU; keep it above the guest's appStopGrace (5 s
    /// by default), the time its program has to end after SIGTERM (warned otherwise)
    #[arg(long, value_name = "SECONDS", default_value_t = appliance_host::vm::stop::DEFAULT_GRACE.as_secs())]
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

    /// After this many seconds, stop the guest gracefully (its results are saved), kill it
    /// if it has not powered off after --stop-grace more, and fail (exit 124); 0 waits
    /// forever
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    timeout: u64,

    /// Boot this kernel instead of the app dir's vmlinuz: a bzImage (or a vmlinux, which
    /// boots through PVH), or build:<series> for the project's own (built on demand)
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,

    /// QEMU machine: auto takes microvm (no PCI: faster to boot) for a kernel the
    /// project built with virtio-MMIO, and pc for any other kernel (Debian's) or when
    /// --qemu-arg is given (its devices may need PCI)
    #[arg(long, value_name = "MACHINE", default_value = "auto", value_parser = ["auto", "pc", "microvm"])]
    machine: String,

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

    /// Give QEMU the image's initrd as it is. By default, under TCG, QEMU gets a copy
    /// decompressed on the host (the guest's decompressor would run emulated, the slowest
    /// part of a small appliance's boot) when it takes at most a quarter of --memory
    #[arg(long)]
    compressed_initrd: bool,

    /// Save the results in DIR/<run id>/ after postrun: /app/output and the guest's
    /// $APP_RESULTS (/app/results), over NFS as root, else as a stream over a serial port
    /// (--results-via). The drivers the guest needs are in every image built for a kernel
    /// that has them as modules.
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,

    /// How the results travel: nfs (QEMU user networking to nfs-ganesha on 127.0.0.1,
    /// started for the run; needs root and `apt-get install nfs-ganesha
    /// nfs-ganesha-vfs`), serial (a cpio stream over a virtio-serial port that QEMU writes
    /// to a file, unpacked here: no server, no network, no root) or 9p (virtio, no network;
    /// needs a kernel with 9p, such as --kernel build:6.1: Debian's cloud kernel has none).
    /// Default: nfs as root, serial otherwise
    #[arg(long, value_name = "HOW", value_parser = ["nfs", "9p", "serial"], requires = "results")]
    results_via: Option<String>,

    /// Extra QEMU argument (repeatable)
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    qemu_args: Vec<String>,

    /// Extra kernel command-line words, after `--`
    #[arg(last = true, value_name = "EXTRA")]
    extra: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tmp = appliance_host::host::scratch::dir("appliance-run-").context("cannot create a temporary directory")?;
    if Path::new(&args.target).is_file() {
        return run_disk(args, tmp.path());
    }
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
    let results = match &args.results {
        Some(dir) => {
            let via = match &args.results_via {
                Some(name) => results::Via::from_name(name).context("unknown --results-via")?,
                None => results::Via::default_for(rustix::process::geteuid().is_root()),
            };
            Some(Results::prepare(dir, via, &app_dir, args.dry_run)?)
        }
        None => None,
    };
    let ssh_port = match args.ssh {
        // Another program may take it before QEMU does; QEMU then fails to start and says so.
        Some(0) if !args.dry_run => {
            Some(appliance_host::host::net::free_port().context("cannot find a free loopback port")?)
        }
        other => other,
    };
    let (accel, why) = accel(&args);
    log::debug!("accelerator {}: {why}", accel.as_str());
    let requested = match Machine::from_name(&args.machine) {
        Some(m) => Some((m, format!("--machine {}", args.machine))),
        None if !args.qemu_args.is_empty() => Some((Machine::Pc, "--qemu-arg may add PCI devices".to_string())),
        None => None,
    };
    // On microvm a kernel the project built boots as its vmlinux, through PVH.
    let machine::KernelBoot { machine, kernel, words: machine_words, why } =
        machine::plan(&kernel, &app_dir, requested, accel, args.cpus);
    log::debug!("machine {}: {why}", machine.name());
    let results_words = results.as_ref().map(|r| r.params.as_slice()).unwrap_or_default();
    let append = kernel_cmdline(&args, &app_dir, &machine_words, results_words)?;
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
        machine,
        status_file,
        net: user_net(results.as_ref().and_then(|r| r.net.clone()), ssh_port),
        shares: results.as_ref().map(|r| r.shares.clone()).unwrap_or_default(),
        ports: results.as_ref().map(|r| r.ports.clone()).unwrap_or_default(),
        // A short path: Unix socket paths are limited to 107 bytes.
        qmp: (!args.dry_run).then(|| tmp.path().join("qmp.sock")),
        extra: args.qemu_args.clone(),
        disk: None,
        initrd_as_is: args.compressed_initrd,
    };
    let mut spec = spec;
    status_on_virtio(&mut spec);
    boot(spec, &args, &app_dir, results, ssh_port)
}

/// `appStatus=virtio` on the command line: the record comes over a virtio-serial port
/// into the status file (QEMU's second serial port, which the guest leaves silent then,
/// writes to the same file).
fn status_on_virtio(spec: &mut VmSpec) {
    let parsed = appliance_cmdline::parse(spec.append.as_bytes());
    if parsed.config.status_port == appliance_cmdline::StatusPort::Virtio {
        spec.ports.push(qemu::PortToFile {
            name: appliance_cmdline::STATUS_PORT_NAME.into(),
            path: spec.status_file.clone(),
        });
    }
}

/// A disk image under UEFI firmware: the command line is the one it holds, so the options
/// that would change it are refused.
fn run_disk(args: Args, tmp: &Path) -> anyhow::Result<ExitCode> {
    let disk = PathBuf::from(&args.target);
    let changes_cmdline = [
        ("--end", args.end.is_some()),
        ("--debug", args.debug),
        ("--cmds", args.cmds.is_some()),
        ("--args", args.app_args.is_some()),
        ("--results", args.results.is_some()),
        ("--ssh", args.ssh.is_some()),
        ("--kernel", args.kernel.is_some()),
        ("--kernel-log", args.kernel_log),
        ("kernel words after --", !args.extra.is_empty()),
    ];
    if let Some((option, _)) = changes_cmdline.iter().find(|(_, given)| *given) {
        bail!(
            "{option} changes the kernel command line, which a disk image holds: pass it to `appliance image` \
             (its EXTRA words) and boot the new image"
        );
    }
    if args.machine == "microvm" {
        bail!("--machine microvm cannot boot a disk image (UEFI firmware and the disk need PCI): leave --machine out");
    }
    let format = appliance_host::deploy::disk::probe_format(&disk)?;
    let (accel, why) = accel(&args);
    log::debug!("accelerator {}: {why}", accel.as_str());
    let firmware = if args.dry_run {
        qemu::Ovmf { code: qemu::OVMF_CODE.into(), vars: tmp.join("OVMF_VARS.fd") }
    } else {
        qemu::ovmf_for_run(tmp).map_err(anyhow::Error::msg)?
    };
    let spec = VmSpec {
        qemu: if args.dry_run {
            qemu::find_qemu().unwrap_or_else(|_| "qemu-system-x86_64".into())
        } else {
            qemu::find_qemu().map_err(anyhow::Error::msg)?
        },
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        // Unknown here (it is inside the disk): console input waits for the init.
        append: String::new(),
        memory_mib: args.memory,
        cpus: args.cpus,
        accel,
        // OVMF and the disk's controller are PCI devices.
        machine: qemu::Machine::Pc,
        status_file: args.status.clone().unwrap_or_else(|| tmp.join("status.jsonl")),
        net: None,
        shares: vec![],
        ports: vec![],
        qmp: (!args.dry_run).then(|| tmp.join("qmp.sock")),
        extra: args.qemu_args.clone(),
        disk: Some(qemu::DiskBoot { image: disk, format, firmware }),
        initrd_as_is: true,
    };
    // The run record goes beside nothing the user owns: a disk is not a directory.
    boot(spec, &args, tmp, None, None)
}

fn accel(args: &Args) -> (Accel, String) {
    match args.accel.as_str() {
        "kvm" => (Accel::Kvm, "--accel kvm".to_string()),
        "tcg" => (Accel::Tcg, "--accel tcg".to_string()),
        _ => qemu::detect_accel(),
    }
}

/// Boots `spec` (or prints its command line for --dry-run), bounded by --timeout, stopped
/// gracefully on a signal, and reports how it ended.
fn boot(
    spec: VmSpec,
    args: &Args,
    app_dir: &Path,
    results: Option<Results>,
    ssh_port: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let grace = Duration::from_secs(args.stop_grace);
    let guest_grace = stop::guest_grace(&spec.append);
    if let Some(warning) = stop::guest_grace_conflict(guest_grace, grace, "--stop-grace") {
        log::warn!("{warning}");
    }
    if args.dry_run {
        println!("{}", qemu::shell_line(&spec.qemu, &qemu::argv(&spec)));
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    running::claim(app_dir)?;
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
    let mut watch = stop::GracefulStop::new(signals, app_dir, &qmp, ssh_port, grace, guest_grace);
    let report = vm::run_watched(&spec, timeout, &mut watch)?;
    drop(watch);
    for line in &report.garbled {
        log::warn!("unreadable status line: {line}");
    }
    match report.timed_out {
        Some(TimedOut::PoweredOff) => eprintln!(
            "appliance: the VM did not finish within {} s: stopped it, and it powered off after the stop request",
            args.timeout
        ),
        Some(TimedOut::Killed) => eprintln!(
            "appliance: the VM did not finish within {} s, nor power off within {} s of the stop request: killed it",
            args.timeout, args.stop_grace
        ),
        None => {}
    }
    eprintln!("{}", report.summary());
    let mut code = report.exit_code();
    if let Some(mut results) = results {
        // The guest is gone: nothing writes to the server any more.
        results.stop();
        // A guest stopped at the time bound saved what it had: say where (the exit status
        // stays the timeout's).
        let saved = report.end().is_some() && results.report(&report.events);
        if report.end().is_some() && !saved && report.timed_out.is_none() {
            code = results::EXIT_RESULTS_FAILED;
        }
        results.leftovers();
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The results destination of a run: the server (NFS), share (9p) or stream file
/// (serial), and what the guest and QEMU need to reach it.
struct Results {
    dir: PathBuf,
    server: Option<nfs::NfsServer>,
    params: Vec<String>,
    net: Option<qemu::UserNet>,
    shares: Vec<qemu::Share9p>,
    ports: Vec<qemu::PortToFile>,
    /// The file QEMU writes the serial transport's stream to.
    stream: Option<PathBuf>,
}

impl Results {
    fn prepare(dir: &Path, via: results::Via, app_dir: &Path, dry_run: bool) -> anyhow::Result<Results> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the results directory {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        let name = app_dir.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let id = results::run_id(name.as_deref().unwrap_or("run"), std::time::SystemTime::now());
        let mut r = Results {
            dir: dir.clone(),
            server: None,
            params: vec![render_param("appRunId", &id)?],
            net: None,
            shares: Vec::new(),
            ports: Vec::new(),
            stream: None,
        };
        match via {
            results::Via::NineP => {
                r.params.push(render_param("appResultsTo", &format!("9p:{}", results::NINEP_TAG))?);
                r.shares.push(qemu::Share9p { tag: results::NINEP_TAG.into(), path: dir, readonly: false });
                return Ok(r);
            }
            results::Via::Serial => {
                r.params.push(render_param("appResultsTo", &format!("serial:{}", results::PORT_NAME))?);
                let stream = results::stream_file(&dir, &id);
                if !dry_run {
                    // Here rather than by QEMU, so that a directory we cannot write to is our
                    // error, said before booting, and not QEMU's.
                    std::fs::File::create(&stream)
                        .with_context(|| format!("cannot create the results stream {}", stream.display()))?;
                }
                r.ports.push(qemu::PortToFile { name: results::PORT_NAME.into(), path: stream.clone() });
                r.stream = Some(stream);
                return Ok(r);
            }
            results::Via::Nfs => {}
        }
        let port = if dry_run {
            2049
        } else {
            let server = nfs::NfsServer::start(&dir)?;
            let port = server.port();
            log::info!("NFS server on 127.0.0.1:{port} exporting {}", dir.display());
            r.server = Some(server);
            port
        };
        r.params.push(render_param("appResultsTo", &nfs::guest_param(port))?);
        r.net = Some(qemu::UserNet::default());
        Ok(r)
    }

    fn stop(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop();
        }
    }

    /// Says where the results are, or why they are not; returns whether they arrived.
    fn report(&self, events: &[appliance_cmdline::status::Event]) -> bool {
        if let Some((nic, packets)) = results::run_packets(events) {
            eprintln!("appliance: {packets} packet(s) on {nic} during /app/run");
        }
        match results::outcome(events, &self.dir) {
            Some(o) if o.ok => {
                let started = std::time::Instant::now();
                let dir = match &self.stream {
                    Some(stream) => match results::unpack_stream(stream, &self.dir, &o) {
                        Ok(dir) => {
                            let _ = std::fs::remove_file(stream);
                            dir
                        }
                        Err(e) => {
                            eprintln!("appliance: the results were NOT saved: {:#}", anyhow::Error::new(e));
                            return false;
                        }
                    },
                    None => o.dir.clone().unwrap_or_else(|| self.dir.clone()),
                };
                let unpacking = match &self.stream {
                    Some(_) => format!(", unpacking {:.0} ms", started.elapsed().as_secs_f64() * 1000.0),
                    None => String::new(),
                };
                eprintln!(
                    "appliance: results in {} ({} file(s), {} byte(s); saving took {:.0} ms{unpacking})",
                    dir.display(),
                    o.files,
                    o.bytes,
                    o.step_us as f64 / 1000.0
                );
                true
            }
            Some(o) => {
                eprintln!(
                    "appliance: the results were NOT saved: {}; they stayed in the guest",
                    o.error.as_deref().unwrap_or("unknown error")
                );
                false
            }
            None => {
                eprintln!("appliance: the results were NOT saved: the guest never reported its results step");
                false
            }
        }
    }

    /// What is left of the stream once the run is over: nothing when it was unpacked or
    /// stayed empty; otherwise it is kept, and said so. (An empty one left by a run that
    /// failed before is removed when `Results` is dropped.)
    fn leftovers(&self) {
        if let Some(stream) = &self.stream
            && results::discard_empty_stream(stream)
        {
            eprintln!(
                "appliance: the results stream is kept in {}: `appliance cpio unpack` reads what arrived",
                stream.display()
            );
        }
    }
}

impl Drop for Results {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            results::discard_empty_stream(stream);
        }
    }
}

/// The guest's address under QEMU user networking (slirp's default, gateway 10.0.2.2).
const GUEST_IP: &str = "10.0.2.15/24";

/// One user-mode NIC for whatever needs it: the results server (NFS) and the SSH forward.
fn user_net(results: Option<UserNet>, ssh_port: Option<u16>) -> Option<UserNet> {
    if results.is_none() && ssh_port.is_none() {
        return None;
    }
    let mut net = results.unwrap_or_default();
    if let Some(port) = ssh_port {
        net.forwards.push(PortForward { host: port, guest: 22 });
    }
    Some(net)
}

/// The file `--kernel` names: a path, or `build:<series>` from the cache (built now if
/// needed; a dry run only says where it will be).
fn kernel_file(kernel: &Path, dry_run: bool) -> anyhow::Result<PathBuf> {
    let Some(series) = kernel.to_str().and_then(kbuild::parse_build_name) else {
        return Ok(kernel.to_path_buf());
    };
    let request = kbuild::Request::series(&series?, appliance_host::kernel::default_cache_dir()?);
    if dry_run {
        let plan = kbuild::plan(&request)?;
        return Ok(kbuild::cached(&plan).map_or_else(|| plan.result.join("bzImage"), |built| built.bzimage));
    }
    let progress = super::kernel::progress_sink();
    let plan = kbuild::plan_fetching(&request, &progress)?;
    Ok(kbuild::build(&plan, None, false, &progress)?.bzimage)
}

/// The app dir for TARGET, building an image first.
pub(crate) fn app_dir(target: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(target);
    if !path.exists() && publish::reference::looks_like_reference(target) {
        return pulled(target);
    }
    if path.join("initrd").exists() || path.join("vmlinuz").exists() {
        return Ok(path.to_path_buf());
    }
    if path.join(appliance_host::image::manifest::FILE_NAME).exists() || !path.exists() {
        return super::build::build_image(target, None, None, None, None);
    }
    bail!("{target} is neither an app dir (vmlinuz, initrd, cmdline) nor an image (appliance.toml)")
}

/// Pulls REGISTRY/REPO:VERSION into the pull cache (nothing is downloaded when the cached
/// copy is that version already) and returns the app dir.
fn pulled(target: &str) -> anyhow::Result<PathBuf> {
    let reference = publish::Reference::parse(target)?;
    let Some(version) = &reference.version else {
        bail!("{target}: say which version to run (REGISTRY/REPO:VERSION)");
    };
    let out = publish::default_pull_cache()?.join(&reference.registry).join(&reference.repository).join(version);
    let options = publish::PullOptions {
        root_pin: std::env::var_os("APPLIANCE_ROOT_KEY").map(PathBuf::from),
        ..Default::default()
    };
    publish::pull(&reference, &out, &options, &super::publish::reporter())?;
    Ok(out)
}

/// console/panic/quiet, the machine's words, the app dir's cmdline, the options, the
/// results parameters, the extra words ([`appliance_host::deploy::cmdline::kernel_line`]).
fn kernel_cmdline(args: &Args, app_dir: &Path, machine: &[String], results: &[String]) -> anyhow::Result<String> {
    let mut before = machine.to_vec();
    if args.ssh.is_some() {
        // QEMU user networking's guest address; before the app dir's cmdline and the
        // extra words, so an appIp there wins (the last one does).
        before.push(format!("appIp={GUEST_IP}"));
    }
    let mut after = Vec::new();
    let end = match (args.end.as_deref(), &args.kexec) {
        (Some(end), Some(_)) if end != "kexec" => bail!("--kexec needs --end kexec, not --end {end}"),
        (None, Some(_)) => Some("kexec"),
        (end, _) => end,
    };
    if let Some(end) = end {
        let end: End = end.parse()?;
        after.push(render_param("appEnd", end.as_str())?);
    }
    if let Some(url) = &args.kexec {
        after.push(render_param("appKexec", url)?);
    }
    if args.debug {
        after.push("appDebug".to_string());
    }
    if let Some(cmds) = &args.cmds {
        after.push(render_param("appCmds", cmds)?);
    }
    if let Some(a) = &args.app_args {
        after.push(render_param("appArgs", a)?);
    }
    after.extend(results.iter().cloned());
    after.extend(args.extra.iter().cloned());
    let line = appliance_host::deploy::cmdline::kernel_line(app_dir, args.kernel_log, &before, &after)?;
    // Problems the init will report too; say so before booting, and boot anyway (the
    // init falls back to the defaults and reports them).
    for d in appliance_cmdline::parse(line.as_bytes()).diagnostics {
        log::warn!("kernel command line: {d}");
    }
    Ok(line)
}
