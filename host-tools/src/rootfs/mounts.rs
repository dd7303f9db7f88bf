//! The mount table as this process sees it (`/proc/self/mountinfo`): what is mounted at
//! or under a directory. Nothing removes a tree that still has a file system mounted in
//! it (removing a bind mount of `/dev` removes the host's device nodes), and a shell's
//! mounts must be gone when it ends.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::host::fs_error::{FsError, io_error};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount points at `dir` or below it, in the order the kernel lists them. `dir` is
/// taken as it is spelled when it cannot be resolved (it may not exist yet).
pub fn mounted_under(dir: &Path) -> Result<Vec<PathBuf>, FsError> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let table = std::fs::read_to_string(MOUNTINFO).map_err(io_error("read", Path::new(MOUNTINFO)))?;
    Ok(mount_points(&table).into_iter().filter(|point| point.starts_with(&dir)).collect())
}

/// The mount points of a mountinfo table: the fifth field of each line, with the
/// kernel's octal escapes (`\040` for a space, `\012` for a newline) undone.
pub fn mount_points(table: &str) -> Vec<PathBuf> {
    table.lines().filter_map(|line| line.split(' ').nth(4)).map(unescape).collect()
}

fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStrExt;

    /// What the kernel writes for a mount point (`seq_path` with " \t\n\\").
    fn escape(path: &Path) -> String {
        let mut out = String::new();
        for &byte in path.as_os_str().as_bytes() {
            match byte {
                b' ' | b'\t' | b'\n' | b'\\' => out.push_str(&format!("\\{byte:03o}")),
                _ => out.push(char::from(byte)),
            }
        }
        out
    }

    #[test]
    fn mount_points_are_the_fifth_field_unescaped() {
        let table = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                     36 35 98:0 /mnt1 /srv/a\\040b\\012c rw,noatime master:1 - ext3 /dev/root rw\n\
                     37 35 98:0 / /x\\134y rw - ext3 /dev/root rw\n";
        assert_eq!(mount_points(table), [PathBuf::from("/proc"), PathBuf::from("/srv/a b\nc"), PathBuf::from("/x\\y")]);
    }

    #[test]
    fn a_backslash_without_three_octal_digits_stays() {
        assert_eq!(unescape("/a\\9b\\04"), PathBuf::from("/a\\9b\\04"));
    }

    #[test]
    fn proc_itself_is_mounted_under_proc() {
        let points = mounted_under(Path::new("/proc")).unwrap();
        assert!(points.contains(&PathBuf::from("/proc")), "{points:?}");
    }

    proptest! {
        #[test]
        fn mount_points_round_trip(path in "(/[a-z \t\n\\\\]{1,6}){1,4}") {
            let line = format!("36 35 98:0 / {} rw - ext4 /dev/vda rw\n", escape(Path::new(&path)));
            prop_assert_eq!(mount_points(&line), [PathBuf::from(&path)]);
        }
    }
}
