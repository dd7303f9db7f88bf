//! Links the binaries without any C library or start files: `appliance_init::entry!`
//! provides `_start`, and every system call goes through rustix's raw Linux backend.
//! Static glibc alone weighs 680 KB; the whole init is a fraction of that this way.
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--gc-sections"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
