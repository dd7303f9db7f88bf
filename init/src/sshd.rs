//! `appEnd=sshd`: an SSH server from the image, supervised until the appliance is told to
//! stop, with a console shell beside it when the image has a shell.
//!
//! The server is OpenSSH's `sshd` or Dropbear, whichever the image has (`appliance
//! build` with `[ssh]` puts one there with its configuration, host key and
//! `authorized_keys`; see docs/protocol.md). It runs in the foreground (`sshd -D`,
//! `dropbear -F`) as our child, logging to the console, and is restarted with a bounded
//! backoff when it dies. Its session processes are reaped by the supervisor like any
//! orphan.
//!
//! The loop ends when the console shell exits (as the original: `sshd`, then a console
//! shell, then power off) or on a stop request (power button, SIGTERM, Ctrl-Alt-Del);
//! without a console shell only a stop request ends it. The caller then shuts down.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;
use rustix::fs::Mode;
use rustix::process::Pid;

use crate::status::StatusWriter;
use crate::supervisor::{Command, Stdio, Supervisor, now};

/// Which server an image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    OpenSsh,
    Dropbear,
}

/// Where servers are looked for, best first.
pub const CANDIDATES: [(&str, Server); 5] = [
    ("/usr/sbin/sshd", Server::OpenSsh),
    ("/sbin/sshd", Server::OpenSsh),
    ("/usr/sbin/dropbear", Server::Dropbear),
    ("/sbin/dropbear", Server::Dropbear),
    ("/usr/bin/dropbear", Server::Dropbear),
];

/// OpenSSH's privilege-separation directory (Debian's build); /run is a fresh tmpfs.
pub const PRIVSEP_DIR: &str = "/run/sshd";
/// Generates OpenSSH's host keys at boot (`ssh-keygen -A`) when the image has none.
const SSH_KEYGEN: [&str; 2] = ["/usr/bin/ssh-keygen", "/bin/ssh-keygen"];

/// A server that runs for this long is considered healthy again: its next failure
/// restarts it at once.
const HEALTHY: Duration = Duration::from_secs(60);
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The first server of [`CANDIDATES`] for which `exists` is true.
pub fn find(exists: impl Fn(&str) -> bool) -> Option<(&'static str, Server)> {
    CANDIDATES.iter().copied().find(|(path, _)| exists(path))
}

/// The server's command line: in the foreground, logging to stderr (the console).
/// Dropbear: `-s` refuses passwords (OpenSSH's come from its sshd_config); `-R` makes a
/// host key at first boot for an image built without one.
pub fn argv(path: &str, server: Server) -> Vec<String> {
    let args: &[&str] = match server {
        Server::OpenSsh => &["-D", "-e"],
        Server::Dropbear => &["-F", "-E", "-s", "-R"],
    };
    let mut v = vec![String::from(path)];
    v.extend(args.iter().map(|a| String::from(*a)));
    v
}

/// How long to wait before restart number `failures` (1, 2, 4, ... capped): a server
/// that cannot start must not spin.
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(5)).min(MAX_BACKOFF),
    }
}

/// OpenSSH's host keys, any of which will do.
pub const OPENSSH_HOST_KEYS: [&str; 3] =
    ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_rsa_key"];

/// Runs the server (and `shell` on `tty`, reported to `status`) until the shell exits or a
/// stop is requested. Returns false when the image has no server (nothing was started).
pub fn serve(sup: &mut Supervisor, env: &[String], shell: Option<(&str, &str)>, status: &StatusWriter) -> bool {
    let exists = |p: &str| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok();
    let Some((path, server)) = find(exists) else {
        return false;
    };
    if server == Server::OpenSsh {
        prepare_openssh(sup, env);
    }
    let argv = argv(path, server);
    log::info!("ssh server: {}", argv.join(" "));
    let mut failures = 0;
    let mut started = now();
    let mut sshd = start(sup, &argv, env);
    let mut restart_at = None;
    let shell = shell.and_then(|(shell, tty)| {
        crate::console::write_err(
            format!("appliance-init: sshd is running; console shell on {tty}; exit it to power off\n").as_bytes(),
        );
        let argv = [String::from(shell)];
        status.shell("end", tty);
        sup.spawn(&Command { argv: &argv, env, stdio: Stdio::Terminal(String::from(tty)) }).ok()
    });
    if shell.is_none() {
        crate::console::write_err(
            b"appliance-init: sshd is running; no console shell: `appliance stop`, the power button, SIGTERM or Ctrl-Alt-Del power off\n",
        );
    }
    loop {
        if sup.stop_requested() {
            return true;
        }
        if let Some(pid) = shell
            && sup.take_exit(pid).is_some()
        {
            log::info!("the console shell exited: powering off");
            return true;
        }
        if let Some(pid) = sshd
            && let Some(exit) = sup.take_exit(pid)
        {
            failures = if now() - started >= HEALTHY { 1 } else { failures + 1 };
            let wait = backoff(failures);
            log::warn!("{path} ended with status {}: restarting in {} s", exit.status(), wait.as_secs());
            sshd = None;
            restart_at = Some(now() + wait);
        }
        if sshd.is_none()
            && let Some(at) = restart_at
            && now() >= at
        {
            started = now();
            sshd = start(sup, &argv, env);
            restart_at = None;
            if sshd.is_none() {
                failures += 1;
                restart_at = Some(now() + backoff(failures));
            }
        }
        let tick = restart_at.map_or(Duration::from_secs(1), |at| at.saturating_sub(now()).min(Duration::from_secs(1)));
        sup.pump(Some(tick));
    }
}

fn start(sup: &mut Supervisor, argv: &[String], env: &[String]) -> Option<Pid> {
    sup.spawn(&Command { argv, env, stdio: Stdio::Inherit }).ok()
}

/// The privilege-separation directory, and host keys when the image brought none.
fn prepare_openssh(sup: &mut Supervisor, env: &[String]) {
    let _ = rustix::fs::mkdir(PRIVSEP_DIR, Mode::from_raw_mode(0o755));
    if OPENSSH_HOST_KEYS.iter().any(|k| rustix::fs::access(*k, rustix::fs::Access::EXISTS).is_ok()) {
        return;
    }
    let Some(keygen) = SSH_KEYGEN.iter().find(|p| rustix::fs::access(**p, rustix::fs::Access::EXEC_OK).is_ok()) else {
        log::error!("no host key in /etc/ssh and no ssh-keygen to make one: sshd will not start");
        return;
    };
    log::info!("no host key in the image: generating one");
    let _ = rustix::fs::mkdir("/etc/ssh", Mode::from_raw_mode(0o755));
    let argv = [String::from(*keygen), String::from("-A")];
    sup.run(&Command { argv: &argv, env, stdio: Stdio::Inherit });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_first_then_dropbear() {
        assert_eq!(find(|p| p == "/usr/sbin/dropbear" || p == "/sbin/sshd"), Some(("/sbin/sshd", Server::OpenSsh)));
        assert_eq!(find(|p| p == "/usr/bin/dropbear"), Some(("/usr/bin/dropbear", Server::Dropbear)));
        assert_eq!(find(|_| false), None);
    }

    #[test]
    fn servers_run_in_the_foreground_without_passwords() {
        assert_eq!(argv("/usr/sbin/sshd", Server::OpenSsh), ["/usr/sbin/sshd", "-D", "-e"]);
        assert_eq!(argv("/usr/sbin/dropbear", Server::Dropbear), ["/usr/sbin/dropbear", "-F", "-E", "-s", "-R"]);
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
