//! `REGISTRY/REPO[:VERSION]`: where an appliance is published, and the order of versions.
//!
//! The registry part is always explicit (there is no default registry, unlike docker's
//! Docker Hub): it is the first component and must look like a host (a dot, a port or
//! `localhost`). Versions are OCI tags that do not start with `_` or `.`, `-`: the tags
//! starting with `_` are the project's own (the metadata's, [`super::registry::METADATA_TAG`]).

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{input:?} is not REGISTRY/REPO[:VERSION]: {why}")]
    Malformed { input: String, why: &'static str },
    #[error("{input:?}: the version {version:?} is not a valid version: {why}")]
    BadVersion { input: String, version: String, why: &'static str },
}

/// A repository in a registry, and perhaps one version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`
    pub registry: String,
    /// `name[/name...]`, lowercase
    pub repository: String,
    pub version: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let malformed = |why| Error::Malformed { input: input.to_owned(), why };
        let (registry, rest) = input.split_once('/').ok_or_else(|| malformed("no '/' after the registry"))?;
        if !looks_like_registry(registry) {
            return Err(malformed("the first part must be a registry host (with a dot, a port, or localhost)"));
        }
        if registry.chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))) {
            return Err(malformed("the registry host has characters a host name cannot have"));
        }
        // A ':' after the last '/' separates the version.
        let (repository, version) = match rest.rsplit_once(':') {
            Some((repo, v)) if !v.contains('/') => (repo, Some(v)),
            _ => (rest, None),
        };
        if repository.is_empty() {
            return Err(malformed("the repository is empty"));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(malformed(
                "the repository must be lowercase letters and digits, separated by '.', '_', '__', '-' or '/'",
            ));
        }
        if let Some(v) = version {
            check_version(v).map_err(|why| Error::BadVersion {
                input: input.to_owned(),
                version: v.to_owned(),
                why,
            })?;
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            version: version.map(String::from),
        })
    }

    /// The same repository, at `version`.
    pub fn with_version(&self, version: &str) -> Reference {
        Reference { version: Some(version.to_owned()), ..self.clone() }
    }

    /// `REGISTRY/REPO`, without the version.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Loopback registries speak plain HTTP by default, as docker treats `localhost`.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => &self.registry,
        };
        host == "localhost" || host == "[::1]" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(v) = &self.version {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

/// Whether `arg` names something in a registry rather than a local path: as docker
/// decides whether a name starts with a registry.
pub fn looks_like_reference(arg: &str) -> bool {
    arg.split_once('/').is_some_and(|(first, _)| looks_like_registry(first))
}

fn looks_like_registry(first: &str) -> bool {
    !first.is_empty()
        && (first.contains('.') || first.contains(':') || first == "localhost")
        && first != "."
        && first != ".."
}

/// OCI's path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A version is an OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) that does not start with
/// `_`: those tags are the project's own.
pub fn check_version(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 128 {
        return Err("it must have 1 to 128 characters");
    }
    if !v.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("it must start with a letter or a digit");
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("it may hold only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Orders versions as `sort -V` does for the usual cases: runs of digits compare as
/// numbers, the rest as text, so 1.10 is newer than 1.9 and 2.0 newer than 2.0-rc1 is
/// not promised (a suffix makes a version newer). The newest version is the greatest.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.is_empty(), y.is_empty()) {
            (true, true) => return a.cmp(b),
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let digits = x[0].is_ascii_digit();
        if digits != y[0].is_ascii_digit() {
            // A number sorts before text at the same place (1.0.1 < 1.0.a).
            return if digits { Ordering::Less } else { Ordering::Greater };
        }
        let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit() == digits).count();
        let (nx, ny) = (run(x), run(y));
        let (px, py) = (&x[..nx], &y[..ny]);
        let order = if digits {
            let trim = |s: &'_ [u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
            let (tx, ty) = (&px[trim(px)..], &py[trim(py)..]);
            tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
        } else {
            px.cmp(py)
        };
        if order != Ordering::Equal {
            return order;
        }
        x = &x[nx..];
        y = &y[ny..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_registry_repository_and_version() {
        let table = [
            ("127.0.0.1:5000/lab/hello:1.0", "127.0.0.1:5000", "lab/hello", Some("1.0")),
            ("registry.example.com/hello", "registry.example.com", "hello", None),
            ("localhost/a/b/c:v2-rc.1", "localhost", "a/b/c", Some("v2-rc.1")),
            ("[::1]:5000/x:1", "[::1]:5000", "x", Some("1")),
            ("reg.io/my_app__x-y.z:latest", "reg.io", "my_app__x-y.z", Some("latest")),
        ];
        for (input, registry, repository, version) in table {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str(), r.version.as_deref()),
                (registry, repository, version)
            );
            assert_eq!(r.to_string(), input, "renders back");
        }
    }

    #[test]
    fn refuses_what_is_not_a_registry_reference_and_says_why() {
        let table = [
            ("hello:1.0", "no '/'"),
            ("lab/hello:1.0", "registry host"),
            ("reg.io/", "repository is empty"),
            ("reg.io/Hello", "lowercase"),
            ("reg.io/a//b", "lowercase"),
            ("reg.io/a-:1", "lowercase"),
            ("reg.io/a:_tuf", "start with a letter"),
            ("reg.io/a:", "1 to 128"),
            ("reg.io/a:1+2", "only letters"),
        ];
        for (input, why) in table {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(why), "{input}: {err}");
            assert!(err.contains(input), "names the input: {err}");
        }
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for (r, lo) in [("127.0.0.1:5000", true), ("localhost", true), ("[::1]:5000", true), ("reg.io:5000", false)] {
            assert_eq!(Reference::parse(&format!("{r}/x")).unwrap().is_loopback(), lo, "{r}");
        }
    }

    #[test]
    fn a_path_with_a_registry_host_first_looks_like_a_reference_and_a_local_path_does_not() {
        assert!(looks_like_reference("127.0.0.1:5000/hello:1"));
        assert!(looks_like_reference("reg.example.com/hello"));
        assert!(!looks_like_reference("out/hello"));
        assert!(!looks_like_reference("./out/hello"));
        assert!(!looks_like_reference("../out/hello"));
        assert!(!looks_like_reference("hello"));
    }

    #[test]
    fn versions_order_numbers_as_numbers() {
        let sorted = ["0.9", "1.0", "1.0.1", "1.2", "1.10", "2", "2.0", "10.0", "v1", "v1.1"];
        for w in sorted.windows(2) {
            assert_eq!(compare_versions(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare_versions(w[1], w[0]), Ordering::Greater, "{} > {}", w[1], w[0]);
        }
        assert_eq!(compare_versions("1.01", "1.1"), Ordering::Less, "a total order: ties broken by text");
    }

    proptest! {
        #[test]
        fn version_order_is_a_total_order(a in "[0-9a-z.-]{0,8}", b in "[0-9a-z.-]{0,8}", c in "[0-9a-z.-]{0,8}") {
            prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
            prop_assert_eq!(compare_versions(&a, &b) == Ordering::Equal, a == b);
            if compare_versions(&a, &b) != Ordering::Greater && compare_versions(&b, &c) != Ordering::Greater {
                prop_assert_ne!(compare_versions(&a, &c), Ordering::Greater);
            }
        }

        #[test]
        fn parsed_references_render_back(repo in "[a-z0-9]{1,5}(/[a-z0-9]{1,5}){0,2}", v in "[A-Za-z0-9][A-Za-z0-9._-]{0,10}") {
            let input = format!("reg.example.com:5000/{repo}:{v}");
            let r = Reference::parse(&input).unwrap();
            prop_assert_eq!(r.to_string(), input);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = Reference::parse(&s);
        }
    }
}
