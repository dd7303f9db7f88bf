//! Reading `/proc/cmdline`: words, keys, values, diagnostics. Lenient by design: PID 1 must
//! boot whatever the command line says, so every problem becomes a diagnostic and the
//! parameter concerned keeps its default.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use crate::MAX_CMDLINE_LEN;
use crate::config::Config;
use crate::error::Error;
use crate::params::{self, KNOWN_KEYS, Param};
use crate::suggest::closest;
use crate::words::is_space;

/// What [`parse`] found: the config, and every problem in the order met.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub config: Config,
    pub diagnostics: Vec<Error>,
}

/// Parses a command line (the bytes of `/proc/cmdline`, trailing newline allowed). Never
/// fails and never panics: a problem is reported in `diagnostics` and the parameter
/// concerned keeps its default.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    // The kernel's command line is a C string.
    let line = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => bytes.get(..nul).unwrap_or_default(),
        None => bytes,
    };
    let line = trim_end(line);
    if line.len() > MAX_CMDLINE_LEN {
        out.diagnostics.push(Error::TooLong { len: line.len(), max: MAX_CMDLINE_LEN });
    }
    for word in tokenize(line) {
        let raw = line.get(word.start..word.end).unwrap_or_default();
        if !word.unclosed && word.text == b"--" {
            // The kernel's convention: the rest is for init's argv.
            break;
        }
        let (key, value) = match word.text.iter().position(|&b| b == b'=') {
            Some(eq) => (word.text.get(..eq).unwrap_or_default(), Some(word.text.get(eq + 1..).unwrap_or_default())),
            None => (word.text.as_slice(), None),
        };
        let param = || value.map(|_| String::from_utf8_lossy(key).into_owned());
        if word.unclosed {
            let text = String::from_utf8_lossy(raw).into_owned();
            out.diagnostics.push(Error::UnbalancedQuote { param: param(), text });
        } else if raw.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
            let text = String::from_utf8_lossy(raw).into_owned();
            out.diagnostics.push(Error::OddDoubleQuotes { param: param(), text });
        }
        let bad_utf8 = || {
            let at = core::str::from_utf8(raw).err().map_or(0, |e| e.valid_up_to());
            word.start.saturating_add(at)
        };
        match params::find(key) {
            Some(param) => match value.map(core::str::from_utf8).transpose() {
                Ok(value) => apply(&mut out, param, value),
                Err(_) => {
                    out.diagnostics.push(Error::NotUtf8 { param: param.key.to_owned(), offset: bad_utf8() });
                    (param.reset)(&mut out.config);
                }
            },
            None if looks_like_ours(key) => match core::str::from_utf8(key) {
                Ok(key) => {
                    out.diagnostics.push(Error::UnknownParameter { key: key.to_owned(), suggestion: suggest(key) })
                }
                Err(_) => out
                    .diagnostics
                    .push(Error::NotUtf8 { param: String::from_utf8_lossy(key).into_owned(), offset: bad_utf8() }),
            },
            // Someone else's word: console=, quiet, root=...
            None => {}
        }
    }
    out
}

/// Parses and fails on the first diagnostic: for host tools that check a command line
/// before booting it.
pub fn parse_strict(bytes: &[u8]) -> Result<Config, Error> {
    let parsed = parse(bytes);
    match parsed.diagnostics.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(parsed.config),
    }
}

/// Each word of a command line up to `--`: its key (the text before `=`, quotes removed)
/// and the word as written, quotes kept, so that it can be passed on unchanged.
pub(crate) fn raw_words(bytes: &[u8]) -> Vec<(String, String)> {
    let line = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => bytes.get(..nul).unwrap_or_default(),
        None => bytes,
    };
    let line = trim_end(line);
    let mut out = Vec::new();
    for word in tokenize(line) {
        if !word.unclosed && word.text == b"--" {
            break;
        }
        let key = word.text.split(|&b| b == b'=').next().unwrap_or_default();
        let raw = line.get(word.start..word.end).unwrap_or_default();
        out.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(raw).into_owned()));
    }
    out
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if !is_space(*last) {
            break;
        }
        line = rest;
    }
    line
}

/// One word of the command line, quotes removed; `start..end` is its raw span.
struct Word {
    text: Vec<u8>,
    start: usize,
    end: usize,
    unclosed: bool,
}

/// Splits on whitespace outside quotes; `"..."` and `'...'` segments may be concatenated
/// with unquoted text and are removed; no backslash escapes (the kernel has none).
fn tokenize(line: &[u8]) -> Vec<Word> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Between,
        Plain,
        Double,
        Single,
    }
    let mut words = Vec::new();
    let mut state = State::Between;
    let mut word = Word { text: Vec::new(), start: 0, end: 0, unclosed: false };
    for (i, &b) in line.iter().enumerate() {
        if state == State::Between {
            if is_space(b) {
                continue;
            }
            word.start = i;
            state = State::Plain;
        }
        match (state, b) {
            (State::Plain, b) if is_space(b) => {
                word.end = i;
                words.push(core::mem::replace(&mut word, Word { text: Vec::new(), start: 0, end: 0, unclosed: false }));
                state = State::Between;
            }
            (State::Plain, b'"') => state = State::Double,
            (State::Plain, b'\'') => state = State::Single,
            (State::Double, b'"') | (State::Single, b'\'') => state = State::Plain,
            (_, b) => word.text.push(b),
        }
    }
    if state != State::Between {
        word.end = line.len();
        word.unclosed = state != State::Plain;
        words.push(word);
    }
    words
}

/// `app` + an upper-case letter, or a known key in another case: a word meant for us.
/// (Not every `app...`: `apparmor=` is a kernel parameter.)
pub(crate) fn looks_like_ours(key: &[u8]) -> bool {
    (key.starts_with(b"app") && key.get(3).is_some_and(u8::is_ascii_uppercase))
        || KNOWN_KEYS.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(key))
}

/// The known key closest to `key`, if it is close enough to be a typo.
fn suggest(key: &str) -> Option<&'static str> {
    closest(key, KNOWN_KEYS.iter().copied())
}

/// Applies `key=value` (`value` is `None` for a bare word). The last occurrence wins; an
/// empty value resets to the default; an invalid one is reported and resets too.
fn apply(out: &mut Parsed, param: &Param, value: Option<&str>) {
    (param.reset)(&mut out.config);
    let result = match (value, param.bare) {
        (None, Some(set)) => {
            set(&mut out.config);
            Ok(())
        }
        (None, None) => Err(Error::MissingValue { param: param.key.to_owned() }),
        (Some(""), _) => Ok(()),
        (Some(value), _) => (param.parse)(&mut out.config, value),
    };
    if let Err(e) = result {
        out.diagnostics.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn texts(line: &str) -> Vec<String> {
        tokenize(line.as_bytes()).into_iter().map(|w| String::from_utf8(w.text).unwrap()).collect()
    }

    #[test]
    fn tokenizer_handles_both_quote_kinds_and_concatenation() {
        assert_eq!(texts("  a  b\t\nc "), ["a", "b", "c"]);
        assert_eq!(texts("\"appCmds=ls /app:echo hi\" x"), ["appCmds=ls /app:echo hi", "x"]);
        assert_eq!(texts("appCmds=\"ls /app\""), ["appCmds=ls /app"]);
        assert_eq!(texts("appCmds='ls /app:echo hi'"), ["appCmds=ls /app:echo hi"]);
        assert_eq!(texts("appArgs='10 \"a b\"'"), ["appArgs=10 \"a b\""]);
        assert_eq!(texts("a\"b c\"'d e'f"), ["ab cd ef"]);
        assert_eq!(texts("'' x"), ["", "x"]);
        assert_eq!(texts("a\\ b"), ["a\\", "b"]);
    }

    #[test]
    fn tokenizer_spans_are_raw() {
        let line = b"x 'a b' \"c";
        let w = tokenize(line);
        assert_eq!((w[1].start, w[1].end, w[1].unclosed), (2, 7, false));
        assert_eq!((w[2].start, w[2].end, w[2].unclosed), (8, 10, true));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("appEdn"), Some("appEnd"));
        assert_eq!(suggest("appdebug"), Some("appDebug"));
        assert_eq!(suggest("appCtlServr"), Some("appCtlServer"));
        assert_eq!(suggest("appCmdFile"), Some("appCmdsFile"));
        assert_eq!(suggest("appArg"), Some("appArgs"));
        assert_eq!(suggest("appXyzzyPlugh"), None);
        assert_eq!(suggest(""), None);
    }

    #[test]
    fn app_like_keys() {
        assert!(looks_like_ours(b"appFoo"));
        assert!(looks_like_ours(b"APPEND"));
        assert!(!looks_like_ours(b"apparmor"));
        assert!(!looks_like_ours(b"app"));
        assert!(!looks_like_ours(b"xappDebug"));
        assert_eq!(vec![0u8; 0], trim_end(b" \n"));
    }
}
