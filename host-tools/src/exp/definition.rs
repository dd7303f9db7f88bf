//! The experiment definition, `experiment.toml`: the node roles of a run, the parameter
//! matrix, repetitions, the time bound of a run, the results transport and how many VMs
//! may run at once. Loading checks everything a run would trip over later (unknown keys,
//! `{name}` placeholders nothing defines, empty lists, a role named twice, more VMs at once
//! than the memory holds), so that bad input is refused before anything boots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file name of a definition inside an experiment directory.
pub const FILE_NAME: &str = "experiment.toml";

/// What `appliance exp new` writes: every key, commented.
pub const TEMPLATE: &str = r#"# An experiment: the same appliance booted for every point of the parameter matrix,
# `repetitions` times each. `appliance exp run .` runs it, `appliance exp report .`
# summarises it. Runs land in runs/<batch>/<point>/<repetition>/<node>/.

description = "hello, over a small grid"
# Runs of every point (1 or more).
repetitions = 2
# Seconds a run may take (each of its VMs); then it is stopped gracefully and recorded
# as timed out.
timeout = 120
# How the results come back: "serial" (a stream over a virtio-serial port: no server,
# no root), "9p" (needs a kernel with 9p, e.g. kernel = "build:6.1") or "nfs" (a private
# nfs-ganesha per node on the loopback: root only).
results = "serial"
# VMs at once; default: as many as the cores and the free memory allow.
# max_vms = 2
# The kernel of every node, as `appliance run --kernel` takes it (a bzImage, or
# build:<series> once built); default: the app dir's own.
# kernel = "build:6.1"

# Named lists of values; every combination is a point. `{name}` in a node's args, cmds
# and kernel words is replaced by the point's value.
[matrix]
greeting = ["hi", "hello"]
code = [0, 1]

# One [[node]] per role of a run. A single node may leave its name out ("app").
[[node]]
name = "app"
# An image (a directory beside this file or with appliance.toml, or a name under ./images/
# or the toolkit's own images/), built once per batch; or `app = "out/hello"`, an app dir
# already built.
image = "hello"
# /app/run's arguments (appArgs) and commands before it (appCmds), with {placeholders}.
args = "{greeting} exit={code}"
# cmds = "..."
# More kernel command-line words.
# kernel_words = ["appRunTimeout=60"]
memory = 256   # MiB
cpus = 1
count = 1      # VMs of this role in a run: app-1, app-2, ...
"#;

/// How the results of a node come back to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Serial,
    #[serde(rename = "9p")]
    NineP,
    /// nfs-ganesha on the host's loopback, one server per node exporting its directory;
    /// root only, as for `appliance run --results-via nfs`.
    Nfs,
}

/// `experiment.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub repetitions: u32,
    /// Seconds.
    pub timeout: u64,
    #[serde(default = "serial")]
    pub results: Transport,
    pub max_vms: Option<u32>,
    pub kernel: Option<String>,
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<toml::Value>>,
    #[serde(rename = "node")]
    pub nodes: Vec<Role>,
}

fn one() -> u32 {
    1
}

fn serial() -> Transport {
    Transport::Serial
}

/// A node role: the VMs of a run that boot the same appliance with the same arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default = "default_role")]
    pub name: String,
    pub image: Option<String>,
    pub app: Option<PathBuf>,
    pub args: Option<String>,
    pub cmds: Option<String>,
    #[serde(default)]
    pub kernel_words: Vec<String>,
    #[serde(default = "default_memory")]
    pub memory: u32,
    #[serde(default = "one")]
    pub cpus: u32,
    #[serde(default = "one")]
    pub count: u32,
}

fn default_role() -> String {
    "app".into()
}

fn default_memory() -> u32 {
    256
}

/// Why a definition was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}{hint}", path.display())]
    Parse { path: PathBuf, message: String, hint: String },
    #[error("{}: `{key}`: {expected}", path.display())]
    Invalid { path: PathBuf, key: String, expected: String },
}

/// Which of the memory and the cores bounds the VMs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    /// MiB the host can give to VMs (what it has available).
    pub memory_mib: u64,
    pub cores: u32,
}

impl HostCapacity {
    /// This machine's: `MemAvailable` and the CPUs we may run on.
    pub fn of_this_host() -> HostCapacity {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(1024, |kib| kib / 1024);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        HostCapacity { memory_mib, cores }
    }
}

/// QEMU's own memory beside the guest's, per VM (measured under TCG: 60-90 MiB of RSS
/// above the guest's RAM for images/hello).
pub const QEMU_OVERHEAD_MIB: u64 = 100;

impl Definition {
    /// Reads and checks `path`.
    pub fn load(path: &Path, host: HostCapacity) -> Result<Definition, DefinitionError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| DefinitionError::Read { path: path.into(), source })?;
        Definition::parse(&text, path, host)
    }

    /// Parses and checks `text`, read from `path` (named in errors).
    pub fn parse(text: &str, path: &Path, host: HostCapacity) -> Result<Definition, DefinitionError> {
        let def: Definition = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            DefinitionError::Parse { path: path.into(), hint: unknown_field_hint(&message), message }
        })?;
        def.check(path, host)?;
        Ok(def)
    }

    fn check(&self, path: &Path, host: HostCapacity) -> Result<(), DefinitionError> {
        let invalid =
            |key: &str, expected: String| DefinitionError::Invalid { path: path.into(), key: key.into(), expected };
        if self.repetitions == 0 {
            return Err(invalid("repetitions", "1 or more runs of each point".into()));
        }
        if self.timeout == 0 {
            return Err(invalid("timeout", "seconds a run may take, from 1".into()));
        }
        for (name, values) in &self.matrix {
            if !is_valid_name(name) {
                return Err(invalid(&format!("matrix.{name}"), "a name of letters, digits and _".into()));
            }
            if values.is_empty() {
                return Err(invalid(&format!("matrix.{name}"), "a list of at least one value".into()));
            }
            if let Some(v) = values.iter().find(|v| super::matrix::value_text(v).is_none()) {
                return Err(invalid(
                    &format!("matrix.{name}"),
                    format!("strings, numbers or booleans, not {}", v.type_str()),
                ));
            }
        }
        if self.nodes.is_empty() {
            return Err(invalid("node", "at least one [[node]] table".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, role) in self.nodes.iter().enumerate() {
            let key = |field: &str| format!("node[{i}].{field}");
            if !is_valid_name(&role.name.replace('-', "_")) {
                return Err(invalid(&key("name"), "a role name of letters, digits, - and _".into()));
            }
            if !seen.insert(role.name.as_str()) {
                return Err(invalid(&key("name"), format!("a role name not used before (`{}` is)", role.name)));
            }
            match (&role.image, &role.app) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err(invalid(&key("image"), "either `image` or `app` (an app dir), not both".into())),
            }
            for (field, n) in [("memory", role.memory), ("cpus", role.cpus), ("count", role.count)] {
                if n == 0 {
                    return Err(invalid(&key(field), "a number from 1".into()));
                }
            }
            let texts = role.args.iter().chain(role.cmds.iter()).chain(role.kernel_words.iter());
            for text in texts {
                for name in super::matrix::placeholders(text) {
                    if !self.matrix.contains_key(name) {
                        let near = appliance_cmdline::suggest::closest(name, self.matrix.keys().map(String::as_str));
                        let hint = near.map(|n| format!(" (did you mean `{{{n}}}`?)")).unwrap_or_default();
                        return Err(invalid(
                            &key("args"),
                            format!("`{{{name}}}` names no list of [matrix]{hint}; write `{{{{` for a brace"),
                        ));
                    }
                }
            }
        }
        let per_run = self.vms_per_run();
        let max_vms = self.max_vms.unwrap_or(per_run);
        if max_vms == 0 {
            return Err(invalid("max_vms", "a number of VMs from 1".into()));
        }
        if max_vms < per_run {
            return Err(invalid("max_vms", format!("at least the {per_run} VMs of one run (its nodes boot together)")));
        }
        let need = u64::from(max_vms) * (u64::from(self.largest_memory()) + QEMU_OVERHEAD_MIB);
        if need > host.memory_mib {
            return Err(invalid(
                if self.max_vms.is_some() { "max_vms" } else { "node.memory" },
                format!(
                    "VMs that fit in the {} MiB this host has available: {max_vms} VM(s) of up to {} MiB (+{} MiB \
                     for QEMU each) need {need} MiB",
                    host.memory_mib,
                    self.largest_memory(),
                    QEMU_OVERHEAD_MIB
                ),
            ));
        }
        Ok(())
    }

    /// The VMs one run boots.
    pub fn vms_per_run(&self) -> u32 {
        self.nodes.iter().map(|r| r.count).sum()
    }

    fn largest_memory(&self) -> u32 {
        self.nodes.iter().map(|r| r.memory).max().unwrap_or(0)
    }

    /// VMs at once: `max_vms`, else as many as the cores and memory allow (a whole number
    /// of runs, at least one).
    pub fn vms_at_once(&self, host: HostCapacity) -> u32 {
        let per_run = self.vms_per_run().max(1);
        if let Some(n) = self.max_vms {
            return n;
        }
        let by_memory = host.memory_mib / (u64::from(self.largest_memory()) + QEMU_OVERHEAD_MIB);
        let by_cores = u64::from(host.cores);
        let n = by_memory.min(by_cores).max(u64::from(per_run)) as u32;
        n / per_run * per_run
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// "did you mean" for serde's `unknown field `x`, expected one of `a`, `b``.
fn unknown_field_hint(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else { return String::new() };
    let Some((field, rest)) = rest.split_once('`') else { return String::new() };
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match appliance_cmdline::suggest::closest(field, expected.iter().copied()) {
        Some(near) => format!(" (did you mean `{near}`?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostCapacity = HostCapacity { memory_mib: 8192, cores: 4 };

    fn parse(text: &str) -> Result<Definition, String> {
        Definition::parse(text, Path::new("experiment.toml"), HOST).map_err(|e| e.to_string())
    }

    const NODE: &str = "[[node]]\nimage = \"hello\"\n";

    #[test]
    fn the_template_is_a_valid_definition() {
        let def = parse(TEMPLATE).unwrap();
        assert_eq!(def.repetitions, 2);
        assert_eq!(def.matrix.len(), 2);
        assert_eq!(def.nodes[0].name, "app");
        assert_eq!(def.vms_per_run(), 1);
    }

    #[test]
    fn bad_input_names_the_key_and_what_was_expected() {
        let cases = [
            (
                format!("timeout = 5\nrepetitons = 2\n{NODE}"),
                "unknown field `repetitons`",
                "did you mean `repetitions`?",
            ),
            (format!("timeout = 5\n{NODE}imagee = \"x\"\n"), "unknown field `imagee`", "did you mean `image`?"),
            (format!("timeout = 5\n[matrix]\nthreads = []\n{NODE}"), "`matrix.threads`", "at least one value"),
            (
                format!("timeout = 5\n[matrix]\nthreads = [1]\n{NODE}args = \"-t {{thread}}\"\n"),
                "`node[0].args`: `{thread}` names no list",
                "did you mean `{threads}`?",
            ),
            (format!("timeout = 5\n{NODE}name = \"a\"\n{NODE}name = \"a\"\n"), "`node[1].name`", "not used before"),
            (format!("timeout = 5\nmax_vms = 100\n{NODE}memory = 1024\n"), "`max_vms`", "8192 MiB"),
            (format!("timeout = 5\n{NODE}memory = 9000\n"), "`node.memory`", "available"),
            (format!("timeout = 0\n{NODE}"), "`timeout`", "from 1"),
            ("timeout = 5\n".to_string(), "missing field `node`", ""),
            (format!("timeout = 5\n{NODE}app = \"out\"\n"), "`node[0].image`", "not both"),
            (format!("timeout = 5\nresults = \"scp\"\n{NODE}"), "unknown variant `scp`", "`serial`, `9p`, `nfs`"),
        ];
        for (text, want, hint) in cases {
            let e = parse(&text).expect_err(&text);
            assert!(e.contains(want) && e.contains(hint), "{text}\n=> {e}");
        }
    }

    #[test]
    fn vms_at_once_is_bounded_by_cores_memory_and_whole_runs() {
        let def = parse(&format!("timeout = 5\n{NODE}count = 3\nmemory = 512\n")).unwrap();
        // 4 cores, 8192 / 612 = 13: 4, rounded down to a whole run of 3.
        assert_eq!(def.vms_at_once(HOST), 3);
        let small = HostCapacity { memory_mib: 1300, cores: 32 };
        let def = parse(&format!("timeout = 5\n{NODE}")).unwrap();
        assert_eq!(def.vms_at_once(small), 3);
    }
}
