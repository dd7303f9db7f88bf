//! The system calls rustix does not expose (process creation, signal masks, signalfd,
//! module loading), and access to the standard file descriptors. All of the crate's
//! `unsafe` blocks that talk to the kernel live here.

use alloc::ffi::CString;
use alloc::vec::Vec;
use core::ffi::c_char;
use rustix::fd::{BorrowedFd, FromRawFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use syscalls::{Sysno, syscall};

fn errno(e: syscalls::Errno) -> Errno {
    Errno::from_raw_os_error(e.into_raw())
}

/// Standard input.
pub fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 is never closed by this program; at worst it is not open, and then
    // system calls on it fail with EBADF.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Standard output (the console in PID 1).
pub fn stdout() -> BorrowedFd<'static> {
    // SAFETY: as for `stdin`.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// Standard error.
pub fn stderr() -> BorrowedFd<'static> {
    // SAFETY: as for `stdin`.
    unsafe { BorrowedFd::borrow_raw(2) }
}

/// Makes `fd` the descriptor number `target` (0, 1 or 2).
pub fn dup_to(fd: BorrowedFd<'_>, target: i32) -> Result<(), Errno> {
    // SAFETY: dup3 takes two descriptor numbers and flags; no memory is passed.
    unsafe { syscall!(Sysno::dup3, rustix::fd::AsRawFd::as_raw_fd(&fd), target, 0) }.map(drop).map_err(errno)
}

/// Ends the process.
pub fn exit(code: i32) -> ! {
    // SAFETY: exit_group does not return.
    let _ = unsafe { syscall!(Sysno::exit_group, code) };
    #[allow(clippy::empty_loop)]
    loop {}
}

/// The result of `fork`.
pub enum Fork {
    Child,
    Parent(Pid),
}

/// fork(2). The program is single-threaded, so the child may allocate and use any code.
pub fn fork() -> Result<Fork, Errno> {
    // SAFETY: clone with only SIGCHLD and no new stack behaves like fork(2).
    let r = unsafe { syscall!(Sysno::clone, rustix::process::Signal::CHILD.as_raw(), 0, 0, 0, 0) }.map_err(errno)?;
    Ok(match Pid::from_raw(r as i32) {
        None => Fork::Child,
        Some(pid) => Fork::Parent(pid),
    })
}

/// Arguments prepared for `execve` before forking.
pub struct ExecArgs {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl ExecArgs {
    /// Builds the argument vectors; strings with NUL bytes are truncated there.
    pub fn new(path: &str, argv: &[alloc::string::String], envp: &[alloc::string::String]) -> Self {
        fn c(s: &str) -> CString {
            let cut = s.split('\0').next().unwrap_or_default();
            CString::new(cut).unwrap_or_default()
        }
        ExecArgs { path: c(path), argv: argv.iter().map(|s| c(s)).collect(), envp: envp.iter().map(|s| c(s)).collect() }
    }

    /// execve(2): returns only on failure.
    pub fn exec(&self) -> Errno {
        let mut argv: Vec<*const c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(core::ptr::null());
        let mut envp: Vec<*const c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(core::ptr::null());
        // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated
        // pointer arrays that outlive the call.
        let r = unsafe { syscall!(Sysno::execve, self.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match r {
            Ok(_) => Errno::NOEXEC,
            Err(e) => errno(e),
        }
    }
}

/// A set of signals, as the kernel's 64-bit `sigset_t`.
#[derive(Clone, Copy, Default)]
pub struct SigSet(u64);

impl SigSet {
    pub fn of(signals: &[Signal]) -> SigSet {
        SigSet(signals.iter().fold(0, |m, s| m | 1u64 << (s.as_raw() - 1)))
    }
}

const SIG_BLOCK: usize = 0;
const SIG_SETMASK: usize = 2;

/// Blocks `set` in the calling process.
pub fn block_signals(set: SigSet) -> Result<(), Errno> {
    sigprocmask(SIG_BLOCK, set)
}

/// Replaces the signal mask with `set` (children start with an empty one).
pub fn set_signal_mask(set: SigSet) -> Result<(), Errno> {
    sigprocmask(SIG_SETMASK, set)
}

fn sigprocmask(how: usize, set: SigSet) -> Result<(), Errno> {
    // SAFETY: the set is a valid 8-byte sigset_t; the old set is not requested.
    unsafe { syscall!(Sysno::rt_sigprocmask, how, &set.0 as *const u64, 0, 8) }.map(drop).map_err(errno)
}

/// A signalfd for `set` (non-blocking, close-on-exec).
pub fn signalfd(set: SigSet) -> Result<OwnedFd, Errno> {
    const SFD_NONBLOCK: usize = 0o4000;
    const SFD_CLOEXEC: usize = 0o2000000;
    // SAFETY: fd -1 asks for a new descriptor; the set is a valid 8-byte sigset_t.
    let fd = unsafe { syscall!(Sysno::signalfd4, -1isize, &set.0 as *const u64, 8, SFD_NONBLOCK | SFD_CLOEXEC) }
        .map_err(errno)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads one pending signal number from a signalfd, if any.
pub fn read_signal(fd: BorrowedFd<'_>) -> Option<i32> {
    // struct signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
    let mut buf = [0u8; 128];
    match rustix::io::read(fd, &mut buf) {
        Ok(128) => Some(i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])),
        _ => None,
    }
}

/// kill(-1, sig): every process but PID 1 (and the caller).
pub fn kill_all(sig: Signal) -> Result<(), Errno> {
    // SAFETY: kill takes plain integers.
    unsafe { syscall!(Sysno::kill, -1isize, sig.as_raw()) }.map(drop).map_err(errno)
}

/// kill(pid, sig) for a raw signal number (forwarding what signalfd reported).
pub fn kill_group_raw(pgid: Pid, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes plain integers.
    unsafe { syscall!(Sysno::kill, -(pgid.as_raw_nonzero().get() as isize), sig) }.map(drop).map_err(errno)
}

/// Waits until the console has sent everything written to it.
pub fn drain_console() -> Result<(), Errno> {
    rustix::termios::tcdrain(stdout())
}

/// Borrows a descriptor this program opened and never closes (kept as a raw number in a
/// static).
pub fn borrow_raw(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: callers only pass descriptors that stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// finit_module(2): loads the kernel module in the open file `fd`, without parameters or
/// flags (modules are packed decompressed).
pub fn finit_module(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: the parameter string is a NUL-terminated static empty string; the descriptor
    // and the flags are plain integers.
    unsafe { syscall!(Sysno::finit_module, rustix::fd::AsRawFd::as_raw_fd(&fd), c"".as_ptr(), 0) }
        .map(drop)
        .map_err(errno)
}

/// Brings the loopback interface up, so the image needs no `ip` binary.
pub fn loopback_up() -> Result<(), Errno> {
    if_set_up("lo", true)
}

// Network device ioctls (linux/sockios.h), on an AF_INET socket: the address calls need
// one, and it reaches the flag calls too.
const SIOCADDRT: usize = 0x890B;
const SIOCGIFFLAGS: usize = 0x8913;
const SIOCSIFFLAGS: usize = 0x8914;
const SIOCSIFADDR: usize = 0x8916;
const SIOCSIFNETMASK: usize = 0x891C;
const IFF_UP: i16 = 0x1;
const AF_INET: u16 = 2;

/// struct ifreq: 16 bytes of name, then a 24-byte union (`short ifr_flags` or a
/// `struct sockaddr`).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    /// An ifreq for `name`, or EINVAL when the name does not fit (15 bytes and a NUL).
    fn new(name: &str) -> Result<IfReq, Errno> {
        let mut req = IfReq { name: [0; 16], data: [0; 24] };
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > 15 || bytes.contains(&0) {
            return Err(Errno::INVAL);
        }
        req.name.get_mut(..bytes.len()).ok_or(Errno::INVAL)?.copy_from_slice(bytes);
        Ok(req)
    }
}

/// struct sockaddr_in as the 16 bytes of a struct sockaddr.
fn sockaddr_in(addr: [u8; 4]) -> [u8; 16] {
    let mut sa = [0u8; 16];
    sa[..2].copy_from_slice(&AF_INET.to_ne_bytes());
    sa[4..8].copy_from_slice(&addr);
    sa
}

fn inet_socket() -> Result<OwnedFd, Errno> {
    rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)
}

fn ifreq_ioctl(sock: &OwnedFd, request: usize, req: &mut IfReq) -> Result<(), Errno> {
    let fd = rustix::fd::AsRawFd::as_raw_fd(sock);
    // SAFETY: req is a struct ifreq (40 bytes, the kernel's layout) that lives across the
    // call; the SIOC*IF* requests used here read or write only that struct.
    unsafe { syscall!(Sysno::ioctl, fd, request, req as *mut IfReq) }.map(drop).map_err(errno)
}

/// Sets (`up`) or clears the IFF_UP flag of interface `name`, keeping its other flags.
pub fn if_set_up(name: &str, up: bool) -> Result<(), Errno> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name)?;
    ifreq_ioctl(&sock, SIOCGIFFLAGS, &mut req)?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]);
    let flags = if up { flags | IFF_UP } else { flags & !IFF_UP };
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ifreq_ioctl(&sock, SIOCSIFFLAGS, &mut req)
}

/// Gives interface `name` the IPv4 address `addr` with netmask `mask` (which also adds
/// the route to its subnet).
pub fn if_set_ipv4(name: &str, addr: [u8; 4], mask: [u8; 4]) -> Result<(), Errno> {
    let sock = inet_socket()?;
    let mut req = IfReq::new(name)?;
    req.data[..16].copy_from_slice(&sockaddr_in(addr));
    ifreq_ioctl(&sock, SIOCSIFADDR, &mut req)?;
    let mut req = IfReq::new(name)?;
    req.data[..16].copy_from_slice(&sockaddr_in(mask));
    ifreq_ioctl(&sock, SIOCSIFNETMASK, &mut req)
}

/// struct rtentry (linux/route.h), with the kernel's alignment.
#[repr(C)]
struct RtEntry {
    pad1: usize,
    dst: [u8; 16],
    gateway: [u8; 16],
    genmask: [u8; 16],
    flags: u16,
    pad2: i16,
    pad3: usize,
    pad4: *const u8,
    metric: i16,
    dev: *const c_char,
    mtu: usize,
    window: usize,
    irtt: u16,
}

/// Adds the default route (0.0.0.0/0) through `gateway` on interface `dev`.
pub fn add_default_route(gateway: [u8; 4], dev: &str) -> Result<(), Errno> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    let dev = CString::new(dev).map_err(|_| Errno::INVAL)?;
    let sock = inet_socket()?;
    let route = RtEntry {
        pad1: 0,
        dst: sockaddr_in([0; 4]),
        gateway: sockaddr_in(gateway),
        genmask: sockaddr_in([0; 4]),
        flags: RTF_UP | RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: core::ptr::null(),
        metric: 0,
        dev: dev.as_ptr(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    let fd = rustix::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: route is a struct rtentry in the kernel's layout; it and the NUL-terminated
    // device name it points to live across the call, which only reads them.
    unsafe { syscall!(Sysno::ioctl, fd, SIOCADDRT, &route as *const RtEntry) }.map(drop).map_err(errno)
}

/// SO_BINDTODEVICE: the socket sends and receives on interface `name` only (the DHCP
/// client's broadcasts leave through the control NIC even before it has an address).
pub fn bind_to_device(fd: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    const SOL_SOCKET: usize = 1;
    const SO_BINDTODEVICE: usize = 25;
    let req = IfReq::new(name)?;
    let fd = rustix::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: the option value is the NUL-padded 16-byte name buffer, which lives across
    // the call; the kernel reads at most the length passed.
    unsafe { syscall!(Sysno::setsockopt, fd, SOL_SOCKET, SO_BINDTODEVICE, req.name.as_ptr(), req.name.len()) }
        .map(drop)
        .map_err(errno)
}

/// kexec_file_load(2): loads the kernel in `kernel` with the initrd in `initrd` and the
/// command line `cmdline` as the kernel to run at `reboot(LINUX_REBOOT_CMD_KEXEC)`. The
/// kernel reads both files itself (from their start), and checks the kernel's signature
/// when it is configured to.
pub fn kexec_file_load(kernel: BorrowedFd<'_>, initrd: BorrowedFd<'_>, cmdline: &str) -> Result<(), Errno> {
    let cmdline = CString::new(cmdline).map_err(|_| Errno::INVAL)?;
    // The length counts the terminating NUL.
    let len = cmdline.as_bytes_with_nul().len();
    let (kernel, initrd) = (rustix::fd::AsRawFd::as_raw_fd(&kernel), rustix::fd::AsRawFd::as_raw_fd(&initrd));
    // SAFETY: the descriptors are plain integers; the command line is a NUL-terminated
    // string of `len` bytes that lives across the call, which only reads it; no flags.
    unsafe { syscall!(Sysno::kexec_file_load, kernel, initrd, len, cmdline.as_ptr(), 0) }.map(drop).map_err(errno)
}
