//! Remote access to an appliance, the client half: the `ssh` arguments that log in to a
//! running appliance with the keys its build left in the app dir ([`crate::image::ssh`]
//! is the server half, and says which keys).

use std::path::{Path, PathBuf};

use crate::image::ssh::{CLIENT_KEY, KNOWN_HOSTS, SSH_DIR};

/// The app dir's `known_hosts`, with the host key of its last build.
pub fn known_hosts(app_dir: &Path) -> PathBuf {
    app_dir.join(SSH_DIR).join(KNOWN_HOSTS)
}

/// The `HostKeyAlias` recorded in a `known_hosts` written by
/// [`crate::image::ssh::record_host_key`].
pub fn recorded_alias(known_hosts: &str) -> Option<&str> {
    known_hosts.lines().find_map(|l| l.split_whitespace().next())
}

/// Where the app dir's generated client key is, if it has one.
pub fn client_key(app_dir: &Path) -> Option<PathBuf> {
    Some(app_dir.join(SSH_DIR).join(CLIENT_KEY)).filter(|k| k.is_file())
}

/// The `ssh` arguments that reach the appliance of `app_dir` forwarded at `port`: its
/// key (if generated), its recorded host key checked strictly, root on the loopback.
pub fn client_args(app_dir: &Path, alias: &str, port: u16) -> Vec<String> {
    let known_hosts = known_hosts(app_dir);
    let mut args = vec![
        "-o".to_owned(),
        format!("HostKeyAlias={alias}"),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        // Never offer or ask for a password: the appliance has none.
        "-o".to_owned(),
        "PasswordAuthentication=no".to_owned(),
        "-o".to_owned(),
        "KbdInteractiveAuthentication=no".to_owned(),
    ];
    if let Some(key) = client_key(app_dir) {
        args.extend(["-o".to_owned(), "IdentitiesOnly=yes".to_owned(), "-i".to_owned(), key.display().to_string()]);
    }
    args.extend(["-p".to_owned(), port.to_string(), "root@127.0.0.1".to_owned()]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ssh::{HostKey, record_host_key};

    #[test]
    fn the_alias_is_read_back_from_known_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let key = HostKey { private: Vec::new(), public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into() };
        let path = record_host_key(tmp.path(), "appliance-x", &key).unwrap();
        assert_eq!(path, known_hosts(tmp.path()));
        assert_eq!(recorded_alias(&std::fs::read_to_string(path).unwrap()), Some("appliance-x"));
        assert_eq!(recorded_alias(""), None);
    }

    #[test]
    fn client_arguments_pin_the_recorded_host_key() {
        let tmp = tempfile::tempdir().unwrap();
        let args = client_args(tmp.path(), "appliance-x", 2222).join(" ");
        assert!(args.contains("-o HostKeyAlias=appliance-x"), "{args}");
        assert!(args.contains(&format!("-o UserKnownHostsFile={}/ssh/known_hosts", tmp.path().display())), "{args}");
        assert!(args.contains("-o StrictHostKeyChecking=yes"), "{args}");
        assert!(args.ends_with("-p 2222 root@127.0.0.1"), "{args}");
        assert!(!args.contains(" -i "), "no generated key: ssh's own identities");
    }
}
