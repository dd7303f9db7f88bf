//! The program runtime: process entry, arguments and environment, the allocator and the
//! panic policy, for binaries linked without a C library (see `build.rs`).
//!
//! There is no crate that starts a program without libc on stable Rust (origin needs the
//! unstable parts of rustix), so the entry point is these few lines of assembly.

use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::CStr;

/// Defines `_start`, the global allocator and the panic handler for a binary, and calls
/// `$main(args: rt::Args) -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // `cargo clippy --all-targets` also builds binaries as (std) test programs:
        // nothing of this belongs there.
        #[cfg(not(test))]
        core::arch::global_asm!(
            ".globl _start",
            "_start:",
            // Outermost frame; the kernel leaves argc at the stack pointer.
            "xor ebp, ebp",
            "mov rdi, rsp",
            "and rsp, -16",
            "call {start}",
            "ud2",
            start = sym __appliance_start,
        );

        #[cfg(not(test))]
        unsafe extern "C" fn __appliance_start(sp: *const usize) -> ! {
            // SAFETY: `sp` is the initial stack pointer the kernel set up.
            let args = unsafe { $crate::rt::Args::from_stack(sp) };
            $main(args)
        }

        #[cfg(not(test))]
        #[global_allocator]
        static ALLOCATOR: $crate::rt::Allocator = $crate::rt::Allocator;

        #[cfg(not(test))]
        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::on_panic(info)
        }

        // The precompiled `core` refers to the unwinder's personality routine; with
        // `panic = "abort"` it is never called.
        #[cfg(not(test))]
        #[unsafe(no_mangle)]
        extern "C" fn rust_eh_personality() {}

        #[cfg(not(test))]
        $crate::export_mem!();
    };
}

/// dlmalloc over anonymous mmap, through rustix.
pub use rustix_dlmalloc::GlobalDlmalloc as Allocator;

/// The command-line arguments and the environment the kernel passed.
pub struct Args {
    pub argv: Vec<String>,
    pub envp: Vec<String>,
}

impl Args {
    /// Reads argc, argv and envp from the initial stack.
    ///
    /// # Safety
    /// `sp` must be the stack pointer at process entry.
    pub unsafe fn from_stack(sp: *const usize) -> Args {
        // SAFETY: the System V ABI lays out argc, argv[argc], NULL, envp..., NULL at `sp`.
        unsafe {
            let argc = *sp;
            let argv = sp.add(1) as *const *const core::ffi::c_char;
            let mut args = Vec::with_capacity(argc);
            for i in 0..argc {
                args.push(lossy(*argv.add(i)));
            }
            let mut envp = Vec::new();
            let mut e = argv.add(argc + 1);
            while !(*e).is_null() {
                envp.push(lossy(*e));
                e = e.add(1);
            }
            Args { argv: args, envp }
        }
    }
}

/// # Safety
/// `p` must point to a NUL-terminated string.
unsafe fn lossy(p: *const core::ffi::c_char) -> String {
    // SAFETY: guaranteed by the caller.
    String::from(unsafe { CStr::from_ptr(p) }.to_string_lossy())
}

/// Last resort: a panic in PID 1 would otherwise be a kernel panic. Say where, then
/// power off (PID 1) or exit 70 (`EX_SOFTWARE`, supervisor mode).
pub fn on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let msg = alloc::format!("appliance-init: internal error: {info}\n");
    crate::console::write_err(msg.as_bytes());
    if rustix::process::getpid().is_init() {
        rustix::fs::sync();
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    }
    crate::sys::exit(70)
}
