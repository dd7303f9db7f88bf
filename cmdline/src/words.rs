//! Shell words without expansions: how `appArgs` is split into arguments, how arguments are
//! joined back (for `APP_ARGS` and for rendering), and how the init may split a command
//! when the image has no shell.

use alloc::string::String;
use alloc::vec::Vec;

/// The whitespace of the kernel's `isspace` in the ASCII range: it separates words.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

pub(crate) fn is_space_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_space)
}

/// The result of [`split_words`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Words {
    pub words: Vec<String>,
    /// A quote was not closed; the last word runs to the end of the text.
    pub unclosed_quote: bool,
}

/// Splits `text` like a POSIX shell that does no expansions: whitespace separates words;
/// `'...'` is literal; `"..."` is literal except that `\` escapes `"`, `\`, `$` and `` ` ``;
/// outside quotes `\` escapes any character; `\` before a newline removes both; quotes
/// may be concatenated with unquoted text (`a"b c"d` is one word); `''` is an empty word.
/// A trailing lone `\` is kept. Never fails: an unclosed quote runs to the end.
pub fn split_words(text: &str) -> Words {
    #[derive(PartialEq)]
    enum State {
        Plain,
        Single,
        Double,
    }
    let mut out = Words::default();
    let mut word = String::new();
    // A word exists once anything, even an empty quote pair, was seen.
    let mut in_word = false;
    let mut state = State::Plain;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match state {
            State::Plain => match c {
                '\'' => {
                    state = State::Single;
                    in_word = true;
                }
                '"' => {
                    state = State::Double;
                    in_word = true;
                }
                '\\' => match chars.next() {
                    Some('\n') => {}
                    Some(next) => {
                        word.push(next);
                        in_word = true;
                    }
                    None => {
                        word.push('\\');
                        in_word = true;
                    }
                },
                c if is_space_char(c) => {
                    if in_word {
                        out.words.push(core::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
            State::Single => match c {
                '\'' => state = State::Plain,
                c => word.push(c),
            },
            State::Double => match c {
                '"' => state = State::Plain,
                '\\' => match chars.next() {
                    Some('\n') => {}
                    Some(next @ ('"' | '\\' | '$' | '`')) => word.push(next),
                    Some(next) => {
                        word.push('\\');
                        word.push(next);
                    }
                    None => word.push('\\'),
                },
                c => word.push(c),
            },
        }
    }
    if in_word {
        out.words.push(word);
    }
    out.unclosed_quote = state != State::Plain;
    out
}

/// Characters that need no quoting in a POSIX shell word, nor for [`split_words`].
fn is_shell_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@' | '%' | '+' | ',')
}

/// Quotes one word for a POSIX shell: bare when it is made of safe characters, otherwise in
/// single quotes, a `'` written as `'\''`. The empty word is `''`.
pub fn quote_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(is_shell_safe) {
        return String::from(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Joins words with single spaces, each quoted by [`quote_word`]: both `sh` (`eval "set --
/// $APP_ARGS"`) and [`split_words`] give the same words back.
pub fn join_words<S: AsRef<str>>(words: &[S]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&quote_word(w.as_ref()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn split(s: &str) -> Vec<String> {
        let w = split_words(s);
        assert!(!w.unclosed_quote, "{s}");
        w.words
    }

    #[test]
    fn splits_like_a_shell_without_expansions() {
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("10 20", &["10", "20"]),
            ("  a\tb  ", &["a", "b"]),
            ("10 \"a b\"", &["10", "a b"]),
            ("'a b' c", &["a b", "c"]),
            ("a\"b c\"d", &["ab cd"]),
            ("'' \"\"", &["", ""]),
            ("a\\ b", &["a b"]),
            ("\\'x", &["'x"]),
            ("'a\\b'", &["a\\b"]),
            ("\"a\\\"b\"", &["a\"b"]),
            ("\"a\\b\"", &["a\\b"]),
            ("\"\\$HOME\" $HOME", &["$HOME", "$HOME"]),
            ("'say \"hi\"'", &["say \"hi\""]),
            ("a\\\nb", &["ab"]),
            ("x\\", &["x\\"]),
            ("é 日本", &["é", "日本"]),
        ];
        for (input, want) in table {
            assert_eq!(split(input), *want, "{input:?}");
        }
    }

    #[test]
    fn unclosed_quote_runs_to_the_end() {
        let w = split_words("a 'b c");
        assert!(w.unclosed_quote);
        assert_eq!(w.words, vec!["a", "b c"]);
        let w = split_words("\"x");
        assert!(w.unclosed_quote);
        assert_eq!(w.words, vec!["x"]);
    }

    #[test]
    fn join_quotes_only_when_needed_and_splits_back() {
        assert_eq!(join_words(&["a", "b/c:d=e"]), "a b/c:d=e");
        assert_eq!(join_words(&["a b", "", "it's", "$x", "é"]), "'a b' '' 'it'\\''s' '$x' 'é'");
        let words = ["", " ", "'", "\"", "\\", "a'b\"c\\d", "*", "#x", "~", "--"];
        assert_eq!(split(&join_words(&words)), words);
    }
}
