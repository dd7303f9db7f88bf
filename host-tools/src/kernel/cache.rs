//! What the kernel cache holds and what can go (`appliance kernel cache`): every build of
//! the project's kernels stays under its key, with the extracted source and the object
//! directory it was compiled in, and every version of Debian's cloud kernel that was
//! fetched; a changed fragment, patch or tarball leaves the older ones behind, a few
//! gigabytes each time.
//!
//! What a prune keeps: the newest build of each kind (series, base, fragments, patches,
//! headers or not), the source and objects that build records (`build.json`), the
//! Debian kernel `kernels/debian-cloud` names, and the source tarballs fetched from
//! Debian's archive (`apt-src/`, see [`crate::kernel::source`]). What it removes: older
//! builds of the same kind, sources and objects no kept build records (a later build
//! extracts or compiles them again), what a killed build or fetch left half-made, apt's
//! lists and caches beside the tarballs, and older Debian kernels. It holds every lock,
//! so no build or fetch runs meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::host::fs_error::{FsError, io_error, remove_any};
use crate::kernel::kbuild::{self, Facts};
use crate::kernel::source;
use crate::kernel::{CURRENT_LINK, KERNELS_DIR, LOCK_FILE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{lock} is held: a kernel build or fetch is running; prune the cache when it is done")]
    Busy { lock: PathBuf },
}

/// What one entry of the cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A finished kernel of the project's (`kernels/build/<key>/`).
    Build,
    /// An extracted, patched source tarball (`kernels/build/src/`).
    Source,
    /// An object directory (`kernels/build/obj/`).
    Objects,
    /// A fetched Debian kernel package (`kernels/<package>_<version>/`).
    Debian,
    /// A kernel source tarball fetched from Debian's archive (`apt-src/<suite>/`).
    Tarball,
    /// A directory a killed build or fetch left half-made.
    Leftover,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Build => "build",
            Kind::Source => "source",
            Kind::Objects => "objects",
            Kind::Debian => "debian",
            Kind::Tarball => "tarball",
            Kind::Leftover => "leftover",
        }
    }
}

/// One entry, with whether a prune keeps it and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Seconds since the epoch when the build finished (builds only).
    pub built_at: Option<u64>,
    pub keep: bool,
    pub why: String,
}

/// Everything under `<cache>/kernels`, each entry judged; sorted by kind, then name.
pub fn survey(cache_dir: &Path) -> Result<Vec<Entry>, Error> {
    let kernels = cache_dir.join(KERNELS_DIR);
    let root = cache_dir.join(kbuild::BUILD_DIR);
    let mut entries = Vec::new();

    // The builds: the newest of each kind is kept.
    // Each with its facts and its kind, when it is a finished build.
    let mut builds: Vec<(String, PathBuf, Option<Judged>)> = Vec::new();
    for (name, path) in subdirs(&root)? {
        if name == kbuild::SOURCES_DIR || name == kbuild::OBJECTS_DIR {
            continue;
        }
        if kbuild::STAGING_PREFIXES.iter().any(|p| name.starts_with(p)) {
            entries.push(leftover(name, path, "a build that did not finish left it"));
            continue;
        }
        let judged = kbuild::facts_in(&path).map(|facts| {
            let kind = kind_of(&facts, &path);
            (facts, kind)
        });
        builds.push((name, path, judged));
    }
    // The newest build of each kind: its name, by kind.
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (name, _, judged) in &builds {
        if let Some((facts, kind)) = judged {
            let slot = newest.entry(kind.clone()).or_default();
            if (facts.built_at, name) >= (slot.0, &slot.1) {
                *slot = (facts.built_at, name.clone());
            }
        }
    }
    let mut used_sources = HashSet::new();
    let mut used_objects = HashSet::new();
    for (name, path, judged) in builds {
        let bytes = size_of(&path);
        let Some((facts, kind)) = judged else {
            entries.push(Entry {
                kind: Kind::Build,
                name,
                path,
                bytes,
                built_at: None,
                keep: false,
                why: String::from("no build.json: not a finished build"),
            });
            continue;
        };
        let newest_name = newest.get(&kind).map(|(_, n)| n.as_str()).unwrap_or_default();
        let keep = newest_name == name;
        let why = if keep {
            used_sources.extend(facts.source_tree.clone());
            used_objects.extend(facts.object_dir.clone());
            format!("the newest {kind}")
        } else {
            format!("superseded by {newest_name}")
        };
        entries.push(Entry { kind: Kind::Build, name, path, bytes, built_at: Some(facts.built_at), keep, why });
    }

    // Sources and objects: kept when a kept build records them.
    for (dir, kind, used) in
        [(kbuild::SOURCES_DIR, Kind::Source, &used_sources), (kbuild::OBJECTS_DIR, Kind::Objects, &used_objects)]
    {
        for (name, path) in subdirs(&root.join(dir))? {
            if kbuild::STAGING_PREFIXES.iter().any(|p| name.starts_with(p)) {
                entries.push(leftover(name, path, "an extraction that did not finish left it"));
                continue;
            }
            let keep = used.contains(&name);
            let why = if keep {
                String::from("a kept build's")
            } else {
                String::from("no kept build records it: a later build makes it again")
            };
            entries.push(Entry { kind, bytes: size_of(&path), name, path, built_at: None, keep, why });
        }
    }

    // Debian's kernels: the one `debian-cloud` names is kept.
    let current = fs::read_link(kernels.join(CURRENT_LINK))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
    for (name, path) in subdirs(&kernels)? {
        if name == "build" {
            continue;
        }
        if name.starts_with(".fetch-") {
            entries.push(leftover(name, path, "a fetch that did not finish left it"));
            continue;
        }
        let keep = current.as_deref() == Some(name.as_str());
        let why = if keep { format!("what {CURRENT_LINK} names") } else { format!("not what {CURRENT_LINK} names") };
        entries.push(Entry { kind: Kind::Debian, bytes: size_of(&path), name, path, built_at: None, keep, why });
    }

    // Debian's kernel sources: the tarballs stay (a later build of the series takes them
    // instead of downloading them again); apt's state beside them goes.
    for (suite, dir) in subdirs(&cache_dir.join(source::CACHE_DIR))? {
        for (name, path) in children(&dir)? {
            let name_in_suite = format!("{suite}/{name}");
            if source::KEPT.contains(&name.as_str()) {
                continue;
            } else if source::is_tarball(&name) {
                let why = String::from("Debian's source: a later build of its series takes it without a download");
                let bytes = size_of(&path);
                entries.push(Entry {
                    kind: Kind::Tarball,
                    name: name_in_suite,
                    path,
                    bytes,
                    built_at: None,
                    keep: true,
                    why,
                });
            } else if name.starts_with(".fetch-") {
                entries.push(leftover(name_in_suite, path, "a fetch that did not finish left it"));
            } else {
                entries.push(leftover(name_in_suite, path, "apt's lists and caches: a fetch reads them again"));
            }
        }
    }
    entries.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(entries)
}

/// Removes what [`survey`] does not keep (everything with `all`), holding the cache's
/// locks from the survey to the end, so that no build or fetch runs meanwhile. Returns
/// what was removed.
pub fn prune(cache_dir: &Path, all: bool) -> Result<Vec<Entry>, Error> {
    let mut locks = vec![
        lock(&cache_dir.join(KERNELS_DIR).join(LOCK_FILE))?,
        lock(&cache_dir.join(kbuild::BUILD_DIR).join(kbuild::LOCK_FILE))?,
    ];
    for (_, suite) in subdirs(&cache_dir.join(source::CACHE_DIR))? {
        locks.push(lock(&suite.join(source::LOCK_FILE))?);
    }
    let entries = survey(cache_dir)?;
    let mut removed = Vec::new();
    for entry in entries.iter().filter(|e| all || !e.keep) {
        match remove_any(&entry.path) {
            Ok(()) => removed.push(entry.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError { action: "remove", path: entry.path.clone(), source: e }.into()),
        }
    }
    if all {
        let _ = fs::remove_file(cache_dir.join(KERNELS_DIR).join(CURRENT_LINK));
    }
    Ok(removed)
}

/// Takes `path`'s lock without waiting; a lock someone holds is [`Error::Busy`]. A cache
/// without the directory needs no lock.
fn lock(path: &Path) -> Result<Option<File>, Error> {
    if !path.parent().is_some_and(Path::is_dir) {
        return Ok(None);
    }
    let file = File::create(path).map_err(io_error("create", path))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Busy { lock: path.to_owned() }),
        Err(fs::TryLockError::Error(e)) => Err(FsError { action: "lock", path: path.to_owned(), source: e }.into()),
    }
}

/// A finished build's facts, and its kind ([`kind_of`]).
type Judged = (Facts, String);

/// What makes builds the same kind, so that only the newest stays.
fn kind_of(facts: &Facts, dir: &Path) -> String {
    let mut kind = format!("{} {} build", facts.series, facts.base);
    for fragment in facts.fragments.iter().filter(|f| !f.starts_with("base.config") && !f.starts_with("series/")) {
        kind.push_str(&format!(" +{}", fragment.trim_end_matches(".config")));
    }
    if facts.patches.is_empty() {
        kind.push_str(" without patches");
    }
    if dir.join("headers").is_dir() {
        kind.push_str(" with headers");
    }
    kind
}

fn leftover(name: String, path: PathBuf, why: &str) -> Entry {
    Entry { kind: Kind::Leftover, bytes: size_of(&path), name, path, built_at: None, keep: false, why: why.to_owned() }
}

/// The directories in `dir` (none when it does not exist), by name.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    entries_of(dir, true)
}

/// Everything in `dir` (nothing when it does not exist), by name.
fn children(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    entries_of(dir, false)
}

fn entries_of(dir: &Path, dirs_only: bool) -> Result<Vec<(String, PathBuf)>, Error> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError { action: "read", path: dir.to_owned(), source: e }.into()),
    };
    let mut found: Vec<(String, PathBuf)> = read
        .filter_map(Result::ok)
        // Not through symlinks: `debian-cloud` is a name, not an entry.
        .filter(|e| !dirs_only || e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    found.sort();
    Ok(found)
}

/// The bytes `path` and the files under it take on disk, in blocks as `du` counts them
/// (a file with several links counts each time: the cache makes no hard links).
fn size_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let top = fs::symlink_metadata(path);
    if top.as_ref().is_ok_and(|meta| !meta.is_dir()) {
        return top.map(|meta| meta.blocks() * 512).unwrap_or(0);
    }
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = fs::read_dir(&dir) else { continue };
        for entry in read.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(root: &Path, name: &str, series: &str, fragments: &[&str], built_at: u64, src: &str, obj: &str) {
        let dir = root.join(kbuild::BUILD_DIR).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("bzImage"), vec![0u8; 8192]).unwrap();
        let mut all = vec!["base.config".to_owned(), format!("series/{series}/base.config")];
        all.extend(fragments.iter().map(|f| f.to_string()));
        let facts = serde_json::json!({
            "release": format!("{series}.1-appliance"), "version": format!("{series}.1"), "series": series,
            "base": "tinyconfig", "fragments": all, "source": "/usr/src/x.tar.xz", "key": name,
            "checked": 1, "patches": ["lapic-timer-period"], "build_seconds": 1, "steps": 1,
            "built_at": built_at, "source_tree": src, "object_dir": obj,
        });
        fs::write(dir.join(kbuild::FACTS), facts.to_string()).unwrap();
    }

    fn tree(root: &Path, dir: &str, name: &str) {
        let path = root.join(kbuild::BUILD_DIR).join(dir).join(name);
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("Makefile"), vec![0u8; 4096]).unwrap();
    }

    fn judged(entries: &[Entry]) -> Vec<(Kind, &str, bool)> {
        entries.iter().map(|e| (e.kind, e.name.as_str(), e.keep)).collect()
    }

    /// A cache as a few sessions of fragment edits leave it.
    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        build(root, "6.1-tinyconfig-old", "6.1", &[], 100, "linux-source-6.1-a", "6.1-o1");
        build(root, "6.1-tinyconfig-new", "6.1", &[], 200, "linux-source-6.1-b", "6.1-o2");
        build(root, "6.1-tinyconfig-net", "6.1", &["net"], 50, "linux-source-6.1-a", "6.1-o3");
        build(root, "5.10-tinyconfig-k", "5.10", &[], 10, "linux-source-5.10-a", "5.10-o1");
        for (dir, name) in [
            ("src", "linux-source-6.1-a"),
            ("src", "linux-source-6.1-b"),
            ("src", "linux-source-6.1-c"),
            ("src", "linux-source-5.10-a"),
            ("obj", "6.1-o1"),
            ("obj", "6.1-o2"),
            ("obj", "6.1-o3"),
            ("obj", "5.10-o1"),
            ("src", ".extract-x1"),
        ] {
            tree(root, dir, name);
        }
        fs::create_dir_all(root.join(kbuild::BUILD_DIR).join(".install-x2")).unwrap();
        let kernels = root.join(KERNELS_DIR);
        for pkg in ["linux-image-6.1.0-1-cloud-amd64_6.1.1-1", "linux-image-6.1.0-2-cloud-amd64_6.1.2-1", ".fetch-x3"] {
            fs::create_dir_all(kernels.join(pkg).join("boot")).unwrap();
        }
        std::os::unix::fs::symlink("linux-image-6.1.0-2-cloud-amd64_6.1.2-1", kernels.join(CURRENT_LINK)).unwrap();
        // A fetched 5.10 tarball, with the lists of a fetch from before they were
        // removed after it, and a killed fetch of 6.12.
        let bullseye = root.join(source::CACHE_DIR).join("bullseye");
        let backports = root.join(source::CACHE_DIR).join("bookworm-backports");
        for sub in ["sources.list.d", "lists/partial", "archives/partial"] {
            fs::create_dir_all(bullseye.join(sub)).unwrap();
        }
        fs::create_dir_all(backports.join(".fetch-x4")).unwrap();
        for (dir, file) in [
            (&bullseye, "linux-source-5.10.tar.xz"),
            (&bullseye, "sources.list"),
            (&bullseye, source::LOCK_FILE),
            (&bullseye, "pkgcache.bin"),
            (&backports, "sources.list"),
        ] {
            fs::write(dir.join(file), vec![0u8; 4096]).unwrap();
        }
        dir
    }

    #[test]
    fn the_newest_build_of_each_kind_and_what_it_records_are_kept() {
        let dir = sample();
        let entries = survey(dir.path()).unwrap();
        assert_eq!(
            judged(&entries),
            vec![
                (Kind::Build, "5.10-tinyconfig-k", true),
                (Kind::Build, "6.1-tinyconfig-net", true),
                (Kind::Build, "6.1-tinyconfig-new", true),
                (Kind::Build, "6.1-tinyconfig-old", false),
                (Kind::Source, "linux-source-5.10-a", true),
                (Kind::Source, "linux-source-6.1-a", true),
                (Kind::Source, "linux-source-6.1-b", true),
                (Kind::Source, "linux-source-6.1-c", false),
                (Kind::Objects, "5.10-o1", true),
                (Kind::Objects, "6.1-o1", false),
                (Kind::Objects, "6.1-o2", true),
                (Kind::Objects, "6.1-o3", true),
                (Kind::Debian, "linux-image-6.1.0-1-cloud-amd64_6.1.1-1", false),
                (Kind::Debian, "linux-image-6.1.0-2-cloud-amd64_6.1.2-1", true),
                (Kind::Tarball, "bullseye/linux-source-5.10.tar.xz", true),
                (Kind::Leftover, ".extract-x1", false),
                (Kind::Leftover, ".fetch-x3", false),
                (Kind::Leftover, ".install-x2", false),
                (Kind::Leftover, "bookworm-backports/.fetch-x4", false),
                (Kind::Leftover, "bullseye/archives", false),
                (Kind::Leftover, "bullseye/lists", false),
                (Kind::Leftover, "bullseye/pkgcache.bin", false),
            ]
        );
        let tarball = entries.iter().find(|e| e.kind == Kind::Tarball).unwrap();
        assert_eq!(tarball.bytes, 4096);
        let old = entries.iter().find(|e| e.name == "6.1-tinyconfig-old").unwrap();
        assert_eq!(old.why, "superseded by 6.1-tinyconfig-new");
        assert!(old.bytes >= 8192, "{old:?}");
    }

    #[test]
    fn prune_removes_what_is_not_kept_and_all_removes_everything() {
        let dir = sample();
        let entries = survey(dir.path()).unwrap();
        let removed = prune(dir.path(), false).unwrap();
        assert_eq!(removed.len(), entries.iter().filter(|e| !e.keep).count());
        for e in &entries {
            assert_eq!(e.path.exists(), e.keep, "{e:?}");
        }
        let after = survey(dir.path()).unwrap();
        assert!(after.iter().all(|e| e.keep), "{after:?}");
        assert_eq!(after.len(), entries.iter().filter(|e| e.keep).count());

        prune(dir.path(), true).unwrap();
        assert_eq!(survey(dir.path()).unwrap(), []);
        assert!(fs::symlink_metadata(dir.path().join(KERNELS_DIR).join(CURRENT_LINK)).is_err());
    }

    #[test]
    fn prune_refuses_while_a_build_holds_the_lock() {
        let dir = sample();
        let entries = survey(dir.path()).unwrap();
        let lock_path = dir.path().join(kbuild::BUILD_DIR).join(kbuild::LOCK_FILE);
        let held = File::create(&lock_path).unwrap();
        held.lock().unwrap();
        let err = prune(dir.path(), false).unwrap_err();
        assert!(matches!(&err, Error::Busy { lock } if *lock == lock_path), "{err}");
        assert!(entries.iter().all(|e| e.path.exists()), "nothing is removed");
        drop(held);
        // So does a fetch of a source.
        let lock_path = dir.path().join(source::CACHE_DIR).join("bullseye").join(source::LOCK_FILE);
        let held = File::create(&lock_path).unwrap();
        held.lock().unwrap();
        let err = prune(dir.path(), false).unwrap_err();
        assert!(matches!(&err, Error::Busy { lock } if *lock == lock_path), "{err}");
        assert!(entries.iter().all(|e| e.path.exists()), "nothing is removed");
    }

    #[test]
    fn an_empty_cache_has_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(survey(dir.path()).unwrap(), []);
        assert_eq!(prune(dir.path(), true).unwrap(), []);
    }
}
