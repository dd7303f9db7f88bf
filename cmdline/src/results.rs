//! `appResultsTo`: where the init saves the results at the very end of a run, after
//! postrun. `nfs:ADDRESS:/EXPORT[,OPTIONS]` mounts an NFS export (the kernel's NFS client
//! does not resolve names, so the server is an IPv4 address); `9p:TAG[,OPTIONS]` mounts a
//! virtio 9p share (QEMU's `-virtfs`). OPTIONS are mount options added after the init's
//! own (the later one wins), e.g. `port=20490` or `vers=3`. `serial:NAME` writes the
//! results as one newc cpio stream to the virtio-serial port of that name (QEMU's
//! `virtserialport` with `name=NAME`), which the host unpacks: nothing to mount, so no
//! options.

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
            Ok(ResultsTo::Nfs { server, export: export.to_string(), options })
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
