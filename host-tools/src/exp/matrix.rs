//! The parameter matrix: its points (the cartesian product of the named lists), each
//! point's directory name, `{name}` substitution into a node's arguments, and `--filter`.

use std::collections::BTreeMap;

/// One combination of the matrix's values, by parameter name (sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub values: BTreeMap<String, toml::Value>,
}

/// Why a `--filter` was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("--filter `{0}`: expected NAME=VALUE")]
    Syntax(String),
    #[error("--filter `{filter}`: the matrix has no `{name}`{hint}")]
    Unknown { filter: String, name: String, hint: String },
}

/// The text of a matrix value as it is substituted: strings as they are, numbers and
/// booleans as TOML writes them. `None` for values with no single text (tables, arrays,
/// dates).
pub fn value_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The names between braces in `text`; `{{` and `}}` are literal braces.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            rest = after;
        } else if let Some(after) = tail.strip_prefix('}') {
            rest = after;
        } else {
            let inner = &tail[1..];
            match inner.find('}') {
                Some(end) => {
                    names.push(&inner[..end]);
                    rest = &inner[end + 1..];
                }
                None => break,
            }
        }
    }
    names
}

impl Point {
    /// `text` with every `{name}` replaced by this point's value (unknown names are left
    /// as they are: the definition's check refuses them), `{{`/`}}` by single braces.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push(tail.as_bytes()[0] as char);
                rest = &tail[2..];
                continue;
            }
            let closed = tail.starts_with('{').then(|| tail[1..].find('}')).flatten();
            match closed.and_then(|end| self.values.get(&tail[1..1 + end]).map(|v| (end, v))) {
                Some((end, v)) => {
                    out.push_str(&value_text(v).unwrap_or_default());
                    rest = &tail[2 + end..];
                }
                None => {
                    out.push_str(&tail[..1]);
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The point's directory: `name=value,name=value`, characters other than letters,
    /// digits, `.`, `-` and `_` in values replaced by `_`; `default` for an empty matrix.
    pub fn dir_name(&self) -> String {
        if self.values.is_empty() {
            return "default".into();
        }
        let clean = |s: &str| -> String {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect()
        };
        self.values
            .iter()
            .map(|(k, v)| format!("{k}={}", clean(&value_text(v).unwrap_or_default())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The values as JSON (`params.json`, the summary).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.values
            .iter()
            .map(|(k, v)| {
                let j = match v {
                    toml::Value::Integer(i) => serde_json::Value::from(*i),
                    toml::Value::Float(f) => serde_json::Value::from(*f),
                    toml::Value::Boolean(b) => serde_json::Value::from(*b),
                    other => serde_json::Value::from(value_text(other).unwrap_or_default()),
                };
                (k.clone(), j)
            })
            .collect()
    }

    /// Whether every filter (`name`, `value` text) holds.
    pub fn matches(&self, filters: &[(String, String)]) -> bool {
        filters.iter().all(|(k, want)| self.values.get(k).and_then(value_text).is_some_and(|v| &v == want))
    }
}

/// Every point of `matrix`, the last name varying fastest. An empty matrix has one point.
pub fn points(matrix: &BTreeMap<String, Vec<toml::Value>>) -> Vec<Point> {
    let mut points = vec![Point { values: BTreeMap::new() }];
    for (name, values) in matrix {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut p = p.clone();
                    p.values.insert(name.clone(), v.clone());
                    p
                })
            })
            .collect();
    }
    points
}

/// Parses `--filter name=value` against the matrix's names.
pub fn parse_filter(
    filter: &str,
    matrix: &BTreeMap<String, Vec<toml::Value>>,
) -> Result<(String, String), FilterError> {
    let Some((name, value)) = filter.split_once('=') else { return Err(FilterError::Syntax(filter.into())) };
    if !matrix.contains_key(name) {
        let near = appliance_cmdline::suggest::closest(name, matrix.keys().map(String::as_str));
        return Err(FilterError::Unknown {
            filter: filter.into(),
            name: name.into(),
            hint: near.map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default(),
        });
    }
    Ok((name.into(), value.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix() -> BTreeMap<String, Vec<toml::Value>> {
        let m: toml::Table = toml::from_str("threads = [1, 2]\nsize = [\"4k\", \"1 M\"]").unwrap();
        m.into_iter().map(|(k, v)| (k, v.as_array().unwrap().clone())).collect()
    }

    #[test]
    fn points_are_the_cartesian_product() {
        let p = points(&matrix());
        let names: Vec<String> = p.iter().map(Point::dir_name).collect();
        assert_eq!(names, ["size=4k,threads=1", "size=4k,threads=2", "size=1_M,threads=1", "size=1_M,threads=2"]);
        assert_eq!(points(&BTreeMap::new()).len(), 1);
        assert_eq!(points(&BTreeMap::new())[0].dir_name(), "default");
        assert_eq!(serde_json::Value::Object(p[3].to_json()).to_string(), r#"{"size":"1 M","threads":2}"#);
    }

    #[test]
    fn substitution_replaces_known_names_and_keeps_escaped_braces() {
        let p = &points(&matrix())[1];
        assert_eq!(p.substitute("-t {threads} -s {size}"), "-t 2 -s 4k");
        assert_eq!(p.substitute("{{threads}} {nope} {"), "{threads} {nope} {");
        assert_eq!(placeholders("a {x} {{y}} {z}"), ["x", "z"]);
        assert_eq!(placeholders("json {{\"a\": 1}}"), Vec::<&str>::new());
    }

    #[test]
    fn filters_select_points_and_name_unknown_parameters() {
        let m = matrix();
        let f = parse_filter("threads=2", &m).unwrap();
        let kept: Vec<String> =
            points(&m).iter().filter(|p| p.matches(std::slice::from_ref(&f))).map(Point::dir_name).collect();
        assert_eq!(kept, ["size=4k,threads=2", "size=1_M,threads=2"]);
        let e = parse_filter("thread=2", &m).unwrap_err().to_string();
        assert!(e.contains("did you mean `threads`?"), "{e}");
        assert!(parse_filter("threads", &m).is_err());
    }
}
