//! A shell, or one command, inside a reference root: chrooted there with `/proc`, `/sys`,
//! `/dev` and the host's `/etc/resolv.conf` mounted, in a PID namespace and a mount
//! namespace of its own, so that everything it starts (the daemons a package's
//! installation starts) ends with it, and everything mounted for it goes away with it.
//! The original's users rebooted their machine for that.
//!
//! The processes, from the top:
//!
//! - the caller waits (and ignores Ctrl-C meanwhile, as system(3) does: it is for the
//!   command);
//! - the *keeper* leaves the caller's mount namespace (`unshare(CLONE_NEWNS |
//!   CLONE_NEWPID)`), makes every mount in its copy private, so that nothing mounted
//!   here reaches the host, and waits;
//! - the *init*, PID 1 of the new PID namespace, mounts what the root needs (its
//!   `/proc` shows the namespace's processes only) and reaps every process orphaned
//!   inside;
//! - the command, chrooted into the root, with a clean environment.
//!
//! When the command exits, the init exits with its status, the kernel kills every
//! process left in the namespace and waits for them, and when the keeper exits the
//! mount namespace and all its mounts go. Each of the three dies with its parent
//! (`PR_SET_PDEATHSIG`), so a killed caller leaves nothing running either.
//!
//! [`plan`] works out everything first, as data; [`enter`] makes the system calls. All
//! of the module's `unsafe` (the forks, signal dispositions and `execve`) is in
//! [`enter`]'s helpers: the children make only system calls, on memory prepared before
//! the first fork, so no lock or allocator state copied from the caller is ever touched.

use std::ffi::{CString, OsStr, OsString, c_char};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::host::fs_error::{FsError, io_error};
use crate::host::process::IgnoreInterrupts;
use crate::rootfs::path::{host_path, walk};

/// `PATH` inside the root: Debian's for root.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The host's resolver configuration, bound read-only over the root's.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Variables taken from the caller: the terminal's type and the proxies apt and others
/// need to reach the network the host reaches. Everything else is set afresh.
const KEPT_VARIABLES: [&str; 11] = [
    "TERM",
    "COLORTERM",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "entering a reference root needs root (it mounts /proc, /sys and /dev there and chroots): run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Path(#[from] crate::rootfs::path::Error),
    #[error("cannot use {} as a root", root.display())]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has neither /bin/bash nor /bin/sh: not a root file system (`appliance root create` makes one)", root.display())]
    NoShell { root: PathBuf },
    #[error("`{}` not found in {} (PATH there: {PATH})", program.to_string_lossy(), root.display())]
    NotFound { program: OsString, root: PathBuf },
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("cannot {step} for the shell in {}", root.display())]
    Setup {
        step: String,
        root: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot run {} in {}", program.display(), root.display())]
    Exec {
        program: PathBuf,
        root: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    Io(#[from] FsError),
}

impl Error {
    /// The status a shell gives for a command it could not run: 127 when it is not
    /// there, 126 when it cannot be executed; `None` for the tool's own errors.
    pub fn command_status(&self) -> Option<u8> {
        match self {
            Error::NotFound { .. } | Error::Exec { source: Errno::ENOENT, .. } => Some(127),
            Error::Exec { .. } => Some(126),
            _ => None,
        }
    }
}

/// One mount(2) call, as host paths (the mounts are made before the chroot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    pub fstype: Option<&'static str>,
    pub flags: MsFlags,
}

/// A mount point the root lacks, made before entering it: the only change a shell
/// makes to the root by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountPoint {
    Dir(PathBuf),
    File(PathBuf),
}

/// Everything [`enter`] does, worked out beforehand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The root, canonical.
    pub root: PathBuf,
    pub create: Vec<MountPoint>,
    pub mounts: Vec<Mount>,
    /// The program, as a path inside the root.
    pub program: PathBuf,
    pub argv: Vec<OsString>,
    /// `NAME=value` entries.
    pub env: Vec<OsString>,
    /// What could not be set up and why (the shell still works without it).
    pub notes: Vec<String>,
}

/// Works out how to run `command` (an interactive shell when empty: bash if the root
/// has it, else sh) in `root`, with the caller's environment `caller_env`.
pub fn plan(
    root: &Path,
    command: &[OsString],
    caller_env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Plan, Error> {
    let root = root.canonicalize().map_err(|source| Error::Root { root: root.to_owned(), source })?;
    if !root.is_dir() {
        let source = io::Error::from(io::ErrorKind::NotADirectory);
        return Err(Error::Root { root, source });
    }
    let (program, argv) = match command.split_first() {
        None => {
            let shell = ["/bin/bash", "/bin/sh"]
                .into_iter()
                .find(|shell| walk(&root, Path::new(shell)).is_ok())
                .ok_or_else(|| Error::NoShell { root: root.clone() })?;
            (PathBuf::from(shell), vec![OsString::from(shell), OsString::from("-i")])
        }
        Some((program, _)) => (find_program(&root, program)?, command.to_vec()),
    };

    let mut env: Vec<OsString> = caller_env
        .into_iter()
        .filter(|(name, _)| KEPT_VARIABLES.iter().any(|kept| name == *kept))
        .map(|(name, value)| {
            let mut entry = name;
            entry.push("=");
            entry.push(value);
            entry
        })
        .collect();
    let name = root.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    for (variable, value) in [
        ("PATH", PATH),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        // Built into glibc: no locale needs to be installed in the root.
        ("LANG", "C.UTF-8"),
        ("SHELL", if command.is_empty() { program.to_str().unwrap_or("/bin/sh") } else { "/bin/sh" }),
        // Debian's bash shows it in the prompt: which root this shell is in.
        ("debian_chroot", &name),
    ] {
        env.push(format!("{variable}={value}").into());
    }

    let mut plan = Plan { root, create: Vec::new(), mounts: Vec::new(), program, argv, env, notes: Vec::new() };
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Its own /proc: the namespace's processes, not the host's.
    if let Some(target) = plan.mount_point("/proc", true)? {
        plan.mounts.push(Mount { source: Some("proc".into()), target, fstype: Some("proc"), flags: nodev });
    }
    // Read-only: nothing a package script does in the root should change the host's
    // kernel settings.
    if let Some(target) = plan.mount_point("/sys", true)? {
        let flags = nodev | MsFlags::MS_RDONLY;
        plan.mounts.push(Mount { source: Some("sysfs".into()), target, fstype: Some("sysfs"), flags });
    }
    // The host's devices, terminals (the one this shell runs on) and shared memory.
    if let Some(target) = plan.mount_point("/dev", true)? {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        plan.mounts.push(Mount { source: Some("/dev".into()), target, fstype: None, flags });
    }
    // The host's resolver, so that apt reaches its mirrors by name; read-only, so that
    // a package that manages resolv.conf cannot change the host's.
    if !Path::new(RESOLV_CONF).exists() {
        plan.notes.push(format!("the host has no {RESOLV_CONF}: names do not resolve inside"));
    } else if let Some(target) = plan.mount_point(RESOLV_CONF, false)? {
        let bind = MsFlags::MS_BIND;
        plan.mounts.push(Mount { source: Some(RESOLV_CONF.into()), target: target.clone(), fstype: None, flags: bind });
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        plan.mounts.push(Mount { source: None, target, fstype: None, flags });
    }
    Ok(plan)
}

impl Plan {
    /// The host path to mount on for the in-root path `path`, its symlinks resolved in
    /// the root (an absolute link must not lead to the host's own file); a missing one
    /// is to be created. `None`, with a note, when it is a link to nothing.
    fn mount_point(&mut self, path: &str, dir: bool) -> Result<Option<PathBuf>, Error> {
        let path = Path::new(path);
        if let Ok(found) = walk(&self.root, path) {
            return Ok(Some(host_path(&self.root, &found.real)));
        }
        let parent = walk(&self.root, path.parent().unwrap_or(Path::new("/")))?;
        let target = host_path(&self.root, &parent.real.join(path.file_name().unwrap_or_default()));
        if fs::symlink_metadata(&target).is_ok() {
            self.notes.push(format!("{} is a link to nothing: nothing is mounted there", path.display()));
            return Ok(None);
        }
        self.create.push(if dir { MountPoint::Dir(target.clone()) } else { MountPoint::File(target.clone()) });
        Ok(Some(target))
    }
}

/// The in-root path of `program`: as given when it has a slash, else the first
/// executable file of that name on [`PATH`] inside the root.
fn find_program(root: &Path, program: &OsStr) -> Result<PathBuf, Error> {
    let not_found = || Error::NotFound { program: program.to_owned(), root: root.to_owned() };
    if program.as_bytes().contains(&b'/') {
        let path = Path::new("/").join(program);
        walk(root, &path).map_err(|_| not_found())?;
        return Ok(path);
    }
    PATH.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            walk(root, candidate)
                .ok()
                .and_then(|found| fs::metadata(host_path(root, &found.real)).ok())
                .is_some_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(not_found)
}

/// A failed step of the children, reported to the caller through a pipe: the step,
/// then the errno, in one write (atomic: shorter than PIPE_BUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    DeathSignal,
    Unshare,
    MakePrivate,
    Fork,
    Chroot,
    Chdir,
    SignalMask,
    Exec,
    Mount(u8),
}

impl Step {
    fn code(self) -> u8 {
        match self {
            Step::DeathSignal => 0,
            Step::Unshare => 1,
            Step::MakePrivate => 2,
            Step::Fork => 3,
            Step::Chroot => 4,
            Step::Chdir => 5,
            Step::SignalMask => 6,
            Step::Exec => 7,
            Step::Mount(index) => 16 + index,
        }
    }

    fn from_code(code: u8) -> Step {
        match code {
            0 => Step::DeathSignal,
            1 => Step::Unshare,
            2 => Step::MakePrivate,
            3 => Step::Fork,
            4 => Step::Chroot,
            5 => Step::Chdir,
            6 => Step::SignalMask,
            7 => Step::Exec,
            _ => Step::Mount(code.saturating_sub(16)),
        }
    }

    fn describe(self, plan: &Plan) -> String {
        match self {
            Step::DeathSignal => "set the parent-death signal".into(),
            Step::Unshare => "make PID and mount namespaces".into(),
            Step::MakePrivate => "make the mounts private".into(),
            Step::Fork => "fork".into(),
            Step::Chroot => "chroot".into(),
            Step::Chdir => "change to /".into(),
            Step::SignalMask => "reset the signal mask".into(),
            Step::Exec => "execute".into(),
            Step::Mount(index) => match plan.mounts.get(usize::from(index)) {
                Some(Mount { source: Some(source), target, .. }) => {
                    format!("mount {} on {}", source.display(), target.display())
                }
                Some(Mount { target, .. }) => format!("remount {} read-only", target.display()),
                None => format!("mount #{index}"),
            },
        }
    }
}

/// The plan's strings as C strings, and the pointer arrays `execve` takes: all made
/// before the first fork.
struct Prepared {
    root: CString,
    mounts: Vec<(Option<CString>, CString, Option<CString>, MsFlags)>,
    program: CString,
    // Own the strings the pointer arrays point into.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    env_ptrs: Vec<*const c_char>,
}

fn c_string(bytes: &[u8], what: impl FnOnce() -> String) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::Nul { what: what() })
}

fn c_path(path: &Path) -> Result<CString, Error> {
    c_string(path.as_os_str().as_bytes(), || path.display().to_string())
}

impl Prepared {
    fn new(plan: &Plan) -> Result<Prepared, Error> {
        let mut mounts = Vec::new();
        for mount in &plan.mounts {
            let source = mount.source.as_deref().map(c_path).transpose()?;
            let fstype = mount.fstype.map(|t| c_string(t.as_bytes(), || t.to_owned())).transpose()?;
            mounts.push((source, c_path(&mount.target)?, fstype, mount.flags));
        }
        let argv: Vec<CString> = plan
            .argv
            .iter()
            .map(|arg| c_string(arg.as_bytes(), || format!("argument {}", arg.to_string_lossy())))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = plan
            .env
            .iter()
            .map(|var| c_string(var.as_bytes(), || format!("variable {}", var.to_string_lossy())))
            .collect::<Result<_, _>>()?;
        let pointers = |strings: &[CString]| -> Vec<*const c_char> {
            strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
        };
        Ok(Prepared {
            root: c_path(&plan.root)?,
            mounts,
            program: c_path(&plan.program)?,
            argv_ptrs: pointers(&argv),
            env_ptrs: pointers(&env),
            _argv: argv,
            _env: env,
        })
    }
}

/// Fails with [`Error::NotRoot`] unless the process can mount and chroot: say so
/// before anything else.
pub fn check_privileges() -> Result<(), Error> {
    if rustix::process::geteuid().is_root() { Ok(()) } else { Err(Error::NotRoot) }
}

/// Runs the plan: makes the missing mount points, then the namespaces, mounts, chroot
/// and command. Returns the command's exit status (128 + the signal that killed it)
/// once it and every process it left behind are gone, and the mounts with them.
pub fn enter(plan: &Plan) -> Result<i32, Error> {
    check_privileges()?;
    for point in &plan.create {
        match point {
            MountPoint::Dir(path) => fs::create_dir(path).map_err(io_error("create", path))?,
            MountPoint::File(path) => {
                fs::File::create_new(path).map_err(io_error("create", path))?;
            }
        }
    }
    let prepared = Prepared::new(plan)?;
    let setup_error = |step: &str, source: Errno| Error::Setup { step: step.into(), root: plan.root.clone(), source };
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| setup_error("make a pipe", source))?;
    let caller = nix::unistd::getpid();
    let keeper = match fork_child().map_err(|source| setup_error("fork", source))? {
        ForkResult::Child => keeper(&prepared, &report_write, caller),
        ForkResult::Parent { child } => child,
    };
    drop(report_write);
    let _interrupts = IgnoreInterrupts::install();
    let report = read_report(&report_read);
    let status = wait_for(keeper).map_err(|source| setup_error("wait for the shell", source))?;
    match report {
        Some((Step::Exec, source)) => {
            Err(Error::Exec { program: plan.program.clone(), root: plan.root.clone(), source })
        }
        Some((step, source)) => Err(setup_error(&step.describe(plan), source)),
        None => Ok(status),
    }
}

/// The step and errno a child wrote, if any, once every child has closed the pipe
/// (at its exec, or its exit).
fn read_report(pipe: &OwnedFd) -> Option<(Step, Errno)> {
    let mut buffer = [0u8; 5];
    let mut filled = 0;
    while filled < buffer.len() {
        match nix::unistd::read(pipe, &mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    (filled == buffer.len()).then(|| {
        let errno = i32::from_le_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]);
        (Step::from_code(buffer[0]), Errno::from_raw(errno))
    })
}

/// Waits for `pid`; its status as a shell gives it.
fn wait_for(pid: Pid) -> Result<i32, Errno> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err),
        }
    }
}

/// Tells the caller which step failed, and exits.
fn fail(report: &OwnedFd, step: Step, errno: Errno) -> ! {
    let code = (errno as i32).to_le_bytes();
    let _ = nix::unistd::write(report, &[step.code(), code[0], code[1], code[2], code[3]]);
    exit_now(if step == Step::Exec && errno == Errno::ENOENT { 127 } else { 126 })
}

/// The first child: new namespaces, then the init, then wait.
fn keeper(prepared: &Prepared, report: &OwnedFd, caller: Pid) -> ! {
    if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(report, Step::DeathSignal, errno);
    }
    if nix::unistd::getppid() != caller {
        // The caller is gone already: nobody would be told.
        exit_now(1);
    }
    if let Err(errno) = nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID) {
        fail(report, Step::Unshare, errno);
    }
    // The copy of the caller's mounts would otherwise share events with the host's
    // (systemd makes / shared): the root's mounts would appear there too.
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    if let Err(errno) = nix::mount::mount(None::<&OsStr>, c"/", None::<&OsStr>, private, None::<&OsStr>) {
        fail(report, Step::MakePrivate, errno);
    }
    let init = match fork_child() {
        Ok(ForkResult::Child) => init(prepared, report),
        Ok(ForkResult::Parent { child }) => child,
        Err(errno) => fail(report, Step::Fork, errno),
    };
    let _ = nix::unistd::close(report.as_raw_fd());
    // A Ctrl-C at the command's terminal reaches this process too: the command decides.
    ignore(Signal::SIGINT);
    ignore(Signal::SIGQUIT);
    exit_now(wait_for(init).unwrap_or(1))
}

/// PID 1 of the new namespace: mounts, the command, then reaping until it ends.
fn init(prepared: &Prepared, report: &OwnedFd) -> ! {
    if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(report, Step::DeathSignal, errno);
    }
    for (index, (source, target, fstype, flags)) in prepared.mounts.iter().enumerate() {
        let data: Option<&OsStr> = None;
        if let Err(errno) = nix::mount::mount(source.as_deref(), target.as_c_str(), fstype.as_deref(), *flags, data) {
            fail(report, Step::Mount(u8::try_from(index).unwrap_or(u8::MAX - 16)), errno);
        }
    }
    let command = match fork_child() {
        Ok(ForkResult::Child) => command(prepared, report),
        Ok(ForkResult::Parent { child }) => child,
        Err(errno) => fail(report, Step::Fork, errno),
    };
    let _ = nix::unistd::close(report.as_raw_fd());
    // Orphans of the namespace are reparented here: reap them until the command ends.
    // Exiting then makes the kernel kill the rest.
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => exit_now(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => exit_now(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => exit_now(1),
        }
    }
}

/// The command: chrooted, signals as a fresh process has them, exec.
fn command(prepared: &Prepared, report: &OwnedFd) -> ! {
    if let Err(errno) = nix::unistd::chroot(prepared.root.as_c_str()) {
        fail(report, Step::Chroot, errno);
    }
    if let Err(errno) = nix::unistd::chdir(c"/") {
        fail(report, Step::Chdir, errno);
    }
    // Rust programs ignore SIGPIPE; programs started from them must not (std's Command
    // resets it too), or `yes | head` would never end.
    default(Signal::SIGPIPE);
    if let Err(errno) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        fail(report, Step::SignalMask, errno);
    }
    // SAFETY: both arrays were made before the fork from CStrings that `prepared` still
    // owns, and end with a null pointer, as execve(2) requires.
    unsafe {
        nix::libc::execve(prepared.program.as_ptr(), prepared.argv_ptrs.as_ptr(), prepared.env_ptrs.as_ptr());
    }
    fail(report, Step::Exec, Errno::last())
}

fn fork_child() -> Result<ForkResult, Errno> {
    // SAFETY: the child runs only `keeper`, `init` or `command`, which make system calls
    // on memory prepared before the fork (no allocation, no lock), and leave with
    // `_exit` or `execve`; so a lock held by another thread of the caller at the fork
    // is never waited for.
    unsafe { nix::unistd::fork() }
}

/// Leaves without running anything of the caller's: no atexit handler, no flush of
/// buffers copied from it at the fork.
fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) ends the process at once and touches no memory of ours.
    unsafe { nix::libc::_exit(status) }
}

fn ignore(signal: Signal) {
    // SAFETY: SIG_IGN runs no code in this process.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
}

fn default(signal: Signal) {
    // SAFETY: SIG_DFL runs no code in this process.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with a shell, an executable `apt-get` and a non-executable file.
    fn fake_root() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in ["usr/bin", "etc", "proc", "dev"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        symlink("usr/bin", root.join("bin")).unwrap();
        for (file, mode) in [("usr/bin/sh", 0o755), ("usr/bin/apt-get", 0o755), ("usr/bin/notes", 0o644)] {
            fs::write(root.join(file), "").unwrap();
            fs::set_permissions(root.join(file), fs::Permissions::from_mode(mode)).unwrap();
        }
        tmp
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(n, v)| (OsString::from(n), OsString::from(v))).collect()
    }

    #[test]
    fn the_default_is_an_interactive_shell_with_a_clean_environment() {
        let tmp = fake_root();
        let caller =
            env(&[("TERM", "xterm"), ("LD_PRELOAD", "/x.so"), ("https_proxy", "http://p:3128"), ("HOME", "/u")]);
        let plan = plan(tmp.path(), &[], caller).unwrap();
        assert_eq!(plan.program, Path::new("/bin/sh"));
        assert_eq!(plan.argv, ["/bin/sh", "-i"]);
        let env: Vec<&str> = plan.env.iter().map(|v| v.to_str().unwrap()).collect();
        assert!(env.contains(&"TERM=xterm") && env.contains(&"https_proxy=http://p:3128"), "{env:?}");
        assert!(env.contains(&"HOME=/root") && env.contains(&format!("PATH={PATH}").as_str()), "{env:?}");
        assert!(!env.iter().any(|v| v.starts_with("LD_PRELOAD") || *v == "HOME=/u"), "{env:?}");
    }

    #[test]
    fn commands_are_found_on_the_roots_path_not_the_hosts() {
        let tmp = fake_root();
        let command = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
        let plan = plan(tmp.path(), &command(&["apt-get", "install", "x"]), env(&[])).unwrap();
        assert_eq!(plan.program, Path::new("/usr/bin/apt-get"));
        assert_eq!(plan.argv, command(&["apt-get", "install", "x"]));
        for missing in ["notes", "cargo", "/usr/bin/none"] {
            let err = super::plan(tmp.path(), &command(&[missing]), env(&[])).unwrap_err();
            assert_eq!(err.command_status(), Some(127), "{missing}: {err}");
        }
        let plan = super::plan(tmp.path(), &command(&["/usr/bin/notes"]), env(&[])).unwrap();
        assert_eq!(plan.program, Path::new("/usr/bin/notes"));
    }

    #[test]
    fn mount_points_are_resolved_inside_the_root_and_missing_ones_made() {
        let tmp = fake_root();
        let root = tmp.path().canonicalize().unwrap();
        // An absolute link must lead to the root's file, not the host's.
        fs::create_dir_all(root.join("run/resolvconf")).unwrap();
        fs::write(root.join("run/resolvconf/resolv.conf"), "").unwrap();
        symlink("/run/resolvconf/resolv.conf", root.join("etc/resolv.conf")).unwrap();
        let plan = plan(&root, &[], env(&[])).unwrap();
        assert_eq!(plan.create, [MountPoint::Dir(root.join("sys"))]);
        let targets: Vec<&Path> = plan.mounts.iter().map(|m| m.target.as_path()).collect();
        let resolv = root.join("run/resolvconf/resolv.conf");
        let expected = [root.join("proc"), root.join("sys"), root.join("dev"), resolv.clone(), resolv];
        if Path::new(RESOLV_CONF).exists() {
            assert_eq!(targets, expected);
            assert!(plan.mounts[4].flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
        } else {
            assert_eq!(targets, expected[..3]);
        }
        assert_eq!(plan.mounts[0].fstype, Some("proc"));
        assert!(plan.mounts[1].flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(plan.mounts[2].flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn a_resolv_conf_link_to_nothing_is_noted_not_followed_out() {
        let tmp = fake_root();
        symlink("/run/systemd/resolve/stub-resolv.conf", tmp.path().join("etc/resolv.conf")).unwrap();
        let plan = plan(tmp.path(), &[], env(&[])).unwrap();
        if Path::new(RESOLV_CONF).exists() {
            assert!(plan.notes.iter().any(|n| n.contains("/etc/resolv.conf is a link to nothing")), "{:?}", plan.notes);
        }
        assert!(!plan.mounts.iter().any(|m| m.target.ends_with("resolv.conf")));
    }

    #[test]
    fn a_directory_without_a_shell_is_no_root() {
        let tmp = tempfile::tempdir().unwrap();
        let err = plan(tmp.path(), &[], env(&[])).unwrap_err();
        assert!(err.to_string().contains("not a root file system"), "{err}");
        let err = plan(&tmp.path().join("missing"), &[], env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("cannot use"), "{err}");
    }

    #[test]
    fn steps_survive_the_pipe() {
        for step in [Step::DeathSignal, Step::Unshare, Step::MakePrivate, Step::Fork, Step::Exec, Step::Mount(3)] {
            assert_eq!(Step::from_code(step.code()), step);
        }
    }
}
