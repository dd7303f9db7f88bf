//! `appliance cpio <verb>` as users run it, against archives we write, archives GNU cpio
//! writes, and hand-made hostile ones.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use appliance_host::archive::compress::{Compression, Encoder};
use appliance_host::archive::cpio::read;
use appliance_host::archive::cpio::tree::{self, UnpackOptions};

const APPLIANCE: &str = env!("CARGO_BIN_EXE_appliance");

fn appliance(cwd: &Path, args: &[&str]) -> Output {
    Command::new(APPLIANCE).args(args).current_dir(cwd).env_remove("SOURCE_DATE_EPOCH").output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn need(tool: &str) {
    let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(found, "cannot run: {tool} is not installed (tests/run installs what the tests need)");
}

/// Runs `command` with `input` on stdin, returns stdout.
fn filter(command: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// A small tree: files of several sizes and modes, a nested directory, symlinks.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("usr/share/locale/de")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("usr/share/locale/de/x.mo"), vec![7u8; 3000]).unwrap();
    fs::write(root.join("etc/motd"), "hello\n").unwrap();
    fs::write(root.join("big"), (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect::<Vec<_>>()).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("/etc/motd", root.join("etc/issue")).unwrap();
}

fn names(listing: &str) -> Vec<String> {
    listing.lines().map(|line| line.split_whitespace().nth(2).unwrap().to_owned()).collect()
}

/// A newc member by hand, for names our writer refuses to write.
fn newc_member(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let fields = [1, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn newc(members: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, mode, data) in members {
        newc_member(&mut out, name, *mode, data);
    }
    newc_member(&mut out, "TRAILER!!!", 0, b"");
    out
}

#[test]
fn pack_is_byte_identical_for_the_same_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    for compression in Compression::ALL {
        let name = compression.name();
        ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", &format!("one.{name}"), "-c", name]));
        // Other times and another creation order must not matter.
        fs::File::open(src.join("etc/motd")).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
        fs::remove_file(src.join("big")).unwrap();
        fs::write(src.join("big"), (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect::<Vec<_>>()).unwrap();
        ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", &format!("two.{name}"), "-c", name]));
        let one = fs::read(dir.path().join(format!("one.{name}"))).unwrap();
        let two = fs::read(dir.path().join(format!("two.{name}"))).unwrap();
        assert_eq!(one, two, "{name}");
        let archive = read::read_bytes(&one).unwrap();
        assert!(archive.members.iter().all(|m| m.mtime == 0 && m.uid == 0 && m.gid == 0), "{name}");
        let inodes: Vec<u32> = archive.members.iter().map(|m| m.ino).collect();
        assert_eq!(inodes, (1..=archive.members.len() as u32).collect::<Vec<_>>());
    }
}

#[test]
fn compression_is_detected_by_magic_not_by_name_and_gnu_tools_agree() {
    for tool in ["cpio", "gzip", "zstd", "xz", "lz4"] {
        need(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    sample_tree(&dir.path().join("src"));
    let mut listings = Vec::new();
    for compression in Compression::ALL {
        // A misleading name on purpose.
        let out = format!("archive-{}.gz", compression.name());
        ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", &out, "-c", compression.name()]));
        let bytes = fs::read(dir.path().join(&out)).unwrap();
        assert_eq!(read::read_bytes(&bytes).unwrap().segments, [compression]);
        let listing = ok(appliance(dir.path(), &["cpio", "ls", &out]));
        let plain = match compression {
            Compression::None => bytes,
            _ => filter(Command::new(compression.name()).arg("-dc"), &bytes),
        };
        let gnu = String::from_utf8(filter(Command::new("cpio").args(["-t", "--quiet"]), &plain)).unwrap();
        assert_eq!(gnu.lines().collect::<Vec<_>>(), names(&listing), "{compression}");
        listings.push(listing);
    }
    assert!(listings.windows(2).all(|w| w[0] == w[1]));
    let listing = &listings[0];
    assert!(listing.contains("lrwxrwxrwx          7 bin -> usr/bin"), "{listing}");
    assert!(listing.contains("-rwxr-xr-x         20 usr/bin/tool"), "{listing}");
}

#[test]
fn reads_and_unpacks_gnu_cpio_archives_in_every_compression() {
    for tool in ["cpio", "gzip", "zstd", "xz", "lz4"] {
        need(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    // A hard link: GNU cpio stores the contents with the last name only.
    fs::hard_link(src.join("etc/motd"), src.join("etc/motd.link")).unwrap();
    let find = Command::new("find").arg(".").current_dir(&src).output().unwrap().stdout;
    let plain = filter(Command::new("cpio").args(["-o", "-H", "newc", "--quiet"]).current_dir(&src), &find);
    for (name, compressor) in [
        ("none", None),
        ("gzip", Some(vec!["gzip", "-c"])),
        ("zstd", Some(vec!["zstd", "-c", "-q"])),
        ("xz", Some(vec!["xz", "-c", "--check=crc32"])),
        ("lz4-legacy", Some(vec!["lz4", "-l", "-c", "-q"])),
        ("lz4-frame", Some(vec!["lz4", "-c", "-q"])),
        ("lz4-frame-linked", Some(vec!["lz4", "-BD", "-B4", "-c", "-q"])),
    ] {
        let bytes = match compressor {
            None => plain.clone(),
            Some(argv) => filter(Command::new(argv[0]).args(&argv[1..]), &plain),
        };
        let archive = dir.path().join(format!("gnu-{name}"));
        fs::write(&archive, &bytes).unwrap();
        let archive = archive.to_str().unwrap();
        let out = dir.path().join(format!("out-{name}"));
        ok(appliance(dir.path(), &["-q", "cpio", "unpack", archive, out.to_str().unwrap()]));
        assert_eq!(fs::read(out.join("etc/motd.link")).unwrap(), b"hello\n", "{name}");
        assert_eq!(fs::read(out.join("big")).unwrap(), fs::read(src.join("big")).unwrap(), "{name}");
        assert_eq!(fs::read_link(out.join("bin")).unwrap(), Path::new("usr/bin"));
        let fsck = appliance(dir.path(), &["cpio", "fsck", archive, "src"]);
        assert!(fsck.status.success(), "{name}: {}", String::from_utf8_lossy(&fsck.stdout));
    }
}

#[test]
fn concatenated_archives_read_as_one_later_members_winning() {
    let dir = tempfile::tempdir().unwrap();
    let early = newc(&[("kernel", 0o40755, b""), ("kernel/microcode.bin", 0o100644, b"ucode")]);
    let mut main = Vec::new();
    let mut encoder = Encoder::new(&mut main, Compression::Zstd).unwrap();
    encoder.write_all(&newc(&[("etc", 0o40755, b""), ("etc/motd", 0o100644, b"first\n")])).unwrap();
    encoder.finish().unwrap();
    let mut extra = Vec::new();
    let mut encoder = Encoder::new(&mut extra, Compression::Gzip).unwrap();
    encoder.write_all(&newc(&[("etc/motd", 0o100600, b"second\n")])).unwrap();
    encoder.finish().unwrap();
    let mut all = early;
    all.extend(main);
    all.extend([0u8; 512]);
    all.extend(extra);
    fs::write(dir.path().join("initrd"), &all).unwrap();
    let listing = ok(appliance(dir.path(), &["cpio", "ls", "initrd"]));
    assert_eq!(names(&listing), ["kernel", "kernel/microcode.bin", "etc", "etc/motd", "etc/motd"]);
    ok(appliance(dir.path(), &["-q", "cpio", "unpack", "initrd", "out"]));
    assert_eq!(fs::read(dir.path().join("out/etc/motd")).unwrap(), b"second\n");
    assert_eq!(fs::metadata(dir.path().join("out/etc/motd")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::read(dir.path().join("out/kernel/microcode.bin")).unwrap(), b"ucode");
}

#[test]
fn unpack_refuses_dot_dot_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["../x", "a/../../x", "ok/../../../x"] {
        fs::write(dir.path().join("evil"), newc(&[("first", 0o100644, b"1"), (name, 0o100644, b"pwned")])).unwrap();
        let output = appliance(dir.path(), &["cpio", "unpack", "evil", "out/inner"]);
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(name) && stderr.contains("`..`"), "{stderr}");
        assert!(!dir.path().join("out/inner/first").exists(), "nothing is written for {name}");
        assert!(!dir.path().join("x").exists() && !dir.path().join("out/x").exists());
    }
}

#[test]
fn unpack_puts_absolute_names_inside_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("abs-marker");
    let name = format!("{}/x", marker.display());
    fs::write(dir.path().join("abs"), newc(&[(&name, 0o100644, b"inside"), ("/etc/y", 0o100644, b"y")])).unwrap();
    ok(appliance(dir.path(), &["-q", "cpio", "unpack", "abs", "out"]));
    assert!(!marker.exists());
    let inside = dir.path().join("out").join(name.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"inside");
    assert_eq!(fs::read(dir.path().join("out/etc/y")).unwrap(), b"y");
}

#[test]
fn unpack_never_writes_through_a_symlink_pointing_out() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), "original").unwrap();
    let target = outside.to_str().unwrap().as_bytes();
    // A directory symlink out, then a file through it.
    fs::write(
        dir.path().join("evil"),
        newc(&[("link", 0o120777, target), ("link/victim", 0o100644, b"pwned"), ("link/new", 0o100644, b"pwned")]),
    )
    .unwrap();
    let output = appliance(dir.path(), &["cpio", "unpack", "evil", "out"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("link/victim") && stderr.contains("symlink"), "{stderr}");
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    assert!(!outside.join("new").exists());
    // A relative link climbing out is no better.
    fs::write(dir.path().join("evil2"), newc(&[("up", 0o120777, b"../../outside"), ("up/new", 0o100644, b"x")]))
        .unwrap();
    assert_eq!(appliance(dir.path(), &["cpio", "unpack", "evil2", "out2/sub"]).status.code(), Some(2));
    assert!(!outside.join("new").exists());
    // A file member at a symlink's own path replaces the link, not its target.
    let victim = outside.join("victim");
    fs::write(
        dir.path().join("evil3"),
        newc(&[("file", 0o120777, victim.to_str().unwrap().as_bytes()), ("file", 0o100644, b"replaced")]),
    )
    .unwrap();
    ok(appliance(dir.path(), &["-q", "cpio", "unpack", "evil3", "out3"]));
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    assert_eq!(fs::read(dir.path().join("out3/file")).unwrap(), b"replaced");
    // A link that stays inside the tree is followed.
    fs::write(
        dir.path().join("fine"),
        newc(&[("usr/lib", 0o40755, b""), ("lib", 0o120777, b"usr/lib"), ("lib/libc.so", 0o100644, b"libc")]),
    )
    .unwrap();
    ok(appliance(dir.path(), &["-q", "cpio", "unpack", "fine", "out4"]));
    assert_eq!(fs::read(dir.path().join("out4/usr/lib/libc.so")).unwrap(), b"libc");
}

#[test]
fn device_nodes_are_skipped_with_a_note_without_root() {
    let bytes = newc(&[("dev", 0o40755, b""), ("dev/null", 0o20666, b""), ("etc", 0o40755, b"")]);
    let mut archive = read::read_bytes(&bytes).unwrap();
    archive.members[1].rdev_major = 1;
    archive.members[1].rdev_minor = 3;
    let dir = tempfile::tempdir().unwrap();
    let report = tree::unpack(&archive, dir.path(), UnpackOptions { devices: false, owners: false }).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0.name, "dev/null");
    assert!(report.skipped[0].1.contains("root"));
    assert!(!dir.path().join("dev/null").exists());
    if rustix::process::geteuid().is_root() {
        let dir = tempfile::tempdir().unwrap();
        tree::unpack(&archive, dir.path(), UnpackOptions::for_current_user()).unwrap();
        let metadata = fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
        assert_eq!(metadata.rdev(), rustix::fs::makedev(1, 3));
    }
}

#[test]
fn add_merge_filter_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    sample_tree(&path.join("src"));
    ok(appliance(path, &["-q", "cpio", "pack", "src", "-o", "base", "-c", "gzip"]));
    fs::create_dir_all(path.join("extra/opt/app")).unwrap();
    fs::write(path.join("extra/opt/app/run"), "run").unwrap();
    fs::write(path.join("extra/motd"), "new motd").unwrap();
    ok(appliance(path, &["-q", "cpio", "add", "base", "-C", "extra", "opt", "-o", "added"]));
    let listing = ok(appliance(path, &["cpio", "ls", "added"]));
    assert!(names(&listing).contains(&"opt/app/run".to_owned()), "{listing}");
    assert_eq!(read::read_file(&path.join("added")).unwrap().segments, [Compression::Gzip]);

    // diff: names only, then with contents; exit 1 on differences.
    let diff = appliance(path, &["cpio", "diff", "base", "added"]);
    assert_eq!(diff.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&diff.stdout), "+ /opt\n+ /opt/app\n+ /opt/app/run\n");
    assert_eq!(appliance(path, &["cpio", "diff", "base", "base"]).status.code(), Some(0));

    // merge: B over A.
    ok(appliance(path, &["-q", "cpio", "pack", "extra", "-o", "b", "-c", "xz"]));
    ok(appliance(path, &["-q", "cpio", "merge", "base", "b", "-o", "merged"]));
    let merged = read::read_file(&path.join("merged")).unwrap();
    assert_eq!(merged.segments, [Compression::Gzip], "the first archive's compression");
    ok(appliance(path, &["-q", "cpio", "unpack", "merged", "m"]));
    assert_eq!(fs::read(path.join("m/motd")).unwrap(), b"new motd");
    assert_eq!(fs::read(path.join("m/etc/motd")).unwrap(), b"hello\n");
    // Replace a member through add, then compare contents.
    fs::write(path.join("extra/etc-motd"), "changed\n").unwrap();
    fs::create_dir_all(path.join("x/etc")).unwrap();
    fs::write(path.join("x/etc/motd"), "changed!\n").unwrap();
    ok(appliance(path, &["-q", "cpio", "add", "merged", "-C", "x", "etc/motd"]));
    let diff = ok_or_one(appliance(path, &["cpio", "diff", "--content", "base", "merged"]));
    assert!(diff.contains("~ /etc/motd: size 6 -> 9, sha256 "), "{diff}");
    assert!(diff.contains("+ /motd\n"), "{diff}");

    // filter
    ok(appliance(
        path,
        &["-q", "cpio", "filter", "merged", "--drop", "usr/share/locale", "**/*.mo", "/opt", "-o", "small"],
    ));
    let listing = names(&ok(appliance(path, &["cpio", "ls", "small"])));
    assert!(!listing.iter().any(|n| n.starts_with("usr/share/locale") || n.starts_with("opt")), "{listing:?}");
    assert!(listing.contains(&"usr/share".to_owned()) && listing.contains(&"etc/motd".to_owned()));
}

fn ok_or_one(output: Output) -> String {
    assert!(matches!(output.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn du_lists_the_largest_first() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(&dir.path().join("src"));
    ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", "a"]));
    let du = ok(appliance(dir.path(), &["cpio", "du", "a"]));
    let lines: Vec<&str> = du.lines().collect();
    assert!(lines[0].ends_with("/big"), "{du}");
    assert!(lines[1].ends_with("/usr/share/locale/de/x.mo"), "{du}");
    assert!(lines.last().unwrap().contains("total"), "{du}");
    let dirs = ok(appliance(dir.path(), &["cpio", "du", "--dirs", "-n", "3", "a"]));
    assert!(dirs.lines().nth(1).unwrap().ends_with("/usr"), "{dirs}");
}

#[test]
fn fsck_reports_what_differs_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    sample_tree(&src);
    ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", "a", "-c", "lz4"]));
    assert_eq!(appliance(dir.path(), &["cpio", "fsck", "a", "src"]).status.code(), Some(0));
    fs::write(src.join("etc/motd"), "hullo\n").unwrap();
    fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(src.join("big")).unwrap();
    fs::remove_file(src.join("bin")).unwrap();
    symlink("usr/sbin", src.join("bin")).unwrap();
    fs::write(src.join("new"), "").unwrap();
    let output = appliance(dir.path(), &["cpio", "fsck", "a", "src"]);
    assert_eq!(output.status.code(), Some(1));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("- /big\n"), "{report}");
    assert!(report.contains("~ /etc/motd: sha256 "), "{report}");
    assert!(report.contains("~ /usr/bin/tool: mode 0755 -> 0700"), "{report}");
    assert!(report.contains("~ /bin: size 7 -> 8, sha256"), "{report}");
    assert!(!report.contains("/new"), "{report}");
    let extra = String::from_utf8(appliance(dir.path(), &["cpio", "fsck", "--extra", "a", "src"]).stdout).unwrap();
    assert!(extra.contains("+ /new\n"), "{extra}");
}

#[test]
fn edit_repacks_with_the_same_compression() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(&dir.path().join("src"));
    ok(appliance(dir.path(), &["-q", "cpio", "pack", "src", "-o", "a", "-c", "xz"]));
    ok(appliance(dir.path(), &["-q", "cpio", "edit", "a", "--command", "rm big && echo added > etc/new"]));
    let archive = read::read_file(&dir.path().join("a")).unwrap();
    assert_eq!(archive.segments, [Compression::Xz]);
    let names: Vec<&str> = archive.members.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"etc/new") && !names.contains(&"big"), "{names:?}");
    // A failing edit leaves the archive alone.
    let before = fs::read(dir.path().join("a")).unwrap();
    let output = appliance(dir.path(), &["cpio", "edit", "a", "--command", "rm -r etc; exit 3"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), before);
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("junk"), "this is not an archive").unwrap();
    let output = appliance(dir.path(), &["cpio", "ls", "junk"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("junk") && stderr.contains("magic"), "{stderr}");
    let mut truncated = newc(&[("a", 0o100644, b"0123456789")]);
    truncated.truncate(120);
    fs::write(dir.path().join("short"), truncated).unwrap();
    let stderr = String::from_utf8(appliance(dir.path(), &["cpio", "ls", "short"]).stderr).unwrap();
    assert!(stderr.contains("short") && stderr.contains("truncated"), "{stderr}");
}

/// The archive writer's own error named no file ("cannot write the archive"): the
/// output's path is what the user needs. A file size limit makes the write fail past
/// the 1 MiB write buffer, inside the archive writer.
#[test]
fn a_failed_write_names_the_output() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("tree")).unwrap();
    fs::write(dir.path().join("tree/big"), vec![1u8; 3 << 20]).unwrap();
    let output = Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 100; exec \"$0\" cpio pack tree -o out.cpio -c none", APPLIANCE])
        .current_dir(dir.path())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot write out.cpio: File too large"), "{stderr}");
    assert!(!stderr.contains("the archive"), "{stderr}");
    assert!(!dir.path().join("out.cpio").exists());
}
