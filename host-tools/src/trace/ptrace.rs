//! The tracer: starts a command chrooted into the reference root under ptrace, follows
//! every process and thread it creates (fork, vfork, clone, exec), and writes down the
//! path of each file-naming system call at its entry. Every `unsafe` of the trace lives
//! here.
//!
//! Paths are recorded whether or not the call succeeds (a failed lookup costs nothing:
//! the selection keeps only what exists in the root). Relative paths are resolved
//! against the tracee's working directory or directory descriptor, read from `/proc`
//! while the tracee is stopped, so they are exact even after `chdir`.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::libc;
use nix::sys::ptrace::{self, Event, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Error, PathArg, path_argument};
use crate::rootfs;

/// PATH_MAX: the kernel refuses longer paths anyway.
const PATH_MAX: usize = 4096;

/// What one traced command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traced {
    /// Every path the processes named, as absolute paths inside the root.
    pub accessed: BTreeSet<PathBuf>,
    /// The command's exit status (128 + the signal when killed).
    pub status: i32,
    /// How many processes and threads were followed.
    pub processes: usize,
}

/// Runs `argv` chrooted into `root` (not chrooted when `root` is `/`) in its `/`, with
/// the caller's standard input and environment (less `LD_LIBRARY_PATH`, `LD_PRELOAD`
/// and `OLDPWD`) and both outputs on the caller's standard error, and traces it to the
/// end of its last process.
pub fn run(root: &Path, argv: &[OsString]) -> Result<Traced, Error> {
    let root = root.canonicalize().map_err(|source| Error::Root { root: root.to_owned(), source })?;
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::EmptyCommand);
    };
    let mut traced = Traced::default();
    record_program(&root, program, &mut traced.accessed);

    let child = traced_command(&root, program, args)?
        .spawn()
        .map_err(|source| Error::Spawn { command: describe(argv), source })?;
    // Ctrl-C at an interactive trace is for the traced shell, not for the tracer (which
    // shares its terminal's process group): ignore it here while the trace runs, as
    // system(3) does. Only after the spawn: an ignored signal stays ignored across exec.
    let _ignore = crate::host::process::IgnoreInterrupts::install();
    let main = Pid::from_raw(child.id() as i32);
    attach(main)?;
    record_exe(&root, main, &mut traced.accessed);
    traced.processes = 1;
    let mut tracer = Tracer { root: &root, main, known: HashSet::from([main]), traced };
    resume(main, None);
    tracer.follow()?;
    drop(child);
    Ok(tracer.traced)
}

/// The command, set up to start in `/` of `root` (chrooted unless `root` is `/`) and
/// to stop for its tracer at its exec.
fn traced_command(root: &Path, program: &OsStr, args: &[OsString]) -> Result<Command, Error> {
    let mut command = Command::new(program);
    command.args(args);
    // Standard output belongs to the caller's result (the list, the app dir's path): the
    // command's own output goes to standard error.
    if let Ok(stderr) = io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(stderr);
    }
    // The same start everywhere, chrooted or not: a trace must not depend on where it ran.
    command.current_dir("/").env("PWD", "/").env_remove("OLDPWD");
    // The appliance's init sets neither: a trace with them would look for libraries in
    // the builder's directories.
    command.env_remove("LD_LIBRARY_PATH").env_remove("LD_PRELOAD");
    // Made before the fork: the child may not allocate.
    let chroot_to = if root == Path::new("/") {
        None
    } else {
        Some(CString::new(root.as_os_str().as_bytes()).map_err(|err| Error::Root {
            root: root.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, err),
        })?)
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system
    // calls (chroot, chdir, ptrace(TRACEME)) on C strings made before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if let Some(root) = &chroot_to {
                nix::unistd::chroot(root.as_c_str()).map_err(io::Error::from)?;
                nix::unistd::chdir(c"/").map_err(io::Error::from)?;
            }
            ptrace::traceme().map_err(io::Error::from)
        });
    }
    Ok(command)
}

/// Waits for the child's first stop and sets the options that follow its children
/// and execs.
fn attach(main: Pid) -> Result<(), Error> {
    // The child stops with SIGTRAP right after its exec.
    match waitpid(main, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => {}
        Ok(other) => return Err(Error::Ptrace { what: "start", source: status_errno(other) }),
        Err(source) => return Err(Error::Ptrace { what: "wait for the first stop", source }),
    }
    let options = Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC
        | Options::PTRACE_O_EXITKILL;
    ptrace::setoptions(main, options).map_err(|source| Error::Ptrace { what: "set options", source })
}

/// A running trace: the processes followed so far and what they did.
struct Tracer<'a> {
    root: &'a Path,
    /// The command's own process, whose status is the trace's.
    main: Pid,
    known: HashSet<Pid>,
    traced: Traced,
}

impl Tracer<'_> {
    /// Handles every stop until no traced process is left.
    fn follow(&mut self) -> Result<(), Error> {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
                Ok(status) => self.on_status(status),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => return Ok(()),
                Err(source) => return Err(Error::Ptrace { what: "wait", source }),
            }
        }
    }

    fn on_status(&mut self, status: WaitStatus) {
        match status {
            WaitStatus::Exited(pid, code) => self.on_end(pid, code),
            WaitStatus::Signaled(pid, signal, _) => self.on_end(pid, 128 + signal as i32),
            WaitStatus::PtraceSyscall(pid) => {
                on_syscall(self.root, pid, &mut self.traced.accessed);
                resume(pid, None);
            }
            WaitStatus::PtraceEvent(pid, _, event) => {
                if event == Event::PTRACE_EVENT_EXEC as i32 {
                    record_exe(self.root, pid, &mut self.traced.accessed);
                }
                resume(pid, None);
            }
            WaitStatus::Stopped(pid, signal) => self.on_signal(pid, signal),
            WaitStatus::Continued(_) | WaitStatus::StillAlive => {}
        }
    }

    /// A process or thread ended; the command's own gives the trace's status.
    fn on_end(&mut self, pid: Pid, status: i32) {
        self.known.remove(&pid);
        if pid == self.main {
            self.traced.status = status;
        }
    }

    fn on_signal(&mut self, pid: Pid, signal: Signal) {
        if self.known.insert(pid) {
            // A new process or thread, attached automatically: its first stop is the
            // tracer's SIGSTOP, not one to deliver.
            self.traced.processes += 1;
            if signal == Signal::SIGSTOP {
                resume(pid, None);
                return;
            }
        }
        // A group-stop has no siginfo; re-delivering its signal would stop the tracee
        // forever, so it just goes on.
        let deliver = ptrace::getsiginfo(pid).is_ok().then_some(signal);
        resume(pid, deliver);
    }
}

/// Restarts a stopped tracee until its next system call; one that vanished meanwhile
/// (killed by a signal) is reported by the next wait.
fn resume(pid: Pid, signal: Option<Signal>) {
    let _ = ptrace::syscall(pid, signal);
}

fn status_errno(status: WaitStatus) -> Errno {
    match status {
        WaitStatus::Exited(..) | WaitStatus::Signaled(..) => Errno::ESRCH,
        _ => Errno::EINVAL,
    }
}

fn describe(argv: &[OsString]) -> String {
    argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// The command's own program: exec'd by the tracee before tracing starts, so its
/// name (which may be a symlink, like `/bin/sh`) is looked up here as `execvp` would.
fn record_program(root: &Path, program: &OsStr, accessed: &mut BTreeSet<PathBuf>) {
    let program = Path::new(program);
    if program.as_os_str().as_bytes().contains(&b'/') {
        accessed.insert(rootfs::path::join(Path::new("/"), program));
        return;
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = rootfs::path::join(Path::new("/"), &dir.join(program));
        if rootfs::path::walk(root, &candidate).is_ok() {
            accessed.insert(candidate);
            return;
        }
    }
}

/// After an exec, the file really executed: for a script, its interpreter.
fn record_exe(root: &Path, pid: Pid, accessed: &mut BTreeSet<PathBuf>) {
    if let Some(path) = proc_link(root, pid, "exe") {
        accessed.insert(path);
    }
}

/// A `/proc/<pid>/<name>` link (`cwd`, `exe`, `fd/3`) as a path inside the root.
fn proc_link(root: &Path, pid: Pid, name: &str) -> Option<PathBuf> {
    let target = fs::read_link(format!("/proc/{pid}/{name}")).ok()?;
    let target = PathBuf::from(OsStr::from_bytes(
        target.as_os_str().as_bytes().strip_suffix(b" (deleted)").unwrap_or(target.as_os_str().as_bytes()),
    ));
    rootfs::path::in_root(root, &target)
}

fn on_syscall(root: &Path, pid: Pid, accessed: &mut BTreeSet<PathBuf>) {
    let Ok(regs) = ptrace::getregs(pid) else {
        return;
    };
    // At a syscall-entry stop the kernel has set rax to -ENOSYS; at the exit stop it
    // holds the result. Only entries are looked at: the arguments are still intact.
    if regs.rax as i64 != -(libc::ENOSYS as i64) {
        return;
    }
    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    let Some(argument) = path_argument(regs.orig_rax as i64) else {
        return;
    };
    let path = match argument {
        PathArg::Path(index) => read_string(pid, args[index]).and_then(|path| resolve(root, pid, None, &path)),
        PathArg::At(dirfd, index) => {
            read_string(pid, args[index]).and_then(|path| resolve(root, pid, Some(args[dirfd] as i32), &path))
        }
        PathArg::Fd(index) => {
            let fd = args[index] as i32;
            if fd < 0 { None } else { proc_link(root, pid, &format!("fd/{fd}")) }
        }
    };
    if let Some(path) = path {
        accessed.insert(path);
    }
}

/// The in-root absolute path for `path` as the tracee named it.
fn resolve(root: &Path, pid: Pid, dirfd: Option<i32>, path: &[u8]) -> Option<PathBuf> {
    let path = Path::new(OsStr::from_bytes(path));
    if path.is_absolute() {
        return Some(path.to_owned());
    }
    let base = match dirfd {
        Some(fd) if fd != libc::AT_FDCWD => proc_link(root, pid, &format!("fd/{fd}"))?,
        _ => proc_link(root, pid, "cwd")?,
    };
    // An empty path with AT_EMPTY_PATH names the descriptor itself.
    Some(if path.as_os_str().is_empty() { base } else { base.join(path) })
}

/// A NUL-terminated string from the tracee's memory, read page by page so that a
/// string ending just before an unmapped page is still read.
fn read_string(pid: Pid, address: u64) -> Option<Vec<u8>> {
    if address == 0 {
        return None;
    }
    let memory = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut at = address;
    while out.len() < PATH_MAX {
        let to_page_end = 4096 - (at % 4096) as usize;
        let mut buffer = vec![0u8; to_page_end.min(PATH_MAX - out.len())];
        let read = memory.read_at(&mut buffer, at).ok()?;
        if read == 0 {
            return None;
        }
        if let Some(end) = buffer[..read].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buffer[..end]);
            return Some(out);
        }
        out.extend_from_slice(&buffer[..read]);
        at += read as u64;
    }
    None
}
