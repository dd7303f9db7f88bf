//! A private NFS server for one run: nfs-ganesha (user space, from Debian's packages)
//! exporting one host directory, NFSv4 only, on 127.0.0.1 and a free port, so a guest
//! under QEMU's user networking reaches it as `10.0.2.2:<port>` and nothing else can.
//!
//! Why ganesha: the kernel's NFS server is one per host (its exports and port are
//! system-wide, and it needs nfsd in the host kernel), where ganesha runs as a process of
//! our own with its own configuration, port and lifetime. NFSv4 only: no rpcbind, no
//! mountd, no lock manager; graceless, so a fresh server accepts writes at once instead of
//! waiting out a 90 s grace period. It needs real root (it changes credentials per
//! request): `appliance run --results` uses it as root only, and says so when asked for it
//! otherwise.
//!
//! Not here: 9p (QEMU serves it itself, see [`crate::vm::qemu::Share9p`]) and the serial
//! stream ([`crate::vm::results::unpack_stream`]).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::process::{find_program, find_program_in};

/// The package that has `ganesha.nfsd`, and the one with its VFS backend.
pub const PACKAGES: &str = "nfs-ganesha nfs-ganesha-vfs";

/// How long the server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to ask for the serial transport instead, in the errors.
const SERIAL: &str = "`appliance run --results-via serial`, `results = \"serial\"` in an experiment";

#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error(
        "ganesha.nfsd not found: install it with `apt-get install {PACKAGES}` (Debian/Ubuntu), or send the \
         results as a serial stream, which needs no server ({SERIAL})"
    )]
    NotInstalled,
    #[error(
        "ganesha's VFS backend (libfsalvfs.so) not found: install it with `apt-get install nfs-ganesha-vfs`, or \
         send the results as a serial stream, which needs no server ({SERIAL})"
    )]
    NoVfs,
    #[error(
        "the NFS server needs root (ganesha changes credentials for every request): run as root, or send the \
         results as a serial stream ({SERIAL}; the default of `appliance run` for other users)"
    )]
    NotRoot,
    #[error("cannot export {path}: {source}")]
    Export {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the NFS server in {path}: {source}")]
    Setup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NFS server did not start ({why}); the end of its log:\n{log}")]
    Start { why: String, log: String },
}

/// The NFS server's program.
const GANESHA: &str = "ganesha.nfsd";

/// Finds `ganesha.nfsd`: in PATH, or where Debian installs it.
pub fn find_ganesha() -> Result<PathBuf, NfsError> {
    find_program(GANESHA).map_or_else(|| find_in(["/usr/bin", "/usr/sbin"]), Ok)
}

fn find_in<D: AsRef<Path>>(dirs: impl IntoIterator<Item = D>) -> Result<PathBuf, NfsError> {
    find_program_in(GANESHA, dirs).ok_or(NfsError::NotInstalled)
}

/// Whether ganesha's VFS backend is installed (a separate package on Debian).
fn vfs_installed() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/ganesha",
        "/usr/lib/aarch64-linux-gnu/ganesha",
        "/usr/lib/ganesha",
        "/usr/lib64/ganesha",
    ]
    .iter()
    .any(|d| Path::new(d).join("libfsalvfs.so").exists())
}

/// The configuration of a server exporting `export` as `/` on 127.0.0.1:`port`, with its
/// state under `work`.
pub fn config(export: &Path, port: u16, work: &Path) -> String {
    format!(
        r#"# Written by appliance for one run.
NFS_CORE_PARAM {{
    # v4 only: no rpcbind, mountd, NLM or rquota to run or reach.
    Protocols = 4;
    NFS_Port = {port};
    # The guest reaches the host's loopback through QEMU's user networking (10.0.2.2);
    # nothing else on the network sees this server.
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    # A new server with no clients to recover: no 90 s grace period before writes.
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
NFS_KRB5 {{
    Active_krb5 = false;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = /;
    Access_Type = RW;
    # The guest writes as root; its files must land, owned by root.
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
LOG {{
    Default_Log_Level = WARN;
}}
"#,
        recovery = work.join("recovery").display(),
        export = export.display(),
    )
}

/// A running server; stopped when dropped.
/// ganesha's program, when a server can be started here: installed with its VFS
/// backend, and run as root.
pub fn usable() -> Result<PathBuf, NfsError> {
    let program = find_ganesha()?;
    if !vfs_installed() {
        return Err(NfsError::NoVfs);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(NfsError::NotRoot);
    }
    Ok(program)
}

#[derive(Debug)]
pub struct NfsServer {
    child: Option<Child>,
    port: u16,
    export: PathBuf,
    log: PathBuf,
    _work: crate::host::scratch::Scratch,
}

impl NfsServer {
    /// Starts ganesha exporting `export` (an existing directory) and waits until it
    /// accepts connections, at most [`START_TIMEOUT`].
    pub fn start(export: &Path) -> Result<NfsServer, NfsError> {
        let program = usable()?;
        let export = export.canonicalize().map_err(|source| NfsError::Export { path: export.to_path_buf(), source })?;
        let work = crate::host::scratch::dir("appliance-nfs-")
            .map_err(|source| NfsError::Setup { path: std::env::temp_dir(), source })?;
        let setup = |source| NfsError::Setup { path: work.path().to_path_buf(), source };
        std::fs::create_dir(work.path().join("recovery")).map_err(setup)?;
        let port = crate::host::net::free_port().map_err(setup)?;
        let conf = work.path().join("ganesha.conf");
        std::fs::write(&conf, config(&export, port, work.path())).map_err(setup)?;
        let log = work.path().join("ganesha.log");
        let mut command = Command::new(&program);
        crate::host::process::as_our_child(&mut command);
        let child = command
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(work.path().join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| NfsError::Spawn { program: program.clone(), source })?;
        let mut server = NfsServer { child: Some(child), port, export, log, _work: work };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), NfsError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port).into();
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(NfsError::Start { why: format!("ganesha.nfsd exited: {status}"), log: self.log_tail() });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(NfsError::Start {
                    why: format!("port {} not open after {} s", self.port, START_TIMEOUT.as_secs()),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The exported directory (canonical).
    pub fn export(&self) -> &Path {
        &self.export
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits for the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `appResultsTo` value for a guest on QEMU's user network reaching a server on the
/// host's loopback at `port`.
pub fn guest_param(port: u16) -> String {
    format!("nfs:{}:/,port={port}", crate::vm::qemu::HOST_FROM_GUEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_v4_only_on_loopback_graceless_without_root_squash() {
        let c = config(Path::new("/srv/results"), 20490, Path::new("/tmp/w"));
        for line in [
            "Protocols = 4;",
            "NFS_Port = 20490;",
            "Bind_addr = 127.0.0.1;",
            "Enable_NLM = false;",
            "Enable_RQUOTA = false;",
            "Graceless = true;",
            "RecoveryRoot = \"/tmp/w/recovery\";",
            "Path = \"/srv/results\";",
            "Pseudo = /;",
            "Access_Type = RW;",
            "Squash = No_Root_Squash;",
            "Name = VFS;",
        ] {
            assert!(c.contains(line), "{line} missing:\n{c}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn guest_parameter_names_the_host_and_the_port() {
        assert_eq!(guest_param(20490), "nfs:10.0.2.2:/,port=20490");
        let parsed: appliance_cmdline::ResultsTo = guest_param(1).parse().unwrap();
        assert_eq!(parsed.transport(), "nfs");
    }

    #[test]
    fn a_missing_ganesha_says_which_packages_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let e = find_in([empty.path()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ganesha.nfsd not found: install it with `apt-get install nfs-ganesha nfs-ganesha-vfs` (Debian/Ubuntu), or \
             send the results as a serial stream, which needs no server (`appliance run --results-via serial`, \
             `results = \"serial\"` in an experiment)"
        );
        let ganesha = empty.path().join("ganesha.nfsd");
        std::fs::write(&ganesha, "").unwrap();
        assert!(find_in([empty.path()]).is_err(), "not executable: execvp would skip it");
        std::fs::set_permissions(&ganesha, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(find_in([empty.path()]).unwrap(), ganesha);
    }

    #[test]
    fn errors_say_what_to_install() {
        assert!(NfsError::NotInstalled.to_string().contains("apt-get install nfs-ganesha nfs-ganesha-vfs"));
        assert!(NfsError::NoVfs.to_string().contains("apt-get install nfs-ganesha-vfs"));
    }
}
