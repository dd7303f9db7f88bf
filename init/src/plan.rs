//! The boot plan as data: which phases run, with which program, arguments and
//! environment. Pure functions of the parsed command line and of what the image holds,
//! so the order and the environment are unit-tested without a VM.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use appliance_cmdline::Config;
use core::time::Duration;

/// Where the application lives. `/app` in an appliance; any directory in supervisor mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPaths {
    pub dir: String,
}

impl AppPaths {
    pub fn new(dir: &str) -> AppPaths {
        AppPaths { dir: String::from(dir.trim_end_matches('/')) }
    }
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }
    pub fn output(&self) -> String {
        self.file("output")
    }
}

/// The file a phase appends `NAME=value` lines to, to set variables for later phases.
pub const ENV_FILE: &str = "/run/appliance/env";

/// The phases, in the original order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    Debug,
    Prerun,
    Cmd(u32),
    Run,
    Postrun,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Debug => "debug",
            PhaseKind::Prerun => "prerun",
            PhaseKind::Cmd(_) => "cmd",
            PhaseKind::Run => "run",
            PhaseKind::Postrun => "postrun",
        }
    }
    pub fn index(self) -> Option<u32> {
        match self {
            PhaseKind::Cmd(i) => Some(i),
            _ => None,
        }
    }
}

/// One phase: a program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub kind: PhaseKind,
    /// `argv[0]` is the program (a path, or a name looked up in PATH).
    pub argv: Vec<String>,
    /// Runs on the console's terminal as its controlling terminal (shells).
    pub interactive: bool,
    /// Skipped without complaint when the program does not exist (prerun, postrun).
    pub optional: bool,
    /// Ended by the init when it runs longer (`appRunTimeout`: run and postrun).
    pub limit: Option<Duration>,
    /// `argv` is `sh -c COMMAND`: an appCmds command run by the image's shell.
    pub via_sh: bool,
}

/// The shells a console phase may use, best first.
pub const SHELLS: &[&str] = &["/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/sh"];

/// What the image offers, found by looking at its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// The interactive shell, if any.
    pub shell: Option<String>,
    /// A POSIX `sh` for appCmds, if any.
    pub sh: Option<String>,
}

/// The phases for `config`: debug shell, prerun, each command, run, postrun.
/// `cmds` are the appCmds followed by the lines of appCmdsFile.
pub fn phases(config: &Config, cmds: &[String], app: &AppPaths, image: &ImageFacts) -> Vec<Phase> {
    let mut out = Vec::new();
    if config.debug
        && let Some(shell) = &image.shell
    {
        out.push(Phase {
            kind: PhaseKind::Debug,
            argv: vec![shell.clone()],
            interactive: true,
            optional: false,
            limit: None,
            via_sh: false,
        });
    }
    out.push(Phase {
        kind: PhaseKind::Prerun,
        argv: vec![app.file("prerun")],
        interactive: false,
        optional: true,
        limit: None,
        via_sh: false,
    });
    for (i, cmd) in cmds.iter().enumerate() {
        let argv = match &image.sh {
            Some(sh) => vec![sh.clone(), "-c".to_string(), cmd.clone()],
            // No shell in the image: split the command as appArgs is split and run it.
            None => appliance_cmdline::split_words(cmd).words,
        };
        if argv.is_empty() {
            continue;
        }
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let via_sh = image.sh.is_some();
        out.push(Phase { kind: PhaseKind::Cmd(index), argv, interactive: false, optional: false, limit: None, via_sh });
    }
    let mut run = vec![app.file("run")];
    run.extend(config.args.iter().cloned());
    // Where no host watches the run (bare metal, PXE), the experiment and the clean-up
    // after it must still end, so that the results step and the power-off come.
    let limit = config.run_timeout.map(|s| Duration::from_secs(u64::from(s)));
    out.push(Phase { kind: PhaseKind::Run, argv: run, interactive: false, optional: false, limit, via_sh: false });
    out.push(Phase {
        kind: PhaseKind::Postrun,
        argv: vec![app.file("postrun")],
        interactive: false,
        optional: true,
        limit,
        via_sh: false,
    });
    out
}

/// The base environment of every phase: the original's fixed variables plus the
/// command line's, with paths under `app`.
pub fn base_env(config: &Config, app: &AppPaths, env_file: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), "/root".into()),
        ("LOGNAME".into(), "root".into()),
        ("TERM".into(), "linux".into()),
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("APP_ENV".into(), env_file.into()),
    ];
    for (k, v) in config.env() {
        set(&mut env, &k, v);
    }
    for (var, name) in [
        ("APP_DIR", ""),
        ("APP_PRERUN", "prerun"),
        ("APP_RUN", "run"),
        ("APP_POSTRUN", "postrun"),
        ("APP_OUT", "output"),
    ] {
        let value = if name.is_empty() { app.dir.clone() } else { app.file(name) };
        set(&mut env, var, value);
    }
    env
}

/// Sets `key` in `env`, replacing an earlier value.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// Reads `NAME=value` lines a phase appended to the env file. Lines that are not
/// assignments to a valid name are returned as errors for the log.
pub fn parse_env_file(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut vars = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match line.split_once('=') {
            Some((k, v)) if valid_name(k) => vars.push((k.to_string(), v.to_string())),
            _ => bad.push(line.to_string()),
        }
    }
    (vars, bad)
}

/// Whether `k` is a shell variable name: a letter or `_`, then letters, digits and `_`.
pub fn valid_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `KEY=value` strings for execve.
pub fn render_env(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(line: &str) -> Config {
        appliance_cmdline::parse_strict(line.as_bytes()).unwrap()
    }

    fn kinds(p: &[Phase]) -> Vec<PhaseKind> {
        p.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn phases_follow_the_original_order() {
        let c = cfg("appDebug appCmds='ls /app:echo hi' appArgs='10 \"a b\"'");
        let img = ImageFacts { shell: Some("/bin/bash".into()), sh: Some("/bin/sh".into()) };
        let p = phases(&c, &c.cmds, &AppPaths::new("/app"), &img);
        assert_eq!(
            kinds(&p),
            [
                PhaseKind::Debug,
                PhaseKind::Prerun,
                PhaseKind::Cmd(1),
                PhaseKind::Cmd(2),
                PhaseKind::Run,
                PhaseKind::Postrun
            ]
        );
        assert!(p[0].interactive);
        assert_eq!(p[2].argv, ["/bin/sh", "-c", "ls /app"]);
        assert!(p[2].via_sh && !p[4].via_sh);
        assert_eq!(p[4].argv, ["/app/run", "10", "a b"]);
        assert!(p[1].optional && p[5].optional && !p[4].optional);
    }

    #[test]
    fn app_run_timeout_bounds_run_and_postrun_only() {
        let img = ImageFacts { shell: Some("/bin/bash".into()), sh: Some("/bin/sh".into()) };
        let limits = |line: &str| -> Vec<(PhaseKind, Option<Duration>)> {
            let c = cfg(line);
            phases(&c, &c.cmds, &AppPaths::new("/app"), &img).iter().map(|p| (p.kind, p.limit)).collect()
        };
        let s90 = Some(Duration::from_secs(90));
        assert_eq!(
            limits("appDebug appCmds=ls appRunTimeout=90"),
            [
                (PhaseKind::Debug, None),
                (PhaseKind::Prerun, None),
                (PhaseKind::Cmd(1), None),
                (PhaseKind::Run, s90),
                (PhaseKind::Postrun, s90)
            ]
        );
        assert!(limits("").iter().all(|(_, l)| l.is_none()));
    }

    #[test]
    fn without_a_shell_debug_is_skipped_and_cmds_run_directly() {
        let c = cfg("appDebug appCmds='/app/run a  \"b c\":'");
        let p = phases(&c, &c.cmds, &AppPaths::new("/app"), &ImageFacts::default());
        assert_eq!(kinds(&p), [PhaseKind::Prerun, PhaseKind::Cmd(1), PhaseKind::Run, PhaseKind::Postrun]);
        assert_eq!(p[1].argv, ["/app/run", "a", "b c"]);
        assert!(!p[1].via_sh);
    }

    #[test]
    fn env_has_the_original_variables_under_the_app_dir() {
        let c = cfg("appNode=n1 appEnd=reboot");
        let env = base_env(&c, &AppPaths::new("/tmp/x/"), ENV_FILE);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("APP_DIR"), Some("/tmp/x"));
        assert_eq!(get("APP_RUN"), Some("/tmp/x/run"));
        assert_eq!(get("APP_OUT"), Some("/tmp/x/output"));
        assert_eq!(get("APP_END"), Some("reboot"));
        assert_eq!(get("APP_MYNODE"), Some("n1"));
        assert_eq!(get("APP_ENV"), Some(ENV_FILE));
        assert!(get("PATH").is_some_and(|p| p.contains("/usr/bin")));
    }

    #[test]
    fn env_file_lines_are_assignments() {
        let (vars, bad) = parse_env_file("A=1\nexport B=x y\n\n# c\nnot a line\n1X=2\nC=\n");
        assert_eq!(vars, [("A".into(), "1".into()), ("B".into(), "x y".into()), ("C".into(), "".into())]);
        assert_eq!(bad, ["not a line", "1X=2"]);
    }
}
