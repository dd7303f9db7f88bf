//! `appliance netboot`: a boot tree for a lab's TFTP or HTTP server, with the app dir's
//! kernel, initrd and command line exactly as `appliance run` builds it:
//!
//! - `pxelinux.0`, `ldlinux.c32` and `pxelinux.cfg/default` (one entry, the default): for
//!   machines whose firmware's PXE loads a boot file over TFTP (legacy BIOS; Debian's
//!   `pxelinux` and `syslinux-common`);
//! - `boot.ipxe`: an iPXE script, for iPXE (chained, or the firmware of QEMU's NICs),
//!   which fetches the kernel and the initrd relative to the script's own URL, over HTTP
//!   or TFTP;
//! - `vmlinuz`, `initrd`, and `cmdline` (the line, for the record), with their
//!   `SHA256SUMS`: the tree is also an app dir a running appliance can kexec into
//!   (`appEnd=kexec appKexec=http://SERVER/`).

use std::path::{Path, PathBuf};

use crate::host::fs_error::{FsError, io_error};

/// Debian's PXELINUX (`pxelinux`) and its core module (`syslinux-common`).
pub const PXELINUX: &str = "/usr/lib/PXELINUX/pxelinux.0";
pub const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The names in the tree.
pub const PXELINUX_FILE: &str = "pxelinux.0";
pub const IPXE_SCRIPT: &str = "boot.ipxe";
/// What an x86-64 UEFI machine's PXE may load from the tree, in order of preference; the
/// tree has none of them unless one is copied in: iPXE for UEFI (Debian's `ipxe`:
/// `/usr/lib/ipxe/snponly.efi`, which drives the firmware's own NIC driver, or `ipxe.efi`),
/// which then chains `boot.ipxe`; or a unified kernel image, booted by the firmware itself.
pub const EFI_BOOT_FILES: [&str; 3] = ["snponly.efi", "ipxe.efi", "appliance.efi"];

/// The first of [`EFI_BOOT_FILES`] in the tree `dir`.
pub fn efi_boot_file(dir: &Path) -> Option<&'static str> {
    EFI_BOOT_FILES.into_iter().find(|name| dir.join(name).is_file())
}

#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    #[error("no {what} in the app dir {}: build it with `appliance build`", app_dir.display())]
    NotAnAppDir { app_dir: PathBuf, what: &'static str },
    #[error("no {} : install PXELINUX (Debian/Ubuntu: `apt-get install pxelinux syslinux-common`)", path.display())]
    NoPxelinux { path: PathBuf },
    #[error(
        "the command line has a `$`, which iPXE would expand as a setting: {0}; \
         quote it differently or put the commands in appCmdsFile"
    )]
    Dollar(String),
    #[error(transparent)]
    Io(#[from] FsError),
}

/// The PXELINUX configuration: one entry, booted at once.
pub fn pxelinux_config(cmdline: &str) -> String {
    format!(
        "# Written by `appliance netboot`: the appliance, booted at once.\n\
         DEFAULT appliance\nPROMPT 0\nTIMEOUT 0\n\n\
         LABEL appliance\n  KERNEL vmlinuz\n  INITRD initrd\n  APPEND {cmdline}\n"
    )
}

/// The iPXE script. Relative names resolve against the script's URL, so the same script
/// works over HTTP and TFTP. `initrd=initrd` names the initrd for the kernel's EFI stub
/// when iPXE runs under UEFI; the init ignores it.
pub fn ipxe_script(cmdline: &str) -> Result<String, NetbootError> {
    if cmdline.contains('$') {
        return Err(NetbootError::Dollar(cmdline.to_string()));
    }
    Ok(format!(
        "#!ipxe\n# Written by `appliance netboot`.\nkernel vmlinuz initrd=initrd {cmdline}\ninitrd initrd\nboot\n"
    ))
}

/// Writes the boot tree of `app_dir` with `cmdline` into `dir` (created if needed).
pub fn write_tree(app_dir: &Path, cmdline: &str, dir: &Path) -> Result<(), NetbootError> {
    for what in ["vmlinuz", "initrd"] {
        if !app_dir.join(what).exists() {
            return Err(NetbootError::NotAnAppDir { app_dir: app_dir.to_path_buf(), what });
        }
    }
    for path in [PXELINUX, LDLINUX] {
        if !Path::new(path).exists() {
            return Err(NetbootError::NoPxelinux { path: path.into() });
        }
    }
    let script = ipxe_script(cmdline)?;
    std::fs::create_dir_all(dir.join("pxelinux.cfg")).map_err(io_error("create", dir))?;
    let copy = |from: &Path, name: &str| {
        let to = dir.join(name);
        // Resolves symbolic links (an app dir's vmlinuz often is one): the server gets a file.
        std::fs::copy(from, &to).map(drop).map_err(io_error("copy into", &to))
    };
    copy(&app_dir.join("vmlinuz"), "vmlinuz")?;
    copy(&app_dir.join("initrd"), "initrd")?;
    copy(Path::new(PXELINUX), PXELINUX_FILE)?;
    copy(Path::new(LDLINUX), "ldlinux.c32")?;
    let write = |name: &str, text: &str| {
        let to = dir.join(name);
        std::fs::write(&to, text).map_err(io_error("write", &to))
    };
    write("pxelinux.cfg/default", &pxelinux_config(cmdline))?;
    write(IPXE_SCRIPT, &script)?;
    write("cmdline", &format!("{cmdline}\n"))?;
    crate::image::sums::write_sums(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_entries_carry_the_whole_command_line() {
        let line = "console=ttyS0 panic=-1 quiet appArgs='hello from the appliance'";
        let pxe = pxelinux_config(line);
        assert!(pxe.contains("DEFAULT appliance\n") && pxe.contains(&format!("  APPEND {line}\n")), "{pxe}");
        let ipxe = ipxe_script(line).unwrap();
        assert!(ipxe.starts_with("#!ipxe\n"));
        assert!(ipxe.contains(&format!("kernel vmlinuz initrd=initrd {line}\ninitrd initrd\nboot\n")), "{ipxe}");
        assert!(matches!(ipxe_script("appCmds='echo $HOME'"), Err(NetbootError::Dollar(_))));
    }
}
