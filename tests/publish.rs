//! Publishing and pulling against a real registry: Debian's `docker-registry` (the
//! reference "distribution" registry), started by each test on a free port of 127.0.0.1
//! with its storage in a temporary directory, and killed when the test ends.
//!
//! The happy paths publish two versions of images/hello, pull, list, update, roll back and
//! boot one from the registry. Then each attack on the way from publisher to client is
//! staged for real, in the registry's storage or through its API, and the test checks
//! that `appliance pull` refuses it with a message naming what failed, and that the app
//! dir it would have replaced is left byte for byte as it was.
//!
//! Needs `/usr/bin/docker-registry` (host-tools/deps.sh installs it) and what building
//! and booting images/hello needs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use appliance_host::publish::registry::{self as oci, Registry as Client};
use appliance_host::publish::{Reference, block_on};
use appliance_tests::{BOOT_TIMEOUT_S, appliance, build, root};
use tempfile::TempDir;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry may take to answer /v2/ after it starts.
const REGISTRY_START: Duration = Duration::from_secs(30);
const REPO: &str = "lab/hello";

/// A registry process of the test's own; killed on drop, also when the test panics.
struct RegistryProcess {
    child: Child,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl RegistryProcess {
    fn start(dir: &Path) -> RegistryProcess {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry (host-tools/deps.sh does)"
        );
        let port = appliance_host::host::net::free_port().expect("a free port");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.join("registry.yml");
        // No blob descriptor cache: what the tests change in the storage is what is served.
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config).stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        appliance_host::host::process::as_our_child(&mut cmd);
        let child = cmd.spawn().expect("docker-registry starts");
        let mut registry = RegistryProcess { child, port, storage, log };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + REGISTRY_START;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}): {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if self.answers_v2() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within {REGISTRY_START:?}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /v2/ answers 200: the registry serves the distribution API.
    fn answers_v2(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", self.port);
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file holding a blob in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app dir of images/hello, built once per test process (under target/, rebuilt by
/// every run).
fn hello() -> &'static Path {
    static APP: OnceLock<PathBuf> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = root().join("target/tests-publish");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        build(&root().join("images/hello"), &dir)
    })
}

/// A registry, a keys directory, a client state and a pull cache: one test's world.
struct World {
    registry: RegistryProcess,
    tmp: TempDir,
}

impl World {
    fn new() -> World {
        let tmp = TempDir::new().unwrap();
        let registry = RegistryProcess::start(tmp.path());
        let world = World { registry, tmp };
        world.ok(world.cmd().arg("keys").arg("init").arg(world.keys()));
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn keys(&self) -> PathBuf {
        self.path("keys")
    }

    fn reference(&self, version: &str) -> String {
        let repo = format!("{}/{REPO}", self.registry.host());
        if version.is_empty() { repo } else { format!("{repo}:{version}") }
    }

    /// `appliance`, with the client's state and cache in this world.
    fn cmd(&self) -> Command {
        let mut c = appliance();
        c.env("XDG_STATE_HOME", self.path("state")).env("XDG_CACHE_HOME", self.path("cache"));
        c.env_remove("APPLIANCE_ROOT_KEY");
        c
    }

    #[track_caller]
    fn ok(&self, cmd: &mut Command) -> Output {
        let o = cmd.output().expect("appliance runs");
        assert!(o.status.success(), "{cmd:?} failed:\n{}{}", text(&o.stdout), text(&o.stderr));
        o
    }

    /// An app dir like hello's, with `word` added to its cmdline: a new version that
    /// shares three of four blobs with hello.
    fn variant(&self, word: &str) -> PathBuf {
        let dir = self.path(&format!("variant-{word}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _) in appliance_host::publish::APP_FILES {
            let from = hello().join(name);
            if from.exists() {
                std::fs::copy(&from, dir.join(name)).unwrap();
            }
        }
        let mut cmdline = std::fs::read_to_string(hello().join("cmdline")).unwrap();
        cmdline.push_str(&format!("{word}\n"));
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        dir
    }

    fn publish(&self, app: &Path, version: &str, extra: &[&str]) -> Output {
        self.cmd()
            .arg("publish")
            .arg(app)
            .arg(self.reference(version))
            .arg("--keys")
            .arg(self.keys())
            .args(extra)
            .output()
            .unwrap()
    }

    fn pull(&self, version: &str, out: &Path, extra: &[&str]) -> Output {
        let mut c = self.cmd();
        c.arg("pull")
            .arg(self.reference(version))
            .arg("-o")
            .arg(out)
            .arg("--root-key")
            .arg(self.keys().join("root.pub"));
        c.args(extra).output().unwrap()
    }

    /// Publishes hello as 1.0 and pulls it into `app`: a client that trusts the repository.
    fn with_a_pulled_app(&self) -> PathBuf {
        self.ok(&mut self.publish_cmd(hello(), "1.0"));
        let app = self.path("app");
        let o = self.pull("1.0", &app, &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        app
    }

    fn publish_cmd(&self, app: &Path, version: &str) -> Command {
        let mut c = self.cmd();
        c.arg("publish").arg(app).arg(self.reference(version)).arg("--keys").arg(self.keys());
        c
    }

    fn client(&self) -> Client {
        Client::new(&Reference::parse(&self.reference("")).unwrap(), false).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file of a directory and its bytes; `None` when it does not exist.
fn snapshot(dir: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
            })
            .collect(),
    )
}

/// Asserts that pulling failed with `needle` in its message and left `app` as `before`,
/// with no staging directory left beside it.
#[track_caller]
fn assert_refused(o: &Output, needle: &str, app: &Path, before: &Option<BTreeMap<String, Vec<u8>>>) {
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "refused with exit status 2:\n{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in the refusal:\n{stderr}");
    assert_eq!(&snapshot(app), before, "{} changed although the pull was refused", app.display());
    let parent = app.parent().unwrap();
    let staging: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(".appliance-pull-"))
        .collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

fn same_files(a: &Path, b: &Path) {
    for (name, _) in appliance_host::publish::APP_FILES {
        assert_eq!(std::fs::read(a.join(name)).ok(), std::fs::read(b.join(name)).ok(), "{name} differs");
    }
}

// ---- the happy paths ----

#[test]
fn two_versions_publish_pull_list_update_and_roll_back() {
    let w = World::new();
    let v2 = w.variant("publish.version=2");
    w.ok(&mut w.publish_cmd(hello(), "1.0"));
    w.ok(&mut w.publish_cmd(&v2, "1.1"));

    let app = w.path("app");
    assert!(w.pull("1.0", &app, &[]).status.success());
    same_files(hello(), &app);
    let listed = text(&w.ok(w.cmd().arg("pull").arg(w.reference("")).arg("--list")).stdout);
    let versions: Vec<&str> = listed.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(versions, ["1.0", "1.1"], "{listed}");

    let o = w.ok(w.cmd().arg("update").arg(&app));
    assert_eq!(text(&o.stdout).trim(), "1.1");
    same_files(&v2, &app);
    let previous = w.path("app.previous");
    same_files(hello(), &previous);
    let o = w.ok(w.cmd().arg("update").arg(&app));
    assert_eq!(text(&o.stdout).trim(), "1.1", "already the newest");

    let o = w.ok(w.cmd().arg("update").arg("--rollback").arg(&app));
    assert_eq!(text(&o.stdout).trim(), "1.0");
    same_files(hello(), &app);
    same_files(&v2, &previous);

    // A directory that is not an app dir is never replaced.
    let precious = w.path("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&precious);
    assert_refused(&w.pull("1.1", &precious, &[]), "is not an app dir", &precious, &before);

    // Without a version: the newest, into a new dir.
    let newest = w.path("newest");
    assert!(w.pull("", &newest, &[]).status.success());
    same_files(&v2, &newest);
}

#[test]
fn a_second_publish_of_an_almost_unchanged_app_dir_pushes_only_the_changed_blob() {
    let w = World::new();
    w.ok(&mut w.publish_cmd(hello(), "1.0"));
    let o = w.ok(&mut w.publish_cmd(&w.variant("publish.version=2"), "1.1"));
    let stderr = text(&o.stderr);
    assert!(stderr.contains("in 1 blob(s) sent"), "{stderr}");
    assert!(stderr.contains("in 3 blob(s) already there"), "{stderr}");
    for file in ["vmlinuz", "initrd", "appliance.json"] {
        assert!(
            stderr.contains(&format!("{file} (")) && stderr.contains("is in the registry already"),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn publishing_a_version_again_is_refused_unless_forced() {
    let w = World::new();
    w.ok(&mut w.publish_cmd(hello(), "1.0"));
    let v2 = w.variant("publish.version=2");
    let o = w.publish(&v2, "1.0", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("is already published: pass --force"), "{}", text(&o.stderr));
    w.ok(w.publish_cmd(&v2, "1.0").arg("--force"));
    let app = w.path("app");
    assert!(w.pull("1.0", &app, &[]).status.success());
    same_files(&v2, &app);
}

#[test]
fn keys_are_private_and_encrypted_with_a_passphrase_from_the_environment() {
    let w = World::new();
    let dir = w.path("locked");
    w.ok(w.cmd().arg("keys").arg("init").arg(&dir).env("APPLIANCE_TARGETS_KEY_PASSPHRASE", "sesame"));
    let pem = std::fs::read_to_string(dir.join("online/targets.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{pem}");
    for role in ["root/root", "online/targets", "online/snapshot", "online/timestamp"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(format!("{role}.pem"))).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{role}");
    }
    let publish = |pass: Option<&str>| {
        let mut c = w.cmd();
        c.arg("publish").arg(hello()).arg(w.reference("1.0")).arg("--keys").arg(&dir);
        c.env_remove("APPLIANCE_TARGETS_KEY_PASSPHRASE");
        if let Some(pass) = pass {
            c.env("APPLIANCE_TARGETS_KEY_PASSPHRASE", pass);
        }
        c.output().unwrap()
    };
    let o = publish(None);
    assert!(text(&o.stderr).contains("set APPLIANCE_TARGETS_KEY_PASSPHRASE"), "{}", text(&o.stderr));
    let o = publish(Some("wrong"));
    assert!(text(&o.stderr).contains("cannot decrypt"), "{}", text(&o.stderr));
    let o = publish(Some("sesame"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Nothing secret went to the registry: the metadata names public keys only.
    let client = w.client();
    let (raw, manifest) = block_on(client.manifest(REPO, oci::METADATA_TAG)).unwrap().expect("metadata published");
    assert!(!text(&raw).contains("PRIVATE"));
    for layer in &manifest.layers {
        let blob = block_on(client.blob(REPO, layer)).unwrap();
        assert!(!text(&blob).contains("PRIVATE"), "{:?}", oci::title(layer));
    }
}

#[test]
fn run_boots_a_version_pulled_from_the_registry() {
    let w = World::new();
    w.ok(&mut w.publish_cmd(hello(), "1.0"));
    let status = w.path("status.jsonl");
    let o = w
        .cmd()
        .arg("run")
        .arg(w.reference("1.0"))
        .arg("--timeout")
        .arg(BOOT_TIMEOUT_S.to_string())
        .arg("--status")
        .arg(&status)
        .env("APPLIANCE_ROOT_KEY", w.keys().join("root.pub"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{console}\n{}", text(&o.stderr));
    assert!(console.contains("arg[1]=hello"), "{console}");
    let (events, _) = appliance_host::vm::read_status(&status);
    let end = events.iter().find_map(|e| match e {
        appliance_cmdline::status::Event::End { action, status, .. } => Some((action.clone(), *status)),
        _ => None,
    });
    assert_eq!(end, Some(("poweroff".into(), 0)));
    let cached = w.path("cache").join("appliance/pulled").join(w.registry.host()).join(REPO).join("1.0");
    same_files(hello(), &cached);
}

// ---- the attacks: each refused, the app dir left as it was ----

#[test]
fn a_blob_changed_in_the_registry_storage_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    let v2 = w.variant("publish.version=2");
    w.ok(&mut w.publish_cmd(&v2, "1.1"));
    let digest = oci::sha256_digest(&std::fs::read(v2.join("cmdline")).unwrap());
    let file = w.registry.blob_file(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    // Same length, one byte different: only the hash can tell.
    bytes[0] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();

    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "changed in the registry", &app, &before);
    let fresh = w.path("fresh");
    assert_refused(&w.pull("1.1", &fresh, &[]), "changed in the registry", &fresh, &None);
}

#[test]
fn a_version_not_in_the_signed_metadata_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    // Someone with push access to the registry, but not the targets key, adds a version.
    let client = w.client();
    let (_, manifest) = block_on(client.manifest(REPO, "1.0")).unwrap().unwrap();
    block_on(client.push_manifest(REPO, "6.6", &manifest)).unwrap();
    let before = snapshot(&app);
    assert_refused(&w.pull("6.6", &app, &[]), "version 6.6 is not in the signed targets metadata", &app, &before);
}

#[test]
fn a_file_not_in_the_signed_metadata_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    w.ok(&mut w.publish_cmd(&w.variant("publish.version=2"), "1.1"));
    let client = w.client();
    let (_, mut manifest) = block_on(client.manifest(REPO, "1.1")).unwrap().unwrap();
    let extra = b"#!/bin/sh\necho owned\n".to_vec();
    let digest = oci::sha256_digest(&extra);
    block_on(client.push_blob(REPO, extra.clone().into(), &digest)).unwrap();
    manifest.layers.push(oci::layer(oci::APP_FILE_MEDIA_TYPE, &digest, extra.len() as u64, "preinit"));
    block_on(client.push_manifest(REPO, "1.1", &manifest)).unwrap();
    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "file preinit that is not in the signed targets metadata", &app, &before);
}

#[test]
fn expired_metadata_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    // Signed two days ago with a targets lifetime of one day: expired on arrival.
    let signed_at = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48)).to_string();
    let v2 = w.variant("publish.version=2");
    w.ok(w.publish_cmd(&v2, "1.1").env("APPLIANCE_PUBLISH_TIME", &signed_at).args([
        "--targets-lifetime",
        "1d",
        "--snapshot-lifetime",
        "30d",
        "--timestamp-lifetime",
        "30d",
    ]));
    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "the targets metadata in the registry expired", &app, &before);
}

#[test]
fn replayed_old_metadata_is_refused_as_rollback() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    let client = w.client();
    let (_, old) = block_on(client.manifest(REPO, oci::METADATA_TAG)).unwrap().unwrap();
    w.ok(&mut w.publish_cmd(&w.variant("publish.version=2"), "1.1"));
    assert!(w.pull("1.1", &w.path("seen"), &[]).status.success(), "the client has seen the newer metadata");
    // The registry (or a mirror in between) serves the old, validly signed metadata again.
    block_on(client.push_manifest(REPO, oci::METADATA_TAG, &old)).unwrap();
    let before = snapshot(&app);
    assert_refused(&w.pull("1.0", &app, &[]), "rollback", &app, &before);
    let o = w.pull("1.0", &app, &[]);
    assert!(text(&o.stderr).contains("older than version 2 already trusted"), "{}", text(&o.stderr));
}

#[test]
fn a_timestamp_that_stops_advancing_is_refused_as_freeze() {
    let w = World::new();
    // A timestamp valid for a few seconds: the publisher is expected to renew it.
    w.ok(w.publish_cmd(hello(), "1.0").args(["--timestamp-lifetime", "8s"]));
    let app = w.path("app");
    let o = w.pull("1.0", &app, &[]);
    assert!(o.status.success(), "the first pull sees a fresh timestamp: {}", text(&o.stderr));
    // The registry keeps serving that timestamp. The event is the clock passing the
    // expiry that the trusted timestamp states.
    let trusted =
        std::fs::read(w.path("state").join("appliance/tuf").join(w.registry.host()).join(REPO).join("timestamp.json"))
            .expect("the client keeps the timestamp it trusted");
    let trusted: serde_json::Value = serde_json::from_slice(&trusted).unwrap();
    let expires: jiff::Timestamp = trusted["signed"]["expires"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while jiff::Timestamp::now() <= expires {
        assert!(Instant::now() < deadline, "the timestamp's expiry {expires} is not within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = snapshot(&app);
    assert_refused(&w.pull("1.0", &app, &[]), "freeze: the registry still serves timestamp version 1", &app, &before);
}

#[test]
fn metadata_signed_by_the_wrong_key_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    // Someone else's keys sign metadata for the same repository.
    let theirs = w.path("their-keys");
    w.ok(w.cmd().arg("keys").arg("init").arg(&theirs));
    let other = w.registry.host() + "/lab/other:1.0";
    let v2 = w.variant("publish.version=2");
    w.ok(w.cmd().arg("publish").arg(&v2).arg(&other).arg("--keys").arg(&theirs));
    let client = w.client();
    for (from, to) in [(oci::METADATA_TAG, oci::METADATA_TAG), ("1.0", "1.1")] {
        let (_, manifest) = block_on(client.manifest("lab/other", from)).unwrap().unwrap();
        for blob in manifest.layers.iter().chain([&manifest.config]) {
            let bytes = block_on(client.blob("lab/other", blob)).unwrap();
            block_on(client.push_blob(REPO, bytes.into(), &blob.digest)).unwrap();
        }
        block_on(client.push_manifest(REPO, to, &manifest)).unwrap();
    }
    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "signed by the wrong key", &app, &before);
    // Pinning their key on a later pull does not replace the root trusted since the first.
    let theirs_pub = theirs.join("root.pub");
    let o = w
        .cmd()
        .arg("pull")
        .arg(w.reference("1.1"))
        .arg("-o")
        .arg(&app)
        .arg("--root-key")
        .arg(&theirs_pub)
        .output()
        .unwrap();
    assert_refused(&o, "is not the root key trusted for this repository", &app, &before);
    // A client pinning our root key on its first pull refuses it too.
    let o = w
        .cmd()
        .arg("pull")
        .arg(w.reference("1.1"))
        .arg("-o")
        .arg(w.path("first"))
        .arg("--root-key")
        .arg(w.keys().join("root.pub"))
        .env("XDG_STATE_HOME", w.path("state2"))
        .output()
        .unwrap();
    assert_refused(&o, "is not signed by the pinned root key", &w.path("first"), &None);
}

#[test]
fn metadata_below_its_signature_threshold_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    w.ok(&mut w.publish_cmd(&w.variant("publish.version=2"), "1.1"));
    // The timestamp with its signature stripped: zero of the one signature it needs.
    let client = w.client();
    let (_, mut manifest) = block_on(client.manifest(REPO, oci::METADATA_TAG)).unwrap().unwrap();
    let layer = manifest.layers.iter_mut().find(|l| oci::title(l) == Some("timestamp.json")).unwrap();
    let mut timestamp: serde_json::Value =
        serde_json::from_slice(&block_on(client.blob(REPO, layer)).unwrap()).unwrap();
    timestamp["signatures"] = serde_json::json!([]);
    let bytes = serde_json::to_vec(&timestamp).unwrap();
    let digest = oci::sha256_digest(&bytes);
    block_on(client.push_blob(REPO, bytes.clone().into(), &digest)).unwrap();
    *layer = oci::layer(oci::METADATA_MEDIA_TYPE, &digest, bytes.len() as u64, "timestamp.json");
    block_on(client.push_manifest(REPO, oci::METADATA_TAG, &manifest)).unwrap();
    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "0 valid signature(s), below its threshold of 1", &app, &before);
}

#[test]
fn an_unexpected_artifact_type_is_refused() {
    let w = World::new();
    let app = w.with_a_pulled_app();
    w.ok(&mut w.publish_cmd(&w.variant("publish.version=2"), "1.1"));
    // The same, signed blobs, under another artifact type: not what publish pushed.
    let client = w.client();
    let (_, mut manifest) = block_on(client.manifest(REPO, "1.1")).unwrap().unwrap();
    manifest.artifact_type = Some("application/vnd.example.other.v1".into());
    block_on(client.push_manifest(REPO, "1.1", &manifest)).unwrap();
    let before = snapshot(&app);
    assert_refused(&w.pull("1.1", &app, &[]), "an unexpected artifact type", &app, &before);
    let stderr = text(&w.pull("1.1", &app, &[]).stderr);
    assert!(stderr.contains("application/vnd.example.other.v1"), "names what it found: {stderr}");
}
