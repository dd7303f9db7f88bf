//! The error of an I/O operation on a path: one type for the many modules whose error
//! enums say "cannot ACTION PATH" (each holds it as a transparent `Io` variant); and
//! removing a path whatever it is.

use std::io;
use std::path::{Path, PathBuf};

/// "cannot ACTION PATH", with the I/O error as its source.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// For `map_err`: the I/O error of `action` on `path`; `?` turns it into the caller's error.
pub fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError { action, path: path.to_owned(), source }
}

/// Removes `path`: a directory with everything in it, or a file or symlink.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_failed_on_which_path_with_the_cause_as_source() {
        let err = io_error("read", Path::new("/x/y"))(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(err.to_string(), "cannot read /x/y");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source, Some(io::Error::from(io::ErrorKind::NotFound).to_string()));
    }
}
