//! `appCmds`: commands separated by `:`, with `\:` for a literal colon and `\\` for a
//! literal backslash; and the one-command-per-line format of `appCmdsFile`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::words::is_space_char;

fn trim(s: &str) -> &str {
    s.trim_matches(is_space_char)
}

/// Splits an `appCmds` value. Commands are trimmed; empty ones (from a trailing `:` or `::`)
/// are dropped. `\:` is a literal `:`, `\\` a literal `\`; a `\` before anything else is
/// kept as it is.
pub fn split_cmds(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmd = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ (':' | '\\')) => {
                    cmd.push(next);
                    chars.next();
                }
                _ => cmd.push('\\'),
            },
            ':' => {
                push_cmd(&mut out, &cmd);
                cmd.clear();
            }
            c => cmd.push(c),
        }
    }
    push_cmd(&mut out, &cmd);
    out
}

fn push_cmd(out: &mut Vec<String>, cmd: &str) {
    let cmd = trim(cmd);
    if !cmd.is_empty() {
        out.push(String::from(cmd));
    }
}

/// Writes commands as one `appCmds` value (no trailing `:`), escaping `\` and `:`. Also the
/// form of `APP_CMDS`.
pub fn join_cmds<S: AsRef<str>>(cmds: &[S]) -> String {
    let mut out = String::new();
    for (i, cmd) in cmds.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        for c in cmd.as_ref().chars() {
            if matches!(c, '\\' | ':') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Whether `split_cmds(join_cmds([cmd]))` gives `cmd` back: not empty, not starting or ending
/// with whitespace.
pub(crate) fn is_valid_cmd(cmd: &str) -> bool {
    !cmd.is_empty() && trim(cmd) == cmd
}

/// The commands of an `appCmdsFile`: one per line, trimmed; empty lines and lines starting
/// with `#` are skipped. No escapes: `:` and `\` are literal.
pub fn parse_cmds_file(text: &str) -> Vec<String> {
    text.lines().map(trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            (":", &[]),
            ("ls", &["ls"]),
            ("ls:", &["ls"]),
            ("mkdir --help:ls :", &["mkdir --help", "ls"]),
            ("mkdir --help:ls:ls /app:", &["mkdir --help", "ls", "ls /app"]),
            ("a::b", &["a", "b"]),
            ("  a  :  b c ", &["a", "b c"]),
            ("echo a\\:b:date", &["echo a:b", "date"]),
            ("echo a\\\\:date", &["echo a\\", "date"]),
            ("grep \\d x", &["grep \\d x"]),
            ("x\\", &["x\\"]),
            ("\\:", &[":"]),
        ];
        for (input, want) in table {
            assert_eq!(split_cmds(input), *want, "{input:?}");
        }
    }

    #[test]
    fn join_escapes_and_splits_back() {
        let cmds = ["echo a:b", "printf '\\\\'", "x\\", ":", "date"];
        let joined = join_cmds(&cmds);
        assert_eq!(joined, "echo a\\:b:printf '\\\\\\\\':x\\\\:\\::date");
        assert_eq!(split_cmds(&joined), cmds);
    }

    #[test]
    fn cmds_file_lines() {
        let text = "# setup\nls /app\n\n  echo a:b  \r\n\t# indented comment\nx\\y";
        assert_eq!(parse_cmds_file(text), ["ls /app", "echo a:b", "x\\y"]);
    }
}
