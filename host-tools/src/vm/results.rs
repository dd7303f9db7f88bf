//! The host side of a run's results (`appliance run --results DIR`): the run's id, the
//! transport and the guest parameters for each, reading the outcome back from the status
//! record, and unpacking the stream of the serial transport. The NFS server itself is
//! [`crate::vm::nfs`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use appliance_cmdline::status::Event;

use crate::archive::cpio::read::{self, FileType, ReadError};
use crate::archive::cpio::tree::{self, UnpackError, UnpackOptions};

/// `appliance run`'s exit status when results were asked for and did not arrive in full
/// (the run's own status is in the message).
pub const EXIT_RESULTS_FAILED: i32 = 123;

/// How the results reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// nfs-ganesha on the host's loopback, reached over QEMU's user network.
    Nfs,
    /// virtio 9p: QEMU serves the directory itself; no network at all.
    NineP,
    /// A cpio stream over a virtio-serial port that QEMU writes to a file, unpacked here:
    /// no server, no network, no privileges, and a driver every kernel this project boots
    /// has (built in, or packed in the image).
    Serial,
}

impl Via {
    /// `nfs`, `9p` or `serial`.
    pub fn from_name(name: &str) -> Option<Via> {
        match name {
            "nfs" => Some(Via::Nfs),
            "9p" => Some(Via::NineP),
            "serial" => Some(Via::Serial),
            _ => None,
        }
    }

    /// The transport when none is asked for: NFS as root (the server, nfs-ganesha, needs
    /// root), the stream otherwise (9p is missing from Debian's cloud kernel).
    pub fn default_for(root: bool) -> Via {
        if root { Via::Nfs } else { Via::Serial }
    }
}

/// The 9p mount tag of the results share.
pub const NINEP_TAG: &str = "results";

/// The name of the results port (`appResultsTo=serial:appliance.results`), in the style
/// of QEMU's own (`org.qemu.guest_agent.0`).
pub const PORT_NAME: &str = "appliance.results";

/// Where QEMU writes the results stream of run `id`: a hidden file in the results
/// directory itself, on the file system the run's directory is unpacked to (and not in a
/// `/tmp` that may be a small tmpfs).
pub fn stream_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}.cpio"))
}

/// The run's id: `<name>-<UTC date>-<time>`, e.g. `hello-20261123-105900`; the guest makes
/// `<id>`, or `<id>.2`... when it exists, so no run writes into another's directory.
pub fn run_id(name: &str, now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(40)
        .collect();
    let clean = if clean.is_empty() { "run".to_string() } else { clean };
    format!("{clean}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What the guest said about its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// The run's directory on the host, when the guest said where it wrote.
    pub dir: Option<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    /// mount + copy + unmount, microseconds.
    pub step_us: u64,
    pub error: Option<String>,
}

/// The `results` event of a status record, read against the host directory `dir` that was
/// exported (the guest's `dest` ends with the run's directory name). `None` when the
/// guest never reported the step (it did not get that far).
pub fn outcome(events: &[Event], dir: &Path) -> Option<Outcome> {
    events.iter().rev().find_map(|e| match e {
        Event::Results { ok, dest, files, bytes, mount_us, copy_us, umount_us, error, .. } => Some(Outcome {
            ok: *ok,
            dir: ok.then(|| dest.rsplit('/').next().filter(|n| !n.is_empty()).map(|n| dir.join(n))).flatten(),
            files: *files,
            bytes: *bytes,
            step_us: mount_us.saturating_add(*copy_us).saturating_add(*umount_us),
            error: error.clone(),
        }),
        _ => None,
    })
}

/// Errors of [`unpack_stream`].
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the results stream {} is incomplete or corrupt", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("the results stream holds {found}, not the one run directory the guest writes")]
    Layout { found: String },
    #[error(
        "the results stream holds {files} file(s) of {bytes} byte(s), but the guest reported {want_files} of {want_bytes}"
    )]
    Count { files: u64, bytes: u64, want_files: u64, want_bytes: u64 },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the results stream `stream` into a new directory of `dir`, named like the one
/// directory the stream holds (the guest's run directory name), or `<name>.2`, ... when
/// that exists: a run never writes into another's. The stream is checked first against
/// what the guest reported (`outcome`'s files and bytes), and unpacked with the checks of
/// [`tree::unpack`] (no `..`, nothing through a symlink, no devices), into a hidden
/// directory renamed into place at the end, so a failure leaves no half run directory.
/// The stream is read twice, one member at a time (first the names and sizes, then the
/// files): memory for the largest file, not for the stream. Returns the run's directory.
pub fn unpack_stream(stream: &Path, dir: &Path, outcome: &Outcome) -> Result<PathBuf, StreamError> {
    let read_error = |source| StreamError::Read { path: stream.to_owned(), source };
    let members = |data| {
        let file =
            fs::File::open(stream).map_err(|source| read_error(ReadError::Io { path: stream.to_owned(), source }))?;
        Ok::<_, StreamError>(read::Stream::new(io::BufReader::with_capacity(1 << 20, file), data))
    };
    let mut names = std::collections::BTreeSet::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    for item in members(false)? {
        let (member, size) = item.map_err(read_error)?;
        let Some(path) = member.path().map_err(UnpackError::from)? else { continue };
        names.insert(path.split('/').next().unwrap_or_default().to_owned());
        match member.file_type() {
            FileType::Regular => {
                files += 1;
                bytes += size;
            }
            FileType::Symlink => files += 1,
            _ => {}
        }
    }
    let name = match names.iter().collect::<Vec<_>>().as_slice() {
        [name] if appliance_cmdline::is_valid_run_id(name) => (*name).clone(),
        other => {
            return Err(StreamError::Layout {
                found: if other.is_empty() { "nothing".to_owned() } else { format!("{other:?}") },
            });
        }
    };
    if (files, bytes) != (outcome.files, outcome.bytes) {
        return Err(StreamError::Count { files, bytes, want_files: outcome.files, want_bytes: outcome.bytes });
    }
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StreamError::Io { action, path, source }
    };
    let scratch = tempfile::Builder::new()
        .prefix(".appliance-unpack-")
        .tempdir_in(dir)
        .map_err(io("create a directory in", dir))?;
    let mut writer = tree::TreeWriter::new(scratch.path(), UnpackOptions { devices: false, owners: false })?;
    for item in members(true)? {
        writer.member(&item.map_err(read_error)?.0)?;
    }
    writer.finish()?;
    let unpacked = scratch.path().join(&name);
    for n in 1..=1000 {
        let target = dir.join(if n == 1 { name.clone() } else { format!("{name}.{n}") });
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &unpacked,
            rustix::fs::CWD,
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(target),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(io("move the results to", &target)(e.into())),
        }
    }
    Err(io("find a free name for", &dir.join(&name))(io::ErrorKind::AlreadyExists.into()))
}

/// Removes the results stream of a run when it holds nothing (the guest never got to the
/// results step); returns whether a non-empty one is left.
pub fn discard_empty_stream(stream: &Path) -> bool {
    match fs::metadata(stream) {
        Ok(m) if m.len() == 0 => fs::remove_file(stream).map(|()| false).unwrap_or(true),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Packets the control NIC saw during `/app/run`, from the `run_traffic` event.
pub fn run_packets(events: &[Event]) -> Option<(String, u64)> {
    events.iter().find_map(|e| match e {
        Event::RunTraffic { nic, before, after, .. } => Some((nic.clone(), before.packets_until(after))),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_ids_have_the_name_and_the_utc_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_863_540); // 2026-11-28 10:59:00 UTC
        assert_eq!(run_id("hello", t), "hello-20261128-105900");
        assert_eq!(run_id("my app/x", UNIX_EPOCH), "my_app_x-19700101-000000");
        assert_eq!(run_id("", UNIX_EPOCH + Duration::from_secs(951_782_400)), "run-20000229-000000");
        assert!(appliance_cmdline::is_valid_run_id(&run_id(&"x".repeat(100), UNIX_EPOCH)));
    }

    #[test]
    fn outcome_from_the_record() {
        let ok = Event::Results {
            t_us: 1,
            ok: true,
            transport: "nfs".into(),
            dest: "nfs:10.0.2.2:/hello-1.2".into(),
            files: 3,
            bytes: 100,
            mount_us: 10,
            copy_us: 20,
            umount_us: 30,
            error: None,
        };
        let o = outcome(&[ok], Path::new("/r")).unwrap();
        assert_eq!(o.dir.as_deref(), Some(Path::new("/r/hello-1.2")));
        assert_eq!((o.ok, o.files, o.bytes, o.step_us), (true, 3, 100, 60));
        let failed = Event::Results {
            t_us: 1,
            ok: false,
            transport: "nfs".into(),
            dest: "nfs:10.0.2.2:/".into(),
            files: 0,
            bytes: 0,
            mount_us: 0,
            copy_us: 0,
            umount_us: 0,
            error: Some("cannot mount: connection refused".into()),
        };
        let o = outcome(&[failed], Path::new("/r")).unwrap();
        assert!(!o.ok && o.dir.is_none());
        assert_eq!(outcome(&[], Path::new("/r")), None);
    }

    #[test]
    fn transports_by_name_and_by_user() {
        assert_eq!(Via::from_name("serial"), Some(Via::Serial));
        assert_eq!(Via::from_name("9p"), Some(Via::NineP));
        assert_eq!(Via::from_name("smb"), None);
        assert_eq!((Via::default_for(true), Via::default_for(false)), (Via::Nfs, Via::Serial));
        assert_eq!(stream_file(Path::new("/r"), "hello-1"), Path::new("/r/.hello-1.cpio"));
    }

    /// A stream as the guest writes it: `name/` with `output` and `results/...`.
    fn stream(dir: &Path, entries: Vec<crate::archive::cpio::Entry>) -> PathBuf {
        let path = dir.join(".s.cpio");
        let file = fs::File::create(&path).unwrap();
        crate::archive::cpio::write_archive(file, entries, 0).unwrap();
        path
    }

    fn ok(files: u64, bytes: u64) -> Outcome {
        Outcome { ok: true, dir: None, files, bytes, step_us: 0, error: None }
    }

    #[test]
    fn a_stream_unpacks_into_a_run_directory_of_its_own() {
        use crate::archive::cpio::Entry;
        let dir = tempfile::tempdir().unwrap();
        let entries = || {
            vec![
                Entry::data("run-1/output", "run done\n", 0o644),
                Entry::data("run-1/results/sub/a.txt", "alpha", 0o600),
                Entry::symlink("run-1/results/link", "sub/a.txt"),
            ]
        };
        let s = stream(dir.path(), entries());
        let first = unpack_stream(&s, dir.path(), &ok(3, 14)).unwrap();
        assert_eq!(first, dir.path().join("run-1"));
        assert_eq!(fs::read_to_string(first.join("results/sub/a.txt")).unwrap(), "alpha");
        assert_eq!(fs::read_link(first.join("results/link")).unwrap(), Path::new("sub/a.txt"));
        // The same name again: a directory of its own, the first untouched.
        fs::write(first.join("output"), "first").unwrap();
        assert_eq!(unpack_stream(&s, dir.path(), &ok(3, 14)).unwrap(), dir.path().join("run-1.2"));
        assert_eq!(fs::read_to_string(first.join("output")).unwrap(), "first");
        // Nothing half-unpacked is left behind: only the stream and the two run directories.
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".s.cpio", "run-1", "run-1.2"]);
    }

    #[test]
    fn a_stream_that_is_cut_short_or_disagrees_with_the_guest_is_refused() {
        use crate::archive::cpio::Entry;
        let dir = tempfile::tempdir().unwrap();
        let s = stream(dir.path(), vec![Entry::data("run-1/output", vec![1u8; 5000], 0o644)]);
        let e = unpack_stream(&s, dir.path(), &ok(2, 5000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the results stream holds 1 file(s) of 5000 byte(s), but the guest reported 2 of 5000"
        );
        // Cut before the trailer (QEMU killed mid-stream).
        let bytes = fs::read(&s).unwrap();
        fs::write(&s, &bytes[..bytes.len() - 200]).unwrap();
        let e = unpack_stream(&s, dir.path(), &ok(1, 5000)).unwrap_err();
        assert!(matches!(e, StreamError::Read { .. }), "{e}");
        assert!(e.to_string().contains("incomplete or corrupt"), "{e}");
        // Two top directories, or a name that is no run id.
        let s = stream(dir.path(), vec![Entry::data("a/output", "", 0o644), Entry::data("b/output", "", 0o644)]);
        let e = unpack_stream(&s, dir.path(), &ok(2, 0)).unwrap_err();
        assert!(matches!(e, StreamError::Layout { .. }), "{e}");
        let s = stream(dir.path(), vec![Entry::data(".hidden/output", "", 0o644)]);
        assert!(matches!(unpack_stream(&s, dir.path(), &ok(1, 0)), Err(StreamError::Layout { .. })));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the stream");
        // An empty stream (the guest never got to the results step) is removed.
        fs::write(&s, "").unwrap();
        assert!(!discard_empty_stream(&s));
        assert!(!s.exists());
    }
}
