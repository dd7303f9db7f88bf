//! The `appliance build` command as users run it: real images from `images/`, a real
//! static init, the host's bash and libraries, and GNU cpio reading the result.
//!
//! The kernel is a stand-in bzImage (a setup header and nothing else) so these tests
//! need no network; `kernel::tests` fetches the real one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const APPLIANCE: &str = env!("CARGO_BIN_EXE_appliance");
/// How the init is built (host-tools/deps.sh); the CLI runs it and names it in errors.
const INIT_BUILD: &str = "cargo build --release -q --manifest-path init/Cargo.toml --target-dir target";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A static program to stand in for appliance-init and the workspace's programs; `None`
/// where gcc cannot link statically.
fn static_program(dir: &Path, name: &str) -> Option<PathBuf> {
    let program = dir.join(name);
    let mut child = Command::new("gcc")
        .args(["-static", "-x", "c", "-", "-o"])
        .arg(&program)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(b"int main(void){return 0;}").ok()?;
    child.wait().ok()?.success().then_some(program)
}

/// Just enough of a bzImage for the builder to read its version.
fn fake_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("bzImage");
    let mut bytes = vec![0u8; 0x400];
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    let version = b"6.1.0-99-test (test@example) #1 SMP\0";
    bytes[0x300..0x300 + version.len()].copy_from_slice(version);
    fs::write(&path, bytes).unwrap();
    path
}

struct Setup {
    dir: tempfile::TempDir,
    init: PathBuf,
    kernel: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    // Not a skip: a test that cannot run must not count as passed.
    let init = static_program(dir.path(), "appliance-init")
        .expect("gcc cannot link a static program: install gcc and libc6-dev (tests/run does)");
    let kernel = fake_kernel(dir.path());
    Setup { dir, init, kernel }
}

fn appliance(setup: &Setup, cwd: &Path, args: &[&str]) -> Output {
    Command::new(APPLIANCE)
        .args(args)
        .current_dir(cwd)
        .env("APPLIANCE_INIT", &setup.init)
        .env("APPLIANCE_PROGRAM_DIR", setup.dir.path())
        .env("APPLIANCE_CACHE", setup.dir.path().join("cache"))
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `cpio -tv` of a zstd-compressed initrd, one line per member, spaces squeezed.
fn listing(initrd: &Path) -> Vec<String> {
    let compressed = fs::read(initrd).unwrap();
    let archive = zstd::decode_all(&compressed[..]).unwrap();
    let mut cpio =
        Command::new("cpio").args(["-tv", "--quiet"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    cpio.stdin.take().unwrap().write_all(&archive).unwrap();
    let output = cpio.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn member<'a>(listing: &'a [String], name: &str) -> &'a str {
    listing
        .iter()
        .find(|line| line.ends_with(&format!(" {name}")) || line.contains(&format!(" {name} -> ")))
        .unwrap_or_else(|| panic!("{name} not in the initrd:\n{}", listing.join("\n")))
}

#[test]
fn bash_tools_image_has_bash_its_libraries_and_the_merged_usr_links() {
    let setup = setup();
    assert!(
        have("cpio") && Path::new("/bin/bash").exists(),
        "cannot run: needs GNU cpio and /bin/bash (tests/run installs them)"
    );
    let out = setup.dir.path().join("app");
    let output = appliance(
        &setup,
        &workspace(),
        &["build", "bash-tools", "-o", out.to_str().unwrap(), "--kernel", setup.kernel.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), out.to_str().unwrap());
    assert!(stderr(&output).contains("built bash-tools"), "{}", stderr(&output));

    let files = listing(&out.join("initrd"));
    assert!(member(&files, "init").starts_with("-rwxr-xr-x "));
    assert!(member(&files, "dev/console").starts_with("crw------- 1 root root 5, 1 "));
    assert!(member(&files, "dev/null").starts_with("crw-rw-rw- 1 root root 1, 3 "));
    for dir in ["proc", "sys", "dev", "run", "tmp", "root", "etc", "app"] {
        assert!(member(&files, dir).starts_with('d'), "{dir}");
    }
    for script in ["app/run", "app/prerun", "app/postrun"] {
        assert!(member(&files, script).starts_with("-rwxr-xr-x "), "{script}");
    }
    // Merged /usr: the host's symlinks come along with the files behind them.
    let bin = fs::read_link("/bin").ok();
    if let Some(target) = bin {
        let line = member(&files, "bin");
        assert!(line.ends_with(&format!("bin -> {}", target.display())), "{line}");
    }
    let bash = fs::canonicalize("/bin/bash").unwrap();
    member(&files, bash.to_str().unwrap().trim_start_matches('/'));
    assert!(files.iter().any(|line| line.ends_with("/libc.so.6")));
    assert!(files.iter().any(|line| line.contains("ld-linux-x86-64.so.2")));

    assert_eq!(fs::read_to_string(out.join("cmdline")).unwrap(), "appArgs='hello \"two words\"'\n");
    let facts: serde_json::Value = serde_json::from_slice(&fs::read(out.join("appliance.json")).unwrap()).unwrap();
    assert_eq!(facts["image"], "bash-tools");
    assert_eq!(facts["compression"], "zstd");
    assert_eq!(facts["kernel_version"], "6.1.0-99-test");
    assert_eq!(facts["initrd_size"].as_u64().unwrap(), fs::metadata(out.join("initrd")).unwrap().len());
    assert_eq!(facts["entries"].as_u64().unwrap() as usize, files.len());
    assert_eq!(fs::read(out.join("vmlinuz")).unwrap(), fs::read(&setup.kernel).unwrap());
}

#[test]
fn rebuilding_gives_a_byte_identical_initrd() {
    let setup = setup();
    let kernel = setup.kernel.to_str().unwrap();
    let mut initrds = Vec::new();
    for name in ["first", "second"] {
        let out = setup.dir.path().join(name);
        let output = appliance(
            &setup,
            &workspace(),
            &["-q", "build", "images/bash-tools", "-o", out.to_str().unwrap(), "--kernel", kernel],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        initrds.push(fs::read(out.join("initrd")).unwrap());
    }
    assert_eq!(initrds[0], initrds[1]);
}

#[test]
fn hello_image_takes_its_program_from_the_program_dir() {
    let setup = setup();
    static_program(setup.dir.path(), "appliance-hello").unwrap();
    let out = setup.dir.path().join("hello");
    let output = appliance(
        &setup,
        &workspace(),
        &[
            "build",
            "hello",
            "-o",
            out.to_str().unwrap(),
            "--kernel",
            setup.kernel.to_str().unwrap(),
            "--compression",
            "gzip",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let facts: serde_json::Value = serde_json::from_slice(&fs::read(out.join("appliance.json")).unwrap()).unwrap();
    assert_eq!(facts["compression"], "gzip");
    assert_eq!(fs::read(out.join("initrd")).unwrap()[..2], [0x1f, 0x8b], "gzip magic");
}

#[test]
fn default_out_dir_is_under_the_current_directory() {
    let setup = setup();
    let cwd = setup.dir.path().join("cwd");
    let image = cwd.join("images/tiny");
    fs::create_dir_all(&image).unwrap();
    fs::write(
        image.join("appliance.toml"),
        format!("description = \"tiny\"\nkernel = \"{}\"\ncompression = \"none\"\n", setup.kernel.display()),
    )
    .unwrap();
    let output = appliance(&setup, &cwd, &["build", "tiny"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "out/tiny");
    assert!(cwd.join("out/tiny/initrd").is_file());
    assert!(cwd.join("out/tiny/vmlinuz").is_file());
    assert_eq!(fs::read_to_string(cwd.join("out/tiny/cmdline")).unwrap(), "\n");
    assert!(stderr(&output).contains("nothing to run"), "warns about the missing /app/run: {}", stderr(&output));
}

#[test]
fn unknown_image_lists_the_available_ones() {
    let setup = setup();
    let output = appliance(&setup, &workspace(), &["build", "no-such-image"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("no image \"no-such-image\""), "{message}");
    assert!(message.contains("bash-tools"), "{message}");
    assert!(message.contains("hello"), "{message}");
}

#[test]
fn unknown_manifest_field_names_field_and_file() {
    let setup = setup();
    let image = setup.dir.path().join("bad");
    fs::create_dir(&image).unwrap();
    fs::write(image.join("appliance.toml"), "description = \"d\"\nhostfiles = []\n").unwrap();
    let output = appliance(&setup, setup.dir.path(), &["build", image.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("bad/appliance.toml"), "{message}");
    assert!(message.contains("unknown field `hostfiles`"), "{message}");
}

#[test]
fn a_dynamic_init_is_refused() {
    let mut setup = setup();
    setup.init = PathBuf::from("/bin/bash");
    let output = appliance(&setup, &workspace(), &["build", "hello", "--kernel", setup.kernel.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("the init /bin/bash is dynamically linked"), "{message}");
}

/// Without APPLIANCE_INIT, the init must sit next to the executable; a copy of the CLI
/// in an empty directory (not a checkout's target directory, where it would build the
/// init) shows the error users get.
#[test]
fn missing_init_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("appliance");
    fs::copy(APPLIANCE, &exe).unwrap();
    let output = Command::new(&exe)
        .args(["build", "hello"])
        .current_dir(workspace())
        .env_remove("APPLIANCE_INIT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains(&format!("appliance-init not found next to {}", exe.display())), "{message}");
    assert!(message.contains(INIT_BUILD), "{message}");
    assert!(message.contains("APPLIANCE_INIT"), "{message}");
}

/// A new user's first build: `cargo build --release` at the top leaves the init (a
/// workspace of its own) unbuilt, and `appliance build` run from the checkout's target
/// directory builds it where it then finds it. The checkout is a stand-in whose init is
/// an empty static program, so that the build takes seconds.
#[test]
fn a_missing_init_is_built_in_the_checkout_the_cli_runs_from() {
    let setup = setup();
    static_program(setup.dir.path(), "appliance-hello").unwrap();
    let checkout = setup.dir.path().join("checkout");
    fs::create_dir_all(checkout.join("init/src")).unwrap();
    fs::write(
        checkout.join("init/Cargo.toml"),
        "[package]\nname = \"appliance-init\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .unwrap();
    fs::write(checkout.join("init/src/main.rs"), "fn main() {}\n").unwrap();
    // Static, as the image requires of its init.
    fs::create_dir(checkout.join(".cargo")).unwrap();
    fs::write(checkout.join(".cargo/config.toml"), "[build]\nrustflags = [\"-C\", \"target-feature=+crt-static\"]\n")
        .unwrap();
    let exe = checkout.join("target/debug/appliance");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    fs::copy(APPLIANCE, &exe).unwrap();
    let build = |out: &str| {
        let out = setup.dir.path().join(out);
        Command::new(&exe)
            .args(["build", "hello", "-o", out.to_str().unwrap(), "--kernel", setup.kernel.to_str().unwrap()])
            .current_dir(workspace())
            .env_remove("APPLIANCE_INIT")
            .env("APPLIANCE_PROGRAM_DIR", setup.dir.path())
            .env("APPLIANCE_CACHE", setup.dir.path().join("cache"))
            .env("CARGO", env!("CARGO"))
            // The stand-in's flags are its configuration's.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap()
    };

    let first = build("first");
    assert!(first.status.success(), "{}", stderr(&first));
    let running = format!("running `{INIT_BUILD}` in {}", checkout.display());
    assert!(stderr(&first).contains(&running), "{}", stderr(&first));
    assert!(checkout.join("target/release/appliance-init").is_file());

    let second = build("second");
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!stderr(&second).contains("cargo build"), "built again: {}", stderr(&second));
}

#[test]
fn help_describes_the_build_command() {
    let output = Command::new(APPLIANCE).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("build"), "{help}");
    let output = Command::new(APPLIANCE).args(["build", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for option in ["--out", "--compression", "--kernel", "gzip", "APPLIANCE_INIT"] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}
