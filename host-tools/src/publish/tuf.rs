//! The TUF side, with tough: signing a repository's metadata when publishing, and on the
//! client verifying it from a pinned root, with the trusted versions kept in a datastore
//! so that a later pull notices rollback and freeze. tough fetches through
//! [`RegistryTransport`], which serves the metadata artifact's layers and an app
//! version's blobs from the registry.
//!
//! tough's errors say what failed in its terms; [`explain`] turns the ones that are
//! attacks (or look like them) into refusals that say what it means for the user.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::{RoleType, Root, Signed, Target};
use tough::{
    ExpirationEnforcement, Repository, RepositoryLoader, Transport, TransportError, TransportErrorKind, TransportStream,
};
use url::Url;

use super::registry::{self, Progress, Registry};

/// tough reaches the registry through [`RegistryTransport`] with these URLs.
pub const METADATA_URL: &str = "appliance-tuf://metadata/";
pub const TARGETS_URL: &str = "appliance-tuf://targets/";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{repo}: the {role} metadata in the registry expired at {expires}: the publisher has not re-signed it, \
         and stale metadata could hide withdrawn or newer versions; refusing it (publish again to renew it)"
    )]
    Expired { repo: String, role: RoleType, expires: String },
    #[error(
        "{repo}: freeze: the registry still serves timestamp version {version}, the one already trusted here, and it \
         expired at {expires}: the timestamp has stopped advancing, so newer versions may be withheld; refusing it"
    )]
    Freeze { repo: String, version: u64, expires: String },
    #[error(
        "{repo}: rollback: the registry serves {role} metadata version {served}, older than version {trusted} \
         already trusted here: old metadata replayed could bring back withdrawn versions; refusing it"
    )]
    Rollback { repo: String, role: String, served: u64, trusted: u64 },
    #[error(
        "{repo}: the {role} metadata is signed by the wrong key ({keys}), not by the {role} key the trusted root \
         lists: it was not made by this repository's publisher; refusing it"
    )]
    WrongKey { repo: String, role: RoleType, keys: String },
    #[error(
        "{repo}: the {role} metadata has {valid} valid signature(s), below its threshold of {threshold}: \
         too few of the trusted {role} keys vouch for it; refusing it"
    )]
    BelowThreshold { repo: String, role: RoleType, valid: u64, threshold: u64 },
    #[error(
        "{repo}: 1.root.json in the registry is not signed by the pinned root key {key_id}: the repository's \
         metadata was made with another root key (wrong key); refusing it"
    )]
    NotPinnedRoot { repo: String, key_id: String },
    #[error(
        "{repo}: the pinned root {pin} is not the root key trusted for this repository since its first pull: \
         wrong key; refusing it"
    )]
    PinConflict { repo: String, pin: String },
    #[error("{path}: not a TUF key (root.pub) or root metadata (root.json): {reason}")]
    BadPin { path: String, reason: String },
    #[error("{repo}: the registry has no {name} in its metadata artifact")]
    NoRootInRegistry { repo: String, name: String },
    #[error("{repo}: cannot verify the metadata: {source}")]
    Verify {
        repo: String,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error(
        "{repo}: the registry's metadata is not signed by the keys in the keys directory ({source}): publish with this repository's keys, or to another repository"
    )]
    NotOurs {
        repo: String,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("cannot sign the metadata of {repo}: {reason}")]
    Sign { repo: String, reason: String },
    #[error("{input:?} is not a lifetime: a number and a unit, s, m, h, d or w (e.g. 365d, 12h)")]
    Lifetime { input: String },
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// How long each role's metadata stays valid after a publish.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub targets: jiff::SignedDuration,
    pub snapshot: jiff::SignedDuration,
    pub timestamp: jiff::SignedDuration,
}

/// `365d`, `12h`, `30m`, `45s`, `2w`, as dtuf's `DTUF_*_LIFETIME` took them.
pub fn parse_lifetime(input: &str) -> Result<jiff::SignedDuration, Error> {
    let bad = || Error::Lifetime { input: input.to_owned() };
    let s = input.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(seconds).map(jiff::SignedDuration::from_secs).ok_or_else(bad)
}

/// tough's window on the registry: metadata files are the layers of the metadata
/// artifact, by file name; targets are the blobs of one app version, registered by the
/// caller once it has checked that version's manifest.
#[derive(Clone)]
pub struct RegistryTransport {
    registry: Registry,
    repository: String,
    metadata: Arc<HashMap<String, OciDescriptor>>,
    targets: Arc<Mutex<HashMap<String, OciDescriptor>>>,
    progress: Arc<Mutex<Option<Progress>>>,
}

impl std::fmt::Debug for RegistryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryTransport").field("repository", &self.repository).finish_non_exhaustive()
    }
}

impl RegistryTransport {
    pub fn new(registry: Registry, repository: &str, metadata: Option<&OciImageManifest>) -> RegistryTransport {
        let files = metadata
            .map(|m| m.layers.iter().filter_map(|l| Some((registry::title(l)?.to_owned(), l.clone()))).collect())
            .unwrap_or_default();
        RegistryTransport {
            registry,
            repository: repository.to_owned(),
            metadata: Arc::new(files),
            targets: Arc::default(),
            progress: Arc::default(),
        }
    }

    /// The blob to serve for each target name.
    pub fn set_targets(&self, targets: HashMap<String, OciDescriptor>) {
        *self.targets.lock().expect("not poisoned") = targets;
    }

    /// Told the bytes read so far of the target being fetched.
    pub fn set_progress(&self, progress: Option<Progress>) {
        *self.progress.lock().expect("not poisoned") = progress;
    }

    /// The registry's copy of a metadata file, if it has one (for explaining refusals).
    pub async fn metadata_file(&self, name: &str) -> Option<Vec<u8>> {
        let descriptor = self.metadata.get(name)?;
        self.registry.blob(&self.repository, descriptor).await.ok()
    }

    /// The names of the metadata files the registry holds.
    pub fn metadata_names(&self) -> impl Iterator<Item = &str> {
        self.metadata.keys().map(String::as_str)
    }
}

#[async_trait]
impl Transport for RegistryTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let not_found = || TransportError::new(TransportErrorKind::FileNotFound, url.as_str());
        let name = url
            .path()
            .strip_prefix('/')
            .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
            .ok_or_else(not_found)?;
        let (descriptor, progress) = match url.host_str() {
            Some("metadata") => (self.metadata.get(&name).cloned(), None),
            Some("targets") => (
                self.targets.lock().expect("not poisoned").get(&name).cloned(),
                self.progress.lock().expect("not poisoned").clone(),
            ),
            _ => return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url.as_str())),
        };
        let descriptor = descriptor.ok_or_else(not_found)?;
        let stream = self
            .registry
            .blob_stream(&self.repository, &descriptor)
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
        let mut read = 0u64;
        let stream = stream.map(move |chunk| {
            let chunk =
                chunk.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e))?;
            read += chunk.len() as u64;
            if let Some(progress) = &progress {
                progress(read);
            }
            Ok::<Bytes, TransportError>(chunk)
        });
        // tough wants a Sync stream; the HTTP body stream is Send only: a mutex makes it so.
        let stream = Mutex::new(stream.boxed());
        Ok(Box::pin(futures::stream::poll_fn(move |cx| stream.lock().expect("not poisoned").poll_next_unpin(cx))))
    }
}

fn urls() -> (Url, Url) {
    (Url::parse(METADATA_URL).expect("a valid URL"), Url::parse(TARGETS_URL).expect("a valid URL"))
}

/// The client's verification: tough walks from `anchor` (a root metadata file trusted
/// beforehand) through newer roots to timestamp, snapshot and targets, refusing expired,
/// rolled back and badly signed metadata; `datastore` keeps what it trusted.
pub async fn load(
    anchor: &[u8],
    transport: RegistryTransport,
    datastore: &Path,
    repo: &str,
) -> Result<Repository, Error> {
    let (metadata_url, targets_url) = urls();
    let result = RepositoryLoader::new(&anchor, metadata_url, targets_url)
        .transport(transport.clone())
        .datastore(datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await;
    match result {
        Ok(repository) => Ok(repository),
        Err(err) => Err(explain(err, &transport, anchor, datastore, repo).await),
    }
}

/// The publisher's view of what is in the registry: signatures checked against its own
/// root metadata, expiry not (publishing is how expired metadata gets renewed).
pub async fn load_published(root: &[u8], transport: RegistryTransport, repo: &str) -> Result<Repository, Error> {
    let (metadata_url, targets_url) = urls();
    RepositoryLoader::new(&root, metadata_url, targets_url)
        .transport(transport)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .map_err(|source| Error::NotOurs { repo: repo.to_owned(), source: Box::new(source) })
}

/// What [`sign`] adds: the target name (`VERSION/FILE`) and its hashes and length.
pub struct NewTarget {
    pub name: String,
    pub target: Target,
}

/// New metadata for the repository: `existing` (as [`load_published`] read it) plus
/// `version`'s targets (replacing that version's earlier ones), each role one version up
/// and valid for its lifetime from `now`. Returns the files to publish, by name.
#[allow(clippy::too_many_arguments)]
pub async fn sign(
    root_metadata: &Path,
    keys: &[Box<dyn KeySource>],
    existing: Option<Repository>,
    version: &str,
    targets: Vec<NewTarget>,
    now: jiff::Timestamp,
    lifetimes: &Lifetimes,
    repo: &str,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let failed = |reason: String| Error::Sign { repo: repo.to_owned(), reason };
    let next = |v: Option<NonZeroU64>| v.map_or(NonZeroU64::MIN, |v| v.saturating_add(1));
    let (targets_v, snapshot_v, timestamp_v, old_names) = match &existing {
        Some(r) => (
            Some(r.targets().signed.version),
            Some(r.snapshot().signed.version),
            Some(r.timestamp().signed.version),
            r.targets().signed.targets.keys().map(|n| n.raw().to_owned()).collect(),
        ),
        None => (None, None, None, Vec::new()),
    };
    let mut editor = match existing {
        Some(repository) => RepositoryEditor::from_repo(root_metadata, repository).await,
        None => RepositoryEditor::new(root_metadata).await,
    }
    .map_err(|e| failed(e.to_string()))?;
    let prefix = format!("{version}/");
    for name in old_names.iter().filter(|n| n.starts_with(&prefix)) {
        let name = tough::TargetName::new(name.as_str()).map_err(|e| failed(e.to_string()))?;
        editor.remove_target(&name).map_err(|e| failed(e.to_string()))?;
    }
    for t in targets {
        editor.add_target(t.name.as_str(), t.target).map_err(|e| failed(e.to_string()))?;
    }
    editor.targets_version(next(targets_v)).map_err(|e| failed(e.to_string()))?;
    editor.targets_expires(now + lifetimes.targets).map_err(|e| failed(e.to_string()))?;
    editor
        .snapshot_version(next(snapshot_v))
        .snapshot_expires(now + lifetimes.snapshot)
        .timestamp_version(next(timestamp_v))
        .timestamp_expires(now + lifetimes.timestamp);
    let signed = editor.sign(keys).await.map_err(|e| failed(e.to_string()))?;
    let dir = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
    signed.write(dir.path()).await.map_err(|e| failed(e.to_string()))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).map_err(|e| failed(e.to_string()))? {
        let entry = entry.map_err(|e| failed(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).map_err(|e| failed(e.to_string()))?;
        files.push((name, bytes));
    }
    files.sort();
    Ok(files)
}

/// The trust anchor from what the user pinned: a root metadata file as it is, or a root
/// public key, which must have signed the registry's `1.root.json` (that file is then
/// the anchor). Returns the anchor's bytes.
pub async fn anchor_from_pin(
    pin: &[u8],
    pin_name: &str,
    transport: &RegistryTransport,
    repo: &str,
) -> Result<Vec<u8>, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(pin).map_err(|e| Error::BadPin { path: pin_name.to_owned(), reason: e.to_string() })?;
    if value.get("signed").is_some() {
        let root: Signed<Root> = serde_json::from_value(value)
            .map_err(|e| Error::BadPin { path: pin_name.to_owned(), reason: e.to_string() })?;
        root.signed.verify_role(&root).map_err(|e| Error::BadPin {
            path: pin_name.to_owned(),
            reason: format!("not signed by its own root key: {e}"),
        })?;
        return Ok(pin.to_vec());
    }
    let key: tough::schema::key::Key = serde_json::from_value(value)
        .map_err(|e| Error::BadPin { path: pin_name.to_owned(), reason: e.to_string() })?;
    let key_id = key.key_id().map_err(|e| Error::BadPin { path: pin_name.to_owned(), reason: e.to_string() })?;
    let name = "1.root.json";
    let first = transport
        .metadata_file(name)
        .await
        .ok_or_else(|| Error::NoRootInRegistry { repo: repo.to_owned(), name: name.to_owned() })?;
    let not_pinned = || Error::NotPinnedRoot { repo: repo.to_owned(), key_id: hex::encode(&key_id) };
    let root: Signed<Root> = serde_json::from_slice(&first).map_err(|_| not_pinned())?;
    // The pinned key alone, as the root role's only key: does it vouch for this file?
    let mut pinned = root.signed.clone();
    pinned.keys = HashMap::from([(key_id.clone(), key)]);
    if let Some(role) = pinned.roles.get_mut(&RoleType::Root) {
        role.keyids = vec![key_id.clone()];
        role.threshold = NonZeroU64::MIN;
    }
    pinned.verify_role(&root).map_err(|_| not_pinned())?;
    if !root.signed.roles.get(&RoleType::Root).is_some_and(|r| r.keyids.contains(&key_id)) {
        return Err(not_pinned());
    }
    Ok(first)
}

/// Whether `pin` (a key or root metadata) agrees with the root trusted in `trusted`.
pub fn pin_matches(pin: &[u8], trusted: &[u8]) -> bool {
    let Ok(trusted) = serde_json::from_slice::<Signed<Root>>(trusted) else { return false };
    let trusted_ids = trusted.signed.roles.get(&RoleType::Root).map(|r| r.keyids.clone()).unwrap_or_default();
    if let Ok(root) = serde_json::from_slice::<Signed<Root>>(pin) {
        let ids = root.signed.roles.get(&RoleType::Root).map(|r| r.keyids.clone()).unwrap_or_default();
        return ids.iter().any(|id| trusted_ids.contains(id));
    }
    match serde_json::from_slice::<tough::schema::key::Key>(pin).ok().and_then(|k| k.key_id().ok()) {
        Some(id) => trusted_ids.contains(&id),
        None => false,
    }
}

/// Version and expiry of a metadata file as the registry serves it.
fn version_and_expiry(bytes: &[u8]) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some((v["signed"]["version"].as_u64()?, v["signed"]["expires"].as_str()?.to_owned()))
}

fn role_file(role: RoleType, transport: &RegistryTransport) -> String {
    match role {
        RoleType::Root => {
            let newest = transport
                .metadata_names()
                .filter_map(|n| n.strip_suffix(".root.json")?.parse::<u64>().ok())
                .max()
                .unwrap_or(1);
            format!("{newest}.root.json")
        }
        other => format!("{other}.json"),
    }
}

/// Turns tough's error into the refusal it amounts to, looking at what the registry
/// serves and what the datastore trusts where tough's error does not say.
async fn explain(
    err: tough::error::Error,
    transport: &RegistryTransport,
    anchor: &[u8],
    datastore: &Path,
    repo: &str,
) -> Error {
    use tough::error::Error as E;
    let repo = repo.to_owned();
    match err {
        E::ExpiredMetadata { role, .. } => {
            let served = transport.metadata_file(&role_file(role, transport)).await;
            let (version, expires) =
                served.as_deref().and_then(version_and_expiry).unwrap_or((0, "an earlier time".into()));
            let trusted = std::fs::read(datastore.join("timestamp.json")).ok();
            let trusted_version = trusted.as_deref().and_then(version_and_expiry).map(|(v, _)| v);
            if role == RoleType::Timestamp && trusted_version.is_some_and(|t| version <= t) {
                Error::Freeze { repo, version, expires }
            } else {
                Error::Expired { repo, role, expires }
            }
        }
        E::OlderMetadata { role, current_version, new_version, .. } => {
            Error::Rollback { repo, role: role.to_string(), served: new_version, trusted: current_version }
        }
        E::OlderSnapshotInTimestamp { snapshot_new, snapshot_old, .. } => {
            Error::Rollback { repo, role: "snapshot".into(), served: snapshot_new, trusted: snapshot_old }
        }
        E::SnapshotRoleRollback { role, old_role_version, new_role_version, .. } => {
            Error::Rollback { repo, role, served: new_role_version, trusted: old_role_version }
        }
        E::VerifyMetadata {
            role, source: tough::schema::Error::SignatureThreshold { threshold, valid, .. }, ..
        } => {
            // The keys the trusted root lists for the role: the newest root trusted so far.
            let trusted_root = std::fs::read(datastore.join("root.json")).unwrap_or_else(|_| anchor.to_vec());
            let trusted_ids: Vec<String> = serde_json::from_slice::<Signed<Root>>(&trusted_root)
                .ok()
                .and_then(|r| r.signed.roles.get(&role).map(|k| k.keyids.iter().map(hex::encode).collect()))
                .unwrap_or_default();
            let served = transport.metadata_file(&role_file(role, transport)).await.unwrap_or_default();
            let signers: Vec<String> = serde_json::from_slice::<serde_json::Value>(&served)
                .ok()
                .and_then(|v| {
                    v["signatures"].as_array().map(|sigs| {
                        sigs.iter().filter_map(|s| s["keyid"].as_str().map(String::from)).collect::<Vec<_>>()
                    })
                })
                .unwrap_or_default();
            let strangers: Vec<String> = signers.into_iter().filter(|k| !trusted_ids.contains(k)).collect();
            if valid == 0 && !strangers.is_empty() {
                let keys =
                    strangers.iter().map(|k| format!("key {}", &k[..k.len().min(16)])).collect::<Vec<_>>().join(", ");
                Error::WrongKey { repo, role, keys }
            } else {
                Error::BelowThreshold { repo, role, valid, threshold }
            }
        }
        source => Error::Verify { repo, source: Box::new(source) },
    }
}

/// Whether an error from reading a target says its bytes are not the signed ones (a
/// hash or length mismatch, found by tough or by oci-client's digest check).
pub fn is_content_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<tough::error::Error>()
            && matches!(t, tough::error::Error::HashMismatch { .. } | tough::error::Error::MaxSizeExceeded { .. })
        {
            return true;
        }
        if e.downcast_ref::<oci_client::errors::DigestError>().is_some() {
            return true;
        }
        if let Some(oci_client::errors::OciDistributionError::DigestError(_)) =
            e.downcast_ref::<oci_client::errors::OciDistributionError>()
        {
            return true;
        }
        if let Some(registry::Error::Protocol {
            source: oci_client::errors::OciDistributionError::DigestError(_),
            ..
        }) = e.downcast_ref::<registry::Error>()
        {
            return true;
        }
        // io::Error's source skips the error it wraps: look inside.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && is_content_mismatch(inner)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_take_a_number_and_a_unit() {
        for (input, secs) in [("45s", 45), ("30m", 1800), ("12h", 43_200), ("365d", 365 * 86_400), ("2w", 14 * 86_400)]
        {
            assert_eq!(parse_lifetime(input).unwrap(), jiff::SignedDuration::from_secs(secs), "{input}");
        }
        for input in ["", "d", "10", "0d", "-1d", "1y", "1.5d", "99999999999999999w"] {
            let err = parse_lifetime(input).unwrap_err().to_string();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
        }
    }

    #[test]
    fn a_pinned_key_must_have_signed_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let far = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let ours = super::super::keys::init(&tmp.path().join("a"), far).unwrap();
        let theirs = super::super::keys::init(&tmp.path().join("b"), far).unwrap();
        let root = std::fs::read(&ours.root_metadata).unwrap();
        let our_key = std::fs::read(&ours.root_public_key).unwrap();
        let their_key = std::fs::read(&theirs.root_public_key).unwrap();
        assert!(pin_matches(&our_key, &root));
        assert!(pin_matches(&root, &root));
        assert!(!pin_matches(&their_key, &root));
        assert!(!pin_matches(b"not json", &root));
    }
}
