//! Remote access to an appliance, the server half: the SSH server an image gets with
//! `[ssh]`, and the keys. Logging in is [`crate::vm::ssh`]'s job.
//!
//! Nothing is shared between appliances. Each build generates a new host key (the
//! private half goes into the initrd only; the public half is recorded in the app dir's
//! `ssh/known_hosts` under a `HostKeyAlias`, so `appliance ssh` checks it strictly
//! without ever asking). Logins are by public key only, as root: the user's own public key
//! (`appliance build --ssh-key`), else a key pair generated once per app dir and kept in
//! `<app-dir>/ssh/id_ed25519` (mode 0600, next to a `.gitignore` that keeps it out of any
//! repository). The generated pair is the default rather than `~/.ssh/id_ed25519.pub`: a
//! build does not depend on the builder's home directory (CI, another user, no key yet),
//! and an appliance given to others does not trust the builder's personal key. There is
//! no password at all: root's password field is `x` without a shadow entry, and the
//! servers refuse password and keyboard-interactive logins anyway.
//!
//! The server comes from the host, or from a reference root (`root = "DIR"`): OpenSSH's
//! `sshd` (with `sshd_config`, the privilege-separation user `sshd`; the init creates
//! `/run/sshd` at boot) or Dropbear. Starting and supervising it is the init's job
//! (`appEnd=sshd`).

use crate::host::fs_error::{FsError, io_error};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::archive::cpio::{self, Archive, Entry};
use crate::image::files;
use crate::rootfs::elf::{self, Resolver};
use crate::trace;

/// The app dir's subdirectory with the client key and the recorded host key.
pub const SSH_DIR: &str = "ssh";
/// The generated client key pair (`.pub` beside it).
pub const CLIENT_KEY: &str = "id_ed25519";
/// The host key of the build, as OpenSSH's `known_hosts` line under the alias.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// `[ssh]` in `appliance.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    #[serde(default)]
    pub server: Server,
    /// Take the server and its libraries from this reference root (a debootstrapped
    /// tree, relative to the image directory or absolute) instead of the host.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

/// Which SSH server goes into the image, copied from the host with its libraries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// OpenSSH's `/usr/sbin/sshd` (Debian: openssh-server).
    #[default]
    Openssh,
    /// `/usr/sbin/dropbear` (Debian: dropbear-bin); smaller.
    Dropbear,
}

impl Server {
    /// The server binary on the host, at the path it gets in the image too.
    pub fn binary(self) -> &'static str {
        match self {
            Server::Openssh => "/usr/sbin/sshd",
            Server::Dropbear => "/usr/sbin/dropbear",
        }
    }

    /// The Debian package that has it, for error messages.
    pub fn package(self) -> &'static str {
        match self {
            Server::Openssh => "openssh-server",
            Server::Dropbear => "dropbear-bin",
        }
    }

    /// Where the server reads its ed25519 host key.
    pub fn host_key_path(self) -> &'static str {
        match self {
            Server::Openssh => "/etc/ssh/ssh_host_ed25519_key",
            Server::Dropbear => "/etc/dropbear/dropbear_ed25519_host_key",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program} (install openssh-client{extra})")]
    Spawn {
        program: String,
        extra: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Tool { program: String, stderr: String },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{} is not an SSH public key (expected one line `TYPE BASE64 [COMMENT]`)", path.display())]
    NotAPublicKey { path: PathBuf },
    #[error("[ssh] server {binary} not found in {}: install {package} there", root.display())]
    NoServer { binary: &'static str, package: &'static str, root: PathBuf },
    #[error(transparent)]
    Archive(#[from] cpio::Error),
    #[error("cannot add {binary} to the image")]
    AddServer {
        binary: &'static str,
        #[source]
        source: files::Error,
    },
    #[error("cannot add {binary} to the image")]
    SelectServer {
        binary: &'static str,
        #[source]
        source: trace::Error,
    },
    #[error(transparent)]
    Elf(#[from] elf::Error),
}

/// Runs a key tool and returns its stdout.
fn tool(program: &str, args: &[&OsStr]) -> Result<String, Error> {
    let extra = if program.starts_with("dropbear") { ", dropbear-bin" } else { "" };
    let out = Command::new(program).args(args).output().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        extra,
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: program.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first OpenSSH public key line in `text` (other lines, such as dropbearkey's
/// "Public key portion is:", are skipped), trimmed.
pub fn parse_public_key(text: &str) -> Option<String> {
    text.lines().map(str::trim).find_map(public_key_line)
}

fn public_key_line(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let (kind, blob) = (words.next()?, words.next()?);
    let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    let base64 = blob.len() >= 16 && blob.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (known && base64).then(|| line.to_owned())
}

/// The public key logins are accepted for: `user_key` (a `.pub` file) when given, else
/// the app dir's own pair, generated the first time and kept across rebuilds.
pub fn client_public_key(app_dir: &Path, user_key: Option<&Path>, comment: &str) -> Result<String, Error> {
    if let Some(path) = user_key {
        let text = fs::read_to_string(path).map_err(io_error("read", path))?;
        return parse_public_key(&text).ok_or_else(|| Error::NotAPublicKey { path: path.to_owned() });
    }
    let dir = app_dir.join(SSH_DIR);
    let key = dir.join(CLIENT_KEY);
    let public = dir.join(format!("{CLIENT_KEY}.pub"));
    if !key.is_file() || !public.is_file() {
        make_private_dir(&dir)?;
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(&public);
        let args = ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"].map(OsStr::new);
        tool("ssh-keygen", &[&args[..], &[key.as_os_str()]].concat())?;
        log::info!("generated the login key {}", key.display());
    }
    // ssh refuses a private key others can read.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(io_error("protect", &key))?;
    let text = fs::read_to_string(&public).map_err(io_error("read", &public))?;
    parse_public_key(&text).ok_or(Error::NotAPublicKey { path: public })
}

/// `<app-dir>/ssh`, mode 0700, with a `.gitignore` keeping the keys out of repositories.
fn make_private_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error("protect", dir))?;
    let ignore = dir.join(".gitignore");
    fs::write(&ignore, "# Keys of one appliance: never commit them.\n*\n").map_err(io_error("write", &ignore))?;
    Ok(())
}

/// A host key made for one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The private key in the server's own format.
    pub private: Vec<u8>,
    /// The public key, `ssh-ed25519 BASE64` (OpenSSH format, for known_hosts).
    pub public: String,
}

/// Generates a new ed25519 host key for `server`.
pub fn generate_host_key(server: Server) -> Result<HostKey, Error> {
    let tmp = tempfile::tempdir().map_err(io_error("create", Path::new("a temporary directory")))?;
    let path = tmp.path().join("host_key");
    let public = match server {
        Server::Openssh => {
            let args = ["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"].map(OsStr::new);
            tool("ssh-keygen", &[&args[..], &[path.as_os_str()]].concat())?;
            let pub_path = tmp.path().join("host_key.pub");
            fs::read_to_string(&pub_path).map_err(io_error("read", &pub_path))?
        }
        Server::Dropbear => {
            tool("dropbearkey", &[OsStr::new("-t"), OsStr::new("ed25519"), OsStr::new("-f"), path.as_os_str()])?;
            // "Public key portion is:\nssh-ed25519 AAAA... user@host\nFingerprint: ..."
            tool("dropbearkey", &[OsStr::new("-y"), OsStr::new("-f"), path.as_os_str()])?
        }
    };
    let public = parse_public_key(&public)
        .and_then(|line| {
            let mut w = line.split_whitespace();
            Some(format!("{} {}", w.next()?, w.next()?))
        })
        .ok_or_else(|| Error::NotAPublicKey { path: path.clone() })?;
    let private = fs::read(&path).map_err(io_error("read", &path))?;
    Ok(HostKey { private, public })
}

/// The `HostKeyAlias` an app dir's host key is recorded under.
pub fn host_key_alias(image: &str) -> String {
    format!("appliance-{image}")
}

/// Records the build's host key in `<app-dir>/ssh/known_hosts`, replacing the last one.
pub fn record_host_key(app_dir: &Path, alias: &str, key: &HostKey) -> Result<PathBuf, Error> {
    let dir = app_dir.join(SSH_DIR);
    make_private_dir(&dir)?;
    let path = dir.join(KNOWN_HOSTS);
    fs::write(&path, format!("{alias} {}\n", key.public)).map_err(io_error("write", &path))?;
    Ok(path)
}

/// OpenSSH's configuration: public keys only, root allowed with a key, no PAM (the image
/// has none), nothing that needs files the image lacks.
pub fn sshd_config() -> String {
    [
        "# Written by `appliance build` ([ssh]): public keys only, root with a key, no PAM.",
        "Port 22",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "PidFile none",
        // scp and sftp without an sftp-server binary in the image.
        "Subsystem sftp internal-sftp",
        "",
    ]
    .join("\n")
}

/// `/etc/passwd`: root (no password: `x` and no shadow entry), OpenSSH's
/// privilege-separation user, nobody.
pub fn passwd(shell: &str) -> String {
    format!(
        "root:x:0:0:root:/root:{shell}\n\
         sshd:x:100:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
}

pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Adds the server (from the host, or from the reference root `root`), its
/// configuration, the host key and `authorized_keys` to `archive`. Account files the
/// image already has are kept (a warning says when they lack root).
pub fn add_to_image(
    archive: &mut Archive,
    server: Server,
    root: Option<&Path>,
    authorized_key: &str,
    host_key: &HostKey,
) -> Result<(), Error> {
    let binary = Path::new(server.binary());
    let add_error = |source| Error::AddServer { binary: server.binary(), source };
    let host_root = root.unwrap_or(Path::new("/"));
    if !crate::rootfs::path::host_path(host_root, binary).is_file() {
        return Err(Error::NoServer { binary: server.binary(), package: server.package(), root: host_root.to_owned() });
    }
    match root {
        None => {
            let mut resolver = Resolver::host()?;
            files::add_host_program(archive, &mut resolver, binary).map_err(add_error)?;
        }
        Some(root) => {
            // As `[trace]` does: the program, its loader and libraries, and every
            // directory and symlink on the way, at their paths in the root.
            let wanted = std::collections::BTreeSet::from([binary.to_owned()]);
            let paths = trace::select(root, &wanted, &[], &trace::Exclusions::default())
                .map_err(|source| Error::SelectServer { binary: server.binary(), source })?;
            files::add_root_paths(archive, root, &paths).map_err(add_error)?;
        }
    }

    let shell = ["/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/sh"]
        .into_iter()
        .find(|s| archive.get(s).is_some())
        .unwrap_or("/bin/sh");
    let accounts =
        [("/etc/passwd", passwd(shell)), ("/etc/group", GROUP.to_owned()), ("/etc/shells", format!("{shell}\n"))];
    for (path, text) in accounts {
        match archive.get(path) {
            None => archive.add(Entry::data(path, text, 0o644))?,
            Some(_) => log::warn!("[ssh]: keeping the image's own {path}; it needs root (and for OpenSSH, sshd)"),
        }
    }
    archive.add(Entry::data(server.host_key_path(), host_key.private.clone(), 0o600))?;
    if server == Server::Openssh {
        archive.add(Entry::data(format!("{}.pub", server.host_key_path()), format!("{}\n", host_key.public), 0o644))?;
        archive.add(Entry::data("/etc/ssh/sshd_config", sshd_config(), 0o644))?;
    }
    // sshd's StrictModes: the key file and its directory belong to root, nobody else
    // may write (or here, read) them.
    archive.add(Entry::directory("/root/.ssh", 0o700))?;
    archive.add(Entry::data("/root/.ssh/authorized_keys", format!("{authorized_key}\n"), 0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::cpio::Kind;

    #[test]
    fn public_keys_are_recognised() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO7d user@host";
        assert_eq!(parse_public_key(&format!("\n{key}\n")).as_deref(), Some(key));
        assert!(parse_public_key("# comment\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAy").is_some());
        for bad in ["", "-----BEGIN OPENSSH PRIVATE KEY-----", "ssh-ed25519", "ssh-ed25519 not*base64!!!!!!!!!!"] {
            assert_eq!(parse_public_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_server_refuses_passwords() {
        let config = sshd_config();
        for line in [
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
        ] {
            assert!(config.lines().any(|l| l == line), "{line}");
        }
        assert!(passwd("/bin/sh").starts_with("root:x:0:0:root:/root:/bin/sh\nsshd:x:"));
    }

    #[test]
    fn a_generated_client_key_is_private_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let first = client_public_key(tmp.path(), None, "test").unwrap();
        assert!(first.starts_with("ssh-ed25519 "), "{first}");
        let key = tmp.path().join("ssh/id_ed25519");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(tmp.path().join("ssh")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::read_to_string(tmp.path().join("ssh/.gitignore")).unwrap().lines().last(), Some("*"));
        assert_eq!(client_public_key(tmp.path(), None, "test").unwrap(), first, "reused on rebuild");
        // The user's own key instead.
        let mine = tmp.path().join("mine.pub");
        fs::write(&mine, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine me@there\n").unwrap();
        assert_eq!(
            client_public_key(tmp.path(), Some(&mine), "x").unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine me@there"
        );
        fs::write(&mine, "password123\n").unwrap();
        assert!(
            client_public_key(tmp.path(), Some(&mine), "x").unwrap_err().to_string().contains("not an SSH public key")
        );
    }

    #[test]
    fn host_keys_differ_per_build_and_are_recorded_under_the_alias() {
        let a = generate_host_key(Server::Openssh).unwrap();
        let b = generate_host_key(Server::Openssh).unwrap();
        assert_ne!(a.public, b.public);
        assert!(String::from_utf8_lossy(&a.private).contains("OPENSSH PRIVATE KEY"));
        let tmp = tempfile::tempdir().unwrap();
        let path = record_host_key(tmp.path(), "appliance-x", &a).unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert_eq!(text, format!("appliance-x {}\n", a.public));
    }

    #[test]
    fn the_image_gets_server_config_keys_and_accounts() {
        if !Path::new(Server::Openssh.binary()).is_file() {
            eprintln!("skipped: no {} on this host", Server::Openssh.binary());
            return;
        }
        let mut archive = Archive::new();
        archive.add(Entry::data("/bin/bash", "x", 0o755)).unwrap();
        let host = HostKey { private: b"PRIVATE".to_vec(), public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into() };
        add_to_image(&mut archive, Server::Openssh, None, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser u@h", &host)
            .unwrap();
        let data = |path: &str| match archive.get(path).map(|e| (e.kind().clone(), e.mode())) {
            Some((Kind::Data(d), mode)) => (String::from_utf8_lossy(&d).into_owned(), mode & 0o7777),
            other => panic!("{path}: {other:?}"),
        };
        assert!(archive.get("/usr/sbin/sshd").is_some());
        assert_eq!(
            data("/root/.ssh/authorized_keys"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser u@h\n".into(), 0o600)
        );
        assert_eq!(archive.get("/root/.ssh").unwrap().mode() & 0o7777, 0o700);
        assert_eq!(data("/etc/ssh/ssh_host_ed25519_key"), ("PRIVATE".into(), 0o600));
        assert!(data("/etc/passwd").0.starts_with("root:x:0:0:root:/root:/bin/bash\n"));
        assert!(data("/etc/ssh/sshd_config").0.contains("PasswordAuthentication no"));
    }

    #[test]
    fn the_server_can_come_from_a_reference_root() {
        if !Path::new(Server::Openssh.binary()).is_file() {
            eprintln!("skipped: no {} on this host", Server::Openssh.binary());
            return;
        }
        let host = HostKey { private: b"PRIVATE".to_vec(), public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into() };
        // The host as its own reference root: the same files, found the root's way.
        let mut archive = Archive::new();
        add_to_image(
            &mut archive,
            Server::Openssh,
            Some(Path::new("/")),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIU",
            &host,
        )
        .unwrap();
        assert!(matches!(archive.get("/usr/sbin/sshd").map(Entry::kind), Some(Kind::File { .. })));
        assert!(archive.entries().any(|e| e.path().ends_with("libcrypto.so.3")), "sshd's libraries come along");
        let empty = tempfile::tempdir().unwrap();
        let err = add_to_image(&mut Archive::new(), Server::Dropbear, Some(empty.path()), "k", &host).unwrap_err();
        assert!(err.to_string().contains("/usr/sbin/dropbear not found in"), "{err}");
    }
}
