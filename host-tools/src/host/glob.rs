//! Glob patterns over paths: one dialect wherever the toolkit takes a pattern
//! (`appliance cpio filter --drop`, `appliance trace --exclude` and `[trace] exclude`,
//! the `include` lines of `ld.so.conf`), matched by the `globset` crate.
//!
//! The dialect:
//!
//! - `*` matches any run of characters within one path component, `?` one character
//!   other than `/`;
//! - `**` as a whole component matches any number of components, none included:
//!   `**/*.a` matches `libc.a` and `usr/lib/libc.a`, `usr/**/cache` matches `usr/cache`
//!   and `usr/a/b/cache`, `usr/**` everything below `usr`. Elsewhere (`**.so`) it is a
//!   plain `*`;
//! - `[abc]`, `[a-z]`, `[!a]` (or `[^a]`) and `[[:digit:]]` match one character of a set;
//!   a `[` without its `]` is a literal `[`;
//! - `{a,b}` matches either alternative;
//! - `\` makes the next character literal (`\*` is a `*`).
//!
//! Patterns are anchored at the root of the tree they are matched in (an archive, a file
//! system): a leading `/` or `./`, on the pattern or on the path, means nothing, and
//! neither does a trailing `/`. With [`Globs::covers`], a pattern that matches a directory
//! covers everything below it, so `usr/share/locale` drops the whole locale tree.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A pattern that is not a glob of this dialect.
#[derive(Debug, thiserror::Error)]
#[error("invalid glob {pattern:?}: {kind}")]
pub struct Error {
    pub pattern: String,
    pub kind: globset::ErrorKind,
}

/// A set of compiled patterns.
#[derive(Clone, Debug, Default)]
pub struct Globs {
    set: globset::GlobSet,
}

impl Globs {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Globs, Error> {
        let mut builder = globset::GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let trimmed = trim(pattern.as_bytes());
            // Trimming removes ASCII bytes only, so it ends on a character boundary.
            let trimmed = std::str::from_utf8(trimmed).unwrap_or(pattern);
            let glob = globset::GlobBuilder::new(trimmed)
                .literal_separator(true)
                .backslash_escape(true)
                .allow_unclosed_class(true)
                .build()
                .map_err(|err| Error { pattern: pattern.to_owned(), kind: err.kind().clone() })?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|err| Error { pattern: err.glob().unwrap_or("").to_owned(), kind: err.kind().clone() })?;
        Ok(Globs { set })
    }

    /// Whether `path` itself matches a pattern.
    pub fn matches(&self, path: impl AsRef<Path>) -> bool {
        self.set.is_match(Path::new(OsStr::from_bytes(trim(path.as_ref().as_os_str().as_bytes()))))
    }

    /// Whether `path`, or a directory above it, matches a pattern.
    pub fn covers(&self, path: impl AsRef<Path>) -> bool {
        let path = trim(path.as_ref().as_os_str().as_bytes());
        let parents = path.iter().enumerate().filter(|(_, b)| **b == b'/').map(|(at, _)| &path[..at]);
        parents.chain([path]).any(|candidate| self.set.is_match(Path::new(OsStr::from_bytes(candidate))))
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Without leading `/` and `./` and trailing `/`: paths and patterns are relative to the
/// root of their tree.
fn trim(mut path: &[u8]) -> &[u8] {
    loop {
        if let Some(rest) = path.strip_prefix(b"/") {
            path = rest;
        } else if let Some(rest) = path.strip_prefix(b"./") {
            path = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = path.strip_suffix(b"/") {
        path = rest;
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covers(pattern: &str, path: &str) -> bool {
        Globs::new(&[pattern]).unwrap().covers(path)
    }

    #[test]
    fn table() {
        let cases = [
            ("usr/share/locale", "usr/share/locale/de/LC_MESSAGES/x.mo", true),
            ("usr/share/locale", "usr/share/locales", false),
            ("/usr/share/doc", "./usr/share/doc", true),
            ("/usr/share/doc/", "usr/share/doc/x", true),
            ("*.a", "libc.a", true),
            ("*.a", "usr/lib/libc.a", false),
            ("**/*.a", "usr/lib/libc.a", true),
            ("**/*.a", "libc.a", true),
            ("usr/**/man?", "usr/share/man/man1", true),
            ("usr/**/cache", "usr/cache", true),
            ("usr/**/cache", "usr/a/b/cache/x", true),
            ("usr/**", "usr/lib/x", true),
            ("usr/**", "usr", false),
            ("**", "anything/at/all", true),
            ("usr/lib/*/libz.so*", "usr/lib/x86_64-linux-gnu/libz.so.1", true),
            ("usr/lib/?", "usr/lib/a", true),
            ("usr/lib/?", "usr/lib/ab", false),
            ("**.so", "lib/x.so", false),
            ("**.so", "x.so", true),
            ("var/[lc]*", "var/log", true),
            ("var/[lc]*", "var/cache/apt", true),
            ("var/[!lc]*", "var/log", false),
            ("var/[^lc]*", "var/log", false),
            ("var/[a-c]ache", "var/cache", true),
            ("var/{log,cache}", "var/cache", true),
            ("a[", "a[", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("etc", "etcetera", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(covers(pattern, path), expected, "{pattern} on {path}");
        }
    }

    #[test]
    fn matches_is_the_path_itself_only() {
        let cases = [
            ("/a/*", "/a/b", true),
            ("/a/*", "/a/b/c", false),
            ("/a/**", "/a/b/c", true),
            ("/a/?", "/a/b", true),
            ("/a/?", "/a/bc", false),
            // `**` crosses components only as a whole component.
            ("**/*.so", "/lib/x.so", true),
            ("**.so", "/lib/x.so", false),
            ("*.conf", "libc.conf", true),
            ("*.conf", "libc.conf~", false),
            ("*.conf", "x.conf/y", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(Globs::new(&[pattern]).unwrap().matches(path), expected, "{pattern} on {path}");
        }
        assert!(Globs::new(&["*.conf"]).unwrap().covers("x.conf/y"));
    }

    #[test]
    fn an_empty_set_matches_nothing() {
        let none = Globs::new::<&str>(&[]).unwrap();
        assert!(none.is_empty());
        assert!(!none.covers("usr"));
        assert!(!Globs::default().covers(""));
    }

    #[test]
    fn invalid_patterns_are_named() {
        let err = Globs::new(&["ok", "a{b"]).unwrap_err();
        assert_eq!(err.pattern, "a{b");
        assert!(err.to_string().starts_with("invalid glob \"a{b\": "), "{err}");
    }

    proptest! {
        /// A pattern naming a directory covers it and everything below, and nothing
        /// that merely shares a prefix with it.
        #[test]
        fn a_directory_covers_its_subtree(
            dir in "(/[a-z]{1,6}){1,3}",
            below in "(/[a-z]{1,6}){0,3}",
            suffix in "[a-z]{1,3}",
        ) {
            let globs = Globs::new(std::slice::from_ref(&dir)).unwrap();
            let inside = format!("{dir}{below}");
            let beside = format!("{dir}{suffix}{below}");
            prop_assert!(globs.covers(&inside), "{}", inside);
            prop_assert!(!globs.covers(&beside), "{}", beside);
        }
    }
}
