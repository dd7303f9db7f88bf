//! `appResultsTo`: where the init saves the results at the very end of a run, after
//! postrun. `nfs:ADDRESS:/EXPORT[,OPTIONS]` mounts an NFS export (the kernel's NFS client
//! does not resolve names, so the server is an IPv4 address); `9p:TAG[,OPTIONS]` mounts a
//! virtio 9p share (QEMU's `-virtfs`). OPTIONS are mount options added after the init's
//! own (the later one wins), e.g. `port=20490` or `vers=3`.

use alloc::string::{String, ToString};
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

pub(crate) const RESULTS_TO_EXPECTED: &str = "a results destination (expected nfs:ADDRESS:/EXPORT[,OPTIONS] \
     with an IPv4 address, e.g. nfs:10.0.2.2:/,port=2049, or 9p:TAG[,OPTIONS])";
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
}

impl ResultsTo {
    /// `nfs` or `9p`.
    pub fn transport(&self) -> &'static str {
        match self {
            ResultsTo::Nfs { .. } => "nfs",
            ResultsTo::NineP { .. } => "9p",
        }
    }

    /// The extra mount options (may be empty).
    pub fn options(&self) -> &str {
        match self {
            ResultsTo::Nfs { options, .. } | ResultsTo::NineP { options, .. } => options,
        }
    }
}

impl fmt::Display for ResultsTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultsTo::Nfs { server, export, .. } => write!(f, "nfs:{server}:{export}")?,
            ResultsTo::NineP { tag, .. } => write!(f, "9p:{tag}")?,
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
