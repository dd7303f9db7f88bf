//! The `SHA256SUMS` of an app dir: the SHA-256 of its kernel, initrd and command line, in
//! `sha256sum` format, which an appliance checks before it kexecs into the app dir
//! (`appEnd=kexec`) and any host checks with `sha256sum -c`. Written by `appliance
//! build` beside the files, so that the list comes with the app dir wherever it is served.

use std::fs::File;
use std::io;
use std::path::Path;

use appliance_cmdline::kexec::{KEXEC_FILES, SUMS_FILE, render_sums};
use sha2::{Digest, Sha256};

use crate::host::fs_error::{FsError, io_error};

/// The SHA-256 of a file, read in a stream.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], FsError> {
    let mut file = File::open(path).map_err(io_error("read", path))?;
    let mut hash = Sha256::new();
    io::copy(&mut file, &mut hash).map_err(io_error("read", path))?;
    Ok(hash.finalize().into())
}

/// Writes `dir/SHA256SUMS` for the files an appliance fetches to kexec into `dir`
/// (following symlinks: the sums are of what a server sends). A file that is missing is a
/// failure: a list without it would make every kexec into the app dir fail.
pub fn write_sums(dir: &Path) -> Result<(), FsError> {
    let sums = KEXEC_FILES
        .iter()
        .map(|name| Ok((name.to_string(), sha256_file(&dir.join(name))?)))
        .collect::<Result<Vec<_>, FsError>>()?;
    let path = dir.join(SUMS_FILE);
    std::fs::write(&path, render_sums(&sums)).map_err(io_error("write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sha256sum -c` accepts, and the known sums of known contents.
    #[test]
    fn writes_sha256sum_format_over_the_three_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("vmlinuz", "k"), ("initrd", ""), ("cmdline", "appArgs=x\n")] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        write_sums(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SUMS_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  initrd");
        if let Ok(o) = std::process::Command::new("sha256sum").arg("-c").arg(SUMS_FILE).current_dir(dir.path()).output()
        {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        }
        std::fs::remove_file(dir.path().join("initrd")).unwrap();
        assert!(write_sums(dir.path()).is_err());
    }
}
