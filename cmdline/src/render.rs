//! Writing a [`Config`] as command-line words that both the kernel and [`crate::parse`] read
//! as intended.
//!
//! The kernel splits the command line on whitespace outside `"` and toggles its quoting on
//! every `"`; it knows nothing of `'`. Every unknown word becomes an argument or an
//! environment variable of init, and the kernel panics when there are more than 32 of
//! either, so each parameter must stay ONE kernel word: whitespace is put where the kernel
//! sees it quoted, and the number of `"` in a word must be even (an odd count would make the
//! kernel read the rest of the line as one word).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::MAX_CMDLINE_LEN;
use crate::config::Config;
use crate::error::Error;
use crate::params::{PARAMS, Rendered};
use crate::words::is_space_char;

const ODD_QUOTES_EXPECTED: &str = "representable on the kernel command line: it holds an odd number \
    of `\"`, and the kernel would read the rest of the line as one word";
const NUL_EXPECTED: &str = "representable on the kernel command line: it holds a NUL";

/// Characters the kernel treats as word separators: ASCII whitespace, and any character
/// whose UTF-8 form holds the byte 0xA0 (the kernel's `isspace` is Latin-1 and counts NBSP).
fn splits_kernel_word(c: char) -> bool {
    let mut buf = [0u8; 4];
    is_space_char(c) || c.encode_utf8(&mut buf).bytes().any(|b| b == 0xA0)
}

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    Double,
    Single,
}

impl Quote {
    fn char(self) -> char {
        match self {
            Quote::Double => '"',
            Quote::Single => '\'',
        }
    }
}

/// Quotes `key=value` as one command-line word.
///
/// - `key=value` bare when the value is non-empty and has no whitespace or quotes (an empty
///   value renders as `key=`, which the parser reads as "default");
/// - `"key=value"` when the value has whitespace or `'` but no `"`;
/// - otherwise segments: every `"` in single quotes, every `'` in double quotes, and each
///   whitespace character in double quotes when an even number of `"` precede it in the value
///   and in single quotes when an odd number do, which is exactly where the kernel sees it
///   quoted. E.g. `a "b c" d` renders as `"key=a "'"b c"'" d"`.
///
/// Fails when the key is not a plain word, or the value holds a NUL or an odd number of `"`
/// (no quoting can keep that one kernel word).
pub fn render_param(key: &str, value: &str) -> Result<String, Error> {
    if key.is_empty() || key.chars().any(|c| splits_kernel_word(c) || matches!(c, '"' | '\'' | '=' | '\0')) {
        return Err(Error::InvalidKey { key: key.to_string() });
    }
    let invalid = |expected| Error::InvalidValue { param: key.to_string(), value: value.to_string(), expected };
    if value.contains('\0') {
        return Err(invalid(NUL_EXPECTED));
    }
    if value.matches('"').count() % 2 == 1 {
        return Err(invalid(ODD_QUOTES_EXPECTED));
    }
    let mut pending = String::with_capacity(key.len() + 1 + value.len());
    pending.push_str(key);
    pending.push('=');
    let mut out = String::with_capacity(pending.capacity() + 8);
    let mut open: Option<Quote> = None;
    let mut dquotes = 0usize;
    for c in value.chars() {
        let need = match c {
            '"' => Some(Quote::Single),
            '\'' => Some(Quote::Double),
            c if splits_kernel_word(c) => Some(if dquotes.is_multiple_of(2) { Quote::Double } else { Quote::Single }),
            _ => None,
        };
        if c == '"' {
            dquotes += 1;
        }
        match (open, need) {
            (None, None) => pending.push(c),
            (None, Some(q)) => {
                // The first segment: the key goes inside double quotes (the kernel's own
                // style), but stays outside single ones.
                if q == Quote::Double {
                    out.push('"');
                    out.push_str(&pending);
                } else {
                    out.push_str(&pending);
                    out.push('\'');
                }
                out.push(c);
                open = Some(q);
            }
            (Some(cur), Some(q)) if cur != q => {
                out.push(cur.char());
                out.push(q.char());
                out.push(c);
                open = Some(q);
            }
            (Some(_), _) => out.push(c),
        }
    }
    match open {
        Some(q) => {
            out.push(q.char());
            Ok(out)
        }
        None => Ok(pending),
    }
}

/// Fails when `line` is longer than the kernel accepts ([`MAX_CMDLINE_LEN`] bytes). Host
/// tools check the whole line, kernel parameters included.
pub fn check_len(line: &str) -> Result<(), Error> {
    if line.len() > MAX_CMDLINE_LEN {
        return Err(Error::TooLong { len: line.len(), max: MAX_CMDLINE_LEN });
    }
    Ok(())
}

impl Config {
    /// One result per non-default field, in the order of the parameter table (that of the
    /// struct's fields).
    fn word_results(&self) -> Vec<Result<String, Error>> {
        PARAMS
            .iter()
            .filter_map(|param| {
                (param.render)(self).map(|rendered| match rendered {
                    Rendered::Bare => Ok(String::from(param.key)),
                    Rendered::Value(value) => render_param(param.key, &value),
                })
            })
            .collect()
    }

    /// One `key=value` word per non-default field, in a fixed order (that of the struct's
    /// fields), quoted by [`render_param`]: `appCmds` joined with `:` (`\` and `:`
    /// escaped), `appArgs` quoted for the shell, `appDebug` bare. A value that cannot be
    /// rendered (an odd number of `"`) is left out: use [`Config::try_to_words`] or
    /// [`Config::render`] to get the error instead.
    pub fn to_words(&self) -> Vec<String> {
        self.word_results().into_iter().filter_map(Result::ok).collect()
    }

    /// Like [`Config::to_words`], but fails on the first value that is invalid
    /// ([`Config::validate`]) or cannot be rendered.
    pub fn try_to_words(&self) -> Result<Vec<String>, Error> {
        self.validate()?;
        self.word_results().into_iter().collect()
    }

    /// The words joined by single spaces. Fails on an invalid or unrenderable value, or when
    /// the line is longer than [`MAX_CMDLINE_LEN`] (long command lists belong in a file named
    /// by `appCmdsFile`).
    pub fn render(&self) -> Result<String, Error> {
        let line = self.try_to_words()?.join(" ");
        check_len(&line)?;
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::End;
    use alloc::vec;

    #[test]
    fn render_param_table() {
        let table: &[(&str, &str)] = &[
            ("", "appEnd="),
            ("shell", "appEnd=shell"),
            ("a:b\\c=d", "appEnd=a:b\\c=d"),
            ("ls /app", "\"appEnd=ls /app\""),
            ("it's", "\"appEnd=it's\""),
            ("a\"b\"", "appEnd=a'\"b\"'"),
            ("\"a b\"", "appEnd='\"a b\"'"),
            ("a \"b c\" d", "\"appEnd=a \"'\"b c\"'\" d\""),
            ("'say \"hi\"'", "\"appEnd='say \"'\"hi\"'\"'\""),
            ("\u{a0}x", "\"appEnd=\u{a0}x\""),
            ("à", "\"appEnd=à\""),
            ("é", "appEnd=é"),
        ];
        for (value, want) in table {
            assert_eq!(render_param("appEnd", value).as_deref(), Ok(*want), "{value:?}");
        }
    }

    #[test]
    fn render_param_refuses_odd_quotes_nul_and_bad_keys() {
        let e = render_param("appCmds", "echo 'a\"b'").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidValue { param, value, .. } if param == "appCmds" && value == "echo 'a\"b'"),
            "{e:?}"
        );
        assert!(e.to_string().contains("odd number"), "{e}");
        assert!(render_param("appCmds", "a\0").is_err());
        for key in ["", "a b", "a=b", "a\"", "'"] {
            assert_eq!(render_param(key, "x"), Err(Error::InvalidKey { key: key.into() }));
        }
    }

    #[test]
    fn check_len_limit() {
        assert_eq!(check_len(&"a".repeat(MAX_CMDLINE_LEN)), Ok(()));
        assert_eq!(
            check_len(&"a".repeat(MAX_CMDLINE_LEN + 1)),
            Err(Error::TooLong { len: MAX_CMDLINE_LEN + 1, max: MAX_CMDLINE_LEN })
        );
    }

    #[test]
    fn words_in_fixed_order_for_non_default_fields() {
        assert!(Config::default().to_words().is_empty());
        assert_eq!(Config::default().render(), Ok(String::new()));
        let c = Config {
            cmds: vec!["mkdir --help".into(), "echo a:b".into()],
            end: End::Shell,
            debug: true,
            args: vec!["10".into(), "a b".into()],
            node: Some("n1".into()),
            ..Config::default()
        };
        assert_eq!(
            c.to_words(),
            ["\"appCmds=mkdir --help:echo a\\:b\"", "appEnd=shell", "appDebug", "\"appArgs=10 'a b'\"", "appNode=n1"]
        );
    }

    #[test]
    fn unrenderable_values_are_left_out_of_to_words_and_fail_render() {
        let c = Config { cmds: vec!["echo '\"'".into()], debug: true, ..Config::default() };
        assert_eq!(c.to_words(), ["appDebug"]);
        assert!(matches!(c.render(), Err(Error::InvalidValue { .. })));
        let c = Config { ctl_user: Some(String::new()), ..Config::default() };
        assert!(c.render().is_err());
    }

    #[test]
    fn long_command_lists_fail_with_advice() {
        let c = Config { cmds: vec!["echo 0123456789".into(); 200], ..Config::default() };
        let e = c.render().unwrap_err();
        assert!(matches!(e, Error::TooLong { max: MAX_CMDLINE_LEN, .. }), "{e:?}");
        assert!(e.to_string().contains("appCmdsFile"));
    }
}
