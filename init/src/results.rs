//! The results step (`appResultsTo`): after postrun, save `/app/output` and the results
//! directory into a directory of this run's own: on a mounted server (NFS or virtio 9p),
//! every file fsynced, then unmounted; or as one newc cpio stream ([`crate::cpio`]) to a
//! virtio-serial port, which `appliance run` unpacks on the host (no server, no network,
//! no privileges on either side). The transport's drivers are loaded first when the image
//! packs them as modules. Bounded in time: NFS is mounted `soft` with a finite timeout,
//! and a stream that makes no progress for [`PORT_STALL`] ends, so an unreachable host
//! ends the step with an error instead of a hang. A failure leaves the results in the
//! guest and is reported; a partial copy never counts as success.
//!
//! Pure parts (mount options, the run's directory name) are unit-tested; the copy, to a
//! tree and to a stream, is tested on the host on temporary files.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

use appliance_cmdline::modules::{NFS_MODULES, NINEP_MODULES, PORT_MODULES};
use appliance_cmdline::{Config, MacAddr, ResultsTo};
use rustix::fd::{AsFd, BorrowedFd};
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

/// Where the kernel lists the virtio-serial ports, each with its `name`.
pub const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// How long to wait for the results port to appear: the host announces its ports to the
/// driver over a control queue, after the driver has loaded.
pub const PORT_WAIT: Duration = Duration::from_secs(10);

/// How long a write to the results port may make no progress before the step gives up:
/// a host that does not read the port (none connected) blocks every write.
pub const PORT_STALL: Duration = Duration::from_secs(30);

/// What `mount(2)` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    pub source: String,
    pub fstype: &'static str,
    pub options: String,
}

/// The mount for a destination (`None` for a stream: nothing to mount). NFS: version 4.0
/// by default (no rpcbind or mountd needed, and the project's kernel has no 4.1), `addr=`
/// because the kernel does not resolve names and wants the address spelled out, TCP, soft
/// with bounded timeouts; the user's options come last and win (`vers=3,mountport=...`,
/// `port=...`). 9p: virtio transport, 9P2000.L, a large message size, no cache.
pub fn mount_args(to: &ResultsTo) -> Option<MountArgs> {
    let (source, fstype, mut options) = match to {
        ResultsTo::Nfs { server, export, .. } => {
            (format!("{server}:{export}"), "nfs", format!("vers=4.0,addr={server},proto=tcp,{NFS_TIMEOUTS}"))
        }
        ResultsTo::NineP { tag, .. } => {
            (tag.clone(), "9p", format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache=none"))
        }
        ResultsTo::Serial { .. } => return None,
    };
    if !to.options().is_empty() {
        options.push(',');
        options.push_str(to.options());
    }
    Some(MountArgs { source, fstype, options })
}

/// The drivers a transport needs, as modules (see
/// [`appliance_cmdline::modules::FEATURE_MODULES`]); the NIC's, for NFS, are loaded at boot.
pub fn drivers(to: &ResultsTo) -> &'static [&'static str] {
    match to {
        ResultsTo::Nfs { .. } => NFS_MODULES,
        ResultsTo::NineP { .. } => NINEP_MODULES,
        ResultsTo::Serial { .. } => PORT_MODULES,
    }
}

/// Whether the results step will use the network (NFS; 9p needs none).
pub fn needs_network(config: &Config) -> bool {
    config.results_to.as_ref().is_some_and(|to| nfs_server(to).is_some())
}

/// The server's address, for NFS (the network must be up for it).
pub fn nfs_server(to: &ResultsTo) -> Option<Ipv4Addr> {
    match to {
        ResultsTo::Nfs { server, .. } => Some(*server),
        ResultsTo::NineP { .. } | ResultsTo::Serial { .. } => None,
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
    /// Why, when the errno alone does not say (appended to it).
    pub note: &'static str,
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}: {}{}", self.what, self.path, Describe(self.errno), self.note)
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

fn fail<'a>(what: &'static str, path: &'a str) -> impl Fn(Errno) -> CopyError + 'a {
    move |errno| CopyError { what, path: String::from(path), errno, note: "" }
}

/// What a copied entry keeps of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits.
    pub mode: Mode,
    /// Seconds since the epoch (0 when out of range).
    pub mtime: u32,
    /// Bytes: a file's length, 0 otherwise.
    pub size: u64,
}

/// Where [`copy`] puts what it copies: files on a mounted file system ([`Tree`]), or
/// members of a cpio stream ([`Stream`]).
pub trait Sink {
    /// Creates the directory `dst`.
    fn dir(&mut self, dst: &str, meta: Meta) -> Result<(), CopyError>;
    /// Copies the regular file `src`, open as `from`, to `dst`; returns the bytes copied.
    fn file(
        &mut self,
        from: BorrowedFd<'_>,
        src: &str,
        dst: &str,
        meta: Meta,
        buf: &mut [u8],
    ) -> Result<u64, CopyError>;
    /// Creates the symbolic link `dst` to `target`.
    fn symlink(&mut self, dst: &str, target: &[u8], meta: Meta) -> Result<(), CopyError>;
}

/// Copies `src` (a file, a symlink or a directory tree) to `dst` in `sink`, where it must
/// not exist yet. Devices, sockets and FIFOs are skipped with a warning.
pub fn copy(src: &str, dst: &str, sink: &mut impl Sink, buf: &mut [u8], out: &mut Copied) -> Result<(), CopyError> {
    let st = rustix::fs::lstat(src).map_err(fail("read", src))?;
    let meta = Meta {
        mode: Mode::from_raw_mode(st.st_mode & 0o7777),
        mtime: u32::try_from(st.st_mtime).unwrap_or(0),
        size: u64::try_from(st.st_size).unwrap_or(0),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            sink.dir(dst, meta)?;
            let mut names = crate::read_dir(src).map_err(fail("list", src))?;
            names.sort();
            for name in names {
                copy(&format!("{src}/{name}"), &format!("{dst}/{name}"), sink, buf, out)?;
            }
            Ok(())
        }
        FileType::RegularFile => {
            let from =
                rustix::fs::open(src, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(fail("open", src))?;
            let n = sink.file(from.as_fd(), src, dst, meta, buf)?;
            out.bytes = out.bytes.saturating_add(n);
            out.files = out.files.saturating_add(1);
            Ok(())
        }
        FileType::Symlink => {
            let mut target = [0u8; 4096];
            let n = rustix::fs::readlinkat_raw(rustix::fs::CWD, src, &mut target[..])
                .map_err(fail("read the link", src))?;
            if n >= target.len() {
                return Err(fail("read the link", src)(Errno::NAMETOOLONG));
            }
            sink.symlink(dst, target.get(..n).unwrap_or_default(), meta)?;
            out.files = out.files.saturating_add(1);
            Ok(())
        }
        _ => {
            log::warn!("results: skipping {src}: not a file, directory or symbolic link");
            Ok(())
        }
    }
}

/// Reads from `from` into `buf`, retrying on EINTR.
fn read_some(from: BorrowedFd<'_>, src: &str, buf: &mut [u8]) -> Result<usize, CopyError> {
    loop {
        match rustix::io::read(from, &mut *buf) {
            Err(Errno::INTR) => continue,
            other => return other.map_err(fail("read", src)),
        }
    }
}

/// A mounted file system: directories, symbolic links, and files each fsynced.
pub struct Tree;

impl Sink for Tree {
    fn dir(&mut self, dst: &str, meta: Meta) -> Result<(), CopyError> {
        rustix::fs::mkdir(dst, meta.mode | Mode::RWXU).map_err(fail("create the directory", dst))
    }

    fn file(
        &mut self,
        from: BorrowedFd<'_>,
        src: &str,
        dst: &str,
        meta: Meta,
        buf: &mut [u8],
    ) -> Result<u64, CopyError> {
        let to = rustix::fs::open(dst, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC, meta.mode)
            .map_err(fail("create", dst))?;
        let mut bytes = 0u64;
        loop {
            let n = read_some(from, src, buf)?;
            if n == 0 {
                break;
            }
            crate::console::write_all(to.as_fd(), buf.get(..n).unwrap_or_default()).map_err(fail("write", dst))?;
            bytes = bytes.saturating_add(n as u64);
        }
        // The data is on the server, or the error is here (a close would lose it).
        rustix::fs::fsync(&to).map_err(fail("sync", dst))?;
        Ok(bytes)
    }

    fn symlink(&mut self, dst: &str, target: &[u8], _meta: Meta) -> Result<(), CopyError> {
        rustix::fs::symlink(target, dst).map_err(fail("create the link", dst))
    }
}

/// A newc cpio stream to a descriptor (the results port), members named by their path in
/// the stream; [`Stream::finish`] writes the trailer. Each write waits at most
/// [`PORT_STALL`] for the reader to take more (on a non-blocking descriptor).
pub struct Stream<F: AsFd> {
    to: F,
    /// The port, for messages.
    path: String,
    next_ino: u32,
    stall: Duration,
}

impl<F: AsFd> Stream<F> {
    pub fn new(to: F, path: &str, stall: Duration) -> Stream<F> {
        Stream { to, path: String::from(path), next_ino: 1, stall }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), CopyError> {
        let stalled = |errno| CopyError {
            what: "write the results to",
            path: self.path.clone(),
            errno,
            note: if errno == Errno::TIMEDOUT { " (the host does not read the port)" } else { "" },
        };
        while !bytes.is_empty() {
            match rustix::io::write(self.to.as_fd(), bytes) {
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    let mut fds = [rustix::event::PollFd::new(&self.to, rustix::event::PollFlags::OUT)];
                    let ts = rustix::time::Timespec {
                        tv_sec: self.stall.as_secs() as i64,
                        tv_nsec: i64::from(self.stall.subsec_nanos()),
                    };
                    match rustix::event::poll(&mut fds, Some(&ts)) {
                        Ok(0) => return Err(stalled(Errno::TIMEDOUT)),
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(stalled(e)),
                    }
                }
                Err(e) => return Err(stalled(e)),
            }
        }
        Ok(())
    }

    /// A member's header; `size` bytes of data and their padding must follow.
    fn header(&mut self, name: &str, mode: u32, meta: Meta, size: u64) -> Result<(), CopyError> {
        let size = u32::try_from(size).map_err(|_| CopyError {
            what: "stream",
            path: String::from(name),
            errno: Errno::FBIG,
            note: " (newc has 32 bits for a member's size: 4 GiB at most)",
        })?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.saturating_add(1);
        let header = crate::cpio::header(&crate::cpio::Header {
            name,
            ino,
            mode: mode | (meta.mode.bits() & 0o7777),
            mtime: meta.mtime,
            size,
        });
        self.write(&header)
    }

    fn pad(&mut self, len: u64) -> Result<(), CopyError> {
        let zeros = [0u8; 4];
        self.write(zeros.get(..crate::cpio::padding(len)).unwrap_or_default())
    }

    /// Ends the archive: the trailer.
    pub fn finish(mut self) -> Result<F, CopyError> {
        let trailer = crate::cpio::trailer(self.next_ino);
        self.write(&trailer)?;
        Ok(self.to)
    }
}

impl<F: AsFd> Sink for Stream<F> {
    fn dir(&mut self, dst: &str, meta: Meta) -> Result<(), CopyError> {
        self.header(dst, crate::cpio::DIRECTORY, meta, 0)
    }

    fn file(
        &mut self,
        from: BorrowedFd<'_>,
        src: &str,
        dst: &str,
        meta: Meta,
        buf: &mut [u8],
    ) -> Result<u64, CopyError> {
        // The header promises `meta.size` bytes: a file that changes meanwhile must not
        // shift every member after it.
        self.header(dst, crate::cpio::REGULAR, meta, meta.size)?;
        let mut left = meta.size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = read_some(from, src, buf.get_mut(..want).unwrap_or_default())?;
            if n == 0 {
                return Err(CopyError { note: " (it shrank while being saved)", ..fail("read", src)(Errno::IO) });
            }
            self.write(buf.get(..n).unwrap_or_default())?;
            left -= n as u64;
        }
        if read_some(from, src, buf.get_mut(..1).unwrap_or_default())? != 0 {
            return Err(CopyError { note: " (it grew while being saved)", ..fail("read", src)(Errno::IO) });
        }
        self.pad(meta.size)?;
        Ok(meta.size)
    }

    fn symlink(&mut self, dst: &str, target: &[u8], meta: Meta) -> Result<(), CopyError> {
        let meta = Meta { mode: Mode::from_raw_mode(0o777), ..meta };
        self.header(dst, crate::cpio::SYMLINK, meta, target.len() as u64)?;
        self.write(target)?;
        self.pad(target.len() as u64)
    }
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
    Err(CopyError {
        what: "find a free directory name for",
        path: format!("{root}/{name}"),
        errno: Errno::EXIST,
        note: "",
    })
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

impl Report {
    /// Nothing done yet, headed for `to`.
    fn empty(to: &ResultsTo) -> Report {
        Report {
            dest: format!("{}", DisplayDest(to, None)),
            copied: Copied::default(),
            mount_us: 0,
            copy_us: 0,
            umount_us: 0,
            error: None,
        }
    }
}

/// Mounts `to` on [`MOUNT_POINT`], copies `sources` (each `(path, name)`: a missing path is
/// skipped) into a new directory for this run, and unmounts; for a stream, [`stream`]. The
/// network must already be up for NFS.
pub fn save(to: &ResultsTo, run_name: &str, sources: &[(&str, &str)]) -> Report {
    let now = crate::supervisor::now;
    let mut report = Report::empty(to);
    let Some(args) = mount_args(to) else { return stream(to, run_name, sources) };
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
    // Whatever was fsynced is on the server; a dead server must not keep us here.
    unmount_bounded(MOUNT_POINT);
    report.umount_us = us(now().saturating_sub(t2));
    report
}

/// Unmounts `target`; when that fails (a dead server), forces it, and detaches it last.
pub fn unmount_bounded(target: &str) {
    if let Err(e) = rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()) {
        log::warn!("cannot unmount {target}: {}; forcing it", Describe(e));
        if rustix::mount::unmount(target, rustix::mount::UnmountFlags::FORCE).is_err() {
            let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Writes `sources` (each `(path, name)`: a missing path is skipped) as one cpio stream to
/// the virtio-serial port `to` names, under a directory `run_name` (the host unpacks it as
/// this run's directory), and ends it with the trailer.
pub fn stream(to: &ResultsTo, run_name: &str, sources: &[(&str, &str)]) -> Report {
    let now = crate::supervisor::now;
    let mut report = Report::empty(to);
    let ResultsTo::Serial { port } = to else {
        report.error = Some(format!("{} is not a stream", DisplayDest(to, None)));
        return report;
    };
    let t0 = now();
    let opened = find_port(port, PORT_WAIT).and_then(|device| {
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        rustix::fs::open(device.as_str(), flags, Mode::empty()).map(|fd| (device, fd))
    });
    report.mount_us = us(now().saturating_sub(t0));
    let (device, fd) = match opened {
        Ok(found) => found,
        Err(e) => {
            report.error = Some(format!("cannot open the virtio-serial port {port}: {}{}", Describe(e), port_hint(e)));
            return report;
        }
    };
    let t1 = now();
    let mut out = Stream::new(fd, &device, PORT_STALL);
    match stream_all(&mut out, run_name, sources, &mut report.copied).and_then(|()| out.finish()) {
        Ok(fd) => {
            report.dest = format!("{}", DisplayDest(to, Some(run_name)));
            report.copy_us = us(now().saturating_sub(t1));
            let t2 = now();
            drop(fd);
            report.umount_us = us(now().saturating_sub(t2));
        }
        Err(e) => {
            report.copy_us = us(now().saturating_sub(t1));
            report.error = Some(format!("{e}"));
        }
    }
    report
}

fn stream_all<F: AsFd>(
    out: &mut Stream<F>,
    run_name: &str,
    sources: &[(&str, &str)],
    copied: &mut Copied,
) -> Result<(), CopyError> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let top = Meta { mode: Mode::from_raw_mode(0o755), mtime: u32::try_from(now.tv_sec).unwrap_or(0), size: 0 };
    out.dir(run_name, top)?;
    let mut buf = vec![0u8; 1 << 20];
    for (src, name) in sources {
        match rustix::fs::lstat(*src) {
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(fail("read", src)(e)),
            Ok(_) => {}
        }
        copy(src, &format!("{run_name}/{name}"), out, &mut buf, copied)?;
    }
    Ok(())
}

/// The device of the virtio-serial port named `name` (`/dev/vportNpM`), waiting up to
/// `wait` for the host's announcement of it.
pub fn find_port(name: &str, wait: Duration) -> Result<String, Errno> {
    let deadline = crate::supervisor::now() + wait;
    loop {
        let ports = crate::read_dir(VIRTIO_PORTS).unwrap_or_default();
        let found = ports
            .iter()
            .find(|p| crate::read_to_string(&format!("{VIRTIO_PORTS}/{p}/name")).is_some_and(|n| n.trim() == name));
        if let Some(port) = found {
            return Ok(format!("/dev/{port}"));
        }
        if crate::supervisor::now() >= deadline {
            return Err(Errno::NOENT);
        }
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: 0, tv_nsec: 20_000_000 });
    }
}

/// What to do about a port that cannot be opened.
fn port_hint(e: Errno) -> &'static str {
    match e {
        Errno::NOENT => {
            "; the kernel has no virtio_console (neither built in nor among the image's modules), or QEMU \
             no virtserialport of that name"
        }
        _ => "",
    }
}

/// What to do about a mount error that usually means the kernel or QEMU lacks something.
pub fn mount_hint(to: &ResultsTo, e: Errno) -> &'static str {
    match (to, e) {
        (ResultsTo::Nfs { .. }, Errno::NODEV) => {
            "; the kernel has no NFSv4 client (neither built in nor among the image's modules: rebuild the image \
             for this kernel)"
        }
        (ResultsTo::NineP { .. }, Errno::NODEV) => {
            "; the kernel has no 9p (Debian's cloud kernel has none): use the serial transport, or boot a kernel \
             that has 9p, e.g. --kernel build:6.1"
        }
        (ResultsTo::NineP { .. }, Errno::NOENT) => "; no 9p share with that tag (QEMU's -virtfs mount_tag)",
        _ => "",
    }
}

/// mount(2) on [`MOUNT_POINT`] with text options, as mount(8) passes them.
fn mount(args: &MountArgs) -> Result<(), Errno> {
    mount_on(args, MOUNT_POINT)
}

/// mount(2) of `args` on `target`, nosuid and nodev.
pub fn mount_on(args: &MountArgs, target: &str) -> Result<(), Errno> {
    let data = alloc::ffi::CString::new(args.options.as_str()).map_err(|_| Errno::INVAL)?;
    rustix::mount::mount(
        args.source.as_str(),
        target,
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
        copy(src, &format!("{MOUNT_POINT}/{dir}/{name}"), &mut Tree, &mut buf, copied)?;
    }
    // The directory entries too, not only the files' data.
    let root = format!("{MOUNT_POINT}/{dir}");
    let fd = rustix::fs::open(root.as_str(), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(fail("open", &root))?;
    rustix::fs::syncfs(&fd).map_err(fail("sync", &root))?;
    Ok(dir)
}

/// The whole step, when `appResultsTo` asks for it: the network first for NFS (configured
/// now if the boot did not: `appIp`'s address, or DHCP), the transport's drivers when the
/// image packs them as modules (their loading counts in `mount_us`), then [`save`]. Says on
/// the console and in the status record how it went. Returns whether the results were
/// saved (`None`: nothing was asked).
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
    let t_drivers = crate::supervisor::now();
    for failure in crate::modules::load_wanted(drivers(to)) {
        // The mount (or the port) fails next, and says what is missing.
        log::error!("{failure}");
        status.error(format!("{failure}"));
    }
    let drivers_us = us(crate::supervisor::now().saturating_sub(t_drivers));
    let mac = control.as_ref().and_then(|c| c.mac);
    let name = run_dir_name(config, mac);
    let results_dir = config.results_dir_or_default();
    let sources = [(appliance_cmdline::APP_OUT, "output"), (results_dir, "results")];
    // Every phase has ended: nothing appends to /app/output any more.
    let mut report = save(to, &name, &sources);
    report.mount_us = report.mount_us.saturating_add(drivers_us);
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

/// `nfs:10.0.2.2:/export/dir`, `9p:tag/dir` or `serial:port/dir`.
struct DisplayDest<'a>(&'a ResultsTo, Option<&'a str>);

impl fmt::Display for DisplayDest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ResultsTo::Nfs { server, export, .. } => write!(f, "nfs:{server}:{export}")?,
            ResultsTo::NineP { tag, .. } => write!(f, "9p:{tag}")?,
            ResultsTo::Serial { port } => write!(f, "serial:{port}")?,
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
        let args = mount_args(&to).unwrap();
        assert_eq!(args.source, "10.0.2.2:/srv/r");
        assert_eq!(args.fstype, "nfs");
        assert_eq!(args.options, "vers=4.0,addr=10.0.2.2,proto=tcp,soft,timeo=100,retrans=1,port=20490");
        assert_eq!(nfs_server(&to), Some(Ipv4Addr::new(10, 0, 2, 2)));
        let to: ResultsTo = "nfs:10.0.2.2:/".parse().unwrap();
        assert_eq!(mount_args(&to).unwrap().options, "vers=4.0,addr=10.0.2.2,proto=tcp,soft,timeo=100,retrans=1");
        assert_eq!(drivers(&to), ["nfsv4"]);
    }

    #[test]
    fn ninep_mount_options() {
        let to: ResultsTo = "9p:results,msize=65536".parse().unwrap();
        let args = mount_args(&to).unwrap();
        assert_eq!((args.source.as_str(), args.fstype), ("results", "9p"));
        assert_eq!(args.options, "trans=virtio,version=9p2000.L,msize=524288,cache=none,msize=65536");
        assert_eq!(nfs_server(&to), None);
    }

    #[test]
    fn a_stream_mounts_nothing_and_needs_the_console_driver() {
        let to: ResultsTo = "serial:appliance.results".parse().unwrap();
        assert_eq!(mount_args(&to), None);
        assert_eq!(nfs_server(&to), None);
        assert_eq!(drivers(&to), ["virtio_pci", "virtio_console"]);
        assert_eq!(DisplayDest(&to, Some("r1")).to_string(), "serial:appliance.results/r1");
        assert!(port_hint(Errno::NOENT).contains("virtio_console"));
    }

    #[test]
    fn mount_errors_that_mean_a_missing_feature_say_what_to_do() {
        let nfs: ResultsTo = "nfs:10.0.2.2:/".parse().unwrap();
        let ninep: ResultsTo = "9p:results".parse().unwrap();
        assert!(mount_hint(&nfs, Errno::NODEV).contains("no NFSv4 client"));
        assert!(mount_hint(&ninep, Errno::NODEV).contains("serial"));
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

    /// A file of rustix's own descriptor type (without std, rustix does not take std's).
    fn open(path: &std::path::Path, flags: OFlags) -> rustix::fd::OwnedFd {
        rustix::fs::open(path.to_str().unwrap(), flags | OFlags::CLOEXEC, Mode::from_raw_mode(0o644)).unwrap()
    }

    fn create(path: &std::path::Path) -> rustix::fd::OwnedFd {
        open(path, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)
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
        copy(src.to_str().unwrap(), dst.to_str().unwrap(), &mut Tree, &mut buf, &mut copied).unwrap();
        assert_eq!(copied, Copied { files: 3, bytes: 5 + 3 * 1024 * 1024 + 5 });
        assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "alpha");
        assert_eq!(std::fs::read(dst.join("sub/deeper/b.bin")).unwrap(), vec![7u8; 3 * 1024 * 1024 + 5]);
        assert_eq!(std::fs::read_link(dst.join("link")).unwrap().to_str(), Some("a.txt"));
        // Never into an existing file.
        let (a, dst_a) = (src.join("a.txt"), dst.join("a.txt"));
        let e = copy(a.to_str().unwrap(), dst_a.to_str().unwrap(), &mut Tree, &mut buf, &mut copied).unwrap_err();
        assert_eq!((e.what, e.errno), ("create", Errno::EXIST));
        assert!(e.to_string().starts_with("cannot create /"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The members of a newc stream: (name, mode, data), the trailer left out; panics
    /// unless the stream ends with one.
    fn members(mut bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(core::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap() as usize
        };
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, namesize) = (field(bytes, 1), field(bytes, 6), field(bytes, 11));
            let name = String::from(core::str::from_utf8(&bytes[110..110 + namesize - 1]).unwrap());
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = bytes[data_at..data_at + size].to_vec();
            bytes = &bytes[(data_at + size).next_multiple_of(4)..];
            if name == crate::cpio::TRAILER {
                assert!(bytes.is_empty(), "{} bytes after the trailer", bytes.len());
                return out;
            }
            out.push((name, mode as u32, data));
        }
    }

    #[test]
    fn a_stream_holds_the_tree_under_the_run_directory_and_ends_with_the_trailer() {
        let dir = scratch("stream");
        let src = dir.join("results");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.txt"), "alpha").unwrap();
        std::fs::write(src.join("big.bin"), vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", src.join("link")).unwrap();
        std::fs::write(dir.join("output"), "run done\n").unwrap();
        let file = create(&dir.join("stream.cpio"));
        let mut out = Stream::new(file, "/dev/vport0p1", Duration::from_secs(1));
        let (output, results) = (dir.join("output"), dir.join("missing"));
        let sources = [
            (output.to_str().unwrap(), "output"),
            (src.to_str().unwrap(), "results"),
            (results.to_str().unwrap(), "x"),
        ];
        let mut copied = Copied::default();
        stream_all(&mut out, "run-1", &sources, &mut copied).unwrap();
        drop(out.finish().unwrap());
        assert_eq!(copied, Copied { files: 4, bytes: 9 + 5 + 3 * 1024 * 1024 + 5 });
        let m = members(&std::fs::read(dir.join("stream.cpio")).unwrap());
        let names: Vec<&str> = m.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "run-1",
                "run-1/output",
                "run-1/results",
                "run-1/results/big.bin",
                "run-1/results/link",
                "run-1/results/sub",
                "run-1/results/sub/a.txt"
            ]
        );
        assert_eq!(m[0].1, 0o040_755);
        assert_eq!(m[1].2, b"run done\n");
        assert_eq!(m[3].2, vec![7u8; 3 * 1024 * 1024 + 5]);
        assert_eq!((m[4].1, m[4].2.as_slice()), (0o120_777, b"sub/a.txt".as_slice()));
        assert_eq!(m[6].2, b"alpha");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file whose size changed after its header was written would shift every member
    /// after it: an error, never a corrupt stream reported as saved.
    #[test]
    fn a_file_that_changes_size_while_streamed_is_an_error() {
        let dir = scratch("changed");
        let path = dir.join("f");
        std::fs::write(&path, "12345").unwrap();
        let path = path.to_str().unwrap();
        for (claimed, note) in [(9, " (it shrank while being saved)"), (2, " (it grew while being saved)")] {
            let sink = create(&dir.join("s"));
            let mut out = Stream::new(sink, "/dev/vport0p1", Duration::from_secs(1));
            let from = open(std::path::Path::new(path), OFlags::RDONLY);
            let meta = Meta { mode: Mode::from_raw_mode(0o644), mtime: 0, size: claimed };
            let e = out.file(from.as_fd(), path, "r/f", meta, &mut [0u8; 4]).unwrap_err();
            assert_eq!((e.errno, e.note), (Errno::IO, note), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A host that never reads the port: the step ends after the stall bound, saying why.
    #[test]
    fn a_port_nobody_reads_ends_the_stream_in_bounded_time() {
        let (_reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let mut out = Stream::new(writer, "/dev/vport0p1", Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = out.write(&vec![0u8; 1 << 20]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.errno, Errno::TIMEDOUT);
        assert!(e.to_string().contains("the host does not read the port"), "{e}");
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
