//! The host side of a run's results (`appliance run --results DIR`): the run's id, the
//! guest parameters for each transport, and reading the outcome back from the status
//! record. The NFS server itself is [`crate::vm::nfs`].

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use appliance_cmdline::status::Event;

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
}

/// The 9p mount tag of the results share.
pub const NINEP_TAG: &str = "results";

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
}
