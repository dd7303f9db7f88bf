//! Runs the phases of a plan in order, in PID 1 and in supervisor mode alike.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use appliance_cmdline::status::{Exit, TIMED_OUT};
use core::cell::OnceCell;

use crate::exports;
use crate::oom;
use crate::plan::{self, Phase, PhaseKind};
use crate::status::StatusWriter;
use crate::supervisor::{Command, STOP, Stdio, Supervisor};

/// What the phases produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The run phase's status: the appliance's result.
    pub run_status: i32,
    /// A request to shut down (SIGTERM, SIGPWR, ctrl-alt-del, the power button) cut the
    /// sequence short, or came during its last phase.
    pub interrupted: bool,
}

/// Inputs of a sequence.
pub struct Context<'a> {
    pub env: Vec<(String, String)>,
    /// The file phases append `NAME=value` lines to.
    pub env_file: &'a str,
    /// What of `env_file` is already in `env`: each line is taken once, after the phase
    /// that wrote it, so that a later value is not undone by an older line.
    pub env_file_taken: Vec<u8>,
    /// The terminal for interactive phases, found when one first needs it
    /// ([`console::terminal`](crate::console::terminal)): sysfs is read for it, which
    /// under emulation costs milliseconds before the run.
    pub tty: OnceCell<String>,
    /// How the variables shell-script phases export are collected for the later phases;
    /// `None` when they are not (`appCarryEnv=0`, or no shell in the image).
    pub exports: Option<exports::Save>,
    pub status: &'a StatusWriter,
    /// Where failed phases look for the out-of-memory killer: the kernel's log, so PID 1
    /// only (`None` in supervisor mode, where the log is the host's).
    pub oom: Option<oom::Watch>,
}

impl Context<'_> {
    /// The terminal for interactive phases and console shells.
    pub fn tty(&self) -> &str {
        self.tty.get_or_init(crate::console::terminal)
    }
}

/// The run status when a stop came before `/app/run` started: 128 + SIGTERM.
pub const STOPPED_BEFORE_RUN: i32 = 143;

/// Runs `phases` in order. A failing phase is reported and the sequence goes on, as the
/// original did; the run phase's status is the result.
pub fn run(sup: &mut Supervisor, phases: &[Phase], ctx: &mut Context<'_>) -> Outcome {
    let mut outcome = Outcome { run_status: 0, interrupted: false };
    for (i, phase) in phases.iter().enumerate() {
        if sup.stop_requested() || sup.pending.iter().any(|s| STOP.iter().any(|d| d.as_raw() == *s)) {
            log::warn!("shutdown requested: skipping the remaining phases");
            outcome.interrupted = true;
            if phases[i..].iter().any(|p| p.kind == PhaseKind::Run) {
                // /app/run never ran: not a success. The status a SIGTERM would have given it.
                outcome.run_status = STOPPED_BEFORE_RUN;
            }
            break;
        }
        let program = phase.argv.first().map(String::as_str).unwrap_or_default();
        if phase.optional && !exists(program) {
            log::debug!("no {program}: skipping {}", phase.kind.name());
            continue;
        }
        ctx.status.phase_start(phase.kind);
        let (exit, timed_out) = if phase.kind == PhaseKind::Run && !exists(program) {
            let message = format!("no {program} in the image: nothing to run (add an executable {program})");
            log::error!("{message}");
            ctx.status.error(message);
            (Exit::Code(127), false)
        } else {
            run_phase(sup, phase, ctx)
        };
        let failed = timed_out || exit.status() != 0;
        let (oom_killed, unpack_failed) = match &mut ctx.oom {
            Some(watch) if failed => (watch.kills(), watch.unpack_failed.take()),
            _ => (Vec::new(), None),
        };
        report(phase, exit, timed_out);
        if !oom_killed.is_empty() {
            let message = out_of_memory(phase, &oom_killed);
            log::error!("{message}");
            ctx.status.error(message);
        }
        if let Some(kernel_said) = unpack_failed {
            let message = initramfs_incomplete(phase, &kernel_said);
            log::error!("{message}");
            ctx.status.error(message);
        }
        ctx.status.phase_end(phase.kind, exit, timed_out, oom_killed);
        if phase.kind == PhaseKind::Run {
            // As timeout(1) reports it: a run that was ended is not a success, whatever
            // its process said when it went.
            let status = if timed_out { TIMED_OUT } else { exit.status() };
            outcome.run_status = status;
            plan::set(&mut ctx.env, "APP_RUN_STATUS", status.to_string());
        }
        absorb_env_file(ctx);
    }
    outcome.interrupted |= sup.stop_requested();
    outcome
}

fn run_phase(sup: &mut Supervisor, phase: &Phase, ctx: &mut Context<'_>) -> (Exit, bool) {
    let mut env = ctx.env.clone();
    plan::set(&mut env, "APP_PHASE", String::from(phase.kind.name()));
    let env = plan::render_env(&env);
    let carrying = ctx.exports.as_ref().and_then(|save| exports::prepare(phase, save));
    let stdio = if phase.interactive {
        crate::console::write_err(
            format!("appliance-init: {} shell on {}; exit it to continue\n", phase.kind.name(), ctx.tty()).as_bytes(),
        );
        ctx.status.shell(phase.kind.name(), ctx.tty());
        Stdio::Terminal(String::from(ctx.tty()))
    } else {
        log::info!("{}: {}", label(phase.kind), phase.argv.join(" "));
        Stdio::Tee
    };
    let argv = carrying.as_deref().unwrap_or(&phase.argv);
    let status = ctx.status;
    let ended = sup.run_limited(&Command { argv, env: &env, stdio }, phase.limit, || once_started(status));
    if let (Some(_), Some(save)) = (&carrying, &ctx.exports) {
        for (k, v) in exports::collect(save, &ctx.env) {
            log::debug!("{}: carrying {k} into the later phases", label(phase.kind));
            plan::set(&mut ctx.env, &k, v);
        }
    }
    ended
}

/// What PID 1 leaves until the first phase has started, because the application does not
/// need it (under emulation each is milliseconds of kernel code run for the first time):
/// the status port ([`StatusWriter::deferred`]) and our own non-blocking console
/// ([`own_streams`](crate::console::own_streams)). Done once; later calls do nothing.
pub fn once_started(status: &StatusWriter) {
    status.connect();
    crate::console::own_streams();
}

fn label(kind: PhaseKind) -> String {
    match kind.index() {
        Some(i) => format!("{} {i}", kind.name()),
        None => String::from(kind.name()),
    }
}

fn report(phase: &Phase, exit: Exit, timed_out: bool) {
    if timed_out {
        let secs = phase.limit.map(|l| l.as_secs()).unwrap_or_default();
        log::warn!("{} timed out: ended after {secs} s (appRunTimeout), status {TIMED_OUT}", label(phase.kind));
        return;
    }
    match exit {
        Exit::Code(0) => log::info!("{} finished", label(phase.kind)),
        Exit::Code(c) => log::warn!("{} exited with status {c}", label(phase.kind)),
        Exit::Signal(s) => log::warn!("{} killed by signal {s}", label(phase.kind)),
    }
}

/// What to tell the user about a phase that failed after the out-of-memory killer ended
/// `killed`.
fn out_of_memory(phase: &Phase, killed: &[appliance_cmdline::status::OomKill]) -> String {
    let names: Vec<String> = killed.iter().map(|k| format!("{} (pid {})", k.name, k.pid)).collect();
    format!(
        "{} failed after the guest ran out of memory: the kernel's out-of-memory killer ended {}; \
         give the guest more memory (appliance run -m MIB; the files in its initramfs, /tmp and \
         the results use it too)",
        label(phase.kind),
        names.join(", ")
    )
}

fn initramfs_incomplete(phase: &Phase, kernel_said: &str) -> String {
    format!(
        "{} failed, and the kernel could not unpack the whole initramfs at boot (\"{kernel_said}\"): files of \
         the image are missing; give the guest more memory (appliance run -m MIB)",
        label(phase.kind)
    )
}

/// Adds the variables the last phase appended to the env file to every later phase.
fn absorb_env_file(ctx: &mut Context<'_>) {
    let Some(data) = crate::read_bytes(ctx.env_file) else { return };
    // Appended to, as the protocol says: the new lines. Rewritten: all of it.
    let new = data.strip_prefix(ctx.env_file_taken.as_slice()).unwrap_or(&data);
    let text = String::from(String::from_utf8_lossy(new));
    ctx.env_file_taken = data;
    let (vars, bad) = plan::parse_env_file(&text);
    for line in bad {
        log::warn!("{}: ignoring `{line}` (expected NAME=value)", ctx.env_file);
    }
    for (k, v) in vars {
        plan::set(&mut ctx.env, &k, v);
    }
}

/// Whether a program exists (bare names count as existing: PATH decides at spawn).
fn exists(program: &str) -> bool {
    !program.contains('/') || rustix::fs::access(program, rustix::fs::Access::EXISTS).is_ok()
}
