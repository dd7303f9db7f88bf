//! The one error type of the protocol: every problem `parse` reports, and every reason a
//! value cannot be rendered.

use alloc::string::String;
use core::fmt;

/// A problem with the command line or with a value. Messages are lowercase, name the
/// parameter and the value, and say what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A quote was not closed. The value runs to the end of the command line and is still
    /// used (best effort), but every parameter after it is swallowed.
    #[error("{}unbalanced quote in `{text}`: the value runs to the end of the command line", Prefix(.param))]
    UnbalancedQuote { param: Option<String>, text: String },

    /// A word holds an odd number of `"` (inside single quotes). The kernel toggles its own
    /// quoting on every `"`, so it reads the rest of the line as one word and never sees the
    /// kernel parameters after it.
    #[error(
        "{}`{text}` has an odd number of `\"`: the kernel pairs `\"` across words and would \
         read the rest of the line as one word (write an even number of `\"` in each word)",
        Prefix(.param)
    )]
    OddDoubleQuotes { param: Option<String>, text: String },

    /// A key that looks like an appliance parameter (`app` + upper-case letter, or a known key
    /// in another case) but is not one.
    #[error("unknown parameter `{key}`{}", Suggestion(.suggestion))]
    UnknownParameter { key: String, suggestion: Option<&'static str> },

    /// A value that the parameter does not accept, or that cannot be rendered.
    /// `expected` completes "`value` is not ...".
    #[error("{param}: `{value}` is not {expected}")]
    InvalidValue { param: String, value: String, expected: &'static str },

    /// An NFS mount option in `appResultsTo` (or `appKexec`) that would let a dead server
    /// hang the appliance: `hard`, or `timeo`/`retrans` under which a request could take
    /// longer than [`crate::NFS_REQUEST_LIMIT_S`] to fail.
    #[error("{param}: `{option}` would let a dead NFS server hang the appliance: {why}")]
    UnboundedNfs { param: &'static str, option: String, why: String },

    /// A parameter other than `appDebug` given without `=value`.
    #[error("{param}: missing value (expected `{param}=VALUE`)")]
    MissingValue { param: String },

    /// `appIp` without `/nn`. The lenient parser assumes `/assumed` and goes on.
    #[error("appIp: `{value}` has no prefix length; assuming /{assumed} (write `{value}/{assumed}`)")]
    IpWithoutPrefix { value: String, assumed: u8 },

    /// A parameter whose word is not valid UTF-8; `offset` is the first bad byte in the
    /// command line. The parameter keeps its default.
    #[error("{param}: not valid UTF-8 at byte {offset} of the command line; the parameter is ignored")]
    NotUtf8 { param: String, offset: usize },

    /// A command line longer than the kernel accepts.
    #[error(
        "the command line is {len} bytes, longer than the kernel's limit of {max}; \
         pass long command lists in a file named by appCmdsFile"
    )]
    TooLong { len: usize, max: usize },

    /// A key that cannot be written as one command-line word.
    #[error("`{key}` is not a parameter name (expected a non-empty word without whitespace, quotes, `=` or NUL)")]
    InvalidKey { key: String },
}

/// `"appArgs: "` or nothing.
struct Prefix<'a>(&'a Option<String>);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}: "),
            None => Ok(()),
        }
    }
}

/// `"; did you mean `appEnd`?"` or nothing.
struct Suggestion<'a>(&'a Option<&'static str>);

impl fmt::Display for Suggestion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "; did you mean `{s}`?"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn messages_name_parameter_value_and_expectation() {
        let e = Error::InvalidValue {
            param: "appIp".into(),
            value: "10.0.2.300/24".into(),
            expected: crate::value::IP_EXPECTED,
        };
        assert_eq!(
            e.to_string(),
            "appIp: `10.0.2.300/24` is not an IPv4 address with a prefix (expected a.b.c.d/nn, e.g. 10.0.2.15/24)"
        );
        let e = Error::UnknownParameter { key: "appEdn".into(), suggestion: Some("appEnd") };
        assert_eq!(e.to_string(), "unknown parameter `appEdn`; did you mean `appEnd`?");
        let e = Error::UnknownParameter { key: "appXyzzy".into(), suggestion: None };
        assert_eq!(e.to_string(), "unknown parameter `appXyzzy`");
        let e = Error::UnbalancedQuote { param: Some("appArgs".into()), text: "appArgs='a b".into() };
        assert_eq!(
            e.to_string(),
            "appArgs: unbalanced quote in `appArgs='a b`: the value runs to the end of the command line"
        );
        let e = Error::UnbalancedQuote { param: None, text: "'x".into() };
        assert!(e.to_string().starts_with("unbalanced quote in `'x`"));
        let e = Error::TooLong { len: 3000, max: 2047 };
        let m = e.to_string();
        assert!(m.contains("3000") && m.contains("2047") && m.contains("appCmdsFile"), "{m}");
    }
}
