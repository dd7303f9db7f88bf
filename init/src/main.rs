//! `appliance-init`: PID 1 of an appliance, or a supervisor when run as a plain process.
//! `main` reads as the boot sequence; every path ends in `shutdown::power`.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use appliance_cmdline::modules::{
    BUILTIN_FILE, DEP_FILE, NIC_MODULES, ORDER_FILE, PORT_MODULES, parse_builtin, parse_dep,
};
use appliance_cmdline::status::{Event, STATUS_VERSION};
use appliance_cmdline::{APP_DIR, Config, End, STATUS_PORT_NAME, StatusPort};
use appliance_init::console::Describe;
use appliance_init::plan::{self, AppPaths, ImageFacts};
use appliance_init::rt::Args;
use appliance_init::sequence::{self, Context, Outcome};
use appliance_init::status::{self, StatusWriter, t_us};
use appliance_init::supervisor::{Command, Stdio, Supervisor};
use appliance_init::{
    cli, console, exports, kexec, logger, modules, mount, net, nic, oom, power, read_to_string, results, shutdown,
    sshd, sys, watch,
};
use core::cell::OnceCell;
use rustix::fd::OwnedFd;
use rustix::system::RebootCommand;

appliance_init::entry!(main);

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long `appStatus=virtio` waits for the host to announce the port: as long as the
/// results step waits for its own.
const STATUS_PORT_WAIT: core::time::Duration = core::time::Duration::from_secs(10);

fn main(args: Args) -> ! {
    if rustix::process::getpid().is_init() { pid1() } else { supervise(&args) }
}

/// The boot sequence. Every step reports its own failure and the boot goes on, except a
/// supervisor that cannot be set up; every path ends in `shutdown::power`.
fn pid1() -> ! {
    let t_init = t_us();
    set_up_system();
    let parsed = read_command_line();
    let status = open_status(t_init, parsed.config.status_port);
    report_diagnostics(&parsed.diagnostics, &status);
    let config = parsed.config;
    // After the status port opens, so that a module that fails is reported there too;
    // before the network and the phases, which may need the drivers.
    load_modules(&config, &status);
    set_hostname(&config);
    let mut control = set_up_network(&config, &status);
    let app = make_app_dirs(&config);
    let mut sup = start_supervisor(&app);
    sup.set_grace(&config);
    let image = image_facts();
    let env = phase_env(&config, &app, control.as_ref());
    let exports = carry_exports(&config, &image, exports::SAVE_FILE);
    let mut ctx = Context {
        env,
        env_file: plan::ENV_FILE,
        env_file_taken: Vec::new(),
        tty: OnceCell::new(),
        status: &status,
        exports,
        oom: Some(oom::Watch::default()),
    };
    let outcome = run_phases(&mut sup, &config, &app, &image, &mut ctx, control.as_ref());
    // When no phase ran, here.
    sequence::once_started(&status);
    // After postrun, before the end action: the network is quiet until here.
    results::step(&config, &mut control, &status);
    let end = match (outcome.interrupted, config.end) {
        (true, _) => End::Poweroff,
        // Last, after the results: the next kernel is loaded, or the end is `halt`.
        (false, End::Kexec) => kexec::step(&config, &mut control, &status),
        (false, end) => end,
    };
    end_session(&mut sup, end, &image, &mut ctx);
    shut_down(&mut sup, end, outcome.run_status, &status)
}

/// What every program expects of a system: the basic file systems, a console on the
/// standard descriptors, logging to it and to the kernel log; and Ctrl-Alt-Del as a signal
/// to us instead of an immediate reboot.
fn set_up_system() {
    logger::init(log::LevelFilter::Trace);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let mount_failures = mount::mount_all(&mut mount::Kernel);
    attach_console();
    logger::attach_kmsg();
    for f in &mount_failures {
        log::error!("cannot mount {}: {}", f.target, Describe(f.errno));
    }
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    let _ = rustix::system::reboot(RebootCommand::CadOff);
}

/// `/proc/cmdline`, parsed; the log level it asks for is set.
fn read_command_line() -> appliance_cmdline::Parsed {
    let cmdline = read_to_string("/proc/cmdline").unwrap_or_default();
    let parsed = appliance_cmdline::parse(cmdline.as_bytes());
    log::set_max_level(parsed.config.log.map(level_filter).unwrap_or(log::LevelFilter::Info));
    // Only now: a record at a level the command line turns off still costs a kernel call.
    log::debug!("file systems mounted, command line parsed");
    parsed
}

/// The status record for the port `appStatus` names (the second serial port by default),
/// which starts with the `init` event (`t_init`: when PID 1 started). The port opens once
/// the first phase has started (`StatusWriter::deferred` says why); the lines wait until
/// then. A port that cannot be opened is an error on the console, and the appliance runs
/// without a record.
fn open_status(t_init: u64, port: StatusPort) -> StatusWriter {
    let status = match port {
        StatusPort::Serial(_) => StatusWriter::deferred(Box::new(move || {
            let path = port.serial_device().unwrap_or_default();
            // The console's own line (a machine with one serial port) keeps the console's
            // settings: raw mode would take the carriage returns from its output too.
            let shared = path == console::terminal();
            let fd = status::open_port(&path, !shared);
            if fd.is_none() {
                log::error!("cannot open the status port {path}: no status record");
            }
            fd
        })),
        StatusPort::Virtio => StatusWriter::deferred(Box::new(open_virtio_status)),
        StatusPort::None => StatusWriter::none(),
    };
    status.emit(&Event::Init { t_us: t_init, version: String::from(VERSION), v: STATUS_VERSION });
    status
}

/// `appStatus=virtio`: the virtio-serial port named `appliance.status`, with its drivers
/// loaded first when the image packs them as modules.
fn open_virtio_status() -> Option<OwnedFd> {
    for failure in modules::load_wanted(PORT_MODULES) {
        log::error!("{failure}");
    }
    match results::find_port(STATUS_PORT_NAME, STATUS_PORT_WAIT) {
        Ok(path) => status::open_port(&path, false),
        Err(e) => {
            log::error!(
                "status port: no virtio-serial port named {STATUS_PORT_NAME} ({}): no status record",
                Describe(e)
            );
            None
        }
    }
}

/// The command line's problems, on the console and in the status record.
fn report_diagnostics(diagnostics: &[appliance_cmdline::Error], status: &StatusWriter) {
    for d in diagnostics {
        log::error!("kernel command line: {d}");
        status.error(format!("kernel command line: {d}"));
    }
}

/// The image's kernel modules (`appliance.order`), then those `appModules` names with
/// their dependencies, then the NIC's driver when the network is used (at boot, or by the
/// results step: the NIC is then watched during the run). A failure is an error on the
/// console and in the status record; the boot goes on.
fn load_modules(config: &Config, status: &StatusWriter) {
    let dir = modules::dir();
    let read = |file: &str| read_to_string(&format!("{dir}/{file}"));
    let order = read(ORDER_FILE).unwrap_or_default();
    let uses_network = config.ip.is_some()
        || config.dhcp
        || config.seg_ip.is_some()
        || results::needs_network(config)
        || kexec::needs_network(config);
    let wanted = if uses_network { NIC_MODULES } else { &[] };
    if order.trim().is_empty() && config.modules.is_empty() && wanted.is_empty() {
        return;
    }
    let dep = read(DEP_FILE).map(|t| parse_dep(&t)).unwrap_or_default();
    let builtin = read(BUILTIN_FILE).map(|t| parse_builtin(&t)).unwrap_or_default();
    let plan = modules::plan(&order, &config.modules, wanted, &dep, &builtin);
    for problem in &plan.problems {
        log::error!("{problem}");
        status.error(format!("{problem}"));
    }
    for name in &plan.builtin {
        log::info!("module {name} is built into the kernel");
    }
    let (failures, loaded) = modules::load(&plan.loads, &dir, &mut modules::Kernel);
    for failure in &failures {
        log::error!("{failure}");
        status.error(format!("{failure}"));
    }
    log::info!("{loaded} kernel module(s) loaded");
}

/// `appNode` as the hostname.
fn set_hostname(config: &Config) {
    if let Some(node) = &config.node
        && let Err(e) = rustix::system::sethostname(node.as_bytes())
    {
        log::warn!("cannot set the hostname to {node}: {}", Describe(e));
    }
}

/// The loopback interface, and the control NIC when `appIp` asks for it.
fn set_up_network(config: &Config, status: &StatusWriter) -> Option<nic::Control> {
    if let Err(e) = sys::loopback_up() {
        log::warn!("cannot bring up the loopback interface: {}", Describe(e));
    }
    let control = control_nic(config, status);
    match net::bring_up_segment(config, control.as_ref().map(|c| c.nic.as_str())) {
        Some(Ok(c)) => {
            log::info!("segment: {} is {}", c.nic, c.addr);
            status.emit(&c.event());
        }
        Some(Err(e)) => {
            log::error!("segment: {e}");
            status.error(format!("segment: {e}"));
        }
        None => {}
    }
    log::debug!("network and hostname set");
    control
}

/// The control NIC, configured when `appIp` is set (an address, or `dhcp`). A failure is
/// an error on the console and in the status record; the boot goes on without the network.
fn control_nic(config: &Config, status: &StatusWriter) -> Option<nic::Control> {
    if config.ip.is_none() && !config.dhcp {
        return None;
    }
    match net::bring_up(config) {
        Ok(c) => {
            let via = c.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            let mac = c.mac.map(|m| format!(" ({m})")).unwrap_or_default();
            log::info!("network: {} is {}{via}{mac} ({})", c.nic, c.addr, c.method);
            status.emit(&c.event());
            Some(c)
        }
        Err(e) => {
            log::error!("network: {e}");
            status.error(format!("network: {e}"));
            None
        }
    }
}

/// The application's directory, its results directory, and the init's own under `/run`.
fn make_app_dirs(config: &Config) -> AppPaths {
    let _ = rustix::fs::mkdir("/run/appliance", rustix::fs::Mode::from_raw_mode(0o755));
    let _ = rustix::fs::mkdir(APP_DIR, rustix::fs::Mode::from_raw_mode(0o755));
    // `APP_RESULTS` is always set, so the directory is there to write into: a phase that
    // writes `$APP_RESULTS/out.txt` without creating it first must not fail. (A file
    // system that prerun mounts over it, or on one of its parents, hides it harmlessly.)
    let results = config.results_dir_or_default();
    if let Err(e) = appliance_init::create_dir_all(results, 0o755) {
        log::warn!("cannot create the results directory {results}: {}", Describe(e));
    }
    AppPaths::new(APP_DIR)
}

/// The supervisor of the phases, stopped by the signals that mean "shut down", with the
/// phases' output copied to `app`'s output file. Without one nothing can run: power off.
fn start_supervisor(app: &AppPaths) -> Supervisor {
    let mut sup = match Supervisor::new() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot set up process supervision: {}; powering off", Describe(e));
            shutdown::power(RebootCommand::PowerOff)
        }
    };
    // SIGTERM, Ctrl-Alt-Del and the power button (after the modules: Debian's kernel has
    // `button` and `evdev` as modules) mean "shut down cleanly now".
    sup.stop_on_signals();
    sup.watch_power_button(power::open_buttons());
    if let Err(e) = sup.set_output(&app.output()) {
        log::warn!("cannot write {}: {}", app.output(), Describe(e));
    }
    sup
}

/// The environment of the phases: the command line's, and the control NIC's values in
/// force.
fn phase_env(config: &Config, app: &AppPaths, control: Option<&nic::Control>) -> Vec<(String, String)> {
    let mut env = plan::base_env(config, app, plan::ENV_FILE);
    if let Some(control) = control {
        for (k, v) in nic::env(control, config.node.as_deref()) {
            plan::set(&mut env, &k, v);
        }
    }
    env
}

/// prerun, the commands, run and postrun, with a NIC watched around run.
fn run_phases(
    sup: &mut Supervisor,
    config: &Config,
    app: &AppPaths,
    image: &ImageFacts,
    ctx: &mut Context<'_>,
    control: Option<&nic::Control>,
) -> Outcome {
    if config.debug && image.shell.is_none() {
        log::error!("appDebug asks for a console shell, but the image has none: going on with the boot");
    }
    let phases = plan::phases(config, &commands(config), app, image);
    // A NIC is watched only when the network is used at all (now, or by the results step):
    // otherwise no NIC is ever brought up, and reading sysfs would only slow the boot.
    let uses_network = control.is_some() || results::needs_network(config);
    let watched = if uses_network { watch::nic_to_watch(control, config.mac) } else { None };
    watch::run(sup, &phases, ctx, control, watched.as_deref(), config.net_down)
}

/// What `end` asks for before the power goes: a console shell, or sshd beside one.
fn end_session(sup: &mut Supervisor, end: End, image: &ImageFacts, ctx: &mut Context<'_>) {
    match end {
        End::Sshd => end_sshd(sup, image, ctx),
        End::Shell => end_shell(sup, image, ctx),
        End::Halt | End::Poweroff | End::Reboot | End::Kexec => {}
    }
}

/// Stops what is left, records the end, and powers off or reboots as `end` says.
fn shut_down(sup: &mut Supervisor, end: End, run_status: i32, status: &StatusWriter) -> ! {
    let (action, action_name) = match end {
        End::Reboot => (RebootCommand::Restart, "reboot"),
        // The kernel kexec_file_load loaded starts instead of the firmware.
        End::Kexec => (RebootCommand::Kexec, "kexec"),
        _ => (RebootCommand::PowerOff, "poweroff"),
    };
    log::info!("{action_name} (run status {run_status})");
    shutdown::terminate_all(sup, shutdown::GRACE);
    status.emit(&Event::End { t_us: t_us(), action: String::from(action_name), status: run_status });
    shutdown::bounded("sending the status record", shutdown::DRAIN_LIMIT, || status.drain());
    shutdown::power(action)
}

/// appEnd=shell: a console shell, then power off. Without a shell, say so and go on.
fn end_shell(sup: &mut Supervisor, image: &ImageFacts, ctx: &mut Context<'_>) {
    let Some(shell) = &image.shell else {
        log::error!("appEnd asks for a console shell, but the image has none: powering off");
        return;
    };
    console::write_err(format!("appliance-init: console shell on {}; exit it to power off\n", ctx.tty()).as_bytes());
    let mut env = ctx.env.clone();
    plan::set(&mut env, "APP_PHASE", String::from("end"));
    let env = plan::render_env(&env);
    let argv = [shell.clone()];
    ctx.status.shell("end", ctx.tty());
    sup.run(&Command { argv: &argv, env: &env, stdio: Stdio::Terminal(String::from(ctx.tty())) });
}

/// appEnd=sshd: the image's SSH server, with a console shell beside it when there is
/// one, until that shell exits or a stop is requested. Without a server, the console
/// shell alone.
fn end_sshd(sup: &mut Supervisor, image: &ImageFacts, ctx: &mut Context<'_>) {
    let mut env = ctx.env.clone();
    plan::set(&mut env, "APP_PHASE", String::from("end"));
    let env = plan::render_env(&env);
    let shell = image.shell.as_deref().map(|s| (s, ctx.tty()));
    if !sshd::serve(sup, &env, shell, ctx.status) {
        log::error!("appEnd=sshd, but the image has no sshd or dropbear (build it with [ssh]): console shell instead");
        end_shell(sup, image, ctx);
    }
}

/// How the variables shell-script phases export reach the later phases (the trap runs this
/// program, `appliance-init`, to save them in `file`): unless `appCarryEnv=0`, or the image
/// has no shell, so that nothing can be a shell script and no phase costs a look.
fn carry_exports(config: &Config, image: &ImageFacts, file: &str) -> Option<exports::Save> {
    if config.no_carry_env || (image.shell.is_none() && image.sh.is_none()) {
        return None;
    }
    let mut buf = [0u8; 4096];
    let init = rustix::fs::readlinkat_raw(rustix::fs::CWD, "/proc/self/exe", &mut buf)
        .ok()
        .and_then(|n| buf.get(..n))
        .and_then(|path| core::str::from_utf8(path).ok().map(String::from))
        .unwrap_or_else(|| String::from("/init"));
    Some(exports::Save { init, file: String::from(file) })
}

/// appCmds, then the lines of appCmdsFile.
fn commands(config: &Config) -> Vec<String> {
    let mut cmds = config.cmds.clone();
    if let Some(file) = &config.cmds_file {
        match read_to_string(file) {
            Some(text) => cmds.extend(appliance_cmdline::parse_cmds_file(&text)),
            None => log::error!("appCmdsFile: cannot read {file}"),
        }
    }
    cmds
}

/// Which shells the image has.
fn image_facts() -> ImageFacts {
    let first = |paths: &[&str]| {
        paths.iter().find(|p| rustix::fs::access(**p, rustix::fs::Access::EXEC_OK).is_ok()).map(|s| String::from(*s))
    };
    ImageFacts { shell: first(plan::SHELLS), sh: first(&["/bin/sh", "/usr/bin/sh"]) }
}

/// Standard input, output and error on the console (the kernel leaves them closed
/// when the initramfs has no /dev/console).
fn attach_console() {
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty()) {
        for n in 0..3 {
            let _ = sys::dup_to(rustix::fd::AsFd::as_fd(&fd), n);
        }
    }
}

fn level_filter(level: appliance_cmdline::LogLevel) -> log::LevelFilter {
    use appliance_cmdline::LogLevel as L;
    match level {
        L::Error => log::LevelFilter::Error,
        L::Warn => log::LevelFilter::Warn,
        L::Info => log::LevelFilter::Info,
        L::Debug => log::LevelFilter::Debug,
        L::Trace => log::LevelFilter::Trace,
    }
}

/// Supervisor mode: not PID 1.
fn supervise(args: &Args) -> ! {
    logger::init(log::LevelFilter::Warn);
    let mode = match cli::parse(args.argv.get(1..).unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            console::write_err(format!("appliance-init: {e}\n{}", cli::USAGE).as_bytes());
            sys::exit(2)
        }
    };
    let status_path = match &mode {
        cli::Mode::Help => {
            console::write_out(cli::USAGE.as_bytes());
            sys::exit(0)
        }
        // A phase's exit trap: our environment is what the shell exported.
        cli::Mode::SaveEnv { file } => match exports::save(file, &args.envp) {
            Ok(()) => sys::exit(0),
            Err(e) => {
                console::write_err(format!("appliance-init: cannot write {file}: {}\n", Describe(e)).as_bytes());
                sys::exit(1)
            }
        },
        cli::Mode::Command { status, .. } | cli::Mode::Phases { status, .. } => status.clone(),
    };
    // Orphans of our children become ours, so we can reap them as PID 1 would.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        log::warn!("cannot become a child subreaper: {}", Describe(e));
    }
    let mut sup = match Supervisor::new() {
        Ok(s) => s,
        Err(e) => {
            console::write_err(format!("appliance-init: cannot set up supervision: {}\n", Describe(e)).as_bytes());
            sys::exit(126)
        }
    };
    let status = status_path.as_deref().map(|p| StatusWriter::open(p, true)).unwrap_or_else(StatusWriter::none);
    status.emit(&Event::Init { t_us: t_us(), version: String::from(VERSION), v: STATUS_VERSION });
    let result = match mode {
        cli::Mode::Command { argv, .. } => {
            let env = args.envp.clone();
            sup.run(&Command { argv: &argv, env: &env, stdio: Stdio::Inherit }).status()
        }
        cli::Mode::Phases { app_dir, cmdline, .. } => {
            let parsed = appliance_cmdline::parse(cmdline.as_bytes());
            for d in &parsed.diagnostics {
                log::error!("command line: {d}");
                status.error(format!("command line: {d}"));
            }
            // As in PID 1: SIGTERM or SIGINT to us ends the sequence after the running phase.
            sup.stop_on_signals();
            sup.set_grace(&parsed.config);
            let app = AppPaths::new(&app_dir);
            if let Err(e) = sup.set_output(&app.output()) {
                log::warn!("cannot write {}: {}", app.output(), Describe(e));
            }
            let env_file = app.file(".appliance-env");
            // Variables are for the phases of this run only.
            let _ = rustix::fs::unlink(env_file.as_str());
            let mut env = plan::base_env(&parsed.config, &app, &env_file);
            // Keep the caller's PATH: the host's programs are where it says.
            if let Some(path) = args.envp.iter().find_map(|e| e.strip_prefix("PATH=")) {
                plan::set(&mut env, "PATH", String::from(path));
            }
            let image = ImageFacts { shell: None, sh: Some(String::from("/bin/sh")) };
            let exports = carry_exports(&parsed.config, &image, &app.file(".appliance-exported"));
            let mut ctx = Context {
                env,
                env_file: &env_file,
                env_file_taken: Vec::new(),
                tty: OnceCell::from(String::from("/dev/tty")),
                status: &status,
                exports,
                oom: None,
            };
            let phases = plan::phases(&parsed.config, &commands(&parsed.config), &app, &image);
            sequence::run(&mut sup, &phases, &mut ctx).run_status
        }
        cli::Mode::Help | cli::Mode::SaveEnv { .. } => 0,
    };
    // Whatever the program left behind is reaped before we go.
    sup.reap();
    sup.drain_output();
    status.emit(&Event::End { t_us: t_us(), action: String::from("exit"), status: result });
    sys::exit(result)
}
