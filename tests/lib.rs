//! Shared helpers of the integration tests: build the tools once, build images, boot them
//! in QEMU (TCG, with a time bound) and collect what came back: console, exit status and
//! the init's status record.
//!
//! Nothing here is mocked: the tests need `qemu-system-x86_64` and a kernel (Debian's cloud
//! kernel, fetched into the cache by `appliance build`). Without them the tests fail with
//! the reason; `.ci/run` installs what they need.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance_cmdline::status::Event;
use appliance_host::image::checkout::Checkout;

/// The bound on every boot: generous, since TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT_S: u64 = 180;

/// How long the console may stay open after `appliance run` has ended: its QEMU, which
/// shares the console, gets SIGTERM when it dies and is gone well within this.
const CONSOLE_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository's top directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Builds `appliance`, `appliance-init` and `appliance-hello` (release) once per test
/// process and returns the directory holding them.
pub fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let target = root.join("target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut host = Command::new(&cargo);
        host.args(["build", "--release", "-q", "-p", "appliance-host", "--target-dir"]).arg(&target).current_dir(&root);
        // The init's own workspace, built as host-tools/deps.sh and `appliance build` build it.
        let init = Checkout { root: root.clone(), target_dir: target.clone() }.init_build_command();
        for mut command in [host, init] {
            let st = command.status().expect("cargo runs");
            assert!(st.success(), "{command:?} failed");
        }
        target.join("release")
    })
}

/// The `appliance` command, from the repository's top directory.
pub fn appliance() -> Command {
    let mut c = Command::new(tools().join("appliance"));
    c.current_dir(root()).env("APPLIANCE_ACCEL", "tcg");
    c
}

/// Builds an image directory into a fresh app dir under `tmp`.
pub fn build(image: &Path, tmp: &Path) -> PathBuf {
    let out = tmp.join("app");
    let o = appliance().arg("-q").arg("build").arg(image).arg("-o").arg(&out).output().expect("appliance runs");
    assert!(
        o.status.success(),
        "appliance build {} failed:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// What a boot produced.
#[derive(Debug)]
pub struct Boot {
    /// The console (QEMU's stdout) and `appliance`'s stderr.
    pub console: String,
    pub stderr: String,
    pub code: i32,
    pub events: Vec<Event>,
}

impl Boot {
    /// The last `end` event's action and status: after a kexec, the appliance that ran last's.
    pub fn end(&self) -> Option<(String, i32)> {
        self.events.iter().rev().find_map(|e| match e {
            Event::End { action, status, .. } => Some((action.clone(), *status)),
            _ => None,
        })
    }

    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Error { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// Asserts that `needle` is on the console.
    #[track_caller]
    pub fn assert_console(&self, needle: &str) {
        assert!(self.console.contains(needle), "`{needle}` not on the console:\n{}\n{}", self.console, self.stderr);
    }
}

/// Boots `app_dir` with `appliance run ARGS` and waits for it to end.
pub fn boot(app_dir: &Path, args: &[&str]) -> Boot {
    boot_with_stdin(app_dir, args, Stdio::null())
}

/// [`boot`] with this standard input (a pipe, a file).
pub fn boot_with_stdin(app_dir: &Path, args: &[&str], stdin: impl Into<Stdio>) -> Boot {
    let status = tempfile::NamedTempFile::new().expect("temp file");
    let o = run_cmd(app_dir, status.path(), args).stdin(stdin).output().expect("appliance runs");
    let (events, _) = appliance_host::vm::read_status(status.path());
    Boot {
        console: String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n"),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(-1),
        events,
    }
}

fn run_cmd(app_dir: &Path, status: &Path, args: &[&str]) -> Command {
    let mut c = appliance();
    c.arg("run").arg(app_dir).arg("--timeout").arg(BOOT_TIMEOUT_S.to_string()).arg("--status").arg(status);
    c.args(args);
    c
}

/// A pipe that holds `text` and then ends, as `printf TEXT |` gives a command.
pub fn piped(text: &str) -> std::io::PipeReader {
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    // Far below a pipe's capacity: the write does not block.
    writer.write_all(text.as_bytes()).expect("write to the pipe");
    reader
}

/// [`boot`] with `appliance run` on a terminal of its own (a pty, its controlling terminal,
/// in its foreground) on which `typed` was typed before the guest started.
pub fn boot_on_terminal(app_dir: &Path, args: &[&str], typed: &str) -> Boot {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let nocty = OFlag::O_NOCTTY.bits();
    // std opens close-on-exec: neither end leaks into QEMU.
    let ptmx = std::fs::OpenOptions::new().read(true).write(true).custom_flags(nocty).open("/dev/ptmx").expect("ptmx");
    // SAFETY: a descriptor of /dev/ptmx is a pty master.
    let master = unsafe { nix::pty::PtyMaster::from_owned_fd(ptmx.into()) };
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let slave_path = nix::pty::ptsname_r(&master).expect("pty name");
    let slave =
        std::fs::OpenOptions::new().read(true).write(true).custom_flags(nocty).open(&slave_path).expect("pty slave");
    let status = tempfile::NamedTempFile::new().expect("temp file");
    let mut cmd = run_cmd(app_dir, status.path(), args);
    cmd.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    let slave_c = std::ffi::CString::new(slave_path).expect("a path without NUL");
    // A new session, whose first terminal opened becomes its controlling terminal; the
    // session's only group has its foreground.
    let new_session = move || {
        nix::unistd::setsid()?;
        drop(nix::fcntl::open(slave_c.as_c_str(), OFlag::O_RDWR, nix::sys::stat::Mode::empty())?);
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system calls.
    unsafe { cmd.pre_exec(new_session) };
    let mut master = std::fs::File::from(std::os::fd::OwnedFd::from(master));
    master.write_all(typed.as_bytes()).expect("type on the terminal");
    let mut child = cmd.spawn().expect("appliance runs");
    // Our copies of the slave: the master reads EIO once the session has closed its own.
    drop(cmd);
    let shown = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&shown).replace("\r\n", "\n")
    });
    let st = child.wait().expect("appliance exits");
    let console = shown.join().expect("the terminal's reader");
    let (events, _) = appliance_host::vm::read_status(status.path());
    Boot { console, stderr: String::new(), code: st.code().unwrap_or(-1), events }
}

/// A boot driven over its console: type into it and wait for output.
pub struct Session {
    child: Child,
    output: Arc<Mutex<String>>,
    /// The thread copying the console into `output`, until end of file.
    reader: JoinHandle<()>,
    /// Disconnected when `reader` ends.
    reader_done: mpsc::Receiver<()>,
    /// `appliance`'s own messages, and the thread copying them.
    errors: Arc<Mutex<String>>,
    errors_reader: (JoinHandle<()>, mpsc::Receiver<()>),
    status: tempfile::NamedTempFile,
}

/// Copies what `from` gives into `sink` until end of file, in a thread of its own; the
/// receiver is disconnected when that thread ends.
fn collect(mut from: impl Read + Send + 'static, sink: &Arc<Mutex<String>>) -> (JoinHandle<()>, mpsc::Receiver<()>) {
    let sink = Arc::clone(sink);
    let (done, ended) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let _done = done;
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (reader, ended)
}

impl Session {
    pub fn start(app_dir: &Path, args: &[&str]) -> Session {
        let status = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = run_cmd(app_dir, status.path(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("appliance runs");
        let output = Arc::new(Mutex::new(String::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let (reader, reader_done) = collect(child.stdout.take().expect("piped stdout"), &output);
        let errors_reader = collect(child.stderr.take().expect("piped stderr"), &errors);
        Session { child, output, reader, reader_done, errors, errors_reader, status }
    }

    /// Waits until the console shows `needle` after byte offset `from`; returns the
    /// offset just past it.
    #[track_caller]
    pub fn expect(&self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(BOOT_TIMEOUT_S);
        loop {
            {
                let out = self.output.lock().unwrap();
                if let Some(i) = out.get(from..).and_then(|s| s.find(needle)) {
                    return from + i + needle.len();
                }
                assert!(Instant::now() < deadline, "`{needle}` never appeared; console:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `appliance run` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `text` on the console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(text.as_bytes()).expect("write to the console");
        stdin.flush().expect("flush the console");
    }

    /// Waits for the VM to end, and for the console to reach end of file, so that the
    /// last lines are in.
    pub fn finish(mut self) -> Boot {
        drop(self.child.stdin.take());
        let st = self.child.wait().expect("appliance exits");
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.reader_done.recv_timeout(CONSOLE_CLOSE_TIMEOUT) {
            panic!(
                "the console was still open {} s after appliance run ended: a process it started holds it; console:\n{}",
                CONSOLE_CLOSE_TIMEOUT.as_secs(),
                self.output.lock().unwrap()
            );
        }
        self.reader.join().expect("the console reader ends normally");
        // `appliance`'s messages end with it (nothing it starts keeps its stderr).
        let (errors_reader, errors_done) = self.errors_reader;
        if let Err(mpsc::RecvTimeoutError::Disconnected) = errors_done.recv_timeout(CONSOLE_CLOSE_TIMEOUT) {
            errors_reader.join().expect("the stderr reader ends normally");
        }
        let (events, _) = appliance_host::vm::read_status(self.status.path());
        Boot {
            console: self.output.lock().unwrap().replace("\r\n", "\n"),
            stderr: self.errors.lock().unwrap().clone(),
            code: st.code().unwrap_or(-1),
            events,
        }
    }
}

/// Writes an image directory: `appliance.toml` and executable files under `app/`.
pub fn image(dir: &Path, manifest: &str, app_files: &[(&str, &str)]) -> PathBuf {
    let image = dir.join("image");
    std::fs::create_dir_all(image.join("app")).unwrap();
    std::fs::write(image.join("appliance.toml"), manifest).unwrap();
    for (name, text) in app_files {
        let path = image.join("app").join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    image
}

/// A manifest with bash and a few coreutils from the host.
pub fn bash_manifest(extra: &str) -> String {
    format!(
        r#"description = "test image"
host_files = ["/bin/bash", "/bin/sh", "/usr/bin/cat", "/usr/bin/sleep", "/usr/bin/ls", "/usr/bin/echo"]
{extra}
"#
    )
}

/// Runs a command with a time bound, killing it when exceeded.
pub fn run_bounded(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stream.read_to_end(&mut text);
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// How long a kernel build may take: a first compile is 10-25 min on 2 cores, and it may
/// wait for another build holding the kernel cache's lock.
pub const KERNEL_BUILD_TIMEOUT: Duration = Duration::from_secs(50 * 60);

/// `appliance kernel build --series SERIES -f FRAGMENT...`: the bzImage, compiled the first
/// time and then taken from the cache.
pub fn project_kernel(series: &str, fragments: &[&str]) -> PathBuf {
    let mut command = appliance();
    command.args(["kernel", "build", "--series", series]);
    for f in fragments {
        command.args(["-f", f]);
    }
    let o = run_bounded(&mut command, KERNEL_BUILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "appliance kernel build --series {series} {fragments:?} failed (it fetches the source with apt when it \
         is not installed, which needs the network):\n{stderr}"
    );
    let bzimage = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(bzimage.is_file(), "{bzimage:?}\n{stderr}");
    eprintln!("{stderr}");
    bzimage
}

/// The pids of the running ganesha.nfsd processes whose configuration file's text
/// satisfies `exports` (e.g. holds `Path = "DIR";`).
pub fn ganeshas(exports: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("ganesha.nfsd")) {
            continue;
        }
        let conf = args.iter().skip_while(|a| *a != "-f").nth(1);
        if conf.and_then(|c| std::fs::read_to_string(c).ok()).is_some_and(|c| exports(&c)) {
            found.push(pid);
        }
    }
    found
}
