//! `appResultsTo`: where the init saves the results at the very end of a run, after
//! postrun. `nfs:ADDRESS:/EXPORT[,OPTIONS]` mounts an NFS export (the kernel's NFS client
//! does not resolve names, so the server is an IPv4 address); `9p:TAG[,OPTIONS]` mounts a
//! virtio 9p share (QEMU's `-virtfs`). OPTIONS are mount options added after the init's
//! own (the later one wins), e.g. `port=20490` or `vers=3`; for NFS, none may lift the
//! bound on how long a request to a dead server takes to fail ([`NFS_TIMEOUTS`]).
//! `serial:NAME` writes the results as one newc cpio stream to the virtio-serial port of
//! that name (QEMU's `virtserialport` with `name=NAME`), which the host unpacks: nothing
//! to mount, so no options.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

pub(crate) const RESULTS_TO_EXPECTED: &str = "a results destination (expected nfs:ADDRESS:/EXPORT[,OPTIONS] \
     with an IPv4 address, e.g. nfs:10.0.2.2:/,port=2049, 9p:TAG[,OPTIONS] or serial:PORT-NAME)";
pub(crate) const RUN_ID_EXPECTED: &str = "a run id (expected 1 to 64 of A-Z a-z 0-9 - _ ., not starting with .)";
pub(crate) const RESULTS_DIR_EXPECTED: &str = "an absolute path (expected /...)";

/// The NFS options the init mounts with, before the user's: `soft` makes a request give
/// up at all (a hard mount retries for ever: a dead server would hang the appliance);
/// `timeo` is in tenths of a second and grows by itself on each retry over TCP, so with
/// `retrans=1` a request fails after 10 + 20 s.
pub const NFS_TIMEOUTS: &str = "soft,timeo=100,retrans=1";
const NFS_TIMEO: u64 = 100;
const NFS_RETRANS: u64 = 1;

/// The longest an NFS request of the results step may take to fail, in seconds: options
/// in `appResultsTo` under which it could take longer are refused.
pub const NFS_REQUEST_LIMIT_S: u64 = 120;

/// The results directory in the guest when `appResultsDir` is unset.
pub const DEFAULT_RESULTS_DIR: &str = "/app/results";

/// A transport and where on it the results go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultsTo {
    /// An NFS export: the server's address, the exported path, extra mount options.
    Nfs { server: Ipv4Addr, export: String, options: String },
    /// A virtio 9p share by its mount tag, with extra mount options.
    NineP { tag: String, options: String },
    /// A virtio-serial port by its name: the results go there as a newc cpio stream.
    Serial { port: String },
}

impl ResultsTo {
    /// `nfs`, `9p` or `serial`.
    pub fn transport(&self) -> &'static str {
        match self {
            ResultsTo::Nfs { .. } => "nfs",
            ResultsTo::NineP { .. } => "9p",
            ResultsTo::Serial { .. } => "serial",
        }
    }

    /// The extra mount options (may be empty; always empty for a stream).
    pub fn options(&self) -> &str {
        match self {
            ResultsTo::Nfs { options, .. } | ResultsTo::NineP { options, .. } => options,
            ResultsTo::Serial { .. } => "",
        }
    }

    /// Checks that the extra options keep an NFS request to a dead server bounded: no
    /// `hard`, and `timeo`/`retrans` (the last of each wins, as for the kernel) under
    /// which a request fails within [`NFS_REQUEST_LIMIT_S`].
    pub fn check_bounded(&self) -> Result<(), Error> {
        let ResultsTo::Nfs { options, .. } = self else { return Ok(()) };
        let unbounded =
            |option: &str, why: String| Error::UnboundedNfs { param: "appResultsTo", option: option.to_string(), why };
        let (mut timeo, mut retrans, mut udp) = (NFS_TIMEO, NFS_RETRANS, false);
        // The option named when the combination is too long: the last of the two given.
        let mut last = "";
        for option in options.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let number = || match value.parse::<u64>() {
                Ok(n) if !value.starts_with('+') && n > 0 => Ok(n),
                _ => Err(unbounded(option, "expected a whole number from 1".to_string())),
            };
            match key {
                "hard" => {
                    return Err(unbounded(
                        option,
                        "the init mounts soft, so that a request fails instead of retrying for ever (drop it)"
                            .to_string(),
                    ));
                }
                "timeo" => {
                    timeo = number()?;
                    last = option;
                }
                "retrans" => {
                    retrans = number()?;
                    last = option;
                }
                "proto" => udp = value == "udp",
                _ => {}
            }
        }
        let worst = nfs_request_worst_ds(timeo, retrans, udp);
        if worst > NFS_REQUEST_LIMIT_S * 10 {
            return Err(unbounded(
                last,
                format!(
                    "with timeo={timeo},retrans={retrans} a request could take at least {} s to fail, more than \
                     the {NFS_REQUEST_LIMIT_S} s the results step allows (lower timeo or retrans)",
                    worst / 10
                ),
            ));
        }
        Ok(())
    }
}

/// How long, in tenths of a second, an NFS request takes at most to fail with `timeo` and
/// `retrans`: over TCP each retry waits `timeo` longer than the one before, over UDP twice
/// as long, up to the kernel's caps (600 s for TCP, 60 s for UDP). Saturates, and stops
/// counting once past any limit we would accept.
fn nfs_request_worst_ds(timeo: u64, retrans: u64, udp: bool) -> u64 {
    let cap = if udp { 600 } else { 6000 };
    let mut total: u64 = 0;
    let mut wait = timeo;
    for _ in 0..=retrans {
        total = total.saturating_add(wait.min(cap));
        if total > NFS_REQUEST_LIMIT_S * 10 {
            break;
        }
        wait = if udp { wait.saturating_mul(2) } else { wait.saturating_add(timeo) };
    }
    total
}

impl fmt::Display for ResultsTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultsTo::Nfs { server, export, .. } => write!(f, "nfs:{server}:{export}")?,
            ResultsTo::NineP { tag, .. } => write!(f, "9p:{tag}")?,
            ResultsTo::Serial { port } => write!(f, "serial:{port}")?,
        }
        if !self.options().is_empty() {
            write!(f, ",{}", self.options())?;
        }
        Ok(())
    }
}

fn ok_text(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace() || b == b'\'' || b == b'"' || b == 0)
}

impl FromStr for ResultsTo {
    type Err = Error;

    fn from_str(s: &str) -> Result<ResultsTo, Error> {
        let err = || Error::InvalidValue {
            param: "appResultsTo".to_string(),
            value: s.to_string(),
            expected: RESULTS_TO_EXPECTED,
        };
        let (dest, options) = match s.split_once(',') {
            Some((_, o)) if !ok_text(o) || o.split(',').any(str::is_empty) => return Err(err()),
            Some((d, o)) => (d, o.to_string()),
            None => (s, String::new()),
        };
        if let Some(rest) = dest.strip_prefix("nfs:") {
            let (server, export) = rest.split_once(':').ok_or_else(err)?;
            let server = Ipv4Addr::from_str(server).map_err(|_| err())?;
            if !export.starts_with('/') || !ok_text(export) {
                return Err(err());
            }
            let to = ResultsTo::Nfs { server, export: export.to_string(), options };
            to.check_bounded()?;
            Ok(to)
        } else if let Some(tag) = dest.strip_prefix("9p:") {
            // QEMU's mount_tag: at most 31 bytes, no ':' or ','.
            if !ok_text(tag) || tag.len() > 31 || tag.contains(':') {
                return Err(err());
            }
            Ok(ResultsTo::NineP { tag: tag.to_string(), options })
        } else if let Some(port) = dest.strip_prefix("serial:") {
            // A stream has nothing to mount: no options.
            if !options.is_empty() || !is_valid_port_name(port) {
                return Err(err());
            }
            Ok(ResultsTo::Serial { port: port.to_string() })
        } else {
            Err(err())
        }
    }
}

impl Serialize for ResultsTo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ResultsTo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ResultsTo, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `appRunId`: the name of the run's directory on the results server, so a file name:
/// 1 to 64 of `A-Z a-z 0-9 - _ .`, not starting with `.`.
pub fn is_valid_run_id(s: &str) -> bool {
    crate::value::is_valid_node(s) && !s.starts_with('.')
}

/// A virtio-serial port name the init looks for (`/sys/class/virtio-ports/*/name`): 1 to
/// 31 of `A-Z a-z 0-9 - _ .`, as QEMU's own (`org.qemu.guest_agent.0`).
pub fn is_valid_port_name(s: &str) -> bool {
    (1..=31).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `appResultsDir`: an absolute path without NUL or whitespace.
pub fn is_valid_results_dir(s: &str) -> bool {
    s.starts_with('/') && ok_text(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn destinations_parse_and_display_back() {
        let table = vec![
            (
                "nfs:10.0.2.2:/",
                ResultsTo::Nfs { server: Ipv4Addr::new(10, 0, 2, 2), export: "/".into(), options: String::new() },
            ),
            (
                "nfs:192.168.1.2:/srv/results,port=20490,vers=4.0",
                ResultsTo::Nfs {
                    server: Ipv4Addr::new(192, 168, 1, 2),
                    export: "/srv/results".into(),
                    options: "port=20490,vers=4.0".into(),
                },
            ),
            ("9p:results", ResultsTo::NineP { tag: "results".into(), options: String::new() }),
            ("9p:r,msize=65536", ResultsTo::NineP { tag: "r".into(), options: "msize=65536".into() }),
            ("serial:appliance.results", ResultsTo::Serial { port: "appliance.results".into() }),
        ];
        for (text, want) in table {
            let got: ResultsTo = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
    }

    #[test]
    fn bad_destinations_are_refused() {
        for bad in [
            "",
            "nfs:",
            "nfs:server.example:/x",
            "nfs:10.0.2.2",
            "nfs:10.0.2.2:relative",
            "nfs:10.0.2.2:/a b",
            "nfs:10.0.2.2:/,",
            "nfs:10.0.2.2:/,a,,b",
            "9p:",
            "9p:a:b",
            "9p:0123456789012345678901234567890123",
            "serial:",
            "serial:a/b",
            "serial:a,x=1",
            "serial:0123456789012345678901234567890123",
            "smb://x/y",
        ] {
            let e = bad.parse::<ResultsTo>().unwrap_err();
            assert!(matches!(&e, Error::InvalidValue { param, .. } if param == "appResultsTo"), "{bad}: {e:?}");
        }
    }

    /// `hard` or huge `timeo`/`retrans` in `appResultsTo` turned the soft mount with
    /// bounded timeouts back into one where a dead server hangs the appliance.
    #[test]
    fn nfs_options_cannot_lift_the_bound_on_a_dead_server() {
        for ok in [
            "nfs:10.0.2.2:/,soft",
            "nfs:10.0.2.2:/,timeo=50,retrans=2",
            "nfs:10.0.2.2:/,timeo=400",
            "nfs:10.0.2.2:/,retrans=3,timeo=100",
            "nfs:10.0.2.2:/,proto=udp,timeo=100,retrans=2",
            "nfs:10.0.2.2:/,port=2049,vers=3,mountport=4000,nolock",
            // Not NFS: 9p has no such options.
            "9p:r,hard",
        ] {
            assert!(ok.parse::<ResultsTo>().is_ok(), "{ok}");
        }
        for (bad, option) in [
            ("nfs:10.0.2.2:/,hard", "hard"),
            ("nfs:10.0.2.2:/,soft,hard", "hard"),
            ("nfs:10.0.2.2:/,timeo=6000", "timeo=6000"),
            ("nfs:10.0.2.2:/,retrans=10", "retrans=10"),
            ("nfs:10.0.2.2:/,timeo=100,retrans=4294967295", "retrans=4294967295"),
            ("nfs:10.0.2.2:/,timeo=0", "timeo=0"),
            ("nfs:10.0.2.2:/,timeo=+5", "timeo=+5"),
            ("nfs:10.0.2.2:/,retrans=x", "retrans=x"),
            ("nfs:10.0.2.2:/,proto=udp,timeo=100,retrans=3", "retrans=3"),
        ] {
            let e = bad.parse::<ResultsTo>().unwrap_err();
            assert!(matches!(&e, Error::UnboundedNfs { option: o, .. } if o == option), "{bad}: {e:?}");
            assert!(e.to_string().starts_with(&alloc::format!("appResultsTo: `{option}` would let a dead NFS")));
        }
        let e = "nfs:10.0.2.2:/,timeo=6000".parse::<ResultsTo>().unwrap_err().to_string();
        assert!(e.contains("at least 600 s") && e.contains("120 s"), "{e}");
        // What the init mounts with is within the bound, with room to spare.
        assert_eq!(nfs_request_worst_ds(NFS_TIMEO, NFS_RETRANS, false), 300);
        assert!(NFS_TIMEOUTS.contains("soft") && NFS_TIMEOUTS.contains(&alloc::format!("timeo={NFS_TIMEO}")));
        // A value built in code is checked too.
        let c = crate::Config {
            results_to: Some(ResultsTo::Nfs {
                server: Ipv4Addr::new(10, 0, 2, 2),
                export: "/".into(),
                options: "hard".into(),
            }),
            ..crate::Config::default()
        };
        assert!(matches!(c.validate(), Err(Error::UnboundedNfs { .. })));
    }

    #[test]
    fn run_ids_are_file_names() {
        assert!(is_valid_run_id("20261123-105900-hello"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b"] {
            assert!(!is_valid_run_id(bad), "{bad}");
        }
        assert!(is_valid_results_dir("/app/results"));
        assert!(!is_valid_results_dir("app/results"));
    }
}
