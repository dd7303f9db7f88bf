//! The kernel an appliance boots: Debian's cloud kernel, fetched once with apt and
//! kept in a cache, or a bzImage the user names.
//!
//! Debian's `linux-image-cloud-amd64` is made for virtual machines: serial console and
//! the initramfs decompressors built in, little else, so it boots quickly under QEMU
//! without any module; its virtio drivers (`virtio_pci`, `virtio_net`, `virtio_blk`, 9p)
//! are modules, which an image names in its manifest when it needs them. Ubuntu has no such package; there the fetch falls back
//! to `linux-image-kvm`, then `linux-image-virtual` (see [`METAPACKAGES`]).
//!
//! Cache layout, under [`default_cache_dir`]:
//! - `kernels/<package>_<version>/`: the package extracted (`boot/vmlinuz-*`,
//!   `lib/modules/<release>/`, from which [`crate::kernel::modules`] packs the modules an image
//!   names);
//! - `kernels/debian-cloud`: a symlink naming the extracted package in use, replaced
//!   atomically once a fetch is complete;
//! - `kernels/.lock`: held while fetching, so concurrent builds fetch once.

pub mod cache;
pub mod kbuild;
pub mod kconfig;
pub mod modules;
pub mod source;

use crate::host::fs_error::{FsError, io_error};
use crate::host::process::find_program;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The metapackages tried in order; each depends on the versioned kernel package.
/// Debian: `linux-image-cloud-amd64`. Ubuntu: `linux-image-kvm` (a virtual-machine
/// flavour, on older releases) or `linux-image-virtual` (the generic kernel without
/// the hardware drivers).
pub const METAPACKAGES: [&str; 3] = ["linux-image-cloud-amd64", "linux-image-kvm", "linux-image-virtual"];

/// The manifest's name for the default kernel.
pub const DEBIAN_CLOUD: &str = "debian-cloud";

pub const KERNELS_DIR: &str = "kernels";
pub const CURRENT_LINK: &str = "debian-cloud";
const LOCK_FILE: &str = ".lock";

/// A kernel ready to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of a packaged kernel; `None` for a bzImage given by path.
    pub modules_dir: Option<PathBuf>,
    /// The kernel release (`uname -r`), e.g. `6.1.0-28-cloud-amd64`; "unknown" for a
    /// user's kernel file without a readable version.
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cache directory: set APPLIANCE_CACHE, XDG_CACHE_HOME or HOME, or pass --kernel <bzImage>")]
    NoCacheDir,
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(
        "{tool} not found, so the default kernel cannot be fetched: pass --kernel <bzImage>, \
         or on Debian/Ubuntu install apt and dpkg"
    )]
    ToolMissing { tool: &'static str },
    #[error(
        "no kernel package found (asked apt for {tried}): run `apt-get update` (as root) and \
         retry, or pass --kernel <bzImage>"
    )]
    NoPackage { tried: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: std::process::ExitStatus, stderr: String },
    #[error("`{command}` could not be started")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot download {package}: {stderr} (if the package lists are stale, run \
         `apt-get update`; or pass --kernel <bzImage>)"
    )]
    Download { package: String, stderr: String },
    #[error("apt-get download of {package} left no .deb in {}", dir.display())]
    NoDeb { package: String, dir: PathBuf },
    #[error("{} holds no boot/vmlinuz-*: not a kernel image package (remove it and retry)", dir.display())]
    NoVmlinuz { dir: PathBuf },
    #[error("kernel {} does not exist", path.display())]
    KernelMissing { path: PathBuf },
}

/// The tool's cache: `$APPLIANCE_CACHE`, else `$XDG_CACHE_HOME/appliance`, else
/// `~/.cache/appliance`.
pub fn default_cache_dir() -> Result<PathBuf, Error> {
    cache_dir_from(std::env::var_os("APPLIANCE_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .ok_or(Error::NoCacheDir)
}

/// [`default_cache_dir`] from explicit values. Empty values count as unset, and so does
/// a relative `XDG_CACHE_HOME`, as the XDG specification asks.
pub fn cache_dir_from(
    appliance_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |value: Option<OsString>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(appliance_cache) {
        return Some(dir);
    }
    if let Some(dir) = set(xdg_cache_home).filter(|dir| dir.is_absolute()) {
        return Some(dir.join("appliance"));
    }
    set(home).map(|home| home.join(".cache").join("appliance"))
}

/// Debian's cloud kernel: from the cache if one was fetched before (no network, no
/// apt), else fetched with `apt-get download` and extracted with `dpkg-deb -x`.
pub fn debian_cloud(cache_dir: &Path) -> Result<KernelInfo, Error> {
    let kernels = cache_dir.join(KERNELS_DIR);
    if let Some(kernel) = cached(cache_dir)? {
        return Ok(kernel);
    }
    fs::create_dir_all(&kernels).map_err(io_error("create", &kernels))?;
    let lock_path = kernels.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(io_error("create", &lock_path))?;
    lock.lock().map_err(io_error("lock", &lock_path))?;
    // Whoever held the lock before us may have fetched it meanwhile.
    if let Some(kernel) = cached(cache_dir)? {
        return Ok(kernel);
    }
    log::info!("fetching the default kernel with apt into {}", kernels.display());
    let dir = fetch(&kernels)?;
    let kernel = from_package_dir(&dir)?;
    let name = dir.file_name().unwrap_or_default();
    replace_symlink(Path::new(name), &kernels.join(CURRENT_LINK))?;
    log::info!("cached kernel {} at {}", kernel.version, dir.display());
    // Dropping `lock` on return releases it, after the link above is in place.
    Ok(kernel)
}

/// The kernel a previous [`debian_cloud`] left in the cache, if any.
pub fn cached(cache_dir: &Path) -> Result<Option<KernelInfo>, Error> {
    let link = cache_dir.join(KERNELS_DIR).join(CURRENT_LINK);
    match fs::read_link(&link) {
        Ok(target) => {
            let dir = link.parent().unwrap_or(Path::new(".")).join(target);
            match from_package_dir(&dir) {
                Ok(kernel) => Ok(Some(kernel)),
                // A cache emptied by hand: fetch again rather than fail.
                Err(Error::NoVmlinuz { .. }) => Ok(None),
                Err(err) => Err(err),
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io(FsError { action: "read the link", path: link, source })),
    }
}

/// The kernel inside an extracted kernel package: `boot/vmlinuz-<release>`, and
/// `lib/modules/<release>` (or `usr/lib/modules/...` on merged-/usr packages).
pub fn from_package_dir(dir: &Path) -> Result<KernelInfo, Error> {
    let boot = dir.join("boot");
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    match fs::read_dir(&boot) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_error("read", &boot))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(release) = name.strip_prefix("vmlinuz-") {
                    found.push((release.to_owned(), entry.path()));
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io(FsError { action: "read", path: boot, source }));
        }
    }
    found.sort();
    let (version, vmlinuz) = found.pop().ok_or_else(|| Error::NoVmlinuz { dir: dir.to_owned() })?;
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|modules| dir.join(modules).join(&version))
        .find(|modules| modules.is_dir());
    Ok(KernelInfo { vmlinuz, modules_dir, version })
}

/// A kernel file the user names; its release is read from the bzImage header.
pub fn from_path(path: &Path) -> Result<KernelInfo, Error> {
    if !path.is_file() {
        return Err(Error::KernelMissing { path: path.to_owned() });
    }
    let version = match bzimage_version(path)? {
        Some(full) => full.split_whitespace().next().unwrap_or("unknown").to_owned(),
        None => {
            log::warn!("{} is not a bzImage; QEMU may not boot it", path.display());
            "unknown".to_owned()
        }
    };
    Ok(KernelInfo { vmlinuz: path.to_owned(), modules_dir: None, version })
}

/// The version string of an x86 bzImage (what `file` prints: release, builder, date),
/// from the setup header's `kernel_version` field; `None` for other files.
pub fn bzimage_version(path: &Path) -> Result<Option<String>, Error> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let mut header = [0u8; 0x210];
    if let Err(err) = file.read_exact(&mut header) {
        return if err.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(io_error("read", path)(err).into())
        };
    }
    // Documentation/arch/x86/boot.rst: "HdrS" at 0x202, the string's offset minus
    // 0x200 at 0x20e.
    if &header[0x202..0x206] != b"HdrS" {
        return Ok(None);
    }
    let offset = u16::from_le_bytes([header[0x20e], header[0x20f]]);
    if offset == 0 {
        return Ok(None);
    }
    let mut text = [0u8; 256];
    file.seek(SeekFrom::Start(u64::from(offset) + 0x200)).map_err(io_error("read", path))?;
    let len = file.read(&mut text).map_err(io_error("read", path))?;
    let text = &text[..len];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let version = String::from_utf8_lossy(&text[..end]).trim().to_owned();
    Ok((!version.is_empty()).then_some(version))
}

/// Downloads and extracts the newest kernel package into `kernels`; returns its
/// directory. Extraction happens in a temporary directory renamed into place, so an
/// interrupted fetch never leaves a half-extracted kernel that looks complete.
fn fetch(kernels: &Path) -> Result<PathBuf, Error> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if find_program(tool).is_none() {
            return Err(Error::ToolMissing { tool });
        }
    }
    let package = kernel_package()?;
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(kernels)
        .map_err(io_error("create a directory in", kernels))?;
    log::info!("downloading {package}");
    // apt drops to the _apt user to download, and that user cannot write to our
    // private temporary directory: download as ourselves instead of getting a warning.
    let download = run(Command::new("apt-get")
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .arg(&package)
        .current_dir(work.path()));
    if let Err(Error::Command { stderr, .. }) = download {
        return Err(Error::Download { package, stderr });
    }
    download?;
    let deb = fs::read_dir(work.path())
        .map_err(io_error("read", work.path()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| Error::NoDeb { package: package.clone(), dir: work.path().to_owned() })?;
    let version = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    let name = format!("{package}_{}", version.trim()).replace(['/', ':'], "_");
    let dir = kernels.join(&name);
    if from_package_dir(&dir).is_ok() {
        return Ok(dir);
    }
    let root = work.path().join("root");
    log::info!("extracting {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    from_package_dir(&root)?;
    if dir.exists() {
        // A broken leftover of an older tool version: replace it.
        fs::remove_dir_all(&dir).map_err(io_error("remove", &dir))?;
    }
    fs::rename(&root, &dir).map_err(io_error("move the extracted kernel to", &dir))?;
    Ok(dir)
}

/// The versioned package behind the first metapackage apt knows.
fn kernel_package() -> Result<String, Error> {
    for meta in METAPACKAGES {
        let output = Command::new("apt-cache")
            .args(["depends", meta])
            .output()
            .map_err(|source| Error::Spawn { command: format!("apt-cache depends {meta}"), source })?;
        if !output.status.success() {
            continue;
        }
        if let Some(package) = depends_on_kernel(&String::from_utf8_lossy(&output.stdout), meta) {
            return Ok(package);
        }
    }
    Err(Error::NoPackage { tried: METAPACKAGES.join(", ") })
}

/// The first `Depends: linux-image-...` line of `apt-cache depends <meta>` output.
fn depends_on_kernel(output: &str, meta: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let line = line.trim().trim_start_matches('|');
        let package = line.strip_prefix("Depends:")?.trim();
        (package.starts_with("linux-image-") && package != meta && !package.starts_with('<'))
            .then(|| package.to_owned())
    })
}

/// Runs a command, returns its stdout; a failure carries its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String, Error> {
    let describe = |command: &Command| {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let output = command.output().map_err(|source| Error::Spawn { command: describe(command), source })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Points `link` at `target` atomically: a new symlink renamed over the old one.
fn replace_symlink(target: &Path, link: &Path) -> Result<(), Error> {
    let temporary = link.with_extension(format!("new-{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary).map_err(io_error("create", &temporary))?;
    fs::rename(&temporary, link).map_err(io_error("replace", link))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_package(dir: &Path, release: &str) {
        fs::create_dir_all(dir.join("boot")).unwrap();
        fs::write(dir.join("boot").join(format!("vmlinuz-{release}")), "kernel").unwrap();
        fs::write(dir.join("boot").join(format!("config-{release}")), "").unwrap();
        fs::create_dir_all(dir.join("lib/modules").join(release)).unwrap();
    }

    #[test]
    fn cache_dir_choice() {
        let some = |s: &str| Some(OsString::from(s));
        let cases = [
            ((some("/c"), some("/x"), some("/h")), Some("/c")),
            ((None, some("/x"), some("/h")), Some("/x/appliance")),
            ((some(""), some(""), some("/h")), Some("/h/.cache/appliance")),
            ((None, some("relative"), some("/h")), Some("/h/.cache/appliance")),
            ((None, None, None), None),
        ];
        for ((cache, xdg, home), expected) in cases {
            assert_eq!(
                cache_dir_from(cache.clone(), xdg.clone(), home.clone()),
                expected.map(PathBuf::from),
                "{cache:?} {xdg:?} {home:?}"
            );
        }
    }

    /// A cached kernel is used as is: this test has no network and no apt and would
    /// fail if either were touched, since the fake package name does not exist.
    #[test]
    fn cache_hit_needs_no_network() {
        let cache = tempfile::tempdir().unwrap();
        let kernels = cache.path().join(KERNELS_DIR);
        let package = kernels.join("linux-image-9.9.9-1-cloud-amd64_9.9.9-1");
        fake_package(&package, "9.9.9-1-cloud-amd64");
        replace_symlink(Path::new("linux-image-9.9.9-1-cloud-amd64_9.9.9-1"), &kernels.join(CURRENT_LINK)).unwrap();
        let kernel = debian_cloud(cache.path()).unwrap();
        assert_eq!(kernel.version, "9.9.9-1-cloud-amd64");
        assert_eq!(kernel.vmlinuz, package.join("boot/vmlinuz-9.9.9-1-cloud-amd64"));
        assert_eq!(kernel.modules_dir, Some(package.join("lib/modules/9.9.9-1-cloud-amd64")));
    }

    #[test]
    fn empty_cache_is_a_miss() {
        let cache = tempfile::tempdir().unwrap();
        assert_eq!(cached(cache.path()).unwrap(), None);
        // A link to a directory removed by hand is a miss too, not an error.
        let kernels = cache.path().join(KERNELS_DIR);
        fs::create_dir_all(&kernels).unwrap();
        replace_symlink(Path::new("gone"), &kernels.join(CURRENT_LINK)).unwrap();
        assert_eq!(cached(cache.path()).unwrap(), None);
    }

    #[test]
    fn package_dir_without_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let err = from_package_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds no boot/vmlinuz-*"), "{err}");
    }

    #[test]
    fn apt_cache_depends_output() {
        let debian = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-28-cloud-amd64\n";
        assert_eq!(
            depends_on_kernel(debian, "linux-image-cloud-amd64").as_deref(),
            Some("linux-image-6.1.0-28-cloud-amd64")
        );
        let ubuntu = "linux-image-virtual\n  Depends: linux-image-6.8.0-45-generic\n  \
                      Depends: linux-firmware\n";
        assert_eq!(depends_on_kernel(ubuntu, "linux-image-virtual").as_deref(), Some("linux-image-6.8.0-45-generic"));
        let virtual_only = "linux-image-kvm\n |Depends: <linux-image-x>\n";
        assert_eq!(depends_on_kernel(virtual_only, "linux-image-kvm"), None);
    }

    #[test]
    fn bzimage_header_version() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("bzImage");
        let mut bytes = vec![0u8; 0x400];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        bytes[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let text = b"6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        bytes[0x300..0x300 + text.len()].copy_from_slice(text);
        fs::write(&image, &bytes).unwrap();
        assert_eq!(
            bzimage_version(&image).unwrap().as_deref(),
            Some("6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP")
        );
        assert_eq!(from_path(&image).unwrap().version, "6.1.0-28-cloud-amd64");

        let other = dir.path().join("other");
        fs::write(&other, "not a kernel").unwrap();
        assert_eq!(bzimage_version(&other).unwrap(), None);
        assert_eq!(from_path(&other).unwrap().version, "unknown");
        assert!(matches!(from_path(&dir.path().join("absent")), Err(Error::KernelMissing { .. })));
    }

    /// The real thing: apt fetches Debian's cloud kernel into the user's cache (a cache
    /// hit after the first run). Skipped, saying why, where apt cannot help.
    #[test]
    fn fetches_the_debian_cloud_kernel() {
        let Ok(cache) = default_cache_dir() else {
            panic!("cannot run: no cache directory (HOME unset) (tests/run installs what the tests need)");
        };
        match debian_cloud(&cache) {
            Ok(kernel) => {
                assert!(kernel.vmlinuz.is_file(), "{kernel:?}");
                let header = bzimage_version(&kernel.vmlinuz).unwrap().unwrap();
                assert!(header.starts_with(&kernel.version), "{header} vs {kernel:?}");
                assert!(kernel.modules_dir.is_some_and(|dir| dir.is_dir()));
            }
            Err(err @ (Error::ToolMissing { .. } | Error::NoPackage { .. })) => {
                panic!("cannot fetch a kernel here: {err}");
            }
            Err(err) => panic!("{err}"),
        }
    }
}
