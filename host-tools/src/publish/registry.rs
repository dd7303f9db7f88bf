//! The registry side: an app version as an OCI artifact, the TUF metadata as another, and
//! the credentials to reach them. oci-client speaks the distribution protocol; this
//! module chooses the layout (docs/publish.md) and names what went wrong.
//!
//! Nothing here is trusted: what comes back from the registry is checked against the
//! signed metadata by the caller ([`super::tuf`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciReference, RegistryOperation};

use super::reference::Reference;

/// The artifact type of an app version: one layer per file of the app dir.
pub const APP_ARTIFACT_TYPE: &str = "application/vnd.appliance.app.v1";
/// The media type of each file of an app version.
pub const APP_FILE_MEDIA_TYPE: &str = "application/vnd.appliance.file.v1";
/// The artifact type of the repository's TUF metadata: one layer per metadata file.
pub const METADATA_ARTIFACT_TYPE: &str = "application/vnd.appliance.tuf.v1";
pub const METADATA_MEDIA_TYPE: &str = "application/vnd.appliance.tuf.metadata.v1+json";
/// The tag of the metadata artifact; versions cannot start with `_`.
pub const METADATA_TAG: &str = "_tuf";
/// The annotation holding a layer's file name (as ORAS names files).
pub const TITLE: &str = "org.opencontainers.image.title";
/// OCI's empty config, for artifacts without one.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// Credentials for a registry.
pub const USER_ENV: &str = "APPLIANCE_REGISTRY_USER";
pub const PASSWORD_ENV: &str = "APPLIANCE_REGISTRY_PASSWORD";

/// Told the bytes transferred so far of one file.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// The chunk size of uploads (each a PATCH request and a progress step).
const CHUNK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{registry}: {what}: {source}")]
    Protocol {
        registry: String,
        what: String,
        #[source]
        source: OciDistributionError,
    },
    #[error(
        "{registry}: {what}: the registry refused our credentials ({source}); set {USER_ENV} and {PASSWORD_ENV}, or log in (~/.docker/config.json)"
    )]
    Unauthorized {
        registry: String,
        what: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{reference}: the manifest is not an OCI image manifest: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    DockerConfig { path: PathBuf, reason: String },
}

/// A repository's registry, with its credentials.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    registry: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Registry").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl Registry {
    /// A client for `reference`'s registry: HTTPS, or plain HTTP for a loopback registry
    /// or when `insecure`. Credentials as [`credentials`] finds them.
    pub fn new(reference: &Reference, insecure: bool) -> Result<Registry, Error> {
        let protocol = if insecure || reference.is_loopback() { ClientProtocol::Http } else { ClientProtocol::Https };
        let config = ClientConfig { protocol, ..Default::default() };
        Ok(Registry {
            client: Client::new(config),
            auth: credentials(&reference.registry)?,
            registry: reference.registry.clone(),
        })
    }

    fn reference(&self, repository: &str, tag: &str) -> OciReference {
        OciReference::with_tag(self.registry.clone(), repository.to_owned(), tag.to_owned())
    }

    fn blob_reference(&self, repository: &str, digest: &str) -> OciReference {
        OciReference::with_digest(self.registry.clone(), repository.to_owned(), digest.to_owned())
    }

    fn error(&self, what: String, source: OciDistributionError) -> Error {
        match source {
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                Error::Unauthorized { registry: self.registry.clone(), what, source }
            }
            source => Error::Protocol { registry: self.registry.clone(), what, source },
        }
    }

    async fn authenticate(&self, reference: &OciReference, operation: RegistryOperation) -> Result<(), Error> {
        // Anonymous access needs no token dance; a registry that wants one answers 401.
        if matches!(self.auth, RegistryAuth::Anonymous) {
            return Ok(());
        }
        self.client
            .auth(reference, &self.auth, operation)
            .await
            .map(drop)
            .map_err(|e| self.error(format!("log in to {}", reference.repository()), e))
    }

    /// The manifest tagged `tag` (raw, as the registry sent it, and parsed), or `None`
    /// when the repository has no such tag.
    pub async fn manifest(&self, repository: &str, tag: &str) -> Result<Option<(Bytes, OciImageManifest)>, Error> {
        let reference = self.reference(repository, tag);
        self.authenticate(&reference, RegistryOperation::Pull).await?;
        match self.client.pull_manifest_raw(&reference, &self.auth, &[OCI_IMAGE_MEDIA_TYPE]).await {
            Ok((raw, _digest)) => {
                let manifest = serde_json::from_slice::<OciImageManifest>(&raw)
                    .map_err(|e| Error::BadManifest { reference: reference.whole(), reason: e.to_string() })?;
                Ok(Some((raw, manifest)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error(format!("fetch the manifest {}", reference.whole()), e)),
        }
    }

    /// Stores `manifest` under `tag`; returns its digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &OciImageManifest,
    ) -> Result<String, Error> {
        let reference = self.reference(repository, tag);
        self.authenticate(&reference, RegistryOperation::Push).await?;
        let body = serde_json::to_vec(manifest).expect("a manifest serialises");
        let digest = sha256_digest(&body);
        let content_type = OCI_IMAGE_MEDIA_TYPE.parse().expect("a valid header value");
        self.client
            .push_manifest_raw(&reference, body, content_type)
            .await
            .map_err(|e| self.error(format!("push the manifest {}", reference.whole()), e))?;
        Ok(digest)
    }

    /// Whether the repository has the blob (HEAD /v2/REPO/blobs/DIGEST).
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, Error> {
        let reference = self.blob_reference(repository, digest);
        self.authenticate(&reference, RegistryOperation::Pull).await?;
        self.client
            .blob_exists(&reference, digest)
            .await
            .map_err(|e| self.error(format!("look up the blob {digest} in {repository}"), e))
    }

    pub async fn push_blob(&self, repository: &str, data: Bytes, digest: &str) -> Result<(), Error> {
        let reference = self.blob_reference(repository, digest);
        self.authenticate(&reference, RegistryOperation::Push).await?;
        self.client
            .push_blob(&reference, data, digest)
            .await
            .map(drop)
            .map_err(|e| self.error(format!("push the blob {digest} to {repository}"), e))
    }

    /// Uploads a file as the blob `digest`, in chunks, calling `progress` with the bytes
    /// handed to the upload so far.
    pub async fn push_file(
        &self,
        repository: &str,
        path: &Path,
        digest: &str,
        progress: Progress,
    ) -> Result<(), Error> {
        let reference = self.blob_reference(repository, digest);
        self.authenticate(&reference, RegistryOperation::Push).await?;
        let data = std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        let size = data.len() as u64;
        let data = Bytes::from(data);
        let chunks: Vec<Bytes> =
            (0..data.len()).step_by(CHUNK).map(|at| data.slice(at..(at + CHUNK).min(data.len()))).collect();
        let mut sent = 0;
        let stream = futures::stream::iter(chunks).map(move |chunk| {
            sent += chunk.len() as u64;
            progress(sent);
            Ok::<_, OciDistributionError>(chunk)
        });
        self.client
            .push_blob_stream(&reference, stream, digest, Some(size))
            .await
            .map(drop)
            .map_err(|e| self.error(format!("push {} as the blob {digest} to {repository}", path.display()), e))
    }

    /// The blob `digest`, as a stream of chunks.
    pub async fn blob_stream(
        &self,
        repository: &str,
        descriptor: &OciDescriptor,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<>, Error> {
        let reference = self.blob_reference(repository, &descriptor.digest);
        self.authenticate(&reference, RegistryOperation::Pull).await?;
        let stream = self
            .client
            .pull_blob_stream(&reference, descriptor)
            .await
            .map_err(|e| self.error(format!("fetch the blob {} from {repository}", descriptor.digest), e))?;
        Ok(stream.stream.map_err(std::io::Error::other))
    }

    /// The whole blob, for small ones (metadata).
    pub async fn blob(&self, repository: &str, descriptor: &OciDescriptor) -> Result<Vec<u8>, Error> {
        let stream = self.blob_stream(repository, descriptor).await?;
        stream
            .try_fold(Vec::new(), |mut all, chunk| {
                all.extend_from_slice(&chunk);
                std::future::ready(Ok(all))
            })
            .await
            .map_err(|e| Error::Protocol {
                registry: self.registry.clone(),
                what: format!("fetch the blob {} from {repository}", descriptor.digest),
                source: OciDistributionError::IoError(e),
            })
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown))
        }
        OciDistributionError::ServerError { code: 404, .. } => true,
        _ => false,
    }
}

/// `sha256:HEX` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A layer: a blob with its file name.
pub fn layer(media_type: &str, digest: &str, size: u64, title: &str) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size: size as i64,
        annotations: Some(BTreeMap::from([(TITLE.to_owned(), title.to_owned())])),
        ..Default::default()
    }
}

/// The layer's file name.
pub fn title(layer: &OciDescriptor) -> Option<&str> {
    layer.annotations.as_ref()?.get(TITLE).map(String::as_str)
}

/// An artifact manifest: `artifact_type`, OCI's empty config, these layers.
pub fn artifact(
    artifact_type: &str,
    layers: Vec<OciDescriptor>,
    annotations: BTreeMap<String, String>,
) -> OciImageManifest {
    OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
        config: OciDescriptor {
            media_type: EMPTY_MEDIA_TYPE.to_owned(),
            digest: sha256_digest(EMPTY_CONFIG),
            size: EMPTY_CONFIG.len() as i64,
            ..Default::default()
        },
        layers,
        subject: None,
        artifact_type: Some(artifact_type.to_owned()),
        annotations: if annotations.is_empty() { None } else { Some(annotations) },
    }
}

/// Credentials for `registry`: `APPLIANCE_REGISTRY_USER` and `APPLIANCE_REGISTRY_PASSWORD`,
/// else the `auth` entry of `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`), else
/// anonymous. Credential helpers (`credsStore`) are not run.
pub fn credentials(registry: &str) -> Result<RegistryAuth, Error> {
    if let (Ok(user), Ok(password)) = (std::env::var(USER_ENV), std::env::var(PASSWORD_ENV)) {
        return Ok(RegistryAuth::Basic(user, password));
    }
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".docker"),
            None => return Ok(RegistryAuth::Anonymous),
        },
    };
    let path = dir.join("config.json");
    match std::fs::read(&path) {
        Ok(text) => docker_config_auth(&text, registry).map_err(|reason| Error::DockerConfig { path, reason }),
        Err(_) => Ok(RegistryAuth::Anonymous),
    }
}

fn docker_config_auth(text: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    use base64::Engine;
    let config: serde_json::Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let entry = [registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")]
        .iter()
        .find_map(|key| auths.get(key).or_else(|| auths.get(&format!("{key}/v2/"))));
    let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(|a| a.as_str()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|e| format!("the auth of {registry} is not base64: {e}"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not UTF-8"))?;
    let (user, password) =
        decoded.split_once(':').ok_or_else(|| format!("the auth of {registry} is not USER:PASSWORD"))?;
    Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_gives_the_registry_s_credentials() {
        let config = br#"{"auths": {"reg.example.com": {"auth": "dXNlcjpwYTpzcw=="}, "other.io": {}}}"#;
        match docker_config_auth(config, "reg.example.com").unwrap() {
            RegistryAuth::Basic(user, password) => assert_eq!((user.as_str(), password.as_str()), ("user", "pa:ss")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(docker_config_auth(config, "other.io").unwrap(), RegistryAuth::Anonymous));
        assert!(matches!(docker_config_auth(config, "unknown.io").unwrap(), RegistryAuth::Anonymous));
        let bad = br#"{"auths": {"reg.example.com": {"auth": "!!"}}}"#;
        assert!(docker_config_auth(bad, "reg.example.com").unwrap_err().contains("reg.example.com"));
    }

    #[test]
    fn an_artifact_names_its_type_and_its_files() {
        let m =
            artifact(APP_ARTIFACT_TYPE, vec![layer(APP_FILE_MEDIA_TYPE, "sha256:ab", 3, "vmlinuz")], BTreeMap::new());
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["artifactType"], APP_ARTIFACT_TYPE);
        assert_eq!(json["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(json["layers"][0]["annotations"][TITLE], "vmlinuz");
        assert_eq!(title(&m.layers[0]), Some("vmlinuz"));
    }
}
