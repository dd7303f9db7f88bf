//! The results step (`appResultsTo`): after postrun, mount the results server (NFS or
//! virtio 9p), copy `/app/output` and the results directory into a directory of this run's
//! own on it, fsync every file, unmount. Bounded in time: NFS is mounted `soft` with a
//! finite timeout, so an unreachable server ends the step with an error instead of a hang.
//! A failure leaves the results in the guest and is reported; a partial copy never counts
//! as success.
//!
//! Pure parts (mount options, the run's directory name) are unit-tested; the copy is
//! tested on the host on a temporary tree.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use core::fmt;
use core::net::Ipv4Addr;

use appliance_cmdline::{Config, MacAddr, ResultsTo};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::console::Describe;
use crate::net;
use crate::nic::Control;
use crate::status::StatusWriter;
use appliance_cmdline::status::Event;

/// Where the init mounts the results server.
pub const MOUNT_POINT: &str = "/run/appliance/results";

/// NFS timeouts: `soft,timeo=100,retrans=1`, an RPC gives up after 10 + 20 s (see
/// [`appliance_cmdline::NFS_TIMEOUTS`]; the options of `appResultsTo` cannot lift the bound).
pub use appliance_cmdline::NFS_TIMEOUTS;

/// 9p's message size: the default (8 KiB on 6.1) makes large copies slow; 512 KiB is
/// what virtio's ring takes without splitting on these kernels.
pub const NINEP_MSIZE: u32 = 512 * 1024;

/// What `mount(2)` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    pub source: String,
    pub fstype: &'static str,
    pub options: String,
}

/// The mount for a destination. NFS: version 4.0 by default (no rpcbind or mountd
/// needed, and the project's kernel has no 4.1), `addr=` because the kernel does not
/// resolve names and wants the address spelled out, TCP, soft with bounded timeouts; the
/// user's options come last and win (`vers=3,mountport=...`, `port=...`). 9p: virtio
/// transport, 9P2000.L, a large message size, no cache.
pub fn mount_args(to: &ResultsTo) -> MountArgs {
    let (source, fstype, mut options) = match to {
        ResultsTo::Nfs { server, export, .. } => {
            (format!("{server}:{export}"), "nfs", format!("vers=4.0,addr={server},proto=tcp,{NFS_TIMEOUTS}"))
        }
        ResultsTo::NineP { tag, .. } => {
            (tag.clone(), "9p", format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache=none"))
        }
    };
    if !to.options().is_empty() {
        options.push(',');
        options.push_str(to.options());
    }
    MountArgs { source, fstype, options }
}

/// Whether the results step will use the network (NFS; 9p needs none).
pub fn needs_network(config: &Config) -> bool {
    config.results_to.as_ref().is_some_and(|to| nfs_server(to).is_some())
}

/// The server's address, for NFS (the network must be up for it).
pub fn nfs_server(to: &ResultsTo) -> Option<Ipv4Addr> {
    match to {
        ResultsTo::Nfs { server, .. } => Some(*server),
        ResultsTo::NineP { .. } => None,
    }
}

/// The name of this run's directory on the server: `appRunId`, else `appNode`, else the
/// control NIC's MAC with `_` (the original's node default), else `results`.
pub fn run_dir_name(config: &Config, mac: Option<MacAddr>) -> String {
    if let Some(id) = &config.run_id {
        return id.clone();
    }
    if let Some(node) = &config.node {
        return node.clone();
    }
    match mac {
        Some(mac) => format!("{mac}").replace(':', "_"),
        None => String::from("results"),
    }
}

/// The `n`th candidate for the run's directory: `name`, then `name.2`, `name.3`, ... so an
/// earlier run's directory is never written into.
pub fn candidate(name: &str, n: u32) -> String {
    if n <= 1 { String::from(name) } else { format!("{name}.{n}") }
}

/// A failed step of the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    pub what: &'static str,
    pub path: String,
    pub errno: Errno,
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}: {}", self.what, self.path, Describe(self.errno))
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

fn fail<'a>(what: &'static str, path: &'a str) -> impl Fn(Errno) -> CopyError + 'a {
    move |errno| CopyError { what, path: String::from(path), errno }
}

/// Copies `src` (a file, a symlink or a directory tree) to `dst`, which must not exist.
/// Regular files are fsynced; devices, sockets and FIFOs are skipped with a warning.
pub fn copy(src: &str, dst: &str, buf: &mut [u8], out: &mut Copied) -> Result<(), CopyError> {
    let st = rustix::fs::lstat(src).map_err(fail("read", src))?;
    let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            rustix::fs::mkdir(dst, mode | Mode::RWXU).map_err(fail("create the directory", dst))?;
            let mut names = crate::read_dir(src).map_err(fail("list", src))?;
            names.sort();
            for name in names {
                copy(&format!("{src}/{name}"), &format!("{dst}/{name}"), buf, out)?;
            }
            Ok(())
        }
        FileType::RegularFile => copy_file(src, dst, mode, buf, out),
        FileType::Symlink => {
            let mut target = [0u8; 4096];
            let n = rustix::fs::readlinkat_raw(rustix::fs::CWD, src, &mut target[..])
                .map_err(fail("read the link", src))?;
            if n >= target.len() {
                return Err(fail("read the link", src)(Errno::NAMETOOLONG));
            }
            rustix::fs::symlink(target.get(..n).unwrap_or_default(), dst).map_err(fail("create the link", dst))?;
            out.files = out.files.saturating_add(1);
            Ok(())
        }
        _ => {
            log::warn!("results: skipping {src}: not a file, directory or symbolic link");
            Ok(())
        }
    }
}

fn copy_file(src: &str, dst: &str, mode: Mode, buf: &mut [u8], out: &mut Copied) -> Result<(), CopyError> {
    let from = rustix::fs::open(src, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(fail("open", src))?;
    let to = rustix::fs::open(dst, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, mode)
        .map_err(fail("create", dst))?;
    loop {
        let n = match rustix::io::read(&from, &mut *buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(fail("read", src)(e)),
        };
        crate::console::write_all(rustix::fd::AsFd::as_fd(&to), buf.get(..n).unwrap_or_default())
            .map_err(fail("write", dst))?;
        out.bytes = out.bytes.saturating_add(n as u64);
    }
    // The data is on the server, or the error is here (a close would lose it).
    rustix::fs::fsync(&to).map_err(fail("sync", dst))?;
    out.files = out.files.saturating_add(1);
    Ok(())
}

/// Creates this run's directory under `root`: the first of `name`, `name.2`, ... that
/// does not exist yet (mkdir fails on an existing one, so two runs never share one).
/// Returns its name.
pub fn make_run_dir(root: &str, name: &str) -> Result<String, CopyError> {
    for n in 1..=1000 {
        let dir = candidate(name, n);
        let path = format!("{root}/{dir}");
        match rustix::fs::mkdir(path.as_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) => return Ok(dir),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(fail("create the directory", &path)(e)),
        }
    }
    Err(CopyError { what: "find a free directory name for", path: format!("{root}/{name}"), errno: Errno::EXIST })
}

/// What the step did, for the status record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dest: String,
    pub copied: Copied,
    pub mount_us: u64,
    pub copy_us: u64,
    pub umount_us: u64,
    pub error: Option<String>,
}

fn us(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Mounts `to` on [`MOUNT_POINT`], copies `sources` (each `(path, name)`: a missing path is
/// skipped) into a new directory for this run, and unmounts. The network must already be
/// up for NFS.
pub fn save(to: &ResultsTo, run_name: &str, sources: &[(&str, &str)]) -> Report {
    let now = crate::supervisor::now;
    let mut report = Report {
        dest: format!("{}", DisplayDest(to, None)),
        copied: Copied::default(),
        mount_us: 0,
        copy_us: 0,
        umount_us: 0,
        error: None,
    };
    let args = mount_args(to);
    let _ = rustix::fs::mkdir(MOUNT_POINT, Mode::from_raw_mode(0o755));
    let t0 = now();
    let mounted = mount(&args);
    report.mount_us = us(now().saturating_sub(t0));
    if let Err(e) = mounted {
        report.error = Some(format!(
            "cannot mount {} ({} -o {}): {}{}",
            args.source,
            args.fstype,
            args.options,
            Describe(e),
            mount_hint(to, e)
        ));
        return report;
    }
    let t1 = now();
    let copied = copy_all(run_name, sources, &mut report.copied);
    report.copy_us = us(now().saturating_sub(t1));
    match copied {
        Ok(dir) => report.dest = format!("{}", DisplayDest(to, Some(&dir))),
        Err(e) => report.error = Some(format!("{e}")),
    }
    let t2 = now();
    if let Err(e) = rustix::mount::unmount(MOUNT_POINT, rustix::mount::UnmountFlags::empty()) {
        // Whatever was fsynced is on the server; a dead server must not keep us here.
        log::warn!("results: cannot unmount {MOUNT_POINT}: {}; forcing it", Describe(e));
        if rustix::mount::unmount(MOUNT_POINT, rustix::mount::UnmountFlags::FORCE).is_err() {
            let _ = rustix::mount::unmount(MOUNT_POINT, rustix::mount::UnmountFlags::DETACH);
        }
    }
    report.umount_us = us(now().saturating_sub(t2));
    report
}

/// What to do about a mount error that usually means the kernel or QEMU lacks something.
pub fn mount_hint(to: &ResultsTo, e: Errno) -> &'static str {
    match (to, e) {
        (ResultsTo::Nfs { .. }, Errno::NODEV) => {
            "; the kernel has no NFSv4: on Debian's cloud kernel add \"nfsv4\" to the image's modules"
        }
        (ResultsTo::NineP { .. }, Errno::NODEV) => {
            "; the kernel has no 9p (Debian's cloud kernel has none): boot one that has, e.g. --kernel build:6.1"
        }
        (ResultsTo::NineP { .. }, Errno::NOENT) => "; no 9p share with that tag (QEMU's -virtfs mount_tag)",
        _ => "",
    }
}

/// mount(2) with text options, as mount(8) passes them.
fn mount(args: &MountArgs) -> Result<(), Errno> {
    let data = alloc::ffi::CString::new(args.options.as_str()).map_err(|_| Errno::INVAL)?;
    rustix::mount::mount(
        args.source.as_str(),
        MOUNT_POINT,
        args.fstype,
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data.as_c_str(),
    )
}

fn copy_all(run_name: &str, sources: &[(&str, &str)], copied: &mut Copied) -> Result<String, CopyError> {
    let dir = make_run_dir(MOUNT_POINT, run_name)?;
    let mut buf = vec![0u8; 1 << 20];
    for (src, name) in sources {
        match rustix::fs::lstat(*src) {
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(fail("read", src)(e)),
            Ok(_) => {}
        }
        copy(src, &format!("{MOUNT_POINT}/{dir}/{name}"), &mut buf, copied)?;
    }
    // The directory entries too, not only the files' data.
    let root = format!("{MOUNT_POINT}/{dir}");
    let fd = rustix::fs::open(root.as_str(), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(fail("open", &root))?;
    rustix::fs::syncfs(&fd).map_err(fail("sync", &root))?;
    Ok(dir)
}

/// The whole step, when `appResultsTo` asks for it: the network first for NFS (configured
/// now if the boot did not: `appIp`'s address, or DHCP), then [`save`]. Says on the console
/// and in the status record how it went. Returns whether the results were saved (`None`:
/// nothing was asked).
pub fn step(config: &Config, control: &mut Option<Control>, status: &StatusWriter) -> Option<bool> {
    let to = config.results_to.as_ref()?;
    let started = crate::status::t_us();
    let failed = |error: String| Event::Results {
        t_us: crate::status::t_us(),
        ok: false,
        transport: String::from(to.transport()),
        dest: format!("{}", DisplayDest(to, None)),
        files: 0,
        bytes: 0,
        mount_us: 0,
        copy_us: 0,
        umount_us: 0,
        error: Some(error),
    };
    if nfs_server(to).is_some() && control.is_none() {
        match net::bring_up(config) {
            Ok(c) => {
                log::info!("network: {} is {} ({}), for the results", c.nic, c.addr, c.method);
                status.emit(&c.event());
                *control = Some(c);
            }
            Err(e) => {
                let message = format!("results not saved: no network: {e}; they are still in the guest");
                log::error!("{message}");
                status.emit(&failed(message));
                return Some(false);
            }
        }
    }
    let mac = control.as_ref().and_then(|c| c.mac);
    let name = run_dir_name(config, mac);
    let results_dir = config.results_dir_or_default();
    let sources = [(appliance_cmdline::APP_OUT, "output"), (results_dir, "results")];
    // Every phase has ended: nothing appends to /app/output any more.
    let report = save(to, &name, &sources);
    let ok = report.error.is_none();
    let elapsed_ms = crate::status::t_us().saturating_sub(started) / 1000;
    match &report.error {
        None => crate::console::write_err(
            format!(
                "appliance-init: results: {} file(s), {} byte(s) saved to {} in {elapsed_ms} ms\n",
                report.copied.files, report.copied.bytes, report.dest
            )
            .as_bytes(),
        ),
        Some(e) => log::error!("results not saved to {}: {e}; they are still in the guest", report.dest),
    }
    status.emit(&Event::Results {
        t_us: crate::status::t_us(),
        ok,
        transport: String::from(to.transport()),
        dest: report.dest,
        files: report.copied.files,
        bytes: report.copied.bytes,
        mount_us: report.mount_us,
        copy_us: report.copy_us,
        umount_us: report.umount_us,
        error: report.error,
    });
    Some(ok)
}

/// `nfs:10.0.2.2:/export/dir` or `9p:tag/dir`.
struct DisplayDest<'a>(&'a ResultsTo, Option<&'a str>);

impl fmt::Display for DisplayDest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ResultsTo::Nfs { server, export, .. } => write!(f, "nfs:{server}:{export}")?,
            ResultsTo::NineP { tag, .. } => write!(f, "9p:{tag}")?,
        }
        if let Some(dir) = self.1 {
            let slash = match self.0 {
                ResultsTo::Nfs { export, .. } if export.ends_with('/') => "",
                _ => "/",
            };
            write!(f, "{slash}{dir}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn nfs_mount_options_spell_out_the_address_and_bound_the_time() {
        let to: ResultsTo = "nfs:10.0.2.2:/srv/r,port=20490".parse().unwrap();
        let args = mount_args(&to);
        assert_eq!(args.source, "10.0.2.2:/srv/r");
        assert_eq!(args.fstype, "nfs");
        assert_eq!(args.options, "vers=4.0,addr=10.0.2.2,proto=tcp,soft,timeo=100,retrans=1,port=20490");
        assert_eq!(nfs_server(&to), Some(Ipv4Addr::new(10, 0, 2, 2)));
        let to: ResultsTo = "nfs:10.0.2.2:/".parse().unwrap();
        assert_eq!(mount_args(&to).options, "vers=4.0,addr=10.0.2.2,proto=tcp,soft,timeo=100,retrans=1");
    }

    #[test]
    fn ninep_mount_options() {
        let to: ResultsTo = "9p:results,msize=65536".parse().unwrap();
        let args = mount_args(&to);
        assert_eq!((args.source.as_str(), args.fstype), ("results", "9p"));
        assert_eq!(args.options, "trans=virtio,version=9p2000.L,msize=524288,cache=none,msize=65536");
        assert_eq!(nfs_server(&to), None);
    }

    #[test]
    fn mount_errors_that_mean_a_missing_feature_say_what_to_do() {
        let nfs: ResultsTo = "nfs:10.0.2.2:/".parse().unwrap();
        let ninep: ResultsTo = "9p:results".parse().unwrap();
        assert!(mount_hint(&nfs, Errno::NODEV).contains("\"nfsv4\""));
        assert!(mount_hint(&ninep, Errno::NODEV).contains("build:6.1"));
        assert!(mount_hint(&ninep, Errno::NOENT).contains("mount_tag"));
        assert_eq!(mount_hint(&nfs, Errno::CONNREFUSED), "");
    }

    #[test]
    fn run_directory_names() {
        let mac = Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let mut c = Config::default();
        assert_eq!(run_dir_name(&c, None), "results");
        assert_eq!(run_dir_name(&c, mac), "52_54_00_12_34_56");
        c.node = Some("n1".into());
        assert_eq!(run_dir_name(&c, mac), "n1");
        c.run_id = Some("r-7".into());
        assert_eq!(run_dir_name(&c, mac), "r-7");
        assert_eq!(candidate("r-7", 1), "r-7");
        assert_eq!(candidate("r-7", 3), "r-7.3");
    }

    #[test]
    fn destinations_for_the_record() {
        let to: ResultsTo = "nfs:10.0.2.2:/,port=1".parse().unwrap();
        assert_eq!(DisplayDest(&to, Some("r1")).to_string(), "nfs:10.0.2.2:/r1");
        let to: ResultsTo = "nfs:10.0.2.2:/x".parse().unwrap();
        assert_eq!(DisplayDest(&to, Some("r1")).to_string(), "nfs:10.0.2.2:/x/r1");
        let to: ResultsTo = "9p:res".parse().unwrap();
        assert_eq!(DisplayDest(&to, None).to_string(), "9p:res");
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("appliance-init-results-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn copy_keeps_files_directories_and_links_and_counts_them() {
        let dir = scratch("copy");
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("a.txt"), "alpha").unwrap();
        std::fs::write(src.join("sub/deeper/b.bin"), vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
        let mut copied = Copied::default();
        let mut buf = vec![0u8; 4096];
        let dst = dir.join("dst");
        copy(src.to_str().unwrap(), dst.to_str().unwrap(), &mut buf, &mut copied).unwrap();
        assert_eq!(copied, Copied { files: 3, bytes: 5 + 3 * 1024 * 1024 + 5 });
        assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "alpha");
        assert_eq!(std::fs::read(dst.join("sub/deeper/b.bin")).unwrap(), vec![7u8; 3 * 1024 * 1024 + 5]);
        assert_eq!(std::fs::read_link(dst.join("link")).unwrap().to_str(), Some("a.txt"));
        // Never into an existing file.
        let e = copy(src.join("a.txt").to_str().unwrap(), dst.join("a.txt").to_str().unwrap(), &mut buf, &mut copied)
            .unwrap_err();
        assert_eq!((e.what, e.errno), ("create", Errno::EXIST));
        assert!(e.to_string().starts_with("cannot create /"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_run_gets_a_directory_of_its_own() {
        let dir = scratch("rundir");
        let root = dir.to_str().unwrap();
        assert_eq!(make_run_dir(root, "n1").unwrap(), "n1");
        assert_eq!(make_run_dir(root, "n1").unwrap(), "n1.2");
        assert_eq!(make_run_dir(root, "n1").unwrap(), "n1.3");
        let e = make_run_dir(&format!("{root}/missing"), "n1").unwrap_err();
        assert_eq!(e.errno, Errno::NOENT);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
