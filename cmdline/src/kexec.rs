//! `appEnd=kexec`: what the init needs to boot the next appliance without a trip through
//! the firmware. `appKexec=http://ADDRESS[:PORT]/PATH/` names an app dir on an HTTP server
//! (the server is an IPv4 address: the init has no resolver); the init fetches
//! [`KEXEC_FILES`] from it with the list of their SHA-256 sums, [`SUMS_FILE`], which
//! `appliance build` writes beside them, and refuses any file whose sum is not the listed
//! one. The next kernel's command line is [`next_cmdline`].
//!
//! `appKexec=nfs:ADDRESS:/PATH[,OPTIONS]` and `appKexec=9p:TAG[,OPTIONS]` name the app
//! dir as an NFS export (or a directory in one) or a virtio 9p share whose top holds the
//! files: the init mounts it as the results step mounts its destination (the same syntax,
//! the same bounded NFS timeouts), reads the files, and unmounts it.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::results::ResultsTo;

pub(crate) const KEXEC_EXPECTED: &str = "an app dir (expected http://ADDRESS[:PORT]/PATH/ with an IPv4 address, \
     e.g. http://10.0.2.2:8000/app/, or nfs:ADDRESS:/PATH[,OPTIONS], or 9p:TAG[,OPTIONS])";

/// The files of an app dir the init fetches, in the order it fetches them.
pub const KEXEC_FILES: [&str; 3] = ["vmlinuz", "initrd", "cmdline"];

/// The list of SHA-256 sums that comes with an app dir, in `sha256sum` format (`HEX  NAME`
/// a line), so that `sha256sum -c SHA256SUMS` checks it on any host too.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// Where the next app dir comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KexecFrom {
    /// An HTTP server: its address and port, and the app dir's path, ending in `/`.
    Http { addr: Ipv4Addr, port: u16, path: String },
    /// An NFS export (or a directory in one) or a 9p share, with the files at its top.
    Mount(ResultsTo),
}

impl KexecFrom {
    /// The path of one file of the app dir on the server, or in the mounted file system.
    pub fn file_path(&self, name: &str) -> String {
        match self {
            KexecFrom::Http { path, .. } => alloc::format!("{path}{name}"),
            KexecFrom::Mount(_) => alloc::format!("/{name}"),
        }
    }
}

impl fmt::Display for KexecFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KexecFrom::Http { addr, port: 80, path } => write!(f, "http://{addr}{path}"),
            KexecFrom::Http { addr, port, path } => write!(f, "http://{addr}:{port}{path}"),
            KexecFrom::Mount(to) => write!(f, "{to}"),
        }
    }
}

/// Bytes a path may hold: what a request line carries without escaping, and no quote or
/// space that the command line would split on.
fn path_ok(path: &str) -> bool {
    path.starts_with('/')
        && path.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'?' | b'#' | b'\\'))
        && !path.split('/').any(|part| part == "..")
}

impl FromStr for KexecFrom {
    type Err = Error;

    /// `http://a.b.c.d[:port]/path/`; a path without the final `/` gets one (it names a
    /// directory).
    fn from_str(s: &str) -> Result<KexecFrom, Error> {
        let err =
            || Error::InvalidValue { param: "appKexec".to_owned(), value: s.to_owned(), expected: KEXEC_EXPECTED };
        if s.starts_with("nfs:") || s.starts_with("9p:") {
            // The results destination's syntax and checks; its errors name appKexec.
            return match ResultsTo::from_str(s) {
                Ok(to @ (ResultsTo::Nfs { .. } | ResultsTo::NineP { .. })) => Ok(KexecFrom::Mount(to)),
                Err(Error::UnboundedNfs { option, why, .. }) => {
                    Err(Error::UnboundedNfs { param: "appKexec", option, why })
                }
                _ => Err(err()),
            };
        }
        let rest = s.strip_prefix("http://").ok_or_else(err)?;
        let (host, path) = match rest.find('/') {
            Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at..).unwrap_or_default()),
            None => (rest, "/"),
        };
        let (addr, port) = match host.split_once(':') {
            Some((a, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (a, p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err)?)
            }
            Some(_) => return Err(err()),
            None => (host, 80),
        };
        let addr = Ipv4Addr::from_str(addr).map_err(|_| err())?;
        if !path_ok(path) {
            return Err(err());
        }
        let mut path = path.to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(KexecFrom::Http { addr, port, path })
    }
}

impl Serialize for KexecFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KexecFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A problem with a [`SUMS_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    #[error("{SUMS_FILE} line {line}: expected 64 hexadecimal digits, two spaces and a file name")]
    Malformed { line: usize },
    #[error("{SUMS_FILE} lists no sum for {name}")]
    Missing { name: String },
}

/// The sums of a [`SUMS_FILE`]: each file name with its SHA-256. Blank lines are skipped;
/// `sha256sum`'s binary marker (`HEX *NAME`) is accepted.
pub fn parse_sums(text: &str) -> Result<Vec<(String, [u8; 32])>, SumsError> {
    let mut sums = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || SumsError::Malformed { line: n + 1 };
        let (hex, name) = line.split_once(' ').ok_or_else(malformed)?;
        let name = name.strip_prefix(' ').or_else(|| name.strip_prefix('*')).ok_or_else(malformed)?;
        let sum = parse_hex(hex).ok_or_else(malformed)?;
        if name.is_empty() {
            return Err(malformed());
        }
        sums.push((name.to_owned(), sum));
    }
    Ok(sums)
}

/// The sum listed for `name`.
pub fn sum_of(sums: &[(String, [u8; 32])], name: &str) -> Result<[u8; 32], SumsError> {
    sums.iter().find(|(n, _)| n == name).map(|(_, s)| *s).ok_or_else(|| SumsError::Missing { name: name.to_owned() })
}

/// A [`SUMS_FILE`]'s text, in the order given.
pub fn render_sums(sums: &[(String, [u8; 32])]) -> String {
    let mut out = String::new();
    for (name, sum) in sums {
        out.push_str(&hex(sum));
        out.push_str("  ");
        out.push_str(name);
        out.push('\n');
    }
    out
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            s.push(char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    s
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        let (hi, lo) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *out.get_mut(i)? = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The next kernel's command line: the words of this one that belong to the machine
/// rather than to the appliance (the kernel's own, such as `console=`, and `appStatus`,
/// the port the host reads), then the fetched `cmdline` (one or more words a line), so the
/// next appliance speaks on the same console and status port. The other `app*` words,
/// `appEnd=kexec` among them, are this appliance's and stay behind; so do the boot
/// loader's `BOOT_IMAGE=` and `initrd=`, which name this boot's files.
pub fn next_cmdline(current: &[u8], fetched: &str) -> String {
    let mut words: Vec<String> = crate::parse::raw_words(current)
        .into_iter()
        .filter(|(key, _)| {
            key == "appStatus"
                || !(crate::parse::looks_like_ours(key.as_bytes()) || key == "BOOT_IMAGE" || key == "initrd")
        })
        .map(|(_, raw)| raw)
        .collect();
    words.extend(fetched.lines().map(str::trim).filter(|l| !l.is_empty()).map(ToString::to_string));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_table() {
        let ok = [
            ("http://10.0.2.2:8000/app/", "10.0.2.2", 8000, "/app/", "http://10.0.2.2:8000/app/"),
            ("http://10.0.2.2/apps/hello", "10.0.2.2", 80, "/apps/hello/", "http://10.0.2.2/apps/hello/"),
            ("http://192.168.1.2:8080", "192.168.1.2", 8080, "/", "http://192.168.1.2:8080/"),
        ];
        for (text, addr, port, path, shown) in ok {
            let from: KexecFrom = text.parse().unwrap();
            assert_eq!(from, KexecFrom::Http { addr: addr.parse().unwrap(), port, path: path.into() }, "{text}");
            assert_eq!(from.to_string(), shown);
            assert_eq!(shown.parse::<KexecFrom>().unwrap(), from, "round trip of {shown}");
        }
        let bad = [
            "",
            "https://10.0.2.2/app/",
            "http://server/app/",
            "http://10.0.2.2:/app/",
            "http://10.0.2.2:0/app/",
            "http://10.0.2.2:70000/app/",
            "http://10.0.2.2/../etc/",
            "http://10.0.2.2/a b/",
            "http://10.0.2.2/a?x/",
            "nfs:server:/app",
            "nfs:10.0.2.2:app",
            "9p:a:b",
            "serial:appliance.results",
            "nfs:10.0.2.2:/app,hard",
        ];
        for text in bad {
            let e = text.parse::<KexecFrom>().unwrap_err();
            assert!(e.to_string().starts_with("appKexec: "), "{text}: {e}");
        }
        let from: KexecFrom = "http://10.0.2.2:8000/app/".parse().unwrap();
        assert_eq!(from.file_path("initrd"), "/app/initrd");
    }

    #[test]
    fn mounted_sources_take_the_results_syntax() {
        for text in ["nfs:10.0.2.2:/srv/apps/hello", "nfs:10.0.2.2:/,port=2049", "9p:apps", "9p:apps,cache=loose"] {
            let from: KexecFrom = text.parse().unwrap();
            assert!(matches!(from, KexecFrom::Mount(_)), "{text}");
            assert_eq!(from.to_string(), text);
            assert_eq!(from.file_path("vmlinuz"), "/vmlinuz");
        }
        // The bound on a dead server holds for kexec too, and says so.
        let e = "nfs:10.0.2.2:/app,timeo=60000".parse::<KexecFrom>().unwrap_err();
        assert!(e.to_string().starts_with("appKexec: `timeo=60000`"), "{e}");
    }

    #[test]
    fn sums_round_trip_and_refuse_malformed_lines() {
        let sums = alloc::vec![("vmlinuz".to_owned(), [0xab; 32]), ("initrd".to_owned(), [0x01; 32])];
        let text = render_sums(&sums);
        assert_eq!(text.lines().next().unwrap(), alloc::format!("{}  vmlinuz", "ab".repeat(32)));
        assert_eq!(parse_sums(&text).unwrap(), sums);
        assert_eq!(parse_sums(&alloc::format!("{} *cmdline\n\n", "0".repeat(64))).unwrap()[0].0, "cmdline");
        assert_eq!(sum_of(&sums, "initrd"), Ok([0x01; 32]));
        assert_eq!(sum_of(&sums, "cmdline"), Err(SumsError::Missing { name: "cmdline".into() }));
        for bad in
            ["abc  vmlinuz", &alloc::format!("{}  ", "0".repeat(64)), &alloc::format!("{}x vmlinuz", "g".repeat(64))]
        {
            assert_eq!(parse_sums(bad), Err(SumsError::Malformed { line: 1 }), "{bad}");
        }
    }

    #[test]
    fn next_cmdline_keeps_the_machines_words_and_takes_the_apps() {
        let current = b"BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 quiet appEnd=kexec \
            appKexec=http://10.0.2.2/a/ appIp=dhcp appStatus=ttyS1 appArgs='x y' initrd=/initrd -- init-arg\n";
        let next = next_cmdline(current, "appArgs='hello from the appliance'\n\nappEnd=poweroff\n");
        assert_eq!(
            next,
            "console=ttyS0 panic=-1 quiet appStatus=ttyS1 appArgs='hello from the appliance' appEnd=poweroff"
        );
        assert_eq!(next_cmdline(b"", ""), "");
    }
}
