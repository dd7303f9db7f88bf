//! The image definition, `images/<name>/appliance.toml`: what goes into an appliance.
//!
//! ```toml
//! description = "what this appliance does"    # required, one line
//! kernel = "debian-cloud"                     # or "build:6.1", or a bzImage path (relative to the image dir)
//! kernel_headers = false                      # /lib/modules/<release>/build, for building modules
//! compression = "zstd"                        # gzip | zstd | lz4 | xz | none
//! cmdline = "appArgs='hello world'"           # the app's own kernel parameters
//! host_files = ["/usr/bin/bash"]              # copied with their libraries and loader
//! modules = ["virtio_pci", "virtio_net"]     # kernel modules loaded at boot, + dependencies
//! modules_available = ["9p"]                  # packed only, loaded when appModules= names them
//! [programs]                                  # image path = program built by this workspace
//! "/app/run" = "appliance-hello"
//! [files]                                     # image path = file or directory on the host
//! "/etc/motd" = "motd"
//! [ssh]                                       # an SSH server for appEnd=sshd, see crate::image::ssh
//! server = "openssh"                          # or "dropbear"; root = "ref-root" to take it from there
//! [trace]                                     # files an application touches, see TraceSection
//! root = "/"
//! commands = ["bash -c 'ls /; date'"]
//! ```
//!
//! Unknown keys are errors (a misspelt `host_file` must not silently build an image
//! without the files). This module only reads and checks the manifest; collecting the
//! files is [`crate::image`]'s job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::archive::compress::Compression;
use crate::host::fs_error::{FsError, io_error};
use crate::host::glob::{self, Globs};
use crate::kernel::DEBIAN_CLOUD;

/// The manifest's file name inside an image directory.
pub const FILE_NAME: &str = "appliance.toml";

/// Image paths that the builder itself fills.
const RESERVED: [(&str, &str); 3] = [
    ("/init", "the appliance init"),
    ("/dev/console", "a device node the builder creates"),
    ("/dev/null", "a device node the builder creates"),
];

/// A parsed and checked `appliance.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// One line saying what the appliance is for.
    pub description: String,
    #[serde(default)]
    pub kernel: KernelSource,
    /// Put the kernel's headers tree (what external modules are built against) at
    /// `/usr/src/linux-headers-<release>`, linked from `/lib/modules/<release>/build`.
    /// Needs a kernel built by the tool (`build:<series>`), which then loads modules.
    #[serde(default)]
    pub kernel_headers: bool,
    #[serde(default)]
    pub compression: Compression,
    /// The app's own kernel parameters (`appArgs='...'` and the like), written to the
    /// app dir's `cmdline` file.
    #[serde(default)]
    pub cmdline: String,
    /// Absolute host paths, copied to the same path in the image with the shared
    /// libraries and loader they need.
    #[serde(default)]
    pub host_files: Vec<PathBuf>,
    /// Image path → name of a static program built by this workspace.
    #[serde(default)]
    pub programs: BTreeMap<String, String>,
    /// Image path → host file or directory (relative to the image directory, or
    /// absolute).
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Files selected by tracing the application in a reference root ([`crate::trace`]).
    #[serde(default)]
    pub trace: Option<TraceSection>,
    /// Kernel modules the init loads at every boot, packed with their dependencies
    /// ([`crate::kernel::modules`]).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Kernel modules packed (with their dependencies) but loaded only when
    /// `appModules=` names them.
    #[serde(default)]
    pub modules_available: Vec<String>,
    /// An SSH server from the host with its configuration, a host key made for this
    /// build and the login key's `authorized_keys` ([`crate::image::ssh`]), for `appEnd=sshd`.
    #[serde(default)]
    pub ssh: Option<crate::image::ssh::SshSection>,
}

/// `[trace]`: the files an application touches, taken from a reference root at their
/// paths there.
///
/// ```toml
/// [trace]
/// root = "/"                              # relative to the image directory, or absolute
/// # root = "../roots/bookworm"            # a reference root made by `appliance root create`
/// commands = ["bash -c 'ls /; date'"]     # each run traced, with /bin/sh -c in the root
/// list = "traced.list"                    # and/or a list written by `appliance trace`
/// extra = ["/etc/passwd"]                 # root paths added as they are
/// exclude = ["/usr/share/zoneinfo/**"]    # globs left out, besides the defaults
/// default_excludes = true                 # locales, docs, caches, logs, /proc, /sys, /dev, ...
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    pub root: PathBuf,
    #[serde(default)]
    pub commands: Vec<String>,
    /// A list file (one root path a line), relative to the image directory.
    #[serde(default)]
    pub list: Option<PathBuf>,
    #[serde(default)]
    pub extra: Vec<PathBuf>,
    /// Globs of root paths left out with everything below them, in the dialect of
    /// [`crate::host::glob`]: `*` and `?` within a path component, `**` as a whole
    /// component across any number of components, `[a-z]`, `{a,b}`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_excludes")]
    pub default_excludes: bool,
}

fn default_excludes() -> bool {
    true
}

/// Where the kernel comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum KernelSource {
    /// Debian's `linux-image-cloud-amd64`, fetched and cached by the tool.
    #[default]
    DebianCloud,
    /// A bzImage, relative to the image directory or absolute.
    Path(PathBuf),
    /// `build:<series>`: the project's own kernel of that series (`appliance kernel
    /// build`), taken from the cache or built on demand. `build` alone: the series of
    /// `$APPLIANCE_KERNEL_SERIES`, else 6.1. Holds the name as written; checked when the
    /// manifest is.
    Build(String),
}

impl From<String> for KernelSource {
    fn from(value: String) -> KernelSource {
        if value == DEBIAN_CLOUD {
            KernelSource::DebianCloud
        } else if crate::kernel::kbuild::parse_build_name(&value).is_some() {
            KernelSource::Build(value)
        } else {
            KernelSource::Path(PathBuf::from(value))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("invalid {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}: `description` must be one non-empty line", path.display())]
    Description { path: PathBuf },
    #[error("{}: invalid image path {image_path:?} in [{table}]: {reason}", path.display())]
    ImagePath { path: PathBuf, table: &'static str, image_path: String, reason: &'static str },
    #[error("{}: host_files entry {} must be an absolute path", path.display(), entry.display())]
    HostFile { path: PathBuf, entry: PathBuf },
    #[error(
        "{}: program {name:?} for {image_path} must be a file name (a program built by this workspace)",
        path.display()
    )]
    ProgramName { path: PathBuf, image_path: String, name: String },
    #[error("{}: {image_path} is in both [programs] and [files]", path.display())]
    Duplicate { path: PathBuf, image_path: String },
    #[error("{}: `{name}` in {field} is not a kernel module name (expected 1 to 55 of A-Z a-z 0-9 - _)", path.display())]
    ModuleName { path: PathBuf, field: &'static str, name: String },
    #[error("{}: [trace] needs `commands` or a `list`", path.display())]
    TraceNothing { path: PathBuf },
    #[error("{}: [trace] extra entry {} must be an absolute path", path.display(), entry.display())]
    TraceExtra { path: PathBuf, entry: PathBuf },
    #[error("{}: [trace] exclude", path.display())]
    TraceExclude {
        path: PathBuf,
        #[source]
        source: glob::Error,
    },
    #[error("{}: `cmdline` must be one line", path.display())]
    CmdlineLines { path: PathBuf },
    #[error("{}: invalid kernel {name:?}", path.display())]
    KernelName {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<crate::kernel::kbuild::Error>,
    },
    #[error(
        "{}: kernel_headers needs a kernel built by this tool (kernel = \"build:<series>\"): \
         the headers come from its build tree",
        path.display()
    )]
    HeadersNeedBuild { path: PathBuf },
    #[error("{}: invalid cmdline {cmdline:?}", path.display())]
    Cmdline {
        path: PathBuf,
        cmdline: String,
        #[source]
        source: appliance_cmdline::Error,
    },
}

/// Reads `<image_dir>/appliance.toml`.
pub fn load(image_dir: &Path) -> Result<Manifest, Error> {
    let path = image_dir.join(FILE_NAME);
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    parse(&text, &path)
}

/// Parses and checks manifest text; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Manifest, Error> {
    let manifest: Manifest = toml::from_str(text).map_err(|source| Error::Parse { path: path.to_owned(), source })?;
    manifest.check(path)?;
    Ok(manifest)
}

impl Manifest {
    fn check(&self, path: &Path) -> Result<(), Error> {
        let path = path.to_owned();
        let description = self.description.trim();
        if description.is_empty() || description.contains('\n') {
            return Err(Error::Description { path });
        }
        for entry in &self.host_files {
            if !entry.is_absolute() {
                return Err(Error::HostFile { path, entry: entry.clone() });
            }
        }
        let tables: [(&'static str, Vec<&String>); 2] =
            [("programs", self.programs.keys().collect()), ("files", self.files.keys().collect())];
        for (table, keys) in tables {
            for image_path in keys {
                check_image_path(image_path).map_err(|reason| Error::ImagePath {
                    path: path.clone(),
                    table,
                    image_path: image_path.clone(),
                    reason,
                })?;
            }
        }
        for (image_path, name) in &self.programs {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Error::ProgramName { path, image_path: image_path.clone(), name: name.clone() });
            }
            if self.files.contains_key(image_path) {
                return Err(Error::Duplicate { path, image_path: image_path.clone() });
            }
        }
        for (field, names) in [("modules", &self.modules), ("modules_available", &self.modules_available)] {
            if let Some(name) = names.iter().find(|name| !appliance_cmdline::is_valid_module(name)) {
                return Err(Error::ModuleName { path, field, name: name.clone() });
            }
        }
        if let Some(trace) = &self.trace {
            if trace.commands.is_empty() && trace.list.is_none() {
                return Err(Error::TraceNothing { path });
            }
            if let Some(entry) = trace.extra.iter().find(|entry| !entry.is_absolute()) {
                return Err(Error::TraceExtra { path, entry: entry.clone() });
            }
            Globs::new(&trace.exclude).map_err(|source| Error::TraceExclude { path: path.clone(), source })?;
        }
        if self.cmdline.contains(['\n', '\r']) {
            return Err(Error::CmdlineLines { path });
        }
        if let KernelSource::Build(name) = &self.kernel
            && let Some(Err(source)) = crate::kernel::kbuild::parse_build_name(name)
        {
            return Err(Error::KernelName { path, name: name.clone(), source: Box::new(source) });
        }
        if self.kernel_headers && !matches!(self.kernel, KernelSource::Build(_)) {
            return Err(Error::HeadersNeedBuild { path });
        }
        appliance_cmdline::parse_strict(self.cmdline.as_bytes())
            .map(drop)
            .and_then(|()| appliance_cmdline::check_len(&self.cmdline))
            .map_err(|source| Error::Cmdline { path, cmdline: self.cmdline.clone(), source })
    }

    /// The kernel file for [`KernelSource::Path`], resolved against the image directory.
    pub fn kernel_path(&self, image_dir: &Path) -> Option<PathBuf> {
        match &self.kernel {
            KernelSource::DebianCloud | KernelSource::Build(_) => None,
            KernelSource::Path(path) => Some(image_dir.join(path)),
        }
    }
}

/// An image path must be absolute and normalised: no `.`, `..` or empty components
/// (they would make two spellings of one file, or escape the image), not the root, and
/// not a path the builder fills itself.
pub fn check_image_path(image_path: &str) -> Result<(), &'static str> {
    let Some(relative) = image_path.strip_prefix('/') else {
        return Err("must start with /");
    };
    if relative.is_empty() {
        return Err("the image root cannot be replaced");
    }
    if image_path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if relative.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("has an empty, `.` or `..` component");
    }
    if let Some((_, what)) = RESERVED.iter().find(|(reserved, _)| *reserved == image_path) {
        return Err(what);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_ok(text: &str) -> Manifest {
        parse(text, Path::new("images/x/appliance.toml")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        let err = parse(text, Path::new("images/x/appliance.toml")).unwrap_err();
        // The whole chain, as the CLI prints it.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let manifest = parse_ok("description = \"tiny\"\n");
        assert_eq!(manifest.kernel, KernelSource::DebianCloud);
        assert_eq!(manifest.compression, Compression::Zstd);
        assert_eq!(manifest.cmdline, "");
        assert!(manifest.host_files.is_empty() && manifest.programs.is_empty());
        assert_eq!(manifest.kernel_path(Path::new("/img")), None);
    }

    #[test]
    fn full_manifest() {
        let manifest = parse_ok(
            r#"
description = "everything"
kernel = "bzImage"
compression = "lz4"
cmdline = "appArgs='hello world'"
host_files = ["/bin/bash", "/usr/bin/ls"]
modules = ["virtio_net", "virtio_pci"]
modules_available = ["9p"]
[programs]
"/app/run" = "appliance-hello"
[files]
"/etc/motd" = "motd"
"#,
        );
        assert_eq!(manifest.compression, Compression::Lz4);
        assert_eq!(manifest.kernel_path(Path::new("/img")), Some(PathBuf::from("/img/bzImage")));
        assert_eq!(manifest.programs["/app/run"], "appliance-hello");
        assert_eq!(manifest.files["/etc/motd"], Path::new("motd"));
        assert_eq!(manifest.host_files[1], Path::new("/usr/bin/ls"));
        assert_eq!(manifest.modules, ["virtio_net", "virtio_pci"]);
        assert_eq!(manifest.modules_available, ["9p"]);
        let absolute = parse_ok("description = \"d\"\nkernel = \"/boot/vmlinuz\"\n");
        assert_eq!(absolute.kernel_path(Path::new("/img")), Some(PathBuf::from("/boot/vmlinuz")));
    }

    #[test]
    fn kernels_built_by_the_tool() {
        let manifest = parse_ok("description = \"d\"\nkernel = \"build:6.1\"\nkernel_headers = true\n");
        assert_eq!(manifest.kernel, KernelSource::Build("build:6.1".into()));
        assert!(manifest.kernel_headers);
        assert_eq!(manifest.kernel_path(Path::new("/img")), None);
        assert_eq!(KernelSource::from("build".to_owned()), KernelSource::Build("build".into()));
        assert_eq!(KernelSource::from("builds/bzImage".to_owned()), KernelSource::Path("builds/bzImage".into()));
        assert!(!parse_ok("description = \"d\"\n").kernel_headers);
    }

    #[test]
    fn unknown_field_names_field_and_file() {
        let message = parse_err("description = \"d\"\nhost_file = [\"/bin/sh\"]\n");
        assert!(message.contains("images/x/appliance.toml"), "{message}");
        assert!(message.contains("unknown field `host_file`"), "{message}");
    }

    #[test]
    fn rejections_table() {
        let cases = [
            ("", "missing field `description`"),
            ("description = \"\"", "`description` must be one non-empty line"),
            ("description = \"a\\nb\"", "`description` must be one non-empty line"),
            ("description = \"d\"\ncompression = \"bzip2\"", "unknown variant `bzip2`"),
            ("description = \"d\"\nhost_files = [\"bin/sh\"]", "host_files entry bin/sh must be an absolute path"),
            (
                "description = \"d\"\n[files]\n\"etc/motd\" = \"m\"",
                "invalid image path \"etc/motd\" in [files]: must start with /",
            ),
            (
                "description = \"d\"\n[files]\n\"/app/../etc\" = \"m\"",
                "in [files]: has an empty, `.` or `..` component",
            ),
            ("description = \"d\"\n[files]\n\"/init\" = \"m\"", "\"/init\" in [files]: the appliance init"),
            (
                "description = \"d\"\n[programs]\n\"/app/run\" = \"../x\"",
                "program \"../x\" for /app/run must be a file name",
            ),
            (
                "description = \"d\"\n[programs]\n\"/app/run\" = \"p\"\n[files]\n\"/app/run\" = \"f\"",
                "/app/run is in both [programs] and [files]",
            ),
            ("description = \"d\"\ncmdline = \"appArgs='unclosed\"", "invalid cmdline"),
            ("description = \"d\"\ncmdline = \"a\\nb\"", "`cmdline` must be one line"),
            ("description = \"d\"\nkernel = \"build:six\"", "invalid kernel \"build:six\": invalid series"),
            ("description = \"d\"\nkernel_headers = true", "kernel_headers needs a kernel built by this tool"),
            ("description = \"d\"\n[trace]\nroot = \"/\"", "[trace] needs `commands` or a `list`"),
            (
                "description = \"d\"\n[trace]\nroot = \"/\"\ncommands = [\"ls\"]\nextra = [\"etc\"]",
                "[trace] extra entry etc must be an absolute path",
            ),
            ("description = \"d\"\n[trace]\nroot = \"/\"\ncommand = [\"ls\"]", "unknown field `command`"),
        ];
        for (text, expected) in cases {
            let message = parse_err(text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn module_names_are_checked() {
        let cases = [
            ("modules = [\"virtio/net\"]", "`virtio/net` in modules is not a kernel module name"),
            ("modules_available = [\"\"]", "`` in modules_available is not a kernel module name"),
        ];
        for (text, expected) in cases {
            let message = parse_err(&format!("description = \"d\"\n{text}"));
            assert!(message.contains(expected), "{text:?}: {message}");
        }
        assert_eq!(parse_ok("description = \"d\"\nmodules = [\"virtio-net\", \"9p\"]").modules, ["virtio-net", "9p"]);
    }

    #[test]
    fn image_path_table() {
        let cases = [
            ("/app/run", true),
            ("/etc/ssl/certs", true),
            ("/", false),
            ("", false),
            ("app/run", false),
            ("/app//run", false),
            ("/app/run/", false),
            ("/app/./run", false),
            ("/dev/console", false),
        ];
        for (path, ok) in cases {
            assert_eq!(check_image_path(path).is_ok(), ok, "{path}");
        }
    }

    #[test]
    fn load_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("appliance.toml"), "{err}");
    }

    #[test]
    fn ssh_section() {
        use crate::image::ssh::Server;
        assert_eq!(parse_ok("description = \"d\"\n").ssh, None);
        assert_eq!(parse_ok("description = \"d\"\n[ssh]\n").ssh.unwrap().server, Server::Openssh);
        let dropbear = parse_ok("description = \"d\"\n[ssh]\nserver = \"dropbear\"\n");
        assert_eq!(dropbear.ssh.unwrap().server, Server::Dropbear);
        assert!(parse_err("description = \"d\"\n[ssh]\nserver = \"telnetd\"\n").contains("unknown variant `telnetd`"));
    }

    #[test]
    fn trace_section() {
        let manifest = parse_ok(
            "description = \"d\"\n[trace]\nroot = \"/\"\ncommands = [\"bash -c 'ls /'\"]\nexclude = [\"/x\"]\n",
        );
        let trace = manifest.trace.unwrap();
        assert_eq!(trace.root, Path::new("/"));
        assert_eq!(trace.commands, ["bash -c 'ls /'"]);
        assert_eq!(trace.exclude, ["/x"]);
        assert!(trace.default_excludes && trace.extra.is_empty() && trace.list.is_none());
        assert_eq!(parse_ok("description = \"d\"\n").trace, None);
        let err = parse_err("description = \"d\"\n[trace]\nroot = \"/\"\ncommands = [\"ls\"]\nexclude = [\"/{a\"]\n");
        assert!(err.starts_with("images/x/appliance.toml: [trace] exclude: invalid glob \"/{a\": "), "{err}");
    }

    proptest! {
        #[test]
        fn normalised_paths_are_accepted_and_dot_dot_never(
            parts in proptest::collection::vec("[a-zA-Z0-9_.-]{1,12}", 1..6),
            at in 0usize..6,
        ) {
            let parts: Vec<String> = parts
                .into_iter()
                .filter(|part| part != "." && part != "..")
                .collect();
            prop_assume!(!parts.is_empty());
            let path = format!("/{}", parts.join("/"));
            prop_assume!(!RESERVED.iter().any(|(reserved, _)| *reserved == path));
            prop_assert!(check_image_path(&path).is_ok(), "{}", path);
            let mut escaping = parts.clone();
            escaping.insert(at.min(parts.len()), "..".to_owned());
            let escaping = format!("/{}", escaping.join("/"));
            prop_assert!(check_image_path(&escaping).is_err(), "{}", escaping);
        }
    }
}
