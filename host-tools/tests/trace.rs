//! `appliance trace` on real programs of the host: fork and exec chains, the scripted
//! mode, a library found only by `dlopen`, exit statuses, and a chroot into a reference
//! root built from a trace.
//!
//! Temporary files live under Cargo's target directory: `/tmp` is excluded from traces
//! by default.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance_host::trace;

#[path = "../../tests/data/dlopen.rs"]
mod dlopen;
use dlopen::build_dlopen_program;

fn appliance() -> Command {
    Command::new(env!("CARGO_BIN_EXE_appliance"))
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("trace-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `appliance trace ARGS` and returns the list it printed, and its output.
fn trace_list(args: &[&str]) -> (BTreeSet<PathBuf>, Output) {
    let output = appliance().arg("trace").args(args).output().expect("appliance runs");
    let list = trace::parse_list(&String::from_utf8_lossy(&output.stdout));
    (list, output)
}

/// [`trace_list`] in the C locale.
fn trace_list_in_c(args: &[&str]) -> (BTreeSet<PathBuf>, Output) {
    let output = appliance().arg("trace").args(args).env("LC_ALL", "C").output().expect("appliance runs");
    let list = trace::parse_list(&String::from_utf8_lossy(&output.stdout));
    (list, output)
}

fn real(path: &str) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn assert_listed(list: &BTreeSet<PathBuf>, path: &Path, output: &Output) {
    assert!(
        list.contains(path),
        "{} not listed:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn fork_and_exec_chain_is_followed() {
    let (list, output) = trace_list(&["--root", "/", "--", "sh", "-c", "sh -c 'cat /etc/hostname'"]);
    assert!(output.status.success(), "{output:?}");
    assert_listed(&list, &real("/usr/bin/cat"), &output);
    assert_listed(&list, &real("/bin/sh"), &output);
    assert_listed(&list, Path::new("/etc/hostname"), &output);
    assert_listed(&list, Path::new("/usr/bin"), &output);
    // The cat's output went to standard error, away from the list.
    let hostname = fs::read_to_string("/etc/hostname").unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains(hostname.trim()), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("traced 3 process(es)"), "{stderr}");
}

#[test]
fn libraries_come_from_the_trace_and_the_elf_headers() {
    let (list, output) = trace_list(&["--root", "/", "--", "/bin/bash", "-c", "true"]);
    assert!(output.status.success(), "{output:?}");
    let names: Vec<String> =
        list.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("libc.so")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("libtinfo")), "{names:?}");
    // The program's own name, with the merged-/usr link on the way.
    if fs::symlink_metadata("/bin").unwrap().file_type().is_symlink() {
        assert_listed(&list, Path::new("/bin"), &output);
    }
    assert_listed(&list, &real("/bin/bash"), &output);
    // Nothing from the default exclusions, nothing that does not exist.
    for path in &list {
        assert!(fs::symlink_metadata(path).is_ok(), "{} listed but missing", path.display());
        for excluded in trace::DEFAULT_EXCLUDES {
            assert!(!path.starts_with(excluded), "{} is excluded", path.display());
        }
    }
}

#[test]
fn scripted_mode_runs_every_line_and_writes_the_list() {
    let dir = scratch();
    let commands = dir.path().join("commands");
    fs::write(&commands, "# the app\nls /\n\ndate\n").unwrap();
    let out = dir.path().join("list");
    let output = appliance()
        .args(["trace", "--root", "/", "--commands"])
        .arg(&commands)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "the list went to --out: {output:?}");
    let text = fs::read_to_string(&out).unwrap();
    let list = trace::parse_list(&text);
    assert_listed(&list, &real("/usr/bin/ls"), &output);
    assert_listed(&list, &real("/usr/bin/date"), &output);
    // Sorted, one per line, each once.
    let lines: Vec<&str> = text.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(lines, sorted);
}

#[test]
fn exit_status_is_the_commands() {
    let (_, output) = trace_list(&["--root", "/", "--", "sh", "-c", "exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let (_, output) = trace_list(&["--root", "/", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(output.status.code(), Some(128 + 9), "{output:?}");
}

#[test]
fn a_library_loaded_with_dlopen_is_listed() {
    let dir = scratch();
    let (program, plugin) = build_dlopen_program(dir.path());
    // Not in the ELF headers: only the trace can know.
    let object = appliance_host::rootfs::elf::inspect_elf(&program).unwrap();
    assert!(!object.needed.iter().any(|n| n.contains("plug")), "{:?}", object.needed);
    // The scratch directory may lie under /tmp (a checkout there), which the default
    // exclusions leave out.
    let (list, output) = trace_list(&["--root", "/", "--no-default-excludes", "--", program.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert_listed(&list, &plugin, &output);
    assert_listed(&list, &program, &output);
}

/// A reference root made from a trace of the host; tracing again inside it (chrooted)
/// finds the same files.
#[test]
fn chrooted_trace_of_a_reference_root() {
    // The C locale: the host's locale files are excluded, and a locale found on the host
    // but not in the root would change what the second run looks for.
    let (list, output) = trace_list_in_c(&["--root", "/", "--", "/bin/sh", "-c", "ls /"]);
    assert!(output.status.success(), "{output:?}");
    let dir = scratch();
    let root = dir.path().join("root");
    for path in &list {
        let target = root.join(path.strip_prefix("/").unwrap());
        let metadata = fs::symlink_metadata(path).unwrap();
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        if metadata.file_type().is_symlink() {
            symlink(fs::read_link(path).unwrap(), &target).unwrap();
        } else if metadata.is_dir() {
            fs::create_dir_all(&target).unwrap();
        } else {
            fs::copy(path, &target).unwrap();
        }
    }
    let (again, output) = trace_list_in_c(&["--root", root.to_str().unwrap(), "--", "/bin/sh", "-c", "ls /"]);
    assert!(output.status.success(), "{output:?}");
    let missing: Vec<&PathBuf> = list.difference(&again).collect();
    assert!(missing.is_empty(), "not found in the chroot: {missing:?}\n{output:?}");
    // The chrooted ls listed the root's top directory, not the host's.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("proc\n"), "{stderr}");
    assert!(stderr.contains("usr\n"), "{stderr}");
}

/// The interactive mode reads the shell's commands from standard input (a terminal
/// usually; a pipe here).
#[test]
fn interactive_shell_traces_what_is_typed() {
    use std::io::Write;
    let mut child = appliance()
        .args(["trace", "--root", "/", "--shell"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"wc -l /etc/hostname\nexit 0\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let list = trace::parse_list(&String::from_utf8_lossy(&output.stdout));
    assert_listed(&list, &real("/usr/bin/wc"), &output);
    assert_listed(&list, Path::new("/etc/hostname"), &output);
}
