//! The typed values of the parameters: end action, log level, MAC address, IPv4 address
//! with prefix, node name, boolean. Each parses from and displays as its command-line form;
//! a parse error is the `InvalidValue` of its parameter.

use alloc::string::{String, ToString};
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

pub(crate) const END_EXPECTED: &str = "one of halt, poweroff, reboot, shell (alias bash), sshd, kexec";
pub(crate) const LOG_EXPECTED: &str = "one of error, warn, info, debug, trace";
pub(crate) const BOOL_EXPECTED: &str = "a boolean (1, yes, true, on or 0, no, false, off)";
pub(crate) const MAC_EXPECTED: &str = "a MAC address (expected aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff)";
pub(crate) const IP_EXPECTED: &str = "an IPv4 address with a prefix (expected a.b.c.d/nn, e.g. 10.0.2.15/24)";
pub(crate) const GATEWAY_EXPECTED: &str = "an IPv4 address (expected a.b.c.d, e.g. 10.0.2.2)";
pub(crate) const MODULE_EXPECTED: &str = "a kernel module name (expected 1 to 55 of A-Z a-z 0-9 - _)";
pub(crate) const NODE_EXPECTED: &str = "a node name (expected 1 to 64 of A-Z a-z 0-9 - _ .)";

/// The prefix length assumed for an `appIp` written without one: the size of QEMU's
/// user-mode network (10.0.2.0/24) and of the original runApp's (192.168.1.0/24).
pub const DEFAULT_PREFIX: u8 = 24;

fn invalid(param: &str, value: &str, expected: &'static str) -> Error {
    Error::InvalidValue { param: param.to_string(), value: value.to_string(), expected }
}

/// What the init does after the last phase (`appEnd`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// Power off (the original called this halt; a halted VM would only hang).
    #[default]
    Halt,
    /// Power off.
    Poweroff,
    /// Reboot.
    Reboot,
    /// A console shell, then power off. `bash` is accepted as an alias.
    #[serde(alias = "bash")]
    Shell,
    /// Start sshd, then a console shell, then power off.
    Sshd,
    /// Fetch the app dir `appKexec` names, check it, and boot its kernel with kexec; power
    /// off (as `halt`) when any of that fails.
    Kexec,
}

impl End {
    /// Every value, in documentation order.
    pub const ALL: [End; 6] = [End::Halt, End::Poweroff, End::Reboot, End::Shell, End::Sshd, End::Kexec];

    /// The command-line and environment spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Halt => "halt",
            End::Poweroff => "poweroff",
            End::Reboot => "reboot",
            End::Shell => "shell",
            End::Sshd => "sshd",
            End::Kexec => "kexec",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for End {
    type Err = Error;

    /// Case-insensitive; `bash` means `shell`.
    fn from_str(s: &str) -> Result<End, Error> {
        if s.eq_ignore_ascii_case("bash") {
            return Ok(End::Shell);
        }
        End::ALL
            .into_iter()
            .find(|e| s.eq_ignore_ascii_case(e.as_str()))
            .ok_or_else(|| invalid("appEnd", s, END_EXPECTED))
    }
}

/// Where the init writes the status record (`appStatus`).
/// Written and read as on the command line (`ttyS1`, `virtio`, `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusPort {
    /// A serial port, `/dev/ttyS<N>`: the second one by default, the first on a machine
    /// with one serial line (where the record shares the console with the phases' output).
    Serial(u8),
    /// A virtio-serial port named [`STATUS_PORT_NAME`].
    Virtio,
    /// No record at all.
    None,
}

/// The name of the virtio-serial port of `appStatus=virtio`.
pub const STATUS_PORT_NAME: &str = "appliance.status";

/// The serial ports `appStatus` accepts: as many as the kernel's 8250 driver registers by
/// default at most (`CONFIG_SERIAL_8250_RUNTIME_UARTS` is 4 in Debian's kernels, 32 the
/// driver's maximum).
const MAX_SERIAL: u8 = 31;

const STATUS_EXPECTED: &str = "ttyS0 to ttyS31, virtio or none";

impl Default for StatusPort {
    fn default() -> Self {
        StatusPort::Serial(1)
    }
}

impl StatusPort {
    /// The device the record is written to; `None` for [`StatusPort::None`] and for
    /// [`StatusPort::Virtio`], which the init finds by its name.
    pub fn serial_device(self) -> Option<String> {
        match self {
            StatusPort::Serial(n) => Some(alloc::format!("/dev/ttyS{n}")),
            StatusPort::Virtio | StatusPort::None => None,
        }
    }
}

impl fmt::Display for StatusPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusPort::Serial(n) => write!(f, "ttyS{n}"),
            StatusPort::Virtio => f.write_str("virtio"),
            StatusPort::None => f.write_str("none"),
        }
    }
}

impl FromStr for StatusPort {
    type Err = Error;

    /// `ttyS<N>` (digits only, no leading zero), `virtio`, `none`; case-sensitive like the
    /// device names.
    fn from_str(s: &str) -> Result<StatusPort, Error> {
        let serial = s.strip_prefix("ttyS").filter(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n.len() == 1 || !n.starts_with('0'))
        });
        match (s, serial.and_then(|n| n.parse::<u8>().ok())) {
            ("virtio", _) => Ok(StatusPort::Virtio),
            ("none", _) => Ok(StatusPort::None),
            (_, Some(n)) if n <= MAX_SERIAL => Ok(StatusPort::Serial(n)),
            _ => Err(invalid("appStatus", s, STATUS_EXPECTED)),
        }
    }
}

/// The init's log level (`appLog`); the init's default is `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Every value, from the quietest.
    pub const ALL: [LogLevel; 5] = [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];

    /// The command-line and environment spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogLevel {
    type Err = Error;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<LogLevel, Error> {
        LogLevel::ALL
            .into_iter()
            .find(|l| s.eq_ignore_ascii_case(l.as_str()))
            .ok_or_else(|| invalid("appLog", s, LOG_EXPECTED))
    }
}

/// A MAC address. Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (either case, one kind
/// of separator); displays lower-case with colons. Serialised as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<MacAddr, Error> {
        let err = || invalid("appMac", s, MAC_EXPECTED);
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// An IPv4 address with a prefix length (0..=32), written `a.b.c.d/nn`. Serialised as that
/// string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl IpCidr {
    /// `None` when `prefix` is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<IpCidr> {
        (prefix <= 32).then_some(IpCidr { addr, prefix })
    }

    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpCidr {
    type Err = Error;

    /// Strict: the prefix is required (the lenient `parse` assumes /24 without one).
    fn from_str(s: &str) -> Result<IpCidr, Error> {
        let err = || invalid("appIp", s, IP_EXPECTED);
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| err())?;
        // u8::from_str accepts a leading '+'; the protocol does not.
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix = u8::from_str(prefix).map_err(|_| err())?;
        IpCidr::new(addr, prefix).ok_or_else(err)
    }
}

/// Serialises a value as its `Display` string.
macro_rules! serde_as_string {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_string!(MacAddr);
serde_as_string!(IpCidr);
serde_as_string!(StatusPort);

/// `appNode`: 1 to 64 (the kernel's HOST_NAME_MAX) of `A-Z a-z 0-9 - _ .`.
pub fn is_valid_node(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `appDebug=...`: 1/yes/true/on or 0/no/false/off, case-insensitive.
pub(crate) fn parse_bool(param: &str, s: &str) -> Result<bool, Error> {
    const TRUE: [&str; 4] = ["1", "yes", "true", "on"];
    const FALSE: [&str; 4] = ["0", "no", "false", "off"];
    if TRUE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Ok(true)
    } else if FALSE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
        Ok(false)
    } else {
        Err(invalid(param, s, BOOL_EXPECTED))
    }
}

/// A kernel module name as `modprobe` takes it: 1 to 55 of `A-Z a-z 0-9 - _` (the kernel's
/// `MODULE_NAME_LEN` is 56 with the NUL on 64-bit; `-` and `_` are the same to it).
pub fn is_valid_module(name: &str) -> bool {
    (1..56).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn status_ports_parse_and_print_back() {
        for (text, port) in [
            ("ttyS0", StatusPort::Serial(0)),
            ("ttyS1", StatusPort::Serial(1)),
            ("ttyS31", StatusPort::Serial(31)),
            ("virtio", StatusPort::Virtio),
            ("none", StatusPort::None),
        ] {
            assert_eq!(text.parse::<StatusPort>().unwrap(), port, "{text}");
            assert_eq!(port.to_string(), text);
        }
        for bad in ["", "ttyS", "ttyS32", "ttyS01", "ttyS+1", "ttyS1 ", "tty1", "hvc0", "Virtio", "NONE", "ttyS256"] {
            let e = bad.parse::<StatusPort>().unwrap_err();
            assert!(format!("{e}").contains("ttyS0 to ttyS31, virtio or none"), "{bad}: {e}");
        }
        assert_eq!(StatusPort::default(), StatusPort::Serial(1));
        assert_eq!(StatusPort::Serial(0).serial_device().as_deref(), Some("/dev/ttyS0"));
        assert_eq!(StatusPort::Virtio.serial_device(), None);
    }

    #[test]
    fn end_parses_case_insensitively_with_bash_alias() {
        assert_eq!("halt".parse(), Ok(End::Halt));
        assert_eq!("PowerOff".parse(), Ok(End::Poweroff));
        assert_eq!("bash".parse(), Ok(End::Shell));
        assert_eq!("sshd".parse(), Ok(End::Sshd));
        for e in End::ALL {
            assert_eq!(e.to_string().parse(), Ok(e));
        }
        let err = "wait".parse::<End>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "appEnd: `wait` is not one of halt, poweroff, reboot, shell (alias bash), sshd, kexec"
        );
    }

    #[test]
    fn end_and_log_serde_lowercase() {
        assert_eq!(serde_json::to_string(&End::Poweroff).unwrap(), "\"poweroff\"");
        assert_eq!(serde_json::from_str::<End>("\"bash\"").unwrap(), End::Shell);
        assert_eq!(serde_json::to_string(&LogLevel::Trace).unwrap(), "\"trace\"");
        for l in LogLevel::ALL {
            assert_eq!(l.to_string().to_uppercase().parse(), Ok(l));
        }
        assert!("verbose".parse::<LogLevel>().is_err());
    }

    #[test]
    fn mac_accepts_colons_or_dashes_and_displays_lowercase_colons() {
        let m: MacAddr = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse(), Ok(m));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "52:54-00:ab:cd:0f",
            "5:54:00:ab:cd:0f",
            "+5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:ab:cd:0f\"");
        assert_eq!(serde_json::from_str::<MacAddr>("\"52-54-00-ab-cd-0f\"").unwrap(), m);
    }

    #[test]
    fn ip_requires_address_and_prefix_up_to_32() {
        let ip: IpCidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(ip.addr(), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(ip.prefix(), 24);
        assert_eq!(ip.to_string(), "10.0.2.15/24");
        assert!("0.0.0.0/0".parse::<IpCidr>().is_ok());
        assert!("1.2.3.4/32".parse::<IpCidr>().is_ok());
        for bad in [
            "10.0.2.15",
            "10.0.2.15/33",
            "10.0.2.300/24",
            "10.0.2/24",
            "10.0.2.15/",
            "10.0.2.15/+4",
            "10.0.2.15/024",
            "a.b.c.d/8",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
        assert_eq!(IpCidr::new(Ipv4Addr::new(1, 2, 3, 4), 33), None);
        assert!(serde_json::from_str::<IpCidr>("\"1.2.3.4/40\"").is_err());
    }

    #[test]
    fn node_names() {
        assert!(is_valid_node("node-1_a.b"));
        assert!(is_valid_node(&"a".repeat(64)));
        assert!(!is_valid_node(&"a".repeat(65)));
        assert!(!is_valid_node(""));
        assert!(!is_valid_node("a b"));
        assert!(!is_valid_node("a/b"));
        assert!(!is_valid_node("nœud"));
    }

    #[test]
    fn booleans() {
        for t in ["1", "yes", "TRUE", "On"] {
            assert_eq!(parse_bool("appDebug", t), Ok(true));
        }
        for f in ["0", "no", "false", "OFF"] {
            assert_eq!(parse_bool("appDebug", f), Ok(false));
        }
        let e = parse_bool("appDebug", "maybe").unwrap_err();
        assert_eq!(format!("{e}"), "appDebug: `maybe` is not a boolean (1, yes, true, on or 0, no, false, off)");
    }
}
