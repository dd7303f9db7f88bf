//! The project's own kernels: `appliance kernel build` compiles each series Debian's
//! archive ships (5.10 from bullseye, 6.1 from bookworm, 6.12 from bookworm-backports)
//! with the base fragment, fetching the source with apt when it is not installed; the
//! check passes on the result, and images/hello, the NFS results step and the 9p results
//! step work on it without any module. The kernels are cached in the user's cache
//! (`~/.cache/appliance/kernels/build`, the fetched sources in `apt-src/`), so only the
//! first run on a machine downloads and compiles (the README says how long each takes);
//! later runs take seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_tests::{KERNEL_BUILD_TIMEOUT, appliance, boot, build, image, project_kernel, root, run_bounded};
use tempfile::TempDir;

/// Debian 12's source of 6.1, installed by host-tools/deps.sh.
const SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

/// `appliance kernel build --series SERIES` once per series and test process; its
/// bzImage. One build at a time: they share the cache's lock anyway.
fn kernel_of(series: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bzimage) = built.get(series) {
        return bzimage.clone();
    }
    let bzimage = project_kernel(series, &[]);
    built.insert(series.to_owned(), bzimage.clone());
    bzimage
}

/// The 6.1 kernel: Debian 12's installed source.
fn kernel() -> &'static Path {
    static BZIMAGE: OnceLock<PathBuf> = OnceLock::new();
    BZIMAGE.get_or_init(|| {
        assert!(
            Path::new(SOURCE).is_file(),
            "cannot run: {SOURCE} is missing: `apt-get install linux-source-6.1` (tests/run installs what the tests need)"
        );
        kernel_of("6.1")
    })
}

/// Writes a result file and a line of output; the results step must bring both back. The
/// init has made `$APP_RESULTS` (the default `/app/results`).
const RESULTS_RUN: &str = r#"#!/bin/sh
echo "result of $(cat /proc/sys/kernel/osrelease)" > "$APP_RESULTS/kernel.txt"
echo "run done"
"#;

/// The results event of a boot: whether it succeeded, where to, its error.
fn results_event(b: &appliance_tests::Boot) -> (bool, String, Option<String>) {
    b.events
        .iter()
        .find_map(|e| match e {
            Event::Results { ok, dest, error, .. } => Some((*ok, dest.clone(), error.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no results event: {:?}\n{}\n{}", b.events, b.console, b.stderr))
}

/// The series' kernel passes the check, boots images/hello, and brings results back
/// over NFS (DHCP, nfs-ganesha on the host; NFS and virtio-net built in, no module) and
/// over virtio 9p.
fn boots_hello_and_both_results_steps(series: &str) {
    let bzimage = kernel_of(series);
    let kernel = bzimage.to_str().unwrap();
    let dir = bzimage.parent().unwrap();
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    let header = config.lines().find(|line| line.ends_with("Kernel Configuration")).unwrap_or_default();
    assert!(header.contains(&format!(" {series}.")), "a {series} kernel: {header}");
    let o = appliance().args(["kernel", "check", "--series", series]).arg(dir.join("config")).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&o.stderr));

    // A source fetched from Debian's archive is in the cache's list, kept by a prune;
    // anything else of its suite there (apt's lists, which a fetch now removes, or a
    // killed fetch's work) is named for removal.
    let suite = [("5.10", "bullseye"), ("6.12", "bookworm-backports")].into_iter().find(|(s, _)| *s == series);
    if let Some((_, suite)) = suite {
        let o = appliance().args(["kernel", "cache", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&o.stdout);
        let tarball = format!("{suite}/linux-source-{series}.tar.xz");
        let of_suite: Vec<&str> = list.lines().filter(|l| l.contains(&format!(" {suite}/"))).collect();
        assert!(
            of_suite.iter().any(|l| l.starts_with("tarball") && l.contains(&tarball) && l.contains("keeps: ")),
            "{list}"
        );
        assert!(of_suite.iter().all(|l| l.starts_with("tarball") || l.contains("removes: ")), "{list}");
    }

    // Built with the project's patches, and booted with the APIC timer's period: the
    // kernel says it skipped the calibration (with apic=verbose).
    let facts: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    assert_eq!(facts["patches"], serde_json::json!(["lapic-timer-period", "no-initmem-poison"]), "{facts}");
    let hz: u32 = config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=")).unwrap().parse().unwrap();

    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    let b = boot(&app, &["--kernel", kernel, "--kernel-log", "--", "apic=verbose"]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("hello: wrote /app/results/hello.txt");
    b.assert_console(&format!("lapic timer already calibrated {}", 1_000_000_000 / hz));
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));

    let img = image(
        &tmp.path().join("results-image"),
        "description = \"results on a built kernel\"\nhost_files = [\"/bin/sh\", \"/usr/bin/cat\", \"/usr/bin/mkdir\"]\n",
        &[("run", RESULTS_RUN)],
    );
    let app = build(&img, &tmp.path().join("results-image"));
    for via in ["nfs", "9p"] {
        let results = tmp.path().join(format!("results-{via}"));
        let b = boot(&app, &["--kernel", kernel, "--results", results.to_str().unwrap(), "--results-via", via]);
        assert_eq!(b.code, 0, "{via}: {b:?}");
        let (ok, dest, error) = results_event(&b);
        assert!(ok, "{via}: {error:?}\n{}", b.console);
        if via == "9p" {
            assert!(dest.starts_with("9p:results/"), "{dest}");
        }
        let run = std::fs::read_dir(&results).unwrap().next().expect("a run directory").unwrap().path();
        let text = std::fs::read_to_string(run.join("results/kernel.txt"))
            .unwrap_or_else(|e| panic!("{via}: {e}: {:?}\n{}", std::fs::read_dir(&run).map(|d| d.count()), b.console));
        assert!(text.starts_with(&format!("result of {series}.")), "{via}: {text}");
        assert!(std::fs::read_to_string(run.join("output")).unwrap().contains("run done"), "{via}");
    }
}

#[test]
fn kernel_5_10_from_bullseye_boots_hello_and_both_results_steps() {
    boots_hello_and_both_results_steps("5.10");
}

#[test]
fn kernel_6_1_boots_hello_and_both_results_steps() {
    kernel();
    boots_hello_and_both_results_steps("6.1");
}

#[test]
fn kernel_6_12_from_bookworm_backports_boots_hello_and_both_results_steps() {
    boots_hello_and_both_results_steps("6.12");
}

#[test]
fn builds_6_1_from_debian_source_checks_it_and_boots_hello_without_modules() {
    let bzimage = kernel();
    let dir = bzimage.parent().unwrap();
    let size = std::fs::metadata(bzimage).unwrap().len();
    assert!(size <= 2_500_000, "bzImage is {size} bytes, over the 2.5 MB target");
    assert!(dir.join("vmlinux").is_file());
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    assert!(!config.contains("\nCONFIG_MODULES=y"), "the base kernel has no module support");
    assert!(config.contains("\nCONFIG_VIRTIO_NET=y") && config.contains("\nCONFIG_PVH=y"));

    // The check on the built configuration: everything requested survived.
    let o = appliance().args(["kernel", "check"]).arg(dir.join("config")).args(["--source", SOURCE]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("requested options kept (base.config, series/6.1/base.config)"), "{stdout}");

    // hello boots on it, through `appliance run --kernel <bzImage>`, with no module
    // loaded (the kernel cannot load any; the initrd's, packed for Debian's kernel and
    // its release, are never looked at).
    let tmp = TempDir::new().unwrap();
    let app = build(&root().join("images/hello"), tmp.path());
    let b = boot(&app, &["--kernel", bzimage.to_str().unwrap()]);
    assert_eq!(b.code, 0, "{b:?}");
    b.assert_console("arg[1]=hello");
    b.assert_console("hello: wrote /app/results/hello.txt");
    assert_eq!(b.end(), Some(("poweroff".into(), 0)));
    assert!(b.stderr.contains("run status 0, poweroff; kernel→/init"), "{}", b.stderr);

    // The exit status of the application comes through this kernel too.
    let b = boot(&app, &["--kernel", bzimage.to_str().unwrap(), "--args", "exit=3"]);
    assert_eq!(b.code, 3, "{b:?}");
}

#[test]
fn an_unchanged_build_is_a_cache_hit_and_build_names_it() {
    let bzimage = kernel();
    let started = Instant::now();
    let o = run_bounded(appliance().args(["kernel", "build", "--series", "6.1"]), Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), bzimage.to_str().unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("from the cache"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "a cache hit took {:?}", started.elapsed());

    // The environment variable picks the series as --series does.
    let o = appliance().args(["kernel", "build"]).env("APPLIANCE_KERNEL_SERIES", "6.1").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), bzimage.to_str().unwrap());

    // A manifest names it `build:6.1`: the app dir gets this kernel.
    let tmp = TempDir::new().unwrap();
    let image = tmp.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(
        image.join("appliance.toml"),
        "description = \"hello on the project's kernel\"\nkernel = \"build:6.1\"\n\
         [programs]\n\"/app/run\" = \"appliance-hello\"\n",
    )
    .unwrap();
    let app = build(&image, tmp.path());
    assert_eq!(std::fs::read(app.join("vmlinuz")).unwrap(), std::fs::read(bzimage).unwrap());
    // And `appliance run --kernel build:6.1` resolves to the same file on pc; on microvm
    // (the default for it) to the vmlinux beside it, booted through PVH.
    let dry = |machine: &str| {
        let o = appliance()
            .args(["run"])
            .arg(&app)
            .args(["--kernel", "build:6.1", "--machine", machine, "--dry-run"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let line = dry("pc");
    assert!(line.contains(&format!("-kernel {}", bzimage.display())), "{line}");
    let line = dry("auto");
    assert!(line.contains(&format!("-kernel {}", bzimage.with_file_name("vmlinux").display())), "{line}");
}

/// `appliance kernel cache` on the real cache: the kernel just built (or taken from the
/// cache, which records its directories then) is kept, with the source and the object
/// directory its build.json names; a dry run removes nothing.
#[test]
fn the_cache_keeps_the_kernel_in_use_with_its_source_and_objects() {
    let bzimage = kernel();
    let o = run_bounded(appliance().args(["kernel", "build", "--series", "6.1"]), Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = bzimage.parent().unwrap();
    let facts: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    let key = dir.file_name().unwrap().to_str().unwrap();
    let (Some(source), Some(objects)) = (facts["source_tree"].as_str(), facts["object_dir"].as_str()) else {
        panic!("build.json names no source tree or object directory: {facts}")
    };
    let o = run_bounded(appliance().args(["kernel", "cache"]), Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    for (kind, name) in [("build", key), ("source", source), ("objects", objects)] {
        let line = list.lines().find(|l| l.starts_with(kind) && l.contains(name));
        assert!(line.is_some_and(|l| l.contains("keeps:")), "{kind} {name} is not kept:\n{list}");
    }
    let o = run_bounded(appliance().args(["kernel", "cache", "prune", "--dry-run"]), Duration::from_secs(120));
    let dry = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && dry.contains("nothing removed"), "{dry}");
    assert!(![key, source, objects].iter().any(|name| dry.contains(name)), "{dry}");
    let root = dir.parent().unwrap();
    assert!(bzimage.is_file() && root.join("src").join(source).is_dir() && root.join("obj").join(objects).is_dir());
}

/// `appliance kernel cache prune` on a cache of its own (APPLIANCE_CACHE): a superseded
/// build and the source only it used go, the newest build and its source stay; with a
/// build holding the cache's lock, nothing goes and the error says why.
#[test]
fn prune_removes_a_superseded_build_and_waits_for_no_running_build() {
    let tmp = TempDir::new().unwrap();
    let builds = tmp.path().join("kernels/build");
    for (key, built_at, source) in
        [("6.1-tinyconfig-old", 1, "linux-source-6.1-a"), ("6.1-tinyconfig-new", 2, "linux-source-6.1-b")]
    {
        std::fs::create_dir_all(builds.join(key)).unwrap();
        std::fs::create_dir_all(builds.join("src").join(source)).unwrap();
        std::fs::write(builds.join("src").join(source).join("Makefile"), "x").unwrap();
        let facts = serde_json::json!({
            "release": "6.1.1-appliance", "version": "6.1.1", "series": "6.1", "base": "tinyconfig",
            "fragments": ["base.config", "series/6.1/base.config"], "source": SOURCE, "key": key, "checked": 1,
            "patches": [], "build_seconds": 1, "steps": 1, "built_at": built_at, "source_tree": source,
        });
        std::fs::write(builds.join(key).join("build.json"), facts.to_string()).unwrap();
    }
    let cache = |args: &[&str]| {
        appliance().arg("kernel").arg("cache").args(args).env("APPLIANCE_CACHE", tmp.path()).output().unwrap()
    };

    let lock = std::fs::File::create(builds.join(".lock")).unwrap();
    lock.lock().unwrap();
    let o = cache(&["prune"]);
    assert!(!o.status.success(), "prune went ahead under a build's lock");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("a kernel build or fetch is running"), "{err}");
    assert!(builds.join("6.1-tinyconfig-old").is_dir());
    drop(lock);

    let o = cache(&["prune"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("removed build 6.1-tinyconfig-old") && out.contains("superseded by 6.1-tinyconfig-new"),
        "{out}"
    );
    assert!(out.contains("removed source linux-source-6.1-a"), "{out}");
    assert!(!builds.join("6.1-tinyconfig-old").exists() && !builds.join("src/linux-source-6.1-a").exists());
    assert!(builds.join("6.1-tinyconfig-new").is_dir() && builds.join("src/linux-source-6.1-b").is_dir());
    let list = String::from_utf8_lossy(&cache(&[]).stdout).into_owned();
    assert!(list.contains("would free 0 B"), "{list}");
}

/// The check with the real Kconfig files: the built kernel was not made with the
/// networking topic, so its options are lost, each with the dependency that dropped it.
#[test]
fn check_names_the_dependency_that_dropped_an_option() {
    let config = kernel().parent().unwrap().join("config");
    let o =
        appliance().args(["kernel", "check"]).arg(&config).args(["-f", "net", "--source", SOURCE]).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let netem = stdout.split("CONFIG_NET_SCH_NETEM: wanted y, got absent (net.config:").nth(1).expect("netem lost");
    assert!(netem.lines().nth(1).unwrap().contains("depends on NET_SCHED, which is n (NET_SCHED=n)"), "{stdout}");
}

/// A build whose fragments take away what base.config needs is refused before the
/// compile, naming the options lost and the dependency that dropped them.
#[test]
fn a_build_that_loses_requested_options_is_refused() {
    kernel();
    let tmp = TempDir::new().unwrap();
    let fragment = tmp.path().join("no-net.config");
    std::fs::write(
        &fragment,
        "# No networking: base.config's sockets and drivers must be reported lost.\n# CONFIG_NET is not set\n",
    )
    .unwrap();
    // Bounded like a build: it waits for the cache's lock while another build runs.
    let o = run_bounded(
        appliance().args(["kernel", "build", "--series", "6.1", "-f"]).arg(&fragment),
        KERNEL_BUILD_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the resolved configuration lost"), "{stderr}");
    let inet = stderr.split("CONFIG_INET: wanted y, got absent (base.config:").nth(1).expect("INET reported");
    assert!(inet.lines().nth(1).unwrap().contains("depends on NET, which is n (NET=n)"), "{stderr}");
    assert!(o.stdout.is_empty(), "no kernel path printed");
}
