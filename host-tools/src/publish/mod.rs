//! Publishing app dirs to an OCI registry with TUF metadata, and pulling and updating
//! them safely: `appliance keys init`, `publish`, `pull`, `update`, and `run
//! REGISTRY/REPO:VERSION`. The layout in the registry is docs/publish.md.
//!
//! - [`reference`]: `REGISTRY/REPO[:VERSION]` and the order of versions;
//! - [`keys`]: the four roles' keys and the root metadata;
//! - [`registry`]: the artifacts in the registry (oci-client), credentials;
//! - [`tuf`]: signing and verifying the metadata (tough), and what its refusals mean;
//! - [`runtime`]: the current-thread runtime they run on;
//! - this module: the operations, and app dirs written atomically.
//!
//! tough and oci-client are async; each operation runs on a current-thread tokio runtime
//! of its own ([`block_on`]), and the functions here block. Nothing here prints: progress
//! goes to a [`Reporter`].

pub mod keys;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod tuf;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tough::schema::Target;

use crate::host::fs_error::{FsError, io_error};
pub use reference::Reference;
use registry::{
    APP_ARTIFACT_TYPE, APP_FILE_MEDIA_TYPE, METADATA_ARTIFACT_TYPE, METADATA_MEDIA_TYPE, METADATA_TAG, Registry,
};
pub use runtime::block_on;
use tuf::{Lifetimes, RegistryTransport};

/// The files of an app dir that are published, and whether one must be there.
pub const APP_FILES: [(&str, bool); 4] =
    [("vmlinuz", true), ("initrd", true), ("cmdline", true), ("appliance.json", false)];
/// Written by pull into the app dir: where it came from, for `appliance update`.
pub const ORIGIN_FILE: &str = "origin.json";
/// `APP_DIR.previous`: the version `appliance update` replaced.
pub const PREVIOUS_SUFFIX: &str = ".previous";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Keys(#[from] keys::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Tuf(#[from] tuf::Error),
    #[error(transparent)]
    Reference(#[from] reference::Error),
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{reference}: say which version to publish (REGISTRY/REPO:VERSION)")]
    NoVersion { reference: String },
    #[error("{} is not an app dir: it has no {missing} (build one with `appliance build`)", dir.display())]
    NotAnAppDir { dir: PathBuf, missing: &'static str },
    #[error(
        "{reference} is already published: pass --force to replace it (clients that pulled it keep what they have)"
    )]
    VersionExists { reference: String },
    #[error(
        "{repo}: the registry has no published metadata (no {METADATA_TAG} tag): nothing was published there with `appliance publish`"
    )]
    NoMetadata { repo: String },
    #[error(
        "{reference}: the registry serves an artifact of type {found}, not {expected}: it is not what `appliance publish` \
         pushes (an unexpected artifact type); refusing it"
    )]
    ArtifactType { reference: String, found: String, expected: &'static str },
    #[error(
        "{repo}: version {version} is not in the signed targets metadata (signed versions: {offered}): whatever the \
         registry holds under that tag, the publisher did not sign it; refusing it"
    )]
    NotSigned { repo: String, version: String, offered: String },
    #[error("{repo}: no version is published yet")]
    NoVersions { repo: String },
    #[error("{reference}: signed, but the registry has no artifact under that tag")]
    MissingInRegistry { reference: String },
    #[error(
        "{reference}: the registry's artifact has a file {file} that is not in the signed targets metadata: \
         a target not in signed metadata; refusing it"
    )]
    UnsignedFile { reference: String, file: String },
    #[error("{reference}: the registry's artifact lacks {file}, which the signed metadata lists")]
    MissingFile { reference: String, file: String },
    #[error(
        "{reference}: the blob {digest} of {file} changed in the registry: its content does not match the signed \
         sha256 and length, so it is not what the publisher signed; refusing it"
    )]
    BlobChanged { reference: String, file: String, digest: String },
    #[error("{reference}: cannot download {file}: {reason}")]
    Download { reference: String, file: String, reason: String },
    #[error(
        "{repo}: no trusted root yet: pass --root-key (the publisher's root.pub) or --root (its root.json) on the \
         first pull"
    )]
    NoTrustedRoot { repo: String },
    #[error("{}: not pulled from a registry (no {ORIGIN_FILE}): use `appliance pull REGISTRY/REPO -o DIR` first", dir.display())]
    NoOrigin { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadOrigin { path: PathBuf, reason: String },
    #[error(
        "{}: the newest signed version, {newest}, is older than {installed} installed there: refusing to go back \
         (use `appliance update --rollback` or pull a version by name)",
        dir.display()
    )]
    Older { dir: PathBuf, installed: String, newest: String },
    #[error("{}: no previous version to roll back to ({} does not exist)", dir.display(), previous.display())]
    NoPrevious { dir: PathBuf, previous: PathBuf },
    #[error("{} exists and is not an app dir (no vmlinuz, initrd or {ORIGIN_FILE}): refusing to replace it", dir.display())]
    NotReplaceable { dir: PathBuf },
    #[error("cannot find the state directory: set XDG_STATE_HOME or HOME")]
    NoStateDir,
}

/// What long operations report, for a progress display.
#[derive(Debug, Clone)]
pub enum Event {
    /// A file's transfer begins: `total` bytes, up or down.
    Start {
        file: String,
        total: u64,
        upload: bool,
    },
    /// Bytes of the current file done so far.
    Progress {
        done: u64,
    },
    Done,
    /// A blob the registry had already: not sent again.
    Reused {
        file: String,
        bytes: u64,
    },
}

pub type Reporter = Arc<dyn Fn(Event) + Send + Sync>;

/// A reporter that reports nothing.
pub fn quiet() -> Reporter {
    Arc::new(|_| {})
}

/// How `appliance publish` signs.
pub struct PublishOptions {
    /// The directory `appliance keys init` made.
    pub keys: PathBuf,
    pub lifetimes: Lifetimes,
    /// Replace a version that is already published.
    pub force: bool,
    pub insecure: bool,
    /// The signing time: expiries count from it.
    pub now: jiff::Timestamp,
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    pub reference: String,
    pub manifest_digest: String,
    /// Files and blobs sent, and the ones the registry had already.
    pub pushed: Vec<(String, u64)>,
    pub reused: Vec<(String, u64)>,
    pub metadata_bytes: u64,
    pub targets_version: u64,
    pub timestamp_expires: String,
}

/// Pushes `app_dir` as `reference`'s version and signs the repository's metadata anew.
pub fn publish(
    app_dir: &Path,
    reference: &Reference,
    options: &PublishOptions,
    report: &Reporter,
) -> Result<Published, Error> {
    let version = reference.version.clone().ok_or_else(|| Error::NoVersion { reference: reference.to_string() })?;
    let mut files = Vec::new();
    for (name, required) in APP_FILES {
        let path = app_dir.join(name);
        if path.is_file() {
            files.push((name, path));
        } else if required {
            return Err(Error::NotAnAppDir { dir: app_dir.to_owned(), missing: name });
        }
    }
    let online = keys::load_online(&options.keys)?;
    let root = fs::read(&online.root_metadata).map_err(io_error("read", &online.root_metadata))?;
    let registry = Registry::new(reference, options.insecure)?;
    let repo = reference.repository_name();
    let repository = reference.repository.as_str();
    block_on(async {
        let metadata = registry.manifest(repository, METADATA_TAG).await?;
        if let Some((_, m)) = &metadata {
            check_artifact_type(m, METADATA_ARTIFACT_TYPE, &format!("{repo}:{METADATA_TAG}"))?;
        }
        let transport = RegistryTransport::new(registry.clone(), repository, metadata.as_ref().map(|(_, m)| m));
        let existing = match &metadata {
            Some(_) => Some(tuf::load_published(&root, transport, &repo).await?),
            None => None,
        };
        let prefix = format!("{version}/");
        if let Some(existing) = &existing
            && !options.force
            && existing.targets().signed.targets.keys().any(|n| n.raw().starts_with(&prefix))
        {
            return Err(Error::VersionExists { reference: reference.to_string() });
        }

        let mut pushed = Vec::new();
        let mut reused = Vec::new();
        let mut layers = Vec::new();
        let mut targets = Vec::new();
        for (name, path) in &files {
            let mut target = Target::from_path(path).await.map_err(|e| {
                Error::Io(FsError { action: "read", path: path.clone(), source: std::io::Error::other(e) })
            })?;
            target.custom.insert("file".into(), (*name).into());
            let digest = format!("sha256:{}", hex::encode(&target.hashes.sha256));
            let size = target.length;
            if registry.has_blob(repository, &digest).await? {
                report(Event::Reused { file: (*name).to_owned(), bytes: size });
                reused.push(((*name).to_owned(), size));
            } else {
                report(Event::Start { file: (*name).to_owned(), total: size, upload: true });
                let progress_report = report.clone();
                let progress: registry::Progress = Arc::new(move |done| progress_report(Event::Progress { done }));
                registry.push_file(repository, path, &digest, progress).await?;
                report(Event::Done);
                pushed.push(((*name).to_owned(), size));
            }
            layers.push(registry::layer(APP_FILE_MEDIA_TYPE, &digest, size, name));
            targets.push(tuf::NewTarget { name: format!("{version}/{name}"), target });
        }
        let empty = registry::sha256_digest(registry::EMPTY_CONFIG);
        if !registry.has_blob(repository, &empty).await? {
            registry.push_blob(repository, registry::EMPTY_CONFIG.into(), &empty).await?;
        }
        let annotations = BTreeMap::from([
            ("org.opencontainers.image.version".to_owned(), version.clone()),
            ("org.opencontainers.image.created".to_owned(), options.now.to_string()),
        ]);
        // The artifact first, the metadata that points at it last: a client never sees
        // signed metadata for blobs that are not there yet.
        let manifest = registry::artifact(APP_ARTIFACT_TYPE, layers, annotations);
        let manifest_digest = registry.push_manifest(repository, &version, &manifest).await?;

        let signed = tuf::sign(
            &online.root_metadata,
            &online.sources,
            existing,
            &version,
            targets,
            options.now,
            &options.lifetimes,
            &repo,
        )
        .await?;
        let mut meta_layers = Vec::new();
        let mut metadata_bytes = 0;
        let mut targets_version = 0;
        let mut timestamp_expires = String::new();
        for (name, bytes) in &signed {
            let digest = registry::sha256_digest(bytes);
            if !registry.has_blob(repository, &digest).await? {
                registry.push_blob(repository, bytes.clone().into(), &digest).await?;
                metadata_bytes += bytes.len() as u64;
            }
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            match name.as_str() {
                "targets.json" => targets_version = value["signed"]["version"].as_u64().unwrap_or(0),
                "timestamp.json" => timestamp_expires = value["signed"]["expires"].as_str().unwrap_or("").to_owned(),
                _ => {}
            }
            meta_layers.push(registry::layer(METADATA_MEDIA_TYPE, &digest, bytes.len() as u64, name));
        }
        // Earlier root versions stay: a client that trusts an old root walks through them.
        if let Some((_, old)) = &metadata {
            for layer in &old.layers {
                if let Some(title) = registry::title(layer)
                    && title.ends_with(".root.json")
                    && !signed.iter().any(|(n, _)| n == title)
                {
                    meta_layers.push(layer.clone());
                }
            }
        }
        let meta_manifest = registry::artifact(METADATA_ARTIFACT_TYPE, meta_layers, BTreeMap::new());
        registry.push_manifest(repository, METADATA_TAG, &meta_manifest).await?;
        Ok(Published {
            reference: reference.to_string(),
            manifest_digest,
            pushed,
            reused,
            metadata_bytes,
            targets_version,
            timestamp_expires,
        })
    })
}

fn check_artifact_type(
    manifest: &oci_client::manifest::OciImageManifest,
    expected: &'static str,
    reference: &str,
) -> Result<(), Error> {
    let found = manifest.artifact_type.as_deref().unwrap_or(manifest.config.media_type.as_str());
    if found != expected {
        return Err(Error::ArtifactType { reference: reference.to_owned(), found: found.to_owned(), expected });
    }
    Ok(())
}

/// How a client trusts a repository.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The first time: the publisher's root.pub or root.json. Later the trusted root in
    /// the state directory is used (and a pin given must agree with it).
    pub root_pin: Option<PathBuf>,
    pub insecure: bool,
    /// Where the trusted metadata is kept; default [`default_state_dir`].
    pub state_dir: Option<PathBuf>,
}

/// `$XDG_STATE_HOME/appliance`, else `~/.local/state/appliance`: the trusted metadata
/// of each repository, under `tuf/REGISTRY/REPO/`. Not a cache: losing it loses the
/// protection against rollback and freeze (the pinned root is needed again).
pub fn default_state_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("appliance"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty()).ok_or(Error::NoStateDir)?;
    Ok(PathBuf::from(home).join(".local/state/appliance"))
}

/// `$XDG_CACHE_HOME/appliance/pulled`, else `~/.cache/appliance/pulled`: where `appliance
/// run REGISTRY/REPO:VERSION` keeps the app dirs it pulled.
pub fn default_pull_cache() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("appliance/pulled"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty()).ok_or(Error::NoStateDir)?;
    Ok(PathBuf::from(home).join(".cache/appliance/pulled"))
}

/// A repository's verified metadata, with the registry it came from.
struct Trusted {
    registry: Registry,
    transport: RegistryTransport,
    repository: tough::Repository,
    /// Held while the operation runs: one client at a time updates the trusted state.
    _lock: fs::File,
}

impl Trusted {
    /// Signed versions, newest last, each with its files (name, target).
    fn versions(&self) -> BTreeMap<String, Vec<(String, Target)>> {
        let mut versions: BTreeMap<String, Vec<(String, Target)>> = BTreeMap::new();
        for (name, target) in &self.repository.targets().signed.targets {
            if let Some((version, file)) = name.raw().split_once('/') {
                versions.entry(version.to_owned()).or_default().push((file.to_owned(), target.clone()));
            }
        }
        versions
    }

    fn newest(&self) -> Option<String> {
        self.versions().into_keys().max_by(|a, b| reference::compare_versions(a, b))
    }
}

async fn trust(reference: &Reference, options: &PullOptions) -> Result<Trusted, Error> {
    let repo = reference.repository_name();
    let state = match &options.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    let datastore = state.join("tuf").join(&reference.registry).join(&reference.repository);
    fs::create_dir_all(&datastore).map_err(io_error("create", &datastore))?;
    let lock_path = datastore.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open", &lock_path))?;
    lock.lock().map_err(io_error("lock", &lock_path))?;

    let registry = Registry::new(reference, options.insecure)?;
    let (_, metadata) = registry
        .manifest(&reference.repository, METADATA_TAG)
        .await?
        .ok_or_else(|| Error::NoMetadata { repo: repo.clone() })?;
    check_artifact_type(&metadata, METADATA_ARTIFACT_TYPE, &format!("{repo}:{METADATA_TAG}"))?;
    let transport = RegistryTransport::new(registry.clone(), &reference.repository, Some(&metadata));
    let pin = match &options.root_pin {
        Some(path) => Some(fs::read(path).map_err(io_error("read", path))?),
        None => None,
    };
    let trusted_root = datastore.join("root.json");
    let anchor = match fs::read(&trusted_root) {
        Ok(root) => {
            if let Some(pin) = &pin
                && !tuf::pin_matches(pin, &root)
            {
                let pin = options.root_pin.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(tuf::Error::PinConflict { repo, pin }.into());
            }
            root
        }
        Err(_) => {
            let pin = pin.ok_or_else(|| Error::NoTrustedRoot { repo: repo.clone() })?;
            let name = options.root_pin.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            tuf::anchor_from_pin(&pin, &name, &transport, &repo).await?
        }
    };
    let repository = tuf::load(&anchor, transport.clone(), &datastore, &repo).await?;
    Ok(Trusted { registry, transport, repository, _lock: lock })
}

/// A version on offer.
#[derive(Debug, Clone)]
pub struct Offered {
    pub version: String,
    /// File, length.
    pub files: Vec<(String, u64)>,
}

/// The signed versions of `reference`'s repository, oldest first (dtuf's pull-metadata).
pub fn list(reference: &Reference, options: &PullOptions) -> Result<Vec<Offered>, Error> {
    block_on(async {
        let trusted = trust(reference, options).await?;
        let mut offered: Vec<Offered> = trusted
            .versions()
            .into_iter()
            .map(|(version, files)| {
                let mut files: Vec<(String, u64)> = files.into_iter().map(|(f, t)| (f, t.length)).collect();
                files.sort();
                Offered { version, files }
            })
            .collect();
        offered.sort_by(|a, b| reference::compare_versions(&a.version, &b.version));
        Ok(offered)
    })
}

/// Where an app dir came from: written by pull, read by update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    pub registry: String,
    pub repository: String,
    pub version: String,
    #[serde(default)]
    pub insecure: bool,
}

impl Origin {
    pub fn read(app_dir: &Path) -> Result<Origin, Error> {
        let path = app_dir.join(ORIGIN_FILE);
        let text = fs::read(&path).map_err(|_| Error::NoOrigin { dir: app_dir.to_owned() })?;
        serde_json::from_slice(&text).map_err(|e| Error::BadOrigin { path, reason: e.to_string() })
    }

    fn reference(&self) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            version: Some(self.version.clone()),
        }
    }
}

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    pub reference: String,
    pub version: String,
    /// Bytes downloaded; 0 when the app dir held that version already.
    pub downloaded: u64,
    pub files: Vec<(String, u64)>,
}

/// Verifies `reference`'s metadata and writes the version it names (the newest without
/// one) to `out`, atomically: `out` is replaced as a whole once every file has matched
/// its signed hash and length, and left as it was on any failure.
pub fn pull(reference: &Reference, out: &Path, options: &PullOptions, report: &Reporter) -> Result<Pulled, Error> {
    // The whole of `out` is replaced: it must be an app dir (or empty), not any directory.
    if let Ok(mut entries) = fs::read_dir(out)
        && entries.next().is_some()
        && !["vmlinuz", "initrd", ORIGIN_FILE].iter().any(|f| out.join(f).exists())
    {
        return Err(Error::NotReplaceable { dir: out.to_owned() });
    }
    block_on(async {
        let trusted = trust(reference, options).await?;
        let (staging, pulled) =
            download(&trusted, reference, reference.version.as_deref(), Some(out), None, options, report).await?;
        if let Some(staging) = staging {
            install(staging, out, None)?;
        }
        Ok(pulled)
    })
}

/// What an update did.
#[derive(Debug)]
pub enum Updated {
    AlreadyNewest { version: String },
    Updated { from: String, to: String, previous: PathBuf, downloaded: u64 },
}

/// Moves `app_dir` to the newest signed version of where it came from, keeping the one it
/// had as `APP_DIR.previous` (for [`rollback`]).
pub fn update(app_dir: &Path, options: &PullOptions, report: &Reporter) -> Result<Updated, Error> {
    let origin = Origin::read(app_dir)?;
    let options = PullOptions { insecure: options.insecure || origin.insecure, ..options.clone() };
    let reference = origin.reference();
    block_on(async {
        let trusted = trust(&reference, &options).await?;
        let newest = trusted.newest().ok_or_else(|| Error::NoVersions { repo: reference.repository_name() })?;
        match reference::compare_versions(&newest, &origin.version) {
            std::cmp::Ordering::Equal => return Ok(Updated::AlreadyNewest { version: newest }),
            std::cmp::Ordering::Less => {
                return Err(Error::Older { dir: app_dir.to_owned(), installed: origin.version, newest });
            }
            std::cmp::Ordering::Greater => {}
        }
        let (staging, pulled) =
            download(&trusted, &reference, Some(&newest), None, Some(app_dir), &options, report).await?;
        let previous = previous_of(app_dir);
        install(staging.expect("a fresh download"), app_dir, Some(&previous))?;
        Ok(Updated::Updated { from: origin.version, to: newest, previous, downloaded: pulled.downloaded })
    })
}

/// `APP_DIR.previous`.
pub fn previous_of(app_dir: &Path) -> PathBuf {
    let mut name = app_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "app".into());
    name.push(PREVIOUS_SUFFIX);
    app_dir.with_file_name(name)
}

/// Swaps `app_dir` with `APP_DIR.previous` in one step (so a second rollback undoes the
/// first); returns the versions (from, to).
pub fn rollback(app_dir: &Path) -> Result<(String, String), Error> {
    let previous = previous_of(app_dir);
    if !previous.is_dir() {
        return Err(Error::NoPrevious { dir: app_dir.to_owned(), previous });
    }
    let from = Origin::read(app_dir).map(|o| o.version).unwrap_or_default();
    let to = Origin::read(&previous).map(|o| o.version).unwrap_or_default();
    exchange(&previous, app_dir)?;
    Ok((from, to))
}

/// Checks `version`'s artifact against the signed targets and downloads it into a staging
/// directory beside `out` (without `out`, beside `reuse`). Files that `out` or `reuse`
/// hold with the signed hash are copied instead. Returns no staging directory when `out`
/// already holds exactly the signed files.
async fn download(
    trusted: &Trusted,
    reference: &Reference,
    version: Option<&str>,
    out: Option<&Path>,
    reuse: Option<&Path>,
    options: &PullOptions,
    report: &Reporter,
) -> Result<(Option<tempfile::TempDir>, Pulled), Error> {
    let repo = reference.repository_name();
    let versions = trusted.versions();
    let version = match version {
        Some(v) => v.to_owned(),
        None => trusted.newest().ok_or_else(|| Error::NoVersions { repo: repo.clone() })?,
    };
    let at = reference.with_version(&version).to_string();
    let signed: HashMap<String, Target> = versions
        .get(&version)
        .ok_or_else(|| Error::NotSigned {
            repo: repo.clone(),
            version: version.clone(),
            offered: versions.keys().cloned().collect::<Vec<_>>().join(", "),
        })?
        .iter()
        .cloned()
        .collect();
    let files: Vec<(String, u64)> = {
        let mut f: Vec<_> = signed.iter().map(|(n, t)| (n.clone(), t.length)).collect();
        f.sort();
        f
    };
    let origin = Origin {
        registry: reference.registry.clone(),
        repository: reference.repository.clone(),
        version: version.clone(),
        insecure: options.insecure,
    };
    if let Some(out) = out
        && holds(out, &signed, &origin)
    {
        return Ok((None, Pulled { reference: at, version, downloaded: 0, files }));
    }
    // The app dir being replaced: its files that match the signed ones are copied, not
    // downloaded again.
    let local = out.or(reuse);

    let (_, manifest) = trusted
        .registry
        .manifest(&reference.repository, &version)
        .await?
        .ok_or_else(|| Error::MissingInRegistry { reference: at.clone() })?;
    check_artifact_type(&manifest, APP_ARTIFACT_TYPE, &at)?;
    let mut blobs = HashMap::new();
    for layer in &manifest.layers {
        let file = registry::title(layer).unwrap_or("(a layer without a file name)").to_owned();
        let Some(target) = signed.get(&file) else {
            return Err(Error::UnsignedFile { reference: at, file });
        };
        if layer.digest != format!("sha256:{}", hex::encode(&target.hashes.sha256))
            || layer.size as u64 != target.length
        {
            return Err(Error::BlobChanged { reference: at, file, digest: layer.digest.clone() });
        }
        blobs.insert(format!("{version}/{file}"), layer.clone());
    }
    if let Some(file) = signed.keys().find(|f| !blobs.contains_key(&format!("{version}/{f}"))) {
        return Err(Error::MissingFile { reference: at, file: file.clone() });
    }
    trusted.transport.set_targets(blobs.clone());

    // Beside the app dir: the final rename stays on one file system.
    let beside = out.or(reuse).expect("pull gives out, update gives reuse");
    let parent = beside.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".appliance-pull-")
        .tempdir_in(&parent)
        .map_err(io_error("create a directory in", &parent))?;
    let mut downloaded = 0;
    for (file, length) in &files {
        if let Some(local) = local
            && copy_if_same(&local.join(file), &staging.path().join(file), &signed[file])
        {
            continue;
        }
        let name = format!("{version}/{file}");
        let digest = blobs[&name].digest.clone();
        let target_name = tough::TargetName::new(name.as_str()).map_err(|e| Error::Download {
            reference: at.clone(),
            file: file.clone(),
            reason: e.to_string(),
        })?;
        report(Event::Start { file: file.clone(), total: *length, upload: false });
        let progress_report = report.clone();
        trusted.transport.set_progress(Some(Arc::new(move |done| progress_report(Event::Progress { done }))));
        let failed = |e: &(dyn std::error::Error + 'static)| {
            if tuf::is_content_mismatch(e) {
                Error::BlobChanged { reference: at.clone(), file: file.clone(), digest: digest.clone() }
            } else {
                Error::Download { reference: at.clone(), file: file.clone(), reason: e.to_string() }
            }
        };
        let mut stream = match trusted.repository.read_target(&target_name).await {
            Ok(Some(stream)) => Box::pin(stream),
            Ok(None) => return Err(Error::MissingFile { reference: at, file: file.clone() }),
            Err(tough::error::Error::ExpiredMetadata { role, .. }) => {
                return Err(tuf::Error::Expired { repo, role, expires: "during the download".into() }.into());
            }
            Err(e) => return Err(failed(&e)),
        };
        let path = staging.path().join(file);
        let mut writer = fs::File::create(&path).map_err(io_error("create", &path))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(&e))?;
            writer.write_all(&chunk).map_err(io_error("write", &path))?;
            downloaded += chunk.len() as u64;
        }
        writer.sync_all().map_err(io_error("write", &path))?;
        trusted.transport.set_progress(None);
        report(Event::Done);
    }
    let origin_path = staging.path().join(ORIGIN_FILE);
    let mut json = serde_json::to_string_pretty(&origin).expect("origin serialises");
    json.push('\n');
    fs::write(&origin_path, json).map_err(io_error("write", &origin_path))?;
    Ok((Some(staging), Pulled { reference: at, version, downloaded, files }))
}

/// Whether `path` holds exactly `target`'s bytes.
fn same(path: &Path, target: &Target) -> Option<Vec<u8>> {
    use sha2::Digest;
    let bytes = fs::read(path).ok()?;
    (bytes.len() as u64 == target.length && sha2::Sha256::digest(&bytes).as_slice() == &target.hashes.sha256[..])
        .then_some(bytes)
}

/// Copies `from` to `to` when it holds exactly `target`'s bytes (checked on the copy's
/// bytes: what is written is what was checked).
fn copy_if_same(from: &Path, to: &Path, target: &Target) -> bool {
    match same(from, target) {
        Some(bytes) => fs::write(to, bytes).is_ok(),
        None => false,
    }
}

/// Whether `dir` already holds `origin`'s version with exactly the signed files.
fn holds(dir: &Path, signed: &HashMap<String, Target>, origin: &Origin) -> bool {
    if Origin::read(dir).ok().as_ref() != Some(origin) {
        return false;
    }
    signed.iter().all(|(file, target)| same(&dir.join(file), target).is_some())
}

/// Puts the staged app dir at `out` in one rename. What was at `out` goes to `keep` (the
/// previous version, replacing an older one there) or is removed.
fn install(staging: tempfile::TempDir, out: &Path, keep: Option<&Path>) -> Result<(), Error> {
    let staged = staging.keep();
    fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_error("chmod", &staged))?;
    if !out.exists() {
        return fs::rename(&staged, out).map_err(|e| io_error("rename into place", out)(e).into());
    }
    exchange(&staged, out)?;
    // `staged` now holds what `out` held.
    match keep {
        Some(previous) => {
            if previous.exists() {
                fs::remove_dir_all(previous).map_err(io_error("remove", previous))?;
            }
            fs::rename(&staged, previous).map_err(io_error("rename", previous))?;
        }
        None => fs::remove_dir_all(&staged).map_err(io_error("remove", &staged))?,
    }
    Ok(())
}

/// Swaps two directories atomically (renameat2 RENAME_EXCHANGE): there is no moment
/// without an app dir at either path.
fn exchange(a: &Path, b: &Path) -> Result<(), Error> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)
        .map_err(|e| Error::Io(FsError { action: "swap in", path: b.to_owned(), source: e.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_version_sits_beside_the_app_dir() {
        assert_eq!(previous_of(Path::new("out/hello")), Path::new("out/hello.previous"));
        assert_eq!(previous_of(Path::new("/srv/app/")), Path::new("/srv/app.previous"));
    }

    #[test]
    fn installing_replaces_the_whole_dir_and_keeps_the_old_one_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("app");
        let stage = |text: &str| {
            let staging = tempfile::tempdir_in(tmp.path()).unwrap();
            fs::write(staging.path().join("initrd"), text).unwrap();
            staging
        };
        install(stage("one"), &out, None).unwrap();
        fs::write(out.join("stale"), "x").unwrap();
        let previous = previous_of(&out);
        install(stage("two"), &out, Some(&previous)).unwrap();
        assert_eq!(fs::read_to_string(out.join("initrd")).unwrap(), "two");
        assert!(!out.join("stale").exists(), "nothing of the old dir is left in the new");
        assert_eq!(fs::read_to_string(previous.join("initrd")).unwrap(), "one");
        exchange(&previous, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("initrd")).unwrap(), "one");
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no staging dirs left: {leftovers:?}");
    }
}
