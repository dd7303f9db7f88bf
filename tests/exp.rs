//! `appliance exp` end to end: experiments of images/hello booted under QEMU (TCG), their
//! run directories, results and summary rows; failures and timeouts recorded while the
//! other runs go on; an interrupted batch resumed; Ctrl-C leaving no QEMU behind; and runs
//! of two VMs (images/echo) on private segments, meeting at a rendezvous.
//!
//! The results come back over the serial transport (no server, no root). One test at a
//! time: each already boots two VMs at once, which is all two shared cores take.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_tests::appliance;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bound on a whole batch of these tests' sizes under TCG on a loaded machine.
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// An experiment directory holding `definition`.
fn experiment(definition: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("exp-test-").tempdir().expect("temp dir");
    std::fs::write(dir.path().join("experiment.toml"), definition).expect("write experiment.toml");
    dir
}

/// `appliance exp ARGS`, killed (and with it its VMs, whose parent death signal is
/// SIGTERM) when dropped, so a failing test leaves nothing running.
struct Exp {
    child: Option<Child>,
}

impl Exp {
    fn start(args: &[&str]) -> Exp {
        let child = appliance()
            .arg("exp")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("appliance runs");
        Exp { child: Some(child) }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for the end, bounded; returns the exit code, stdout and stderr.
    fn wait(mut self) -> (i32, String, String) {
        let child = self.child.as_mut().expect("running");
        let started = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            assert!(started.elapsed() < BATCH_TIMEOUT, "appliance exp ran longer than {BATCH_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let o = self.child.take().expect("running").wait_with_output().expect("output");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

impl Drop for Exp {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `appliance exp ARGS` to its end.
fn exp(args: &[&str]) -> (i32, String, String) {
    Exp::start(args).wait()
}

/// The batch directory printed on stdout.
fn batch_dir(stdout: &str) -> PathBuf {
    PathBuf::from(stdout.lines().last().unwrap_or_else(|| panic!("no batch directory printed: {stdout:?}")))
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The summary's CSV as (header, rows).
fn csv(batch: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(batch.join("summary.csv")).expect("summary.csv");
    let header = reader.headers().expect("a header").iter().map(String::from).collect();
    let rows = reader.records().map(|r| r.expect("a row").iter().map(String::from).collect()).collect();
    (header, rows)
}

fn cell<'a>(header: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = header.iter().position(|h| h == column).unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    &row[i]
}

/// QEMU processes whose command line mentions `dir`.
fn qemus_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&needle))
        .collect()
}

/// Waits until `what` holds, bounded.
fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < bound, "{what} did not happen within {bound:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Files named `name` anywhere under `dir`.
fn count_files(dir: &Path, name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p, name) } else { usize::from(p.file_name().is_some_and(|n| n == name)) }
        })
        .sum()
}

#[test]
fn a_2x2_matrix_with_2_repetitions_gives_every_run_its_directory_results_and_summary_row() {
    let _serial = serial();
    let e = experiment(
        r#"timeout = 180
repetitions = 2
max_vms = 2
[matrix]
word = ["alpha", "beta"]
size = [1, 2]
[[node]]
image = "hello"
args = "{word} metric=size={size} metric=half={size}.5"
memory = 192
"#,
    );
    let dir = e.path().to_str().unwrap();
    let (code, out, err) = exp(&["run", dir]);
    assert_eq!(code, 0, "{err}");
    let batch = batch_dir(&out);
    for word in ["alpha", "beta"] {
        for size in [1, 2] {
            for rep in [1, 2] {
                let node = batch.join(format!("size={size},word={word}")).join(rep.to_string()).join("app-1");
                for file in ["console.log", "status.jsonl", "output", "params.json", "outcome.json"] {
                    assert!(node.join(file).is_file(), "{} missing\n{err}", node.join(file).display());
                }
                let hello = std::fs::read_to_string(node.join("results/hello.txt")).expect("hello.txt came back");
                assert!(hello.contains(&format!("arg[1]={word}")), "{hello}");
                let params = read_json(&node.join("params.json"));
                assert_eq!(params["params"]["size"], size);
                assert_eq!(params["params"]["word"], word);
                let outcome = read_json(&node.join("outcome.json"));
                assert_eq!(outcome["status"], "ok", "{outcome}");
                assert_eq!(outcome["metrics"]["size"], size as f64);
                assert!(outcome["phases_ms"]["run"].as_f64().is_some(), "{outcome}");
            }
        }
    }
    let (header, rows) = csv(&batch);
    assert_eq!(rows.len(), 8, "{rows:?}");
    for row in &rows {
        assert_eq!(cell(&header, row, "status"), "ok");
        assert_eq!(cell(&header, row, "exit"), "0");
        assert_eq!(cell(&header, row, "metric_size"), cell(&header, row, "size"));
        assert_eq!(
            cell(&header, row, "metric_half").parse::<f64>().unwrap(),
            cell(&header, row, "size").parse::<f64>().unwrap() + 0.5
        );
        assert!(cell(&header, row, "results_bytes").parse::<u64>().unwrap() > 0);
    }
    let json = read_json(&batch.join("summary.json"));
    assert_eq!(json.as_array().map(Vec::len), Some(8));

    // The report: a table per point and a plot of a metric against a parameter.
    let (code, out, err) = exp(&["report", dir, "--plot", "half", "--x", "size", "--by", "word"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("size=2,word=beta  (2 row(s), 0 failed)"), "{out}");
    let half = out.lines().skip_while(|l| !l.starts_with("size=2,word=beta")).find(|l| l.contains("app half"));
    let cols: Vec<&str> = half.unwrap_or_else(|| panic!("{out}")).split_whitespace().collect();
    // app half, n, mean, stddev, min, max
    assert_eq!(cols[2..], ["2", "2.5000", "0.0000", "2.5000", "2.5000"], "{out}");
    let svg = std::fs::read_to_string(batch.join("plot-half.svg")).expect("the plot");
    assert!(svg.contains("word=alpha") && svg.contains("word=beta"), "{svg}");
    let png = std::fs::read(batch.join("plot-half.png")).expect("the plot as PNG");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn a_failing_and_a_timed_out_run_are_recorded_while_the_others_finish() {
    let _serial = serial();
    // The time bound is far above a hello boot (under 15 s under TCG here) and far below
    // the sleep.
    let e = experiment(
        r#"timeout = 60
max_vms = 2
[matrix]
case = ["exit=0", "exit=3", "sleep=3600"]
[[node]]
image = "hello"
args = "{case}"
memory = 192
kernel_words = ["appStopGrace=25"]
"#,
    );
    let (code, out, err) = exp(&["run", e.path().to_str().unwrap(), "--stop-grace", "20"]);
    assert_eq!(code, 1, "some runs failed: {err}");
    // The guest's grace for its program is longer than the host's for the guest: said once.
    assert_eq!(err.matches("raise --stop-grace above 25 s").count(), 1, "{err}");
    let batch = batch_dir(&out);
    let outcome = |case: &str| read_json(&batch.join(format!("case={case}/1/app-1/outcome.json")));
    let ok = outcome("exit_0");
    assert_eq!(ok["status"], "ok", "{ok}");
    let failed = outcome("exit_3");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exit"], 3);
    assert!(failed["reason"].as_str().unwrap().contains("exited with 3"), "{failed}");
    let slow = outcome("sleep_3600");
    assert_eq!(slow["status"], "timeout", "{slow}");
    assert_eq!(slow["exit"], 124);
    assert!(slow["reason"].as_str().unwrap().contains("timed out after 60 s"), "{slow}");
    let (header, rows) = csv(&batch);
    let statuses: Vec<&str> = rows.iter().map(|r| cell(&header, r, "status")).collect();
    assert_eq!(statuses, ["ok", "failed", "timeout"]);
}

#[test]
fn resume_after_an_interrupted_batch_runs_only_the_missing_ones() {
    let _serial = serial();
    let e = experiment(
        r#"timeout = 180
max_vms = 1
[matrix]
n = [1, 2, 3]
[[node]]
image = "hello"
args = "run {n}"
memory = 192
"#,
    );
    let dir = e.path().to_str().unwrap();
    let first = Exp::start(&["run", dir]);
    let runs = e.path().join("runs");
    // Interrupted once the first run is complete and the second has started.
    wait_for("the first run's outcome and a second boot", BATCH_TIMEOUT, || {
        count_files(&runs, "outcome.json") == 1 && count_files(&runs, "console.log") == 2
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid()), nix::sys::signal::Signal::SIGINT).unwrap();
    let (code, out, err) = first.wait();
    assert_eq!(code, 130, "{err}");
    let batch = batch_dir(&out);
    assert!(qemus_under(e.path()).is_empty(), "QEMU left: {:?}", qemus_under(e.path()));
    let done = batch.join("n=1/1/app-1/outcome.json");
    let before = std::fs::read_to_string(&done).expect("the first run completed");
    assert!(!batch.join("n=3").exists(), "the third run started after the stop");

    let (code, out, err) = exp(&["run", dir, "--resume"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(batch_dir(&out), batch);
    assert!(err.contains("2 run(s) of 1 VM(s) to do (1 already complete)"), "{err}");
    assert_eq!(std::fs::read_to_string(&done).unwrap(), before, "a complete run was written again");
    assert!(batch.join("n=2/1.interrupted").is_dir(), "the interrupted run was not kept aside");
    let (_, rows) = csv(&batch);
    assert_eq!(rows.len(), 3, "{rows:?}");
    // Nothing is left to resume.
    let (code, _, err) = exp(&["run", dir, "--resume"]);
    assert_ne!(code, 0);
    assert!(err.contains("no run is left to do"), "{err}");
}

#[test]
fn ctrl_c_during_a_batch_leaves_no_qemu_process() {
    let _serial = serial();
    let e = experiment(
        r#"timeout = 300
max_vms = 2
[matrix]
n = [1, 2, 3, 4]
[[node]]
image = "hello"
args = "sleep=600"
memory = 192
"#,
    );
    let batch = Exp::start(&["run", e.path().to_str().unwrap(), "--stop-grace", "30"]);
    wait_for("two VMs running", BATCH_TIMEOUT, || qemus_under(e.path()).len() == 2);
    // What a terminal's Ctrl-C sends; QEMU is in process groups of its own.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(batch.pid()), nix::sys::signal::Signal::SIGINT).unwrap();
    let (code, _, err) = batch.wait();
    assert_eq!(code, 130, "{err}");
    assert!(qemus_under(e.path()).is_empty(), "QEMU left: {:?}", qemus_under(e.path()));
    assert_eq!(count_files(&e.path().join("runs"), "outcome.json"), 0, "an interrupted run was recorded as done");
    assert_eq!(count_files(&e.path().join("runs"), "console.log"), 2, "a run started after Ctrl-C");
}

#[test]
fn a_bad_definition_is_refused_before_anything_boots() {
    let e = experiment("timeout = 60\nrepetitons = 2\n[[node]]\nimage = \"hello\"\n");
    let (code, _, err) = exp(&["run", e.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `repetitons`") && err.contains("did you mean `repetitions`?"), "{err}");
    assert!(!e.path().join("runs").exists());
    let e = experiment("timeout = 60\n[matrix]\nn = [1]\n[[node]]\nimage = \"hello\"\nargs = \"{m}\"\n");
    let (code, _, err) = exp(&["run", e.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("`node[0].args`: `{m}` names no list of [matrix]"), "{err}");
}

#[test]
fn exp_new_writes_a_definition_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("e");
    let (code, _, err) = exp(&["new", target.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(target.join("experiment.toml")).unwrap();
    assert!(text.contains("[matrix]") && text.contains("[[node]]"));
    let (code, _, err) = exp(&["new", target.to_str().unwrap()]);
    assert_ne!(code, 0, "an existing definition was overwritten");
    assert!(err.contains("exists"), "{err}");
}

/// `results = "nfs"`: every node gets an nfs-ganesha of its own on the host's loopback,
/// exporting its directory, for as long as its VM runs; the results land there through the
/// guest's NFS mount, and no server outlives the batch.
#[test]
fn results_come_back_over_nfs_from_a_server_per_node_and_no_server_is_left() {
    let _serial = serial();
    let e = experiment(
        r#"timeout = 180
results = "nfs"
max_vms = 2
[matrix]
word = ["alpha", "beta"]
[[node]]
image = "hello"
args = "{word} metric=n=7"
memory = 192
"#,
    );
    let (code, out, err) = exp(&["run", e.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let batch = batch_dir(&out);
    for word in ["alpha", "beta"] {
        let node = batch.join(format!("word={word}/1/app-1"));
        let hello = std::fs::read_to_string(node.join("results/hello.txt")).expect("hello.txt came back");
        assert!(hello.contains(&format!("arg[1]={word}")), "{hello}");
        let outcome = read_json(&node.join("outcome.json"));
        assert_eq!(outcome["status"], "ok", "{outcome}");
        assert_eq!(outcome["metrics"]["n"], 7.0, "{outcome}");
        let (events, _) = appliance_host::vm::read_status(&node.join("status.jsonl"));
        let transports: Vec<String> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Results { ok: true, transport, .. } => Some(transport),
                _ => None,
            })
            .collect();
        assert_eq!(transports, ["nfs"]);
    }
    let under = format!("Path = \"{}/", e.path().canonicalize().unwrap().display());
    let left = appliance_tests::ganeshas(|conf| conf.contains(&under));
    assert!(left.is_empty(), "ganesha.nfsd left running: {left:?}");
}

/// A node on the project's 6.1 kernel boots as `appliance run` boots it: on microvm, from
/// the vmlinux beside the bzImage (PVH), and its results come back over 9p, which Debian's
/// kernel has not; `params.json` says how it booted.
#[test]
fn a_node_on_the_projects_kernel_boots_on_microvm_through_pvh_and_returns_results_over_9p() {
    let _serial = serial();
    let bzimage = appliance_tests::project_kernel("6.1", &[]);
    let e = experiment(&format!(
        r#"timeout = 180
results = "9p"
kernel = "{}"
[[node]]
image = "hello"
args = "over-9p metric=n=3"
memory = 192
"#,
        bzimage.display()
    ));
    let (code, out, err) = exp(&["run", e.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let node = batch_dir(&out).join("default/1/app-1");
    let params = read_json(&node.join("params.json"));
    assert_eq!(params["boot"]["machine"], "microvm", "{params}");
    let vmlinux = bzimage.canonicalize().unwrap().with_file_name("vmlinux");
    assert_eq!(params["boot"]["kernel"], vmlinux.display().to_string(), "{params}");
    let hello = std::fs::read_to_string(node.join("results/hello.txt")).expect("hello.txt came back");
    assert!(hello.contains("arg[1]=over-9p"), "{hello}");
    let outcome = read_json(&node.join("outcome.json"));
    assert_eq!((&outcome["status"], &outcome["metrics"]["n"]), (&"ok".into(), &3.0.into()), "{outcome}");
}

/// The 2-node experiment of images/echo, for `repetitions` runs of one message size.
fn echo_experiment(repetitions: u32, max_vms: u32) -> tempfile::TempDir {
    let image = appliance_tests::root().join("images/echo");
    experiment(&format!(
        r#"timeout = 240
repetitions = {repetitions}
max_vms = {max_vms}
[matrix]
size = [1024]
[[node]]
name = "server"
image = "{image}"
args = "server 7000"
memory = 192
[[node]]
name = "client"
image = "{image}"
args = "client server-1 7000 100 {{size}}"
memory = 192
"#,
        image = image.display()
    ))
}

/// Asserts that run `rep` of the echo experiment went through: the client connected to the
/// server's segment address after both reached `server-ready`, and every byte came back.
fn assert_echo_run(batch: &Path, rep: u32) {
    let run = batch.join(format!("size=1024/{rep}"));
    let server = read_json(&run.join("server-1/outcome.json"));
    let client = read_json(&run.join("client-1/outcome.json"));
    assert_eq!(server["status"], "ok", "{server}");
    assert_eq!(client["status"], "ok", "{client}");
    for o in [&server, &client] {
        assert!(o["rendezvous"]["server-ready"].as_f64().is_some(), "no rendezvous recorded: {o}");
    }
    // Each node's own record has its wait at the point, in the guest's clock.
    for node in ["server-1", "client-1"] {
        let (events, _) = appliance_host::vm::read_status(&run.join(node).join("status.jsonl"));
        let waits: Vec<_> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Rendezvous { node: n, point, ok, error, .. } => Some((n, point, ok, error)),
                _ => None,
            })
            .collect();
        assert_eq!(waits, [(node.to_string(), "server-ready".to_string(), true, None)]);
    }
    assert!(client["metrics"]["rtt_us"].as_f64().is_some_and(|v| v > 0.0), "{client}");
    let console = |node: &str| std::fs::read_to_string(run.join(node).join("console.log")).unwrap();
    assert!(console("client-1").contains("echo: connected to server-1 at 10.77.0.1:7000"), "{}", console("client-1"));
    assert!(console("server-1").contains("echo: echoed 102400 byte(s)"), "{}", console("server-1"));
}

/// The client boots faster than the server (no listening socket to set up, measured about
/// 2 s apart under TCG here): without the rendezvous its connect would be refused.
#[test]
fn a_client_reaches_the_server_by_address_only_after_the_servers_rendezvous() {
    let _serial = serial();
    let e = echo_experiment(1, 2);
    let (code, out, err) = exp(&["run", e.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let batch = batch_dir(&out);
    assert_echo_run(&batch, 1);
    let (header, rows) = csv(&batch);
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(!cell(&header, row, "rendezvous_server-ready_s").is_empty(), "{row:?}");
    }
}

/// Both runs give their nodes the same addresses and MACs: frames of one run reaching the
/// other's server would be answered with resets (a connection it does not know) and break
/// the echo. Each run has a multicast group and port of its own.
#[test]
fn two_concurrent_2_node_runs_do_not_see_each_others_segments() {
    let _serial = serial();
    let e = echo_experiment(2, 4);
    let batch = Exp::start(&["run", e.path().to_str().unwrap()]);
    let mut segments = std::collections::BTreeSet::new();
    wait_for("four VMs at once", BATCH_TIMEOUT, || {
        let qemus = qemus_under(e.path());
        for q in &qemus {
            if let Some(m) = q.split_whitespace().find(|w| w.starts_with("socket,id=seg,mcast=")) {
                segments.insert(m.to_string());
            }
        }
        qemus.len() == 4
    });
    assert_eq!(segments.len(), 2, "the two runs share a segment: {segments:?}");
    let (code, out, err) = batch.wait();
    assert_eq!(code, 0, "{err}");
    let batch = batch_dir(&out);
    assert!(err.contains("(4 VM(s) at most at once)"), "the runs did not overlap: {err}");
    assert_echo_run(&batch, 1);
    assert_echo_run(&batch, 2);
}

/// A one-node Slurm cluster of this machine, for one test: munged, slurmctld and slurmd
/// (as root) with their configuration, state and logs in a temporary directory; every
/// job cancelled and every daemon killed when dropped.
struct SlurmCluster {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl SlurmCluster {
    fn start() -> SlurmCluster {
        for program in ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: host-tools/deps.sh installs munge, slurmctld, slurmd and slurm-client"
            );
        }
        let dir = tempfile::Builder::new().prefix("slurm-test-").tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["state", "spool"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        // munged wants 1 KiB of key, readable by its user only.
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        std::fs::write(d.join("munge.key"), key).unwrap();
        std::fs::set_permissions(d.join("munge.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let host = host.trim().split('.').next().unwrap().to_string();
        // Ports of this test's own cluster, beside the packaged defaults (6817, 6818).
        let conf = format!(
            "ClusterName=appliancetest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
             AuthType=auth/munge\nAuthInfo=socket={d}/munge.sock\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nSchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMpiDefault=none\nReturnToService=2\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            26817,
            26818,
            d = d.display()
        );
        std::fs::write(d.join("slurm.conf"), conf).unwrap();
        let mut cluster = SlurmCluster { dir, daemons: Vec::new() };
        let d = cluster.dir.path().to_path_buf();
        let spawn = |cmd: &mut std::process::Command| {
            cmd.env("SLURM_CONF", d.join("slurm.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("daemon starts")
        };
        let munged = spawn(std::process::Command::new("/usr/sbin/munged").arg("-F").arg("-f").args([
            format!("--socket={}/munge.sock", d.display()),
            format!("--key-file={}/munge.key", d.display()),
            format!("--log-file={}/munged.log", d.display()),
            format!("--pid-file={}/munged.pid", d.display()),
            format!("--seed-file={}/munged.seed", d.display()),
        ]));
        cluster.daemons.push(munged);
        wait_for("munged's socket", Duration::from_secs(30), || d.join("munge.sock").exists());
        let conf = d.join("slurm.conf");
        cluster.daemons.push(spawn(std::process::Command::new("/usr/sbin/slurmctld").arg("-D").arg("-f").arg(&conf)));
        cluster.daemons.push(spawn(std::process::Command::new("/usr/sbin/slurmd").arg("-D").arg("-f").arg(&conf)));
        wait_for("the node idle in sinfo", Duration::from_secs(60), || {
            cluster
                .command("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    /// A Slurm client command for this cluster.
    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.env("SLURM_CONF", self.dir.path().join("slurm.conf"));
        c
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        let _ = self.command("scancel").args(["-u", "root"]).output();
        // A job step's slurmstepd reports its end to slurmd: with slurmd gone first it
        // waits for it for good. So the queue empties while the daemons still run.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self.command("squeue").args(["-h"]).output().is_ok_and(|o| !o.stdout.is_empty())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        // Daemons in reverse order: no node without its controller, no controller without munge.
        for child in self.daemons.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // What is left of this cluster (a step daemon still waiting, on a loaded machine)
        // carries its configuration in its environment.
        let conf = format!("SLURM_CONF={}", self.dir.path().join("slurm.conf").display());
        for pid in processes_with_env(&conf) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The processes whose environment holds `entry` (NAME=value).
fn processes_with_env(entry: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

#[test]
fn the_2x2_matrix_runs_through_a_one_node_slurm_cluster() {
    let _serial = serial();
    let cluster = SlurmCluster::start();
    let e = experiment(
        r#"timeout = 180
repetitions = 2
[matrix]
word = ["alpha", "beta"]
size = [1, 2]
[[node]]
image = "hello"
args = "{word} metric=size={size}"
memory = 192
"#,
    );
    let dir = e.path().to_str().unwrap();
    let conf = cluster.dir.path().join("slurm.conf");
    let run = |args: &[&str]| {
        let o = appliance().env("SLURM_CONF", &conf).arg("exp").args(args).output().expect("appliance runs");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["run", dir, "--on", "slurm", "--max-running", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("8 run(s) submitted as Slurm job array"), "{err}");
    let batch = batch_dir(&out);
    let script = std::fs::read_to_string(batch.join("slurm/job.sh")).unwrap();
    assert!(script.contains("#SBATCH --array=0-7%2") && script.contains("#SBATCH --time=9"), "{script}");
    // Slurm's view while it runs: tasks queued or running.
    let (code, status, err) = run(&["status", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("(slurm: PENDING)") || status.contains("(slurm: RUNNING)"), "{status}");
    let mut last = String::new();
    wait_for("every task of the array done", BATCH_TIMEOUT, || {
        let (_, status, _) = run(&["status", dir]);
        last = status;
        last.contains("runs: 8 ok")
    });
    assert!(qemus_under(e.path()).is_empty(), "QEMU left: {:?}", qemus_under(e.path()));
    for word in ["alpha", "beta"] {
        for size in [1, 2] {
            for rep in [1, 2] {
                let node = batch.join(format!("size={size},word={word}/{rep}/app-1"));
                let hello = std::fs::read_to_string(node.join("results/hello.txt")).expect("hello.txt came back");
                assert!(hello.contains(&format!("arg[1]={word}")), "{hello}");
                assert_eq!(read_json(&node.join("outcome.json"))["metrics"]["size"], size as f64);
            }
        }
    }
    let (header, rows) = csv(&batch);
    assert_eq!(rows.len(), 8, "{last}");
    assert!(rows.iter().all(|r| cell(&header, r, "status") == "ok"));
    // Cancelling the (finished) array is refused by nobody and changes nothing.
    let (code, _, err) = run(&["cancel", dir]);
    assert_eq!(code, 0, "{err}");
}
