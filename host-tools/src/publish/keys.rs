//! The keys of a repository's four TUF roles, and its root metadata.
//!
//! `appliance keys init DIR` writes:
//!
//! - `DIR/root/root.pem`: the root key, which signs `root.json` only. Kept apart so that it
//!   can go offline (a USB stick, a safe): publishing never reads it.
//! - `DIR/online/{targets,snapshot,timestamp}.pem`: the keys `appliance publish` signs with.
//! - `DIR/root.json`: the root metadata (version 1), signed by the root key; it lists the
//!   four public keys. Public: it goes to the registry as `1.root.json`.
//! - `DIR/root.pub`: the root public key (TUF key JSON), the one thing clients pin
//!   (`appliance pull --root-key`).
//!
//! Private keys are Ed25519 in PKCS#8 PEM, mode 0600 in 0700 directories; with
//! `APPLIANCE_<ROLE>_KEY_PASSPHRASE` in the environment (as dtuf read
//! `DTUF_<ROLE>_KEY_PASSWORD`) a key is encrypted with it (PBES2: scrypt, AES-256-CBC),
//! and the same variable unlocks it when publishing.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::Ed25519KeyPair;
use pkcs8::der::pem::LineEnding;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, SecretDocument};
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};
use tough::sign::Sign;

use crate::host::fs_error::{FsError, io_error};

/// The file names under a keys directory.
pub const ROOT_DIR: &str = "root";
pub const ONLINE_DIR: &str = "online";
pub const ROOT_METADATA: &str = "root.json";
pub const ROOT_PUBLIC_KEY: &str = "root.pub";

/// The four roles, in the order their keys are made.
pub const ROLES: [RoleType; 4] = [RoleType::Root, RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{} already holds keys ({}): keys are never overwritten; pick another directory", dir.display(), existing.display())]
    Exists { dir: PathBuf, existing: PathBuf },
    #[error("{} is missing: is {} a directory made by `appliance keys init`?", path.display(), dir.display())]
    Missing { dir: PathBuf, path: PathBuf },
    #[error("{} can be read by others (mode {mode:o}): a signing key must be private; chmod 600 it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{} is encrypted: set {var} to its passphrase", path.display())]
    NeedsPassphrase { path: PathBuf, var: String },
    #[error("cannot decrypt {} with the passphrase in {var}: {reason}", path.display())]
    WrongPassphrase { path: PathBuf, var: String, reason: String },
    #[error("{} is not a PKCS#8 private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot make a {role} key: {reason}")]
    Generate { role: RoleType, reason: String },
    #[error("cannot sign the root metadata: {0}")]
    Sign(String),
}

/// The environment variable holding a role's passphrase.
pub fn passphrase_var(role: RoleType) -> String {
    format!("APPLIANCE_{}_KEY_PASSPHRASE", role.to_string().to_uppercase())
}

fn key_path(dir: &Path, role: RoleType) -> PathBuf {
    let sub = if role == RoleType::Root { ROOT_DIR } else { ONLINE_DIR };
    dir.join(sub).join(format!("{role}.pem"))
}

/// What [`init`] wrote.
#[derive(Debug)]
pub struct Initialised {
    pub root_metadata: PathBuf,
    pub root_public_key: PathBuf,
    /// Role, key file, key id (hex).
    pub keys: Vec<(RoleType, PathBuf, String)>,
    pub encrypted: Vec<RoleType>,
}

/// Makes the four keys and the signed root metadata in `dir` (created if missing; refused
/// if it already holds keys). Passphrases come from [`passphrase_var`].
pub fn init(dir: &Path, root_expires: jiff::Timestamp) -> Result<Initialised, Error> {
    for sub in [ROOT_DIR, ONLINE_DIR, ROOT_METADATA] {
        let existing = dir.join(sub);
        if existing.exists() {
            return Err(Error::Exists { dir: dir.to_owned(), existing });
        }
    }
    let rng = SystemRandom::new();
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in [ROOT_DIR, ONLINE_DIR] {
        let path = dir.join(sub);
        builder.create(&path).map_err(io_error("create", &path))?;
    }
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    let mut written = Vec::new();
    let mut encrypted = Vec::new();
    let mut root_source = None;
    for role in ROLES {
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| Error::Generate { role, reason: e.to_string() })?;
        let der = doc.as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| Error::Generate { role, reason: e.to_string() })?;
        let key = pair.tuf_key();
        let id = key.key_id().map_err(|e| Error::Generate { role, reason: e.to_string() })?;
        let path = key_path(dir, role);
        let passphrase = std::env::var(passphrase_var(role)).ok().filter(|p| !p.is_empty());
        let pem = to_pem(&der, passphrase.as_deref(), &rng).map_err(|reason| Error::Generate { role, reason })?;
        write_private(&path, pem.as_bytes())?;
        if passphrase.is_some() {
            encrypted.push(role);
        }
        written.push((role, path.clone(), hex::encode(&id)));
        keys.insert(id.clone(), key);
        roles.insert(role, RoleKeys { keyids: vec![id], threshold: NonZeroU64::MIN, _extra: HashMap::new() });
        if role == RoleType::Root {
            root_source = Some(LoadedKey { path, der });
        }
    }
    let root = Root {
        spec_version: "1.0.0".to_owned(),
        // One manifest holds all the metadata and is replaced at once (docs/publish.md):
        // nothing needs versioned file names.
        consistent_snapshot: false,
        version: NonZeroU64::MIN,
        expires: root_expires,
        keys,
        roles,
        _extra: HashMap::new(),
    };
    let root_key = root.keys[&root.roles[&RoleType::Root].keyids[0]].clone();
    let sources: Vec<Box<dyn KeySource>> = vec![Box::new(root_source.expect("the root key is made first"))];
    let holder = KeyHolder::Root(root.clone());
    let signed = super::runtime::block_on(SignedRole::new(root, &holder, &sources, &rng))
        .map_err(|e| Error::Sign(e.to_string()))?;
    let root_metadata = dir.join(ROOT_METADATA);
    fs::write(&root_metadata, signed.buffer()).map_err(io_error("write", &root_metadata))?;
    let root_public_key = dir.join(ROOT_PUBLIC_KEY);
    let mut json = serde_json::to_string_pretty(&root_key).expect("a TUF key serialises");
    json.push('\n');
    fs::write(&root_public_key, json).map_err(io_error("write", &root_public_key))?;
    Ok(Initialised { root_metadata, root_public_key, keys: written, encrypted })
}

fn to_pem(der: &[u8], passphrase: Option<&str>, rng: &SystemRandom) -> Result<String, String> {
    let info = PrivateKeyInfo::try_from(der).map_err(|e| e.to_string())?;
    let (doc, label) = match passphrase {
        Some(pass) => {
            let mut salt = [0u8; 16];
            let mut iv = [0u8; 16];
            rng.fill(&mut salt).map_err(|e| e.to_string())?;
            rng.fill(&mut iv).map_err(|e| e.to_string())?;
            // 2^15 × 8 × 128 bytes: 32 MiB and a fraction of a second per unlock.
            let cost = pkcs8::pkcs5::scrypt::Params::new(15, 8, 1, 32).map_err(|e| e.to_string())?;
            let params =
                pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256cbc(cost, &salt, &iv).map_err(|e| e.to_string())?;
            (info.encrypt_with_params(params, pass).map_err(|e| e.to_string())?, "ENCRYPTED PRIVATE KEY")
        }
        None => (SecretDocument::try_from(der).map_err(|e| e.to_string())?, "PRIVATE KEY"),
    };
    Ok(doc.to_pem(label, LineEnding::LF).map_err(|e| e.to_string())?.to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error("create", path))?;
    file.write_all(bytes).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("write", path))
}

/// A private key read from its file and decrypted: what tough signs with.
pub struct LoadedKey {
    path: PathBuf,
    der: Vec<u8>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey").field("path", &self.path).finish_non_exhaustive()
    }
}

#[async_trait]
impl KeySource for LoadedKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(tough::sign::parse_keypair(&self.der)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err(format!("{}: keys are written by `appliance keys init` only", self.path.display()).into())
    }
}

/// Reads a role's key from `dir`, decrypting it with its passphrase variable when needed.
pub fn load(dir: &Path, role: RoleType) -> Result<LoadedKey, Error> {
    let path = key_path(dir, role);
    let meta = fs::metadata(&path).map_err(|_| Error::Missing { dir: dir.to_owned(), path: path.clone() })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Exposed { path, mode });
    }
    let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
    let bad = |reason: String| Error::BadKey { path: path.clone(), reason };
    let (label, doc) = SecretDocument::from_pem(&text).map_err(|e| bad(e.to_string()))?;
    let der = match label {
        "PRIVATE KEY" => doc.as_bytes().to_vec(),
        "ENCRYPTED PRIVATE KEY" => {
            let var = passphrase_var(role);
            let pass = std::env::var(&var)
                .ok()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::NeedsPassphrase { path: path.clone(), var: var.clone() })?;
            let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let plain = info.decrypt(pass).map_err(|e| Error::WrongPassphrase {
                path: path.clone(),
                var,
                reason: e.to_string(),
            })?;
            plain.as_bytes().to_vec()
        }
        other => return Err(bad(format!("PEM label {other:?}, expected PRIVATE KEY"))),
    };
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| bad(e.to_string()))?;
    Ok(LoadedKey { path, der })
}

/// What publishing signs with: the online keys and the root metadata, never the root key.
pub struct OnlineKeys {
    pub root_metadata: PathBuf,
    pub sources: Vec<Box<dyn KeySource>>,
}

pub fn load_online(dir: &Path) -> Result<OnlineKeys, Error> {
    let root_metadata = dir.join(ROOT_METADATA);
    if !root_metadata.is_file() {
        return Err(Error::Missing { dir: dir.to_owned(), path: root_metadata });
    }
    let mut sources: Vec<Box<dyn KeySource>> = Vec::new();
    for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        sources.push(Box::new(load(dir, role)?));
    }
    Ok(OnlineKeys { root_metadata, sources })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> jiff::Timestamp {
        jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)
    }

    #[test]
    fn init_keeps_the_root_key_apart_private_and_signs_root_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let made = init(&dir, far()).unwrap();
        assert_eq!(made.keys.len(), 4);
        for (role, path, _) in &made.keys {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{role} key");
            let parent = path.parent().unwrap().file_name().unwrap();
            assert_eq!(parent == ROOT_DIR, *role == RoleType::Root, "{}", path.display());
        }
        let root: tough::schema::Signed<Root> =
            serde_json::from_slice(&fs::read(&made.root_metadata).unwrap()).unwrap();
        root.signed.verify_role(&root).expect("root.json is signed by the root key it lists");
        assert!(!fs::read_to_string(&made.root_metadata).unwrap().contains("PRIVATE"));
        let online = load_online(&dir).unwrap();
        assert_eq!(online.sources.len(), 3);
        let err = init(&dir, far()).unwrap_err().to_string();
        assert!(err.contains("already holds keys"), "{err}");
    }

    #[test]
    fn an_exposed_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), far()).unwrap();
        let path = key_path(tmp.path(), RoleType::Targets);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(tmp.path(), RoleType::Targets).unwrap_err().to_string();
        assert!(err.contains("can be read by others") && err.contains("targets.pem"), "{err}");
    }

    #[test]
    fn pem_round_trips_with_and_without_a_passphrase() {
        let rng = SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref().to_vec();
        let plain = to_pem(&der, None, &rng).unwrap();
        assert!(plain.starts_with("-----BEGIN PRIVATE KEY-----"));
        let locked = to_pem(&der, Some("sesame"), &rng).unwrap();
        assert!(locked.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let (_, doc) = SecretDocument::from_pem(&locked).unwrap();
        let info = EncryptedPrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
        assert_eq!(info.decrypt("sesame").unwrap().as_bytes(), der.as_slice());
        assert!(info.decrypt("wrong").is_err());
    }
}
