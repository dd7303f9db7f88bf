//! The image builder: turns an image directory (`appliance.toml`, `app/`) into an app
//! dir that boots: `initrd`, `vmlinuz`, `cmdline`, `SHA256SUMS` of the three ([`sums`]),
//! and `appliance.json` recording how it was built.
//!
//! The initramfs holds `/init` (our static `appliance-init`), the directories the init
//! mounts over or writes to, `/dev/console` and `/dev/null` (the kernel opens the
//! console before any devtmpfs exists), the image's `app/` as `/app`, and whatever the
//! manifest lists. Host files keep their host paths, with every symlink met on the way
//! to them ([`files`]).
//! A `[trace]` table adds the files an application touched in a reference root
//! ([`crate::trace`]), taken from that root at the same paths.
//!
//! Booting the result is not this module's job.

pub mod checkout;
pub mod files;
pub mod manifest;
pub mod ssh;
pub mod sums;

use crate::host::fs_error::{FsError, io_error};
use crate::host::size::human_size;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufWriter};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::archive::compress::{Compression, Encoder};
use crate::archive::cpio::{self, Archive, Entry, Kind};
use crate::kernel::kbuild;
use crate::kernel::modules;
use crate::kernel::{self, KernelInfo};
use crate::rootfs::elf::{self, Resolver};
use files::{add_host_program, add_root_paths, add_tree, require_static};
use manifest::{KernelSource, Manifest, TraceSection};

use crate::trace::{self, Exclusions};

/// The init's file name, next to the `appliance` executable.
pub const INIT_NAME: &str = "appliance-init";
/// Overrides where the init is taken from.
pub const INIT_ENV: &str = "APPLIANCE_INIT";
/// Overrides where `[programs]` are taken from.
pub const PROGRAM_DIR_ENV: &str = "APPLIANCE_PROGRAM_DIR";
/// The directory under the current one holding image directories.
pub const IMAGES_DIR: &str = "images";

/// Directories the image always has: mount points (`/proc`, `/sys`, `/dev`, `/run`),
/// scratch space, root's home, and `/app` even for an image without `app/`.
const BASE_DIRS: [(&str, u32); 8] = [
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/root", 0o700),
    ("/etc", 0o755),
    ("/app", 0o755),
];

/// The app phases the init executes directly, so they must be executable.
const PHASES: [&str; 3] = ["/app/prerun", "/app/run", "/app/postrun"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    #[error(transparent)]
    Archive(#[from] cpio::Error),
    #[error(transparent)]
    Elf(#[from] elf::Error),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Kbuild(Box<kbuild::Error>),
    #[error("kernel_headers needs a kernel built by this tool (build:<series>), not {kernel}")]
    HeadersNeedBuild { kernel: String },
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error("[trace] command `{command}` exited with status {status} in {}", root.display())]
    TraceCommand { command: String, status: i32, root: PathBuf },
    #[error(transparent)]
    Modules(#[from] modules::Error),
    #[error(transparent)]
    Ssh(#[from] ssh::Error),
    #[error(
        "{INIT_NAME} not found next to {}: in the project's checkout, build it with `{}` \
         and copy target/release/{INIT_NAME} there, or set {INIT_ENV} to it",
        exe.display(),
        checkout::init_build_line()
    )]
    InitNotFound { exe: PathBuf },
    #[error(transparent)]
    InitBuild(#[from] checkout::Error),
    #[error("{INIT_ENV}={} does not exist", path.display())]
    InitEnvMissing { path: PathBuf },
    #[error(
        "program {name} not found in {searched}: the init's workspace holds the image programs; \
         in the project's checkout, build them with `{}`, or set {PROGRAM_DIR_ENV}",
        checkout::init_build_line()
    )]
    ProgramNotFound { name: String, searched: String },
    #[error(
        "{} is not executable, and the init runs it directly: `chmod +x` it",
        path.display()
    )]
    NotExecutable { path: PathBuf },
    #[error("cannot add host file {}", path.display())]
    HostFile {
        path: PathBuf,
        #[source]
        source: files::Error,
    },
    #[error(transparent)]
    Files(#[from] files::Error),
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(
        "no image {name:?}: neither a directory with {} nor {IMAGES_DIR}/{name} under {}{}; {}",
        manifest::FILE_NAME,
        cwd.display(),
        builtin.as_ref().map(|dir| format!(" nor {name} in {}", dir.display())).unwrap_or_default(),
        available_images(available)
    )]
    ImageNotFound { name: String, cwd: PathBuf, builtin: Option<PathBuf>, available: Vec<String> },
}

fn available_images(names: &[String]) -> String {
    if names.is_empty() {
        "there are no images here".to_owned()
    } else {
        format!("available images: {}", names.join(", "))
    }
}

/// Where the workspace's own binaries come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// The `appliance-init` binary, `/init` in every image.
    pub init: PathBuf,
    /// Directories searched, in order, for `[programs]`.
    pub program_dirs: Vec<PathBuf>,
}

impl Tools {
    /// `$APPLIANCE_INIT` and `$APPLIANCE_PROGRAM_DIR`, else the directory of the running
    /// executable (see [`Tools::locate`]). Without the init there, an executable run
    /// from a checkout's target directory builds it first (see [`checkout`]).
    pub fn from_env() -> Result<Tools, Error> {
        let exe = std::env::current_exe().map_err(io_error("locate", Path::new("the running executable")))?;
        let locate = || Tools::locate(std::env::var_os(INIT_ENV), std::env::var_os(PROGRAM_DIR_ENV), &exe);
        let located = locate();
        if let Err(Error::InitNotFound { .. }) = located
            && let Some(checkout) = checkout::Checkout::of(&exe)
        {
            checkout.build_init()?;
            return locate();
        }
        located
    }

    /// The init is `init_env` when given, else `appliance-init` next to `exe`. Because
    /// the init is built for release (it is copied into every image) while the CLI is
    /// often run from a debug build, `target/release/` is searched after
    /// `target/debug/`; programs likewise.
    pub fn locate(init_env: Option<OsString>, program_dir_env: Option<OsString>, exe: &Path) -> Result<Tools, Error> {
        let exe_dir = exe.parent().unwrap_or(Path::new("/")).to_owned();
        let mut dirs = vec![exe_dir.clone()];
        if exe_dir.file_name() == Some(OsStr::new("debug"))
            && let Some(target) = exe_dir.parent()
        {
            dirs.push(target.join("release"));
        }
        let init = match init_env.filter(|value| !value.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(Error::InitEnvMissing { path });
                }
                path
            }
            None => dirs
                .iter()
                .map(|dir| dir.join(INIT_NAME))
                .find(|candidate| candidate.is_file())
                .ok_or_else(|| Error::InitNotFound { exe: exe.to_owned() })?,
        };
        let program_dirs = match program_dir_env.filter(|value| !value.is_empty()) {
            Some(dir) => vec![PathBuf::from(dir)],
            None => dirs,
        };
        Ok(Tools { init, program_dirs })
    }

    fn program(&self, name: &str) -> Result<PathBuf, Error> {
        self.program_dirs.iter().map(|dir| dir.join(name)).find(|candidate| candidate.is_file()).ok_or_else(|| {
            Error::ProgramNotFound {
                name: name.to_owned(),
                searched: self.program_dirs.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", "),
            }
        })
    }
}

/// How to build, beyond what the manifest says.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Overrides the manifest's `compression`.
    pub compression: Option<Compression>,
    /// Overrides the manifest's `kernel`; a relative path is taken as is (relative to
    /// the current directory, not the image's).
    pub kernel: Option<KernelSource>,
    pub tools: Tools,
    /// The kernel cache; [`kernel::default_cache_dir`] when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Modification time of every archive member (see [`cpio::mtime_from_env`]).
    pub mtime: u32,
    /// Receives the progress of a `build:<series>` kernel compiled on demand; logged
    /// when `None`.
    pub kernel_progress: Option<kbuild::ProgressSink>,
    /// For `[ssh]`: the public key logins are accepted for; `None` generates a pair in
    /// the app dir (see [`crate::image::ssh`]).
    pub ssh_key: Option<PathBuf>,
}

/// What a build produced; also written, without `app_dir`, as `appliance.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BuildReport {
    pub image: String,
    pub description: String,
    #[serde(skip)]
    pub app_dir: PathBuf,
    /// The kernel file the app dir's `vmlinuz` was taken from.
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub compression: Compression,
    /// Bytes of the compressed `initrd`.
    pub initrd_size: u64,
    /// Bytes of the cpio archive before compression.
    pub initrd_uncompressed_size: u64,
    /// Archive members, parent directories included.
    pub entries: usize,
    pub cmdline: String,
    /// Kernel modules loaded at every boot, in load order (dependencies included).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// Every kernel module packed, for `appModules=` too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub modules_packed: Vec<String>,
    /// Where the kernel headers are in the image (`kernel_headers = true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_headers: Option<String>,
    /// The SSH server of `[ssh]` and the alias its host key is recorded under in
    /// `ssh/known_hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_host_key_alias: Option<String>,
}

/// The image directory `arg` names: a directory holding `appliance.toml`, else a bare
/// name found as `images/<name>` under `cwd`, else in the `images/` of the checkout the
/// running executable was built in, so that `appliance run hello` and an experiment's
/// `image = "hello"` work from any directory.
pub fn locate_image(arg: &str, cwd: &Path) -> Result<PathBuf, Error> {
    let builtin =
        std::env::current_exe().ok().and_then(|exe| checkout::Checkout::of(&exe)).map(|c| c.root.join(IMAGES_DIR));
    locate_image_in(arg, cwd, builtin.as_deref())
}

/// [`locate_image`] with `builtin` as the toolkit's own images directory.
fn locate_image_in(arg: &str, cwd: &Path, builtin: Option<&Path>) -> Result<PathBuf, Error> {
    let direct = cwd.join(arg);
    if direct.join(manifest::FILE_NAME).is_file() {
        return Ok(PathBuf::from(arg));
    }
    let bare = Path::new(arg).components().count() == 1
        && matches!(Path::new(arg).components().next(), Some(Component::Normal(_)));
    let dirs: Vec<PathBuf> = [Some(cwd.join(IMAGES_DIR)), builtin.map(Path::to_owned)].into_iter().flatten().collect();
    if bare {
        let named = Path::new(IMAGES_DIR).join(arg);
        if cwd.join(&named).join(manifest::FILE_NAME).is_file() {
            return Ok(named);
        }
        if let Some(dir) = builtin
            && dir.join(arg).join(manifest::FILE_NAME).is_file()
        {
            return Ok(dir.join(arg));
        }
    }
    let available: BTreeSet<String> = dirs
        .iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten())
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(manifest::FILE_NAME).is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    Err(Error::ImageNotFound {
        name: arg.to_owned(),
        cwd: cwd.to_owned(),
        builtin: builtin.map(Path::to_owned),
        available: available.into_iter().collect(),
    })
}

/// The image's name: its directory's name.
pub fn image_name(image_dir: &Path) -> Result<String, Error> {
    let absolute = image_dir.canonicalize().map_err(io_error("resolve", image_dir))?;
    Ok(absolute.file_name().map_or_else(|| "image".to_owned(), |name| name.to_string_lossy().into_owned()))
}

/// Builds the image in `image_dir` into the app dir `out_dir` (created if needed;
/// existing files there are replaced).
pub fn build(image_dir: &Path, out_dir: &Path, options: &BuildOptions) -> Result<BuildReport, Error> {
    let manifest = manifest::load(image_dir)?;
    let name = image_name(image_dir)?;
    let mut archive = collect(image_dir, &manifest, &options.tools)?;
    // A new host key for every build; recorded in the app dir once the initrd is written.
    let ssh_host_key = match &manifest.ssh {
        Some(section) => {
            let login = ssh::client_public_key(out_dir, options.ssh_key.as_deref(), &format!("appliance@{name}"))?;
            let host_key = ssh::generate_host_key(section.server)?;
            let root = section.root.as_ref().map(|r| image_dir.join(r));
            ssh::add_to_image(&mut archive, section.server, root.as_deref(), &login, &host_key)?;
            Some(host_key)
        }
        None => None,
    };
    let compression = options.compression.unwrap_or(manifest.compression);
    let (kernel, headers) = obtain_kernel(image_dir, &manifest, options)?;
    let kernel_headers = match headers {
        Some(tree) => Some(add_kernel_headers(&mut archive, &tree, &kernel.version)?),
        None => None,
    };
    // After everything else: modules go under the symlinks the image already holds
    // (`lib -> usr/lib` on a merged-/usr host), which nothing may add later.
    // And the drivers `appliance run`'s features need, packed only: a boot that uses one
    // loads them, so that every image can use every feature on a modular kernel.
    let features: Vec<&str> = appliance_cmdline::modules::FEATURE_MODULES.concat();
    let packed = modules::pack(&mut archive, &kernel, &manifest.modules, &manifest.modules_available, &features)?;

    fs::create_dir_all(out_dir).map_err(io_error("create", out_dir))?;
    let initrd = out_dir.join("initrd");
    let (summary, initrd_size) = write_initrd(&archive, &initrd, compression, options.mtime)?;
    log::info!(
        "wrote {} ({} entries, {} compressed with {compression}, {} uncompressed)",
        initrd.display(),
        summary.entries,
        human_size(initrd_size),
        human_size(summary.bytes)
    );
    let vmlinuz = out_dir.join("vmlinuz");
    install_kernel(&kernel.vmlinuz, &vmlinuz)?;
    log::info!(
        "wrote {} (kernel {}, {})",
        vmlinuz.display(),
        kernel.version,
        human_size(fs::metadata(&vmlinuz).map_or(0, |m| m.len()))
    );
    let cmdline = out_dir.join("cmdline");
    fs::write(&cmdline, format!("{}\n", manifest.cmdline)).map_err(io_error("write", &cmdline))?;
    // After the three files are final: an appliance checks them against it before it
    // kexecs into this app dir.
    sums::write_sums(out_dir)?;
    let ssh_host_key_alias = match &ssh_host_key {
        Some(key) => {
            let alias = ssh::host_key_alias(&name);
            let known = ssh::record_host_key(out_dir, &alias, key)?;
            log::info!("recorded the host key in {} as {alias}", known.display());
            Some(alias)
        }
        None => None,
    };

    let report = BuildReport {
        image: name,
        description: manifest.description.trim().to_owned(),
        app_dir: out_dir.to_owned(),
        kernel: kernel.vmlinuz,
        kernel_version: kernel.version,
        compression,
        initrd_size,
        initrd_uncompressed_size: summary.bytes,
        entries: summary.entries,
        cmdline: manifest.cmdline,
        modules: packed.load,
        modules_packed: packed.packed,
        kernel_headers,
        ssh_host_key_alias,
    };
    let facts = out_dir.join("appliance.json");
    let mut json = serde_json::to_string_pretty(&report)
        .map_err(|err| Error::Io(FsError { action: "serialise", path: facts.clone(), source: err.into() }))?;
    json.push('\n');
    fs::write(&facts, json).map_err(io_error("write", &facts))?;
    Ok(report)
}

/// The kernel to boot, and its headers tree when the manifest asks for one.
fn obtain_kernel(
    image_dir: &Path,
    manifest: &Manifest,
    options: &BuildOptions,
) -> Result<(KernelInfo, Option<PathBuf>), Error> {
    let source = match &options.kernel {
        Some(KernelSource::Path(path)) => KernelSource::Path(path.clone()),
        Some(other) => other.clone(),
        None => match manifest.kernel_path(image_dir) {
            Some(path) => KernelSource::Path(path),
            None => manifest.kernel.clone(),
        },
    };
    let cache = || match &options.cache_dir {
        Some(dir) => Ok(dir.clone()),
        None => kernel::default_cache_dir(),
    };
    if manifest.kernel_headers && !matches!(source, KernelSource::Build(_)) {
        let kernel = match &source {
            KernelSource::Path(path) => path.display().to_string(),
            _ => kernel::DEBIAN_CLOUD.to_owned(),
        };
        return Err(Error::HeadersNeedBuild { kernel });
    }
    Ok(match source {
        KernelSource::Path(path) => (kernel::from_path(&path)?, None),
        KernelSource::DebianCloud => (kernel::debian_cloud(&cache()?)?, None),
        KernelSource::Build(name) => {
            let boxed = |err| Error::Kbuild(Box::new(err));
            let series = kbuild::parse_build_name(&name).unwrap_or_else(|| Ok(name.clone())).map_err(boxed)?;
            let progress = options.kernel_progress.clone().unwrap_or_else(kbuild::ProgressSink::log);
            let built = kbuild::obtain_series(&series, manifest.kernel_headers, &cache()?, &progress).map_err(boxed)?;
            let info = KernelInfo {
                vmlinuz: built.bzimage.clone(),
                modules_dir: built.modules_dir.clone(),
                version: built.release.clone(),
            };
            (info, built.headers.filter(|_| manifest.kernel_headers))
        }
    })
}

/// Adds a kernel headers tree at `/usr/src/linux-headers-<release>`, linked from
/// `/lib/modules/<release>/build` where `make -C /lib/modules/$(uname -r)/build M=...`
/// looks for it (Debian's layout). Returns the tree's image path.
pub fn add_kernel_headers(archive: &mut Archive, tree: &Path, release: &str) -> Result<String, Error> {
    let image_path = format!("/usr/src/linux-headers-{release}");
    add_tree(archive, tree, &image_path)?;
    // The tree's own programs (fixdep, modpost, objtool) were built on this host: the
    // libraries they link (objtool: libelf, libz) come along, as a host file's do.
    let mut resolver = Resolver::host()?;
    for program in host_programs(tree)? {
        files::add_host_libraries(archive, &mut resolver, &program)?;
    }
    // On a merged-/usr image (`/lib -> usr/lib`, from host files) the link goes where
    // /lib points. The archive writer creates the missing parent directories.
    let lib = match archive.get("/lib").map(Entry::kind) {
        Some(Kind::Symlink { .. }) => "/usr/lib",
        _ => "/lib",
    };
    archive.add(Entry::symlink(format!("{lib}/modules/{release}/build"), image_path.clone()))?;
    Ok(image_path)
}

/// The executable regular files under `dir`, symlinks not followed.
fn host_programs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut programs = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io_error("read", &dir))? {
            let entry = entry.map_err(io_error("read", &dir))?;
            let file_type = entry.file_type().map_err(io_error("read", &entry.path()))?;
            if file_type.is_dir() {
                pending.push(entry.path());
            } else if file_type.is_file()
                && entry.metadata().map_err(io_error("read", &entry.path()))?.permissions().mode() & 0o111 != 0
            {
                programs.push(entry.path());
            }
        }
    }
    programs.sort();
    Ok(programs)
}

/// Everything that goes into the initramfs of the image in `image_dir`.
pub fn collect(image_dir: &Path, manifest: &Manifest, tools: &Tools) -> Result<Archive, Error> {
    let mut archive = Archive::new();

    require_static("the init", &tools.init)?;
    archive.add(Entry::file("/init", &tools.init, 0o755))?;
    archive.add(Entry::char_device("/dev/console", 0o600, 5, 1))?;
    archive.add(Entry::char_device("/dev/null", 0o666, 1, 3))?;

    let app = image_dir.join("app");
    if app.is_dir() {
        add_tree(&mut archive, &app, "/app")?;
    }
    for (image_path, name) in &manifest.programs {
        let program = tools.program(name)?;
        require_static(&format!("program {name}"), &program)?;
        archive.add(Entry::file(image_path.as_str(), program, 0o755))?;
    }
    for (image_path, source) in &manifest.files {
        let source = image_dir.join(source);
        let metadata = fs::metadata(&source).map_err(io_error("read", &source))?;
        if metadata.is_dir() {
            add_tree(&mut archive, &source, image_path)?;
        } else {
            archive.add(Entry::file(image_path.as_str(), &source, metadata.mode()))?;
        }
    }
    if !manifest.host_files.is_empty() {
        let mut resolver = Resolver::host()?;
        for path in &manifest.host_files {
            add_host_program(&mut archive, &mut resolver, path)
                .map_err(|source| Error::HostFile { path: path.clone(), source })?;
        }
    }
    if let Some(section) = &manifest.trace {
        add_traced(&mut archive, image_dir, section)?;
    }
    for (dir, mode) in BASE_DIRS {
        match archive.get(dir) {
            Some(entry) if *entry.kind() == Kind::Directory => {}
            _ => archive.add(Entry::directory(dir, mode))?,
        }
    }

    for phase in PHASES {
        if let Some(entry) = archive.get(phase)
            && matches!(entry.kind(), Kind::File { .. } | Kind::Data(_))
            && entry.mode() & 0o111 == 0
        {
            let path = match entry.kind() {
                Kind::File { source } => source.clone(),
                _ => PathBuf::from(phase),
            };
            return Err(Error::NotExecutable { path });
        }
    }
    for phase in PHASES {
        if let Some(problem) = script_problem(&archive, phase)? {
            log::warn!("{phase} {problem}: it would fail at boot with \"No such file or directory\"");
        }
    }
    if archive.get("/app/run").is_none() {
        log::warn!(
            "{} has no app/run and no [programs] \"/app/run\": the appliance has nothing to run",
            image_dir.display()
        );
    }
    Ok(archive)
}

/// What keeps the kernel from starting the `#!` script at `path` in `archive`, in words:
/// a `#!` line that ends in a carriage return (DOS line endings: the kernel looks for an
/// interpreter whose name ends in `\r`), or an interpreter the archive holds no file for
/// (symlinks followed). Either fails its exec with ENOENT, which reads as if the script
/// itself were missing. Nothing for ELF programs (their loaders come with them from
/// `host_files`), or for files that are not scripts.
fn script_problem(archive: &Archive, path: &str) -> Result<Option<String>, Error> {
    let head = match archive.get(path).map(Entry::kind) {
        Some(Kind::File { source }) => files::head(source)?,
        Some(Kind::Data(data)) => data.clone(),
        _ => return Ok(None),
    };
    let Some(interpreter) = files::shebang_of(&head) else { return Ok(None) };
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    if first_line.ends_with(b"\r") {
        return Ok(Some(format!(
            "has DOS line endings: its #! line ends in a carriage return, so the kernel would look for an \
             interpreter named \"{}\\r\"; convert it to Unix line endings",
            interpreter.display()
        )));
    }
    let held = matches!(
        archive.resolve(&interpreter.to_string_lossy()).map(Entry::kind),
        Some(Kind::File { .. } | Kind::Data(_))
    );
    Ok((!held).then(|| {
        format!("is a script for {0}, which the image does not hold (add \"{0}\" to host_files)", interpreter.display())
    }))
}

/// Adds the files of `[trace]`: its commands traced in the reference root, its list and
/// its extras, with what they need (see [`trace::select`]), each at its path in the
/// root. Paths the image already has (its own files, the init) keep what it has.
/// Returns how many entries were added.
pub fn add_traced(archive: &mut Archive, image_dir: &Path, section: &TraceSection) -> Result<usize, Error> {
    let root = image_dir.join(&section.root);
    let mut accessed = BTreeSet::new();
    if !section.commands.is_empty() {
        log::info!("tracing {} command(s) in {}", section.commands.len(), root.display());
    }
    for (command, traced) in section.commands.iter().zip(trace::run_scripted(&root, &section.commands)?) {
        if traced.status != 0 {
            return Err(Error::TraceCommand { command: command.clone(), status: traced.status, root });
        }
        accessed.extend(traced.accessed);
    }
    if let Some(list) = &section.list {
        let list = image_dir.join(list);
        let text = fs::read_to_string(&list).map_err(io_error("read", &list))?;
        accessed.extend(trace::parse_list(&text));
    }
    let exclusions = Exclusions::new(&section.exclude, section.default_excludes).map_err(trace::Error::from)?;
    let selected = trace::select(&root, &accessed, &section.extra, &exclusions)?;
    let added = add_root_paths(archive, &root, &selected)?;
    log::info!("[trace]: {} path(s) named, {} selected from {}", accessed.len(), selected.len(), root.display());
    Ok(added)
}

/// Writes the compressed archive to a temporary file renamed into place, so that a
/// failed build never leaves a truncated `initrd` that looks usable.
fn write_initrd(
    archive: &Archive,
    initrd: &Path,
    compression: Compression,
    mtime: u32,
) -> Result<(cpio::Summary, u64), Error> {
    let dir = initrd.parent().unwrap_or(Path::new("."));
    let temporary =
        tempfile::Builder::new().prefix(".initrd-").tempfile_in(dir).map_err(io_error("create a file in", dir))?;
    let write_error = io_error("write", initrd);
    let file = temporary.as_file().try_clone().map_err(io_error("write", initrd))?;
    let mut encoder = Encoder::new(BufWriter::new(file), compression).map_err(io_error("write", initrd))?;
    let summary = archive.write(&mut encoder, mtime).map_err(|err| match err {
        cpio::Error::Write(source) => io_error("write", initrd)(source).into(),
        other => Error::from(other),
    })?;
    let buffered = encoder.finish().map_err(io_error("write", initrd))?;
    let file = buffered.into_inner().map_err(|err| write_error(err.into_error()))?;
    let size = file.metadata().map_err(io_error("write", initrd))?.len();
    file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_error("write", initrd))?;
    temporary
        .persist(initrd)
        .map_err(|err| Error::Io(FsError { action: "write", path: initrd.to_owned(), source: err.error }))?;
    Ok((summary, size))
}

/// Hard-links the kernel into the app dir when on the same filesystem (the cache's
/// kernel is large and never changes), copies it otherwise.
fn install_kernel(source: &Path, destination: &Path) -> Result<(), Error> {
    // hard_link does not follow a symlink given as source; link to the file itself.
    let source = source.canonicalize().map_err(io_error("read", source))?;
    match fs::remove_file(destination) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io(FsError { action: "replace", path: destination.to_owned(), source }));
        }
    }
    if fs::hard_link(&source, destination).is_err() {
        fs::copy(&source, destination).map_err(io_error("copy the kernel to", destination))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    use super::files::tests::{is_file, symlink_target};

    /// A static program to stand in for the init; `None` where gcc cannot link one.
    fn static_program(path: &Path) -> Option<PathBuf> {
        let source = path.with_extension("c");
        fs::write(&source, "int main(void){return 0;}").ok()?;
        std::process::Command::new("gcc")
            .arg("-static")
            .arg(&source)
            .arg("-o")
            .arg(path)
            .status()
            .ok()?
            .success()
            .then(|| path.to_owned())
    }

    #[test]
    fn tools_locations() {
        let dir = tempfile::tempdir().unwrap();
        let debug = dir.path().join("target/debug");
        let release = dir.path().join("target/release");
        fs::create_dir_all(&debug).unwrap();
        fs::create_dir_all(&release).unwrap();
        let exe = debug.join("appliance");

        let err = Tools::locate(None, None, &exe).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "appliance-init not found next to {}: in the project's checkout, build it with \
                 `cargo build --release -q --manifest-path init/Cargo.toml --target-dir target` \
                 and copy target/release/appliance-init there, or set APPLIANCE_INIT to it",
                exe.display()
            )
        );

        fs::write(release.join(INIT_NAME), "").unwrap();
        let tools = Tools::locate(None, None, &exe).unwrap();
        assert_eq!(tools.init, release.join(INIT_NAME));
        assert_eq!(tools.program_dirs, [debug.clone(), release.clone()]);

        fs::write(debug.join(INIT_NAME), "").unwrap();
        assert_eq!(Tools::locate(None, None, &exe).unwrap().init, debug.join(INIT_NAME));

        let custom = dir.path().join("my-init");
        fs::write(&custom, "").unwrap();
        let tools = Tools::locate(Some(custom.clone().into()), Some(dir.path().as_os_str().to_owned()), &exe).unwrap();
        assert_eq!(tools.init, custom);
        assert_eq!(tools.program_dirs, [dir.path().to_owned()]);

        let err = Tools::locate(Some("/nonexistent/init".into()), None, &exe).unwrap_err();
        assert!(matches!(err, Error::InitEnvMissing { .. }), "{err}");
        let err = tools.program("appliance-hello").unwrap_err();
        assert!(err.to_string().contains("APPLIANCE_PROGRAM_DIR"), "{err}");
    }

    #[test]
    fn image_lookup() {
        let cwd = tempfile::tempdir().unwrap();
        let cwd = cwd.path();
        for name in ["beta", "alpha"] {
            fs::create_dir_all(cwd.join("images").join(name)).unwrap();
            fs::write(cwd.join("images").join(name).join(manifest::FILE_NAME), "").unwrap();
        }
        fs::create_dir_all(cwd.join("images/not-an-image")).unwrap();
        assert_eq!(locate_image("alpha", cwd).unwrap(), Path::new("images/alpha"));
        assert_eq!(locate_image("images/beta", cwd).unwrap(), Path::new("images/beta"));
        let absolute = cwd.join("images/beta");
        assert_eq!(locate_image(absolute.to_str().unwrap(), Path::new("/")).unwrap(), absolute);
        let err = locate_image("gamma", cwd).unwrap_err();
        assert!(err.to_string().ends_with("available images: alpha, beta"), "{err}");
        let err = locate_image("gamma", &cwd.join("images")).unwrap_err();
        assert!(err.to_string().ends_with("there are no images here"), "{err}");

        // The toolkit's own images, from anywhere; the working directory's come first.
        let toolkit = tempfile::tempdir().unwrap();
        for name in ["alpha", "hello"] {
            fs::create_dir_all(toolkit.path().join(name)).unwrap();
            fs::write(toolkit.path().join(name).join(manifest::FILE_NAME), "").unwrap();
        }
        let builtin = Some(toolkit.path());
        assert_eq!(locate_image_in("hello", cwd, builtin).unwrap(), toolkit.path().join("hello"));
        assert_eq!(locate_image_in("alpha", cwd, builtin).unwrap(), Path::new("images/alpha"));
        let err = locate_image_in("gamma", cwd, builtin).unwrap_err().to_string();
        assert!(err.contains(&format!("nor gamma in {}", toolkit.path().display())), "{err}");
        assert!(err.ends_with("available images: alpha, beta, hello"), "{err}");
    }

    #[test]
    fn collect_an_image_directory() {
        let dir = tempfile::tempdir().unwrap();
        let Some(init) = static_program(&dir.path().join("appliance-init")) else {
            panic!("cannot run: gcc cannot link a static program here (tests/run installs what the tests need)");
        };
        let tools = Tools { init, program_dirs: vec![dir.path().to_owned()] };
        let image = dir.path().join("image");
        fs::create_dir_all(image.join("app/lib")).unwrap();
        fs::create_dir_all(image.join("conf.d")).unwrap();
        fs::write(image.join("app/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(image.join("app/run"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(image.join("app/lib/data"), "x").unwrap();
        symlink("lib/data", image.join("app/data")).unwrap();
        fs::write(image.join("motd"), "hi").unwrap();
        fs::write(image.join("conf.d/a.conf"), "a").unwrap();
        let manifest = manifest::parse(
            "description = \"t\"\n[files]\n\"/etc/motd\" = \"motd\"\n\"/etc/conf.d\" = \"conf.d\"\n",
            Path::new("appliance.toml"),
        )
        .unwrap();

        let archive = collect(&image, &manifest, &tools).unwrap();
        assert!(is_file(&archive, "init"));
        assert_eq!(archive.get("app/run").unwrap().mode(), 0o750);
        assert_eq!(symlink_target(&archive, "app/data"), Some(Path::new("lib/data")));
        assert!(is_file(&archive, "app/lib/data"));
        assert!(is_file(&archive, "etc/motd"));
        assert!(is_file(&archive, "etc/conf.d/a.conf"));
        assert_eq!(archive.get("tmp").unwrap().mode(), 0o1777);
        assert!(matches!(archive.get("dev/console").unwrap().kind(), Kind::CharDevice { major: 5, minor: 1 }));

        // A phase script that lost its executable bit would fail at boot with 126.
        fs::set_permissions(image.join("app/run"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = collect(&image, &manifest, &tools).unwrap_err();
        assert!(err.to_string().contains("is not executable"), "{err}");
    }

    #[test]
    fn a_phase_script_the_kernel_could_not_start_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let mut archive = Archive::new();
        archive.add(Entry::file("/app/run", &script, 0o755)).unwrap();
        archive.add(Entry::data("/app/prerun", "#!/usr/bin/env bash\n", 0o755)).unwrap();
        archive.add(Entry::data("/app/postrun", "echo no interpreter line\n", 0o755)).unwrap();
        let problem = |archive: &Archive, path| script_problem(archive, path).unwrap().unwrap_or_default();
        assert!(problem(&archive, "/app/run").contains("a script for /bin/sh, which the image does not hold"));
        assert!(problem(&archive, "/app/prerun").contains("a script for /usr/bin/env,"));
        assert_eq!(script_problem(&archive, "/app/postrun").unwrap(), None);
        assert_eq!(script_problem(&archive, "/app/absent").unwrap(), None);
        // Through the symlinks of a merged /usr, as the host's files arrive.
        archive.add(Entry::symlink("/bin", "usr/bin")).unwrap();
        archive.add(Entry::data("/usr/bin/dash", "elf", 0o755)).unwrap();
        archive.add(Entry::symlink("/usr/bin/sh", "dash")).unwrap();
        assert_eq!(script_problem(&archive, "/app/run").unwrap(), None);
        // A directory where the interpreter should be is no interpreter.
        archive.add(Entry::directory("/usr/bin/env", 0o755)).unwrap();
        assert!(problem(&archive, "/app/prerun").contains("a script for /usr/bin/env,"));
        // Saved with DOS line endings: the interpreter is there, its name is not.
        archive.insert(Entry::data("/app/run", "#!/bin/sh\r\necho hi\r\n", 0o755)).unwrap();
        assert!(problem(&archive, "/app/run").contains("DOS line endings"));
        assert!(problem(&archive, "/app/run").contains("\"/bin/sh\\r\""));
    }

    #[test]
    fn a_missing_program_names_itself_and_where_it_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let Some(init) = static_program(&dir.path().join("appliance-init")) else {
            panic!("cannot run: gcc cannot link a static program here (tests/run installs what the tests need)");
        };
        let tools = Tools { init, program_dirs: vec![dir.path().to_owned()] };
        let manifest = manifest::parse(
            "description = \"t\"\n[programs]\n\"/app/run\" = \"appliance-hello\"\n",
            Path::new("appliance.toml"),
        )
        .unwrap();
        let err = collect(dir.path(), &manifest, &tools).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("program appliance-hello not found in "), "{message}");
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[test]
    fn kernel_headers_are_linked_from_lib_modules() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("headers");
        fs::create_dir_all(tree.join("include/linux")).unwrap();
        fs::write(tree.join("include/linux/module.h"), "/* */").unwrap();
        fs::write(tree.join("Makefile"), "all:").unwrap();
        let mut archive = Archive::new();
        let at = add_kernel_headers(&mut archive, &tree, "6.1.192-appliance").unwrap();
        assert_eq!(at, "/usr/src/linux-headers-6.1.192-appliance");
        assert!(is_file(&archive, "usr/src/linux-headers-6.1.192-appliance/include/linux/module.h"));
        assert_eq!(symlink_target(&archive, "lib/modules/6.1.192-appliance/build"), Some(Path::new(&at)));
        // A merged-/usr image: the link goes where /lib points.
        let mut merged = Archive::new();
        merged.add(Entry::symlink("/lib", "usr/lib")).unwrap();
        add_kernel_headers(&mut merged, &tree, "6.1.192-appliance").unwrap();
        assert!(symlink_target(&merged, "usr/lib/modules/6.1.192-appliance/build").is_some());
        assert!(merged.get("lib/modules/6.1.192-appliance/build").is_none());
    }

    /// objtool, built on the host with libelf, failed in the appliance ("libelf.so.1:
    /// cannot open shared object file"): the tree's programs bring their libraries.
    #[test]
    fn the_headers_programs_bring_their_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("headers");
        fs::create_dir_all(tree.join("tools/objtool")).unwrap();
        let program = tree.join("tools/objtool/objtool");
        // Any dynamically linked host program stands in for objtool.
        fs::copy("/usr/bin/ls", &program).unwrap();
        let mut archive = Archive::new();
        add_kernel_headers(&mut archive, &tree, "6.1.192-appliance").unwrap();
        let deps = Resolver::host().unwrap().resolve(&program).unwrap();
        assert!(!deps.libraries.is_empty());
        for library in deps.libraries.iter().chain(&deps.interpreter) {
            let real = library.canonicalize().unwrap();
            assert!(archive.get(&real.to_string_lossy()).is_some(), "{} missing", real.display());
        }
    }
}
