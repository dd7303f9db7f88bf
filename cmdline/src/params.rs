//! The `app*` parameters, one entry of [`PARAMS`] each: its key, and how its [`Config`]
//! field is reset, parsed, checked and rendered. Parsing ([`crate::parse`]), validation
//! ([`Config::validate`]), rendering ([`Config::render`]) and [`KNOWN_KEYS`] all walk the
//! table, so a new parameter is a field of [`Config`] and one entry here (and its line in
//! `docs/protocol.md`).
//!
//! The entries of the common kinds come from small macros (`flag!`, `text!`, `typed!`);
//! the others spell their functions out.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::str::FromStr;

use crate::cmds::{is_valid_cmd, join_cmds, split_cmds};
use crate::config::Config;
use crate::error::Error;
use crate::results::{RESULTS_DIR_EXPECTED, RUN_ID_EXPECTED, ResultsTo, is_valid_results_dir, is_valid_run_id};
use crate::value::{
    DEFAULT_PREFIX, GATEWAY_EXPECTED, IpCidr, MODULE_EXPECTED, NODE_EXPECTED, is_valid_module, is_valid_node,
    parse_bool,
};
use crate::words::{join_words, split_words};

const CMD_EXPECTED: &str = "a trimmed, non-empty command without NUL";
const TEXT_EXPECTED: &str = "a non-empty value without NUL (leave the field unset instead)";
const ARG_EXPECTED: &str = "an argument without NUL";
const SECONDS_EXPECTED: &str = "a whole number of seconds from 1 (e.g. 600)";
const GRACE_EXPECTED: &str = "a whole number of seconds (e.g. 30; 0 kills at once)";

// Here rather than in `config`, which defines the fields: the table sits above them.
impl Config {
    /// Checks that every field holds a value the parser could have produced, so that
    /// rendering and parsing give the same config back: commands are trimmed and not empty,
    /// optional strings are not empty, the node name is valid, nothing holds a NUL.
    /// [`Config::render`] calls this first.
    pub fn validate(&self) -> Result<(), Error> {
        PARAMS.iter().try_for_each(|param| (param.check)(self))
    }
}

/// One parameter. The parser resets the field before each occurrence (the last one wins),
/// and leaves it reset for an empty value.
pub(crate) struct Param {
    /// The key, exact and case-sensitive.
    pub key: &'static str,
    /// Sets the field back to its default.
    pub reset: fn(&mut Config),
    /// What the bare key (without `=`) does; `None`: it needs a value.
    pub bare: Option<fn(&mut Config)>,
    /// Parses a non-empty value into the field, which is reset. On an error the field stays
    /// at its default, unless the value is used best effort (`appArgs` with an unclosed
    /// quote, `appIp` without a prefix).
    pub parse: fn(&mut Config, &str) -> Result<(), Error>,
    /// Whether the field holds a value `parse` could have produced ([`Config::validate`]).
    pub check: fn(&Config) -> Result<(), Error>,
    /// The field as a command-line word; `None` at its default (nothing to write).
    pub render: fn(&Config) -> Option<Rendered>,
}

/// How a parameter is written on the command line.
pub(crate) enum Rendered {
    /// The key alone: a flag that is on.
    Bare,
    /// `key=value`, quoted by [`crate::render_param`].
    Value(String),
}

fn invalid(param: &str, value: &str, expected: &'static str) -> Error {
    Error::InvalidValue { param: param.to_string(), value: value.to_string(), expected }
}

fn valid() -> Result<(), Error> {
    Ok(())
}

/// A boolean flag: the bare key turns it on, `=BOOL` sets it; written bare when on.
macro_rules! flag {
    ($key:literal, $field:ident) => {
        Param {
            key: $key,
            reset: |c| c.$field = false,
            bare: Some(|c| c.$field = true),
            parse: |c, v| parse_bool($key, v).map(|b| c.$field = b),
            check: |_| valid(),
            render: |c| c.$field.then_some(Rendered::Bare),
        }
    };
}

/// An optional string: any value without NUL; or, with a predicate, the values it accepts
/// (`expected` completes "`value` is not ...").
macro_rules! text {
    ($key:literal, $field:ident) => {
        Param {
            key: $key,
            reset: |c| c.$field = None,
            bare: None,
            parse: |c, v| {
                c.$field = Some(v.to_owned());
                Ok(())
            },
            check: |c| match &c.$field {
                Some(v) if v.is_empty() || v.contains('\0') => Err(invalid($key, v, TEXT_EXPECTED)),
                _ => valid(),
            },
            render: |c| c.$field.clone().map(Rendered::Value),
        }
    };
    ($key:literal, $field:ident, $is_valid:path, $expected:expr) => {
        Param {
            key: $key,
            reset: |c| c.$field = None,
            bare: None,
            parse: |c, v| {
                if !$is_valid(v) {
                    return Err(invalid($key, v, $expected));
                }
                c.$field = Some(v.to_owned());
                Ok(())
            },
            check: |c| match &c.$field {
                Some(v) if !$is_valid(v) => Err(invalid($key, v, $expected)),
                _ => valid(),
            },
            render: |c| c.$field.clone().map(Rendered::Value),
        }
    };
}

/// An optional value of a type that parses with `FromStr` (its error names the parameter)
/// and is written with `Display`.
macro_rules! typed {
    ($key:literal, $field:ident) => {
        Param {
            key: $key,
            reset: |c| c.$field = None,
            bare: None,
            parse: |c, v| v.parse().map(|x| c.$field = Some(x)),
            check: |_| valid(),
            render: |c| c.$field.as_ref().map(|x| Rendered::Value(x.to_string())),
        }
    };
}

const CMDS: Param = Param {
    key: "appCmds",
    reset: |c| c.cmds = Vec::new(),
    bare: None,
    parse: |c, v| {
        c.cmds = split_cmds(v);
        Ok(())
    },
    check: |c| match c.cmds.iter().find(|cmd| !is_valid_cmd(cmd) || cmd.contains('\0')) {
        Some(cmd) => Err(invalid("appCmds", cmd, CMD_EXPECTED)),
        None => valid(),
    },
    render: |c| (!c.cmds.is_empty()).then(|| Rendered::Value(join_cmds(&c.cmds))),
};

/// Every parameter, in the order of [`Config`]'s fields, which is the order of the rendered
/// words.
pub(crate) const PARAMS: &[Param] = &[
    CMDS,
    // The original's spelling: the field of appCmds (the later of the two wins), which
    // checks and writes it.
    Param { key: "appCmd", check: |_| valid(), render: |_| None, ..CMDS },
    text!("appCmdsFile", cmds_file),
    Param {
        key: "appEnd",
        reset: |c| c.end = Default::default(),
        bare: None,
        parse: |c, v| v.parse().map(|e| c.end = e),
        check: |_| valid(),
        render: |c| (c.end != Default::default()).then(|| Rendered::Value(c.end.as_str().to_owned())),
    },
    flag!("appDebug", debug),
    Param {
        key: "appArgs",
        reset: |c| c.args = Vec::new(),
        bare: None,
        parse: parse_args,
        check: |c| match c.args.iter().find(|arg| arg.contains('\0')) {
            Some(arg) => Err(invalid("appArgs", arg, ARG_EXPECTED)),
            None => valid(),
        },
        render: |c| (!c.args.is_empty()).then(|| Rendered::Value(join_words(&c.args))),
    },
    typed!("appMac", mac),
    Param {
        key: "appIp",
        reset: |c| {
            c.ip = None;
            c.dhcp = false;
        },
        bare: None,
        parse: parse_ip,
        check: |c| match (c.ip, c.dhcp) {
            (Some(_), true) => Err(invalid("appIp", "dhcp", "both an address and dhcp (set one)")),
            _ => valid(),
        },
        render: |c| match (c.ip, c.dhcp) {
            (Some(ip), _) => Some(Rendered::Value(ip.to_string())),
            (None, true) => Some(Rendered::Value("dhcp".to_owned())),
            (None, false) => None,
        },
    },
    text!("appNode", node, is_valid_node, NODE_EXPECTED),
    text!("appCtlServer", ctl_server),
    text!("appCtlUser", ctl_user),
    text!("appCtlDir", ctl_dir),
    text!("appCtlFile", ctl_file),
    typed!("appLog", log),
    Param {
        key: "appModules",
        reset: |c| c.modules = Vec::new(),
        bare: None,
        parse: parse_modules,
        check: |c| match c.modules.iter().find(|m| !is_valid_module(m)) {
            Some(m) => Err(invalid("appModules", m, MODULE_EXPECTED)),
            None => valid(),
        },
        render: |c| (!c.modules.is_empty()).then(|| Rendered::Value(c.modules.join(","))),
    },
    Param {
        key: "appGateway",
        reset: |c| c.gateway = None,
        bare: None,
        parse: |c, v| match Ipv4Addr::from_str(v) {
            Ok(gw) => {
                c.gateway = Some(gw);
                Ok(())
            }
            Err(_) => Err(invalid("appGateway", v, GATEWAY_EXPECTED)),
        },
        check: |_| valid(),
        render: |c| c.gateway.map(|gw| Rendered::Value(gw.to_string())),
    },
    flag!("appNetDown", net_down),
    // Parsing refuses NFS options that lift the bound on a dead server; so does the check.
    Param {
        check: |c| c.results_to.as_ref().map_or(Ok(()), ResultsTo::check_bounded),
        ..typed!("appResultsTo", results_to)
    },
    text!("appResultsDir", results_dir, is_valid_results_dir, RESULTS_DIR_EXPECTED),
    text!("appRunId", run_id, is_valid_run_id, RUN_ID_EXPECTED),
    Param {
        key: "appRunTimeout",
        reset: |c| c.run_timeout = None,
        bare: None,
        parse: |c, v| parse_seconds("appRunTimeout", v).map(|s| c.run_timeout = Some(s)),
        check: |c| match c.run_timeout {
            Some(0) => Err(invalid("appRunTimeout", "0", SECONDS_EXPECTED)),
            _ => valid(),
        },
        render: |c| c.run_timeout.map(|s| Rendered::Value(s.to_string())),
    },
    Param {
        key: "appStopGrace",
        reset: |c| c.stop_grace = None,
        bare: None,
        parse: |c, v| whole_number("appStopGrace", v, GRACE_EXPECTED).map(|s| c.stop_grace = Some(s)),
        check: |_| valid(),
        render: |c| c.stop_grace.map(|s| Rendered::Value(s.to_string())),
    },
    // On by default: only `=0` (or another false boolean) means something, so the bare key
    // is not a flag.
    Param {
        key: "appCarryEnv",
        reset: |c| c.no_carry_env = false,
        bare: None,
        parse: |c, v| parse_bool("appCarryEnv", v).map(|carry| c.no_carry_env = !carry),
        check: |_| valid(),
        render: |c| c.no_carry_env.then(|| Rendered::Value("0".to_owned())),
    },
    Param {
        key: "appStatus",
        reset: |c| c.status_port = Default::default(),
        bare: None,
        parse: |c, v| v.parse().map(|p| c.status_port = p),
        check: |_| valid(),
        render: |c| (c.status_port != Default::default()).then(|| Rendered::Value(c.status_port.to_string())),
    },
    typed!("appKexec", kexec),
    Param {
        key: "appSegIp",
        parse: |c, v| {
            v.parse::<IpCidr>()
                .map(|ip| c.seg_ip = Some(ip))
                .map_err(|_| invalid("appSegIp", v, crate::segment::SEG_IP_EXPECTED))
        },
        ..typed!("appSegIp", seg_ip)
    },
    text!("appPeers", peers, crate::segment::is_valid_peers, crate::segment::PEERS_EXPECTED),
    text!("appRendezvous", rendezvous, crate::segment::is_valid_rendezvous, crate::segment::RENDEZVOUS_EXPECTED),
];

/// Every parameter name, in the order of the table. `appCmd` is the original's alias of
/// `appCmds`.
pub const KNOWN_KEYS: &[&str] = &keys::<{ PARAMS.len() }>();

/// The keys of [`PARAMS`], computed when the crate is built.
#[allow(clippy::indexing_slicing, reason = "evaluated at build time: a bad index fails the build, not PID 1")]
const fn keys<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = PARAMS[i].key;
        i += 1;
    }
    out
}

/// The parameter whose key is `key`, exactly.
pub(crate) fn find(key: &[u8]) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.key.as_bytes() == key)
}

/// `appArgs`: split like `sh` words. An unclosed quote is reported, and the words are
/// used anyway.
fn parse_args(c: &mut Config, value: &str) -> Result<(), Error> {
    let words = split_words(value);
    c.args = words.words;
    if words.unclosed_quote {
        return Err(Error::UnbalancedQuote { param: Some("appArgs".to_owned()), text: value.to_owned() });
    }
    Ok(())
}

/// `appIp`: `dhcp` in any case, or an address with a prefix. An address without one is
/// reported, and used with [`DEFAULT_PREFIX`].
fn parse_ip(c: &mut Config, value: &str) -> Result<(), Error> {
    if value.eq_ignore_ascii_case("dhcp") {
        c.dhcp = true;
        return Ok(());
    }
    match value.parse() {
        Ok(ip) => {
            c.ip = Some(ip);
            Ok(())
        }
        Err(e) => match Ipv4Addr::from_str(value) {
            Ok(addr) => {
                c.ip = IpCidr::new(addr, DEFAULT_PREFIX);
                Err(Error::IpWithoutPrefix { value: value.to_owned(), assumed: DEFAULT_PREFIX })
            }
            Err(_) => Err(e),
        },
    }
}

/// A whole number of seconds, at least 1, in digits only (`u32::from_str` takes a `+`).
fn parse_seconds(param: &str, value: &str) -> Result<u32, Error> {
    match whole_number(param, value, SECONDS_EXPECTED)? {
        0 => Err(invalid(param, value, SECONDS_EXPECTED)),
        s => Ok(s),
    }
}

/// Digits only (no sign, no space), within `u32`.
fn whole_number(param: &str, value: &str, expected: &'static str) -> Result<u32, Error> {
    match value.parse::<u32>() {
        Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(invalid(param, value, expected)),
    }
}

/// `appModules`: names separated by `,`, trimmed, empty ones dropped. One invalid name
/// refuses the whole value.
fn parse_modules(c: &mut Config, value: &str) -> Result<(), Error> {
    let modules: Vec<String> = value.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
    if let Some(bad) = modules.iter().find(|m| !is_valid_module(m)) {
        return Err(invalid("appModules", bad, MODULE_EXPECTED));
    }
    c.modules = modules;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_table_each_once_and_ours() {
        let keys: Vec<&str> = PARAMS.iter().map(|p| p.key).collect();
        assert_eq!(KNOWN_KEYS, keys);
        for (i, key) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(key), "{key} twice");
            assert!(key.starts_with("app") && key.as_bytes()[3].is_ascii_uppercase(), "{key}");
            assert_eq!(find(key.as_bytes()).map(|p| p.key), Some(*key));
        }
        assert!(find(b"appdebug").is_none());
    }

    /// What the bare key means, for every parameter: a flag turns on, the others need a
    /// value; and reset undoes it.
    #[test]
    fn bare_keys_are_flags_only() {
        let flags: Vec<&str> = PARAMS.iter().filter(|p| p.bare.is_some()).map(|p| p.key).collect();
        assert_eq!(flags, ["appDebug", "appNetDown"]);
        for p in PARAMS.iter() {
            let mut c = Config::default();
            if let Some(set) = p.bare {
                set(&mut c);
                assert!(matches!((p.render)(&c), Some(Rendered::Bare)), "{}", p.key);
                (p.reset)(&mut c);
            }
            assert_eq!(c, Config::default(), "{}", p.key);
            assert!((p.render)(&c).is_none(), "{} renders at its default", p.key);
        }
    }
}
