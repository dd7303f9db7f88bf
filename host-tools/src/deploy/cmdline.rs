//! The kernel command line of an app dir, exactly as `appliance run` builds it: the base
//! parameters, the app dir's `cmdline`, then the caller's words. Disk images and boot trees
//! take it from here, so a machine booted any other way runs the same appliance.

use std::path::{Path, PathBuf};

use crate::vm::qemu::base_kernel_params;

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] appliance_cmdline::Error),
}

/// `console=ttyS0 panic=-1 [quiet]`, the words of `before`, the app dir's `cmdline` (one
/// or more words a line), then `after`; for a parameter given twice the last one wins.
/// Fails when the line is longer than the kernel takes.
pub fn kernel_line(
    app_dir: &Path,
    kernel_log: bool,
    before: &[String],
    after: &[String],
) -> Result<String, CmdlineError> {
    let mut words: Vec<String> = base_kernel_params(kernel_log).into_iter().map(String::from).collect();
    words.extend(before.iter().cloned());
    let file = app_dir.join("cmdline");
    if file.exists() {
        let text =
            std::fs::read_to_string(&file).map_err(|source| CmdlineError::Read { path: file.clone(), source })?;
        words.extend(text.split('\n').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    }
    words.extend(after.iter().cloned());
    let line = words.join(" ");
    appliance_cmdline::check_len(&line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_then_before_then_the_app_dirs_cmdline_then_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cmdline"), "appArgs='a b'\n\n  appEnd=poweroff \n").unwrap();
        let line = kernel_line(dir.path(), false, &["appIp=10.0.2.15/24".into()], &["appDebug".into()]).unwrap();
        assert_eq!(line, "console=ttyS0 panic=-1 quiet appIp=10.0.2.15/24 appArgs='a b' appEnd=poweroff appDebug");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(kernel_line(empty.path(), true, &[], &[]).unwrap(), "console=ttyS0 panic=-1");
        let long = vec!["x".repeat(3000)];
        assert!(matches!(kernel_line(empty.path(), true, &[], &long), Err(CmdlineError::Invalid(_))));
    }
}
