//! Shell-style patterns over archive paths, for `appliance cpio filter --drop`.
//!
//! `*` and `?` match within one path component, `**` across components, `[abc]`,
//! `[a-z]` and `[!a]` one character of a set. A pattern matches a path when it matches the
//! path or one of its parent directories, so dropping `usr/share/locale` drops everything
//! under it. Leading `/` and `./` on either side are ignored: archive paths are relative.

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob { pattern: trim(pattern).chars().collect() }
    }

    /// Whether `path`, or a directory above it, matches.
    pub fn matches(&self, path: &str) -> bool {
        let path = trim(path);
        let mut prefix_ends = path.match_indices('/').map(|(i, _)| i).collect::<Vec<_>>();
        prefix_ends.push(path.len());
        prefix_ends.into_iter().any(|end| {
            let candidate: Vec<char> = path[..end].chars().collect();
            match_here(&self.pattern, &candidate)
        })
    }
}

fn trim(path: &str) -> &str {
    let mut path = path;
    loop {
        if let Some(rest) = path.strip_prefix('/') {
            path = rest;
        } else if let Some(rest) = path.strip_prefix("./") {
            path = rest;
        } else {
            return path.trim_end_matches('/');
        }
    }
}

fn match_here(pattern: &[char], text: &[char]) -> bool {
    match pattern {
        [] => text.is_empty(),
        ['*', '*', rest @ ..] => {
            // "**/" also matches no directory at all.
            let rest_after_slash = rest.strip_prefix(&['/']).unwrap_or(rest);
            (0..=text.len()).any(|i| match_here(rest, &text[i..]) || match_here(rest_after_slash, &text[i..]))
        }
        ['*', rest @ ..] => {
            let stop = text.iter().position(|c| *c == '/').unwrap_or(text.len());
            (0..=stop).any(|i| match_here(rest, &text[i..]))
        }
        ['?', rest @ ..] => matches!(text, [c, tail @ ..] if *c != '/' && match_here(rest, tail)),
        ['[', rest @ ..] => match (text, class(rest)) {
            ([c, tail @ ..], Some((matches, after))) => *c != '/' && matches(*c) && match_here(after, tail),
            // An unclosed "[" is a literal.
            ([c, tail @ ..], None) => *c == '[' && match_here(rest, tail),
            ([], _) => false,
        },
        [p, rest @ ..] => matches!(text, [c, tail @ ..] if c == p && match_here(rest, tail)),
    }
}

/// Parses a `[...]` class after its `[`: a matcher and the pattern after the `]`.
fn class(pattern: &[char]) -> Option<(impl Fn(char) -> bool + use<>, &[char])> {
    let (negated, body) = match pattern {
        ['!' | '^', rest @ ..] => (true, rest),
        _ => (false, pattern),
    };
    // A "]" first in the set is a member, not the end.
    let close = body.iter().skip(1).position(|c| *c == ']').map(|i| i + 1)?;
    let mut ranges = Vec::new();
    let set = &body[..close];
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            ranges.push((set[i], set[i + 2]));
            i += 3;
        } else {
            ranges.push((set[i], set[i]));
            i += 1;
        }
    }
    Some((move |c: char| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != negated, &body[close + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("usr/share/locale", "usr/share/locale/de/LC_MESSAGES/x.mo", true),
            ("usr/share/locale", "usr/share/locales", false),
            ("/usr/share/doc", "./usr/share/doc", true),
            ("*.a", "libc.a", true),
            ("*.a", "usr/lib/libc.a", false),
            ("**/*.a", "usr/lib/libc.a", true),
            ("**/*.a", "libc.a", true),
            ("usr/**/man?", "usr/share/man/man1", true),
            ("usr/lib/*/libz.so*", "usr/lib/x86_64-linux-gnu/libz.so.1", true),
            ("var/[lc]*", "var/log", true),
            ("var/[lc]*", "var/cache/apt", true),
            ("var/[!lc]*", "var/log", false),
            ("var/[a-c]ache", "var/cache", true),
            ("a[", "a[", true),
            ("etc", "etcetera", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(Glob::new(pattern).matches(path), expected, "{pattern} on {path}");
        }
    }
}
