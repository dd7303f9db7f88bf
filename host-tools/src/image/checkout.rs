//! The project checkout the running `appliance` was built in, and building the init there.
//!
//! The init is a workspace of its own (`init/`: it must build without std), so `cargo
//! build --release` at the top builds the CLI but not the init. When [`super::Tools`]
//! finds no init and the executable runs from a cargo target directory inside a checkout,
//! `appliance build` builds the init itself, with the command `appliance_build_release`
//! in `host-tools/deps.sh` and the tests' `tools()` run, into the target directory it
//! runs from, which is where [`super::Tools`] looks. Anywhere else, the error says what to
//! run.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use super::INIT_NAME;

/// The init's own workspace, from the checkout's top directory.
pub const INIT_MANIFEST: &str = "init/Cargo.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run `{command}` in {}", root.display())]
    Spawn {
        command: String,
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the init failed: `{command}` in {} exited with {status}", root.display())]
    Failed { command: String, root: PathBuf, status: ExitStatus },
}

/// A checkout of the project, and the cargo target directory in it that the running
/// executable came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The top directory: the one holding `init/Cargo.toml`.
    pub root: PathBuf,
    /// Holds `release/` and `debug/`; `target` in the usual layout.
    pub target_dir: PathBuf,
}

impl Checkout {
    /// The checkout `exe` was built in: `exe` is in a profile directory (`debug/` or
    /// `release/`) of a target directory, and the nearest directory above that holds the
    /// init's workspace. `None` for an executable installed anywhere else.
    pub fn of(exe: &Path) -> Option<Checkout> {
        let profile_dir = exe.parent()?;
        if !matches!(profile_dir.file_name()?.to_str()?, "debug" | "release") {
            return None;
        }
        let target_dir = profile_dir.parent()?;
        let root = target_dir.ancestors().skip(1).find(|dir| is_init_workspace(&dir.join(INIT_MANIFEST)))?;
        Some(Checkout { root: root.to_owned(), target_dir: target_dir.to_owned() })
    }

    /// `cargo build` of the init's workspace (the init, and the image programs such as
    /// `appliance-hello`) for release into the target directory, run from the top
    /// directory: with the usual `target`, the very command of `host-tools/deps.sh`.
    /// `$CARGO` is the cargo to run when set (under `cargo run` and `cargo test`).
    pub fn init_build_command(&self) -> Command {
        let cargo = std::env::var_os("CARGO").filter(|cargo| !cargo.is_empty()).unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(init_build_args(self.target_dir.strip_prefix(&self.root).unwrap_or(&self.target_dir)));
        command.current_dir(&self.root);
        command
    }

    /// Runs [`Checkout::init_build_command`], saying so first: a first build takes a
    /// minute.
    pub fn build_init(&self) -> Result<(), Error> {
        let mut command = self.init_build_command();
        let line = command_line(&command);
        log::info!("{INIT_NAME} is not built yet: running `{line}` in {}", self.root.display());
        let status = command.status().map_err(|source| Error::Spawn {
            command: line.clone(),
            root: self.root.clone(),
            source,
        })?;
        if !status.success() {
            return Err(Error::Failed { command: line, root: self.root.clone(), status });
        }
        Ok(())
    }
}

/// The arguments of `cargo` that build the init's workspace into `target_dir`.
fn init_build_args(target_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["build", "--release", "-q", "--manifest-path", INIT_MANIFEST, "--target-dir"].map(OsString::from).into();
    args.push(target_dir.into());
    args
}

/// The command that builds the init in a checkout with the usual layout, for messages.
pub fn init_build_line() -> String {
    let args = init_build_args(Path::new("target"));
    command_line(Command::new("cargo").args(args))
}

/// `program arg...` for people; the program by its file name (`$CARGO` is a full path).
fn command_line(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(program).chain(command.get_args()).map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
}

/// Whether `manifest` is the init's `Cargo.toml` (and not another project's `init/`).
fn is_init_workspace(manifest: &Path) -> bool {
    let Ok(text) = fs::read_to_string(manifest) else { return false };
    let Ok(table) = text.parse::<toml::Table>() else { return false };
    table.get("package").and_then(|package| package.get("name")).and_then(|name| name.as_str()) == Some(INIT_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout_at(root: &Path, package: &str) {
        fs::create_dir_all(root.join("init")).unwrap();
        fs::write(root.join(INIT_MANIFEST), format!("[package]\nname = \"{package}\"\n")).unwrap();
    }

    #[test]
    fn the_checkout_is_found_above_the_target_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src/appliance");
        checkout_at(&root, INIT_NAME);
        for profile in ["release", "debug"] {
            let exe = root.join("target").join(profile).join("appliance");
            let checkout = Checkout::of(&exe).unwrap();
            assert_eq!(checkout, Checkout { root: root.clone(), target_dir: root.join("target") });
        }
        // A target directory of another name, deeper down.
        let exe = root.join("build/host/release/appliance");
        assert_eq!(Checkout::of(&exe).unwrap().target_dir, root.join("build/host"));
    }

    #[test]
    fn no_checkout_outside_a_target_directory_or_of_another_project() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        checkout_at(root, INIT_NAME);
        // Copied into the checkout, but not into a target directory: the init built
        // into a target directory would not be next to it.
        assert_eq!(Checkout::of(&root.join("bin/appliance")), None);
        assert_eq!(Checkout::of(&root.join("appliance")), None);

        let other = tempfile::tempdir().unwrap();
        checkout_at(other.path(), "something-else");
        assert_eq!(Checkout::of(&other.path().join("target/release/appliance")), None);

        let nothing = tempfile::tempdir().unwrap();
        assert_eq!(Checkout::of(&nothing.path().join("target/release/appliance")), None);
    }

    #[test]
    fn the_init_is_built_as_deps_sh_builds_it() {
        let line = init_build_line();
        assert_eq!(line, "cargo build --release -q --manifest-path init/Cargo.toml --target-dir target");
        let deps_sh = include_str!("../../deps.sh");
        assert!(deps_sh.lines().any(|l| l.trim() == line), "host-tools/deps.sh builds the init otherwise");

        let root = PathBuf::from("/src/appliance");
        let checkout = Checkout { root: root.clone(), target_dir: root.join("target") };
        let command = checkout.init_build_command();
        assert_eq!(command.get_args().collect::<Vec<_>>(), line.split(' ').skip(1).collect::<Vec<_>>());
        assert_eq!(command.get_current_dir(), Some(root.as_path()));
    }
}
