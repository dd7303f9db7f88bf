//! The host's apt sources (`sources.list`, and `sources.list.d/` in both the one-line
//! `*.list` and the deb822 `*.sources` formats): which mirror serves a suite, so that a
//! reference root comes from the mirror the host already uses (a local or corporate
//! mirror, a proxy in front of it) with the same `-updates` and `-security` suites.
//! Only read: the host's apt configuration is never changed.

use std::path::Path;

/// Debian's own redirector, when the host names no Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Where apt keeps its sources on the host.
pub const HOST_APT_DIR: &str = "/etc/apt";

/// One `deb` entry: a mirror, one suite, its components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
}

impl Source {
    /// The entry as a one-line `sources.list` line. Options such as `signed-by` are left
    /// out: a path to the host's keyring would not exist inside the root, where the
    /// archive keyring package that apt depends on provides the keys.
    pub fn line(&self) -> String {
        let mut line = format!("deb {} {}", self.uri, self.suite);
        for component in &self.components {
            line.push(' ');
            line.push_str(component);
        }
        line
    }
}

/// Every enabled `deb` entry under `apt_dir` (normally [`HOST_APT_DIR`]), in the order
/// apt reads them: `sources.list`, then `sources.list.d/` by name. Files that cannot be
/// read count as empty: a host without apt simply names no mirror.
pub fn read(apt_dir: &Path) -> Vec<Source> {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut parts: Vec<_> = entries.filter_map(Result::ok).map(|entry| entry.path()).collect();
        parts.sort();
        files.extend(parts);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|ext| ext.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            // apt ignores every other name in sources.list.d (`.disabled`, `.save`, ...).
            Some("list") => sources.extend(parse_one_line(&text)),
            _ if file.file_name().is_some_and(|name| name == "sources.list") => {
                sources.extend(parse_one_line(&text));
            }
            _ => {}
        }
    }
    sources
}

/// The entries of a one-line format file: `deb [options] URI SUITE COMPONENT...`.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            if words.next()? != "deb" {
                return None;
            }
            let mut uri = words.next()?;
            if uri.starts_with('[') {
                // Options, possibly with spaces inside the brackets.
                while !uri.ends_with(']') {
                    uri = words.next()?;
                }
                uri = words.next()?;
            }
            let suite = words.next()?;
            Some(Source {
                uri: uri.to_owned(),
                suite: suite.to_owned(),
                components: words.map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The entries of a deb822 `.sources` file: paragraphs with `Types`, `URIs`, `Suites`
/// and `Components` (each a list), skipped when `Enabled: no`.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| -> Vec<String> {
            paragraph
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") || field("Enabled").first().is_some_and(|e| e == "no") {
            continue;
        }
        let components = field("Components");
        for uri in field("URIs") {
            for suite in field("Suites") {
                sources.push(Source { uri: uri.clone(), suite, components: components.clone() });
            }
        }
    }
    sources
}

/// The paragraphs of a deb822 file as (field, value) pairs; continuation lines (which
/// start with white space) are joined to their field's value, comments dropped.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut paragraphs = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let current: &mut Vec<(String, String)> = paragraphs.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    paragraphs.retain(|paragraph| !paragraph.is_empty());
    paragraphs
}

/// The entries a root of `suite` gets from the host's `host` entries: those of the
/// suite itself and of its `-updates`, `-security`, `-backports` suites when the host
/// has the suite (a root of the host's own release gets the host's mirrors, components
/// and updates); else the suite from the host's first Debian mirror (a URI ending in
/// `/debian`), with `main`; else the suite from [`DEFAULT_MIRROR`].
pub fn for_suite(host: &[Source], suite: &str) -> Vec<Source> {
    let mut chosen: Vec<Source> = Vec::new();
    for source in host {
        let related =
            source.suite == suite || source.suite.strip_prefix(suite).is_some_and(|rest| rest.starts_with(['-', '/']));
        if related && !source.uri.starts_with("cdrom:") && !chosen.contains(source) {
            chosen.push(source.clone());
        }
    }
    if !chosen.is_empty() {
        return chosen;
    }
    let mirror = host
        .iter()
        .map(|source| source.uri.trim_end_matches('/'))
        .find(|uri| uri.ends_with("/debian"))
        .unwrap_or(DEFAULT_MIRROR);
    vec![Source { uri: mirror.to_owned(), suite: suite.to_owned(), components: vec!["main".to_owned()] }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source(uri: &str, suite: &str, components: &[&str]) -> Source {
        Source { uri: uri.into(), suite: suite.into(), components: components.iter().map(|c| c.to_string()).collect() }
    }

    #[test]
    fn one_line_entries_with_and_without_options() {
        let text = "# comment\n\
                    deb http://m/debian bookworm main contrib # trailing\n\
                    deb-src http://m/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m/debian-security bookworm-security main\n\
                    deb [ trusted=yes ] file:/srv/repo ./\n\
                    deb broken\n";
        assert_eq!(
            parse_one_line(text),
            [
                source("http://m/debian", "bookworm", &["main", "contrib"]),
                source("http://m/debian-security", "bookworm-security", &["main"]),
                source("file:/srv/repo", "./", &[]),
            ]
        );
    }

    #[test]
    fn deb822_paragraphs_multiply_uris_by_suites_and_skip_disabled_ones() {
        let text = "Types: deb deb-src\n\
                    # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                    URIs: http://deb.debian.org/debian\n\
                    Suites: bookworm bookworm-updates\n\
                    Components: main\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
                    \n\
                    Types: deb\n\
                    URIs: http://off/debian\n\
                    Suites: trixie\n\
                    Components: main\n\
                    Enabled: no\n\
                    \n\
                    Types: deb-src\n\
                    URIs: http://src/debian\n\
                    Suites: bookworm\n\
                    \n\
                    types: deb\n\
                    uris: http://a/debian\n  http://b/debian\n\
                    suites: sid\n\
                    components: main\n non-free\n";
        assert_eq!(
            parse_deb822(text),
            [
                source("http://deb.debian.org/debian", "bookworm", &["main"]),
                source("http://deb.debian.org/debian", "bookworm-updates", &["main"]),
                source("http://a/debian", "sid", &["main", "non-free"]),
                source("http://b/debian", "sid", &["main", "non-free"]),
            ]
        );
    }

    #[test]
    fn a_suite_the_host_has_comes_with_its_updates_and_security_suites() {
        let host = [
            source("http://m/debian", "bookworm", &["main", "non-free-firmware"]),
            source("http://m/debian", "bookworm-updates", &["main"]),
            source("http://m/debian-security", "bookworm-security", &["main"]),
            source("http://m/debian", "bookworm", &["main", "non-free-firmware"]),
            source("https://other/apt", "cloud-sdk-bookworm", &["main"]),
            source("cdrom:[Debian]/", "bookworm", &["main"]),
        ];
        assert_eq!(for_suite(&host, "bookworm"), host[..3]);
        assert_eq!(
            for_suite(&host, "bookworm").iter().map(Source::line).collect::<Vec<_>>(),
            [
                "deb http://m/debian bookworm main non-free-firmware",
                "deb http://m/debian bookworm-updates main",
                "deb http://m/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn another_suite_comes_from_the_hosts_debian_mirror_or_debians_redirector() {
        let host = [
            source("https://other/apt", "nodistro", &["main"]),
            source("http://mirror.example/debian/", "bookworm", &["main"]),
        ];
        assert_eq!(for_suite(&host, "trixie"), [source("http://mirror.example/debian", "trixie", &["main"])]);
        assert_eq!(for_suite(&host[..1], "trixie"), [source(DEFAULT_MIRROR, "trixie", &["main"])]);
        assert_eq!(for_suite(&[], "sid"), [source(DEFAULT_MIRROR, "sid", &["main"])]);
    }

    #[test]
    fn files_are_read_in_apts_order_and_only_with_apts_extensions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sources.list"), "deb http://one/debian bookworm main\n").unwrap();
        let parts = dir.path().join("sources.list.d");
        std::fs::create_dir(&parts).unwrap();
        std::fs::write(
            parts.join("b.sources"),
            "Types: deb\nURIs: http://three/debian\nSuites: sid\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(parts.join("a.list"), "deb http://two/debian trixie main\n").unwrap();
        std::fs::write(parts.join("c.list.disabled"), "deb http://no/debian sid main\n").unwrap();
        let uris: Vec<String> = read(dir.path()).into_iter().map(|s| s.uri).collect();
        assert_eq!(uris, ["http://one/debian", "http://two/debian", "http://three/debian"]);
        assert!(read(&dir.path().join("missing")).is_empty());
    }

    proptest! {
        /// Every entry survives its own one-line rendering, and so does a deb822
        /// paragraph holding it.
        #[test]
        fn entries_round_trip(
            uri in "(http|https|file)://[a-z.]{1,10}(/[a-z0-9.-]{1,8}){0,3}",
            suite in "[a-z][a-z0-9-]{0,15}",
            components in proptest::collection::vec("[a-z][a-z-]{0,10}", 0..4),
        ) {
            let entry = Source { uri, suite, components };
            prop_assert_eq!(parse_one_line(&entry.line()), [entry.clone()]);
            let paragraph = format!(
                "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
                entry.uri, entry.suite, entry.components.join(" ")
            );
            prop_assert_eq!(parse_deb822(&paragraph), [entry]);
        }
    }
}
