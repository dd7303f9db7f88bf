//! Carrying the variables a shell-script phase exports into the later phases, as the
//! original did by sourcing its phases, while every phase stays a child process (an `exit`
//! in a script must end that script, not PID 1).
//!
//! A phase whose program is a shell script (a `#!` line naming `sh`, `bash`, `dash`, `ash`,
//! `ksh`, `mksh` or `zsh`, directly, through `env` or as `busybox sh`) runs through that
//! same interpreter, with the options of its `#!` line, as
//!
//! ```text
//! INTERPRETER [OPTION] -c 'trap SAVE EXIT; . "$0"' SCRIPT ARGS...
//! ```
//!
//! The shell sources the script: `$0` is the script's path and `$@` its arguments, as when
//! the kernel runs it, and its exit status is the script's, `exit N` included (an EXIT trap
//! does not change the status the shell exits with). When that shell ends, at the end of
//! the script or by `exit` (not after `exec`, and in most shells not when a signal kills
//! it), its EXIT trap runs SAVE, `appliance-init --save-env FILE`: a child, whose
//! environment is exactly the variables the shell exports at that moment, which it writes
//! to FILE unchanged, NUL-separated. An appCmds command run with `sh -c`
//! gets the same trap in front of it.
//!
//! Why this way: the environment of a child is the one faithful list of what a shell
//! exports, in every shell; the text of `export -p` would have to be parsed, and each shell
//! quotes it differently (bash writes `$'a\nb'`, dash `'it'\''s'`). `BASH_ENV` works for
//! bash only, and every bash the script starts would read it too. And a wrapper that runs
//! code after `. script` never runs it when the script calls `exit`.
//!
//! What is carried is [`carried`]'s rule. The cost for a phase that is not a shell script
//! is reading the first line of its program; for an image without a shell, nothing.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use appliance_cmdline::{join_words, quote_word};

use crate::plan::{Phase, PhaseKind};

/// The file the trap writes to, in an appliance.
pub const SAVE_FILE: &str = "/run/appliance/exported";

/// The option of `appliance-init` that writes its own environment to a file.
pub const SAVE_OPTION: &str = "--save-env";

/// The shells whose scripts are sourced this way: they all take `-c`, source with `.`
/// keeping `$0` and the arguments, and run an EXIT trap when they end.
pub const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "ksh", "mksh", "zsh"];

/// The shells `busybox` runs as `busybox NAME`.
const BUSYBOX_SHELLS: &[&str] = &["sh", "ash", "bash"];

/// The variables a shell sets itself, which say nothing about the script.
const SHELL_OWN: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// How exported variables are collected: the init program the trap runs, and its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Save {
    /// The path of `appliance-init` (`/init` in an appliance).
    pub init: String,
    /// Where the trap writes the environment.
    pub file: String,
}

impl Save {
    /// `trap 'INIT --save-env FILE' EXIT; `, to put in front of shell code.
    pub fn trap(&self) -> String {
        let command = join_words(&[self.init.as_str(), SAVE_OPTION, self.file.as_str()]);
        format!("trap {} EXIT; ", quote_word(&command))
    }
}

/// The argv that runs `phase` with its exports collected, or `None` when it is not shell
/// code. `header` is the start of the phase's program (its `#!` line), when read.
pub fn wrap(phase: &Phase, header: Option<&[u8]>, save: &Save) -> Option<Vec<String>> {
    if phase.interactive {
        return None;
    }
    if phase.via_sh {
        // `sh -c COMMAND`: the trap goes in front of the command, on its line (errors keep
        // their line numbers).
        let (sh, command) = match phase.argv.as_slice() {
            [sh, c, command] if c == "-c" => (sh, command),
            _ => return None,
        };
        return Some(vec![sh.clone(), "-c".to_string(), format!("{}{command}", save.trap())]);
    }
    if !matches!(phase.kind, PhaseKind::Prerun | PhaseKind::Run | PhaseKind::Postrun) {
        return None;
    }
    let script = phase.argv.first()?;
    // `.` looks a name without a `/` up in PATH.
    if !script.contains('/') {
        return None;
    }
    let mut argv = shell_interpreter(header?)?;
    argv.push("-c".to_string());
    argv.push(format!("{}. \"$0\"", save.trap()));
    argv.extend(phase.argv.iter().cloned());
    Some(argv)
}

/// The interpreter and its option from a `#!` line, as the kernel reads them, when the
/// interpreter is a shell of [`SHELLS`] (by its name, through `env`, or `busybox sh`).
pub fn shell_interpreter(header: &[u8]) -> Option<Vec<String>> {
    let line = header.strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    // The kernel ends the line at a NUL too, and takes everything after the interpreter
    // as one option.
    let line = line.split(|b| *b == 0).next().unwrap_or_default();
    let line = core::str::from_utf8(line).ok()?;
    let line = line.trim_matches([' ', '\t']);
    let (interpreter, option) = match line.split_once([' ', '\t']) {
        Some((i, o)) => (i, Some(o.trim_matches([' ', '\t']))),
        None => (line, None),
    };
    let is_shell = match (base_name(interpreter), option) {
        (name, _) if SHELLS.contains(&name) => true,
        ("env", Some(option)) => {
            let mut words = option.split_whitespace().skip_while(|w| *w == "-S");
            words.next().is_some_and(|w| !w.contains('=') && SHELLS.contains(&base_name(w)))
        }
        ("busybox", Some(option)) => option.split_whitespace().next().is_some_and(|w| BUSYBOX_SHELLS.contains(&w)),
        _ => false,
    };
    if !is_shell || interpreter.is_empty() {
        return None;
    }
    let mut argv = vec![interpreter.to_string()];
    argv.extend(option.filter(|o| !o.is_empty()).map(ToString::to_string));
    Some(argv)
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The `NAME=value` entries of a saved environment (NUL-separated, as `--save-env`
/// writes it).
pub fn parse_environ(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (name, value) = entry.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// What later phases get of what a phase exported when it ended: every variable whose
/// value is new or changed from `before` (the environment it started with), except the
/// init's own (`APP_*`, which stay authoritative), the ones the shell keeps itself (`PWD`,
/// `OLDPWD`, `SHLVL`, `_`) and names that are not shell names (exported bash functions).
/// A variable the phase unset stays set.
pub fn carried(before: &[(String, String)], exported: &[(String, String)]) -> Vec<(String, String)> {
    exported
        .iter()
        .filter(|(name, value)| {
            crate::plan::valid_name(name)
                && !name.starts_with("APP_")
                && !SHELL_OWN.contains(&name.as_str())
                && before.iter().find(|(k, _)| k == name).is_none_or(|(_, v)| v != value)
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// System calls

/// The longest `#!` line the kernel reads (`BINPRM_BUF_SIZE`).
const HEADER_LEN: usize = 256;

/// The argv that runs `phase` with its exports collected into `save.file` (removed
/// first), or `None` to run it as it is: not shell code, or a script the kernel would
/// refuse (not executable, its interpreter missing), which must fail as it always did.
pub fn prepare(phase: &Phase, save: &Save) -> Option<Vec<String>> {
    let header = match phase.kind {
        PhaseKind::Prerun | PhaseKind::Run | PhaseKind::Postrun if !phase.via_sh => read_header(phase.argv.first()?),
        _ => None,
    };
    let argv = wrap(phase, header.as_deref(), save)?;
    if !phase.via_sh && !executable(phase.argv.first()?) {
        return None;
    }
    if !executable(argv.first()?) {
        return None;
    }
    let _ = rustix::fs::unlink(save.file.as_str());
    Some(argv)
}

/// The variables to carry from what the phase saved (see [`carried`]); the file is
/// removed, so that a phase that saves nothing (it ended with `exec`) carries nothing.
pub fn collect(save: &Save, before: &[(String, String)]) -> Vec<(String, String)> {
    let saved = crate::read_bytes(&save.file);
    let _ = rustix::fs::unlink(save.file.as_str());
    saved.map(|bytes| carried(before, &parse_environ(&bytes))).unwrap_or_default()
}

/// Writes `env` to `file` as `--save-env` does: each `NAME=value` followed by a NUL.
pub fn save(file: &str, env: &[String]) -> Result<(), rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        file,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut data = Vec::new();
    for entry in env {
        data.extend_from_slice(entry.as_bytes());
        data.push(0);
    }
    crate::console::write_all(rustix::fd::AsFd::as_fd(&fd), &data)
}

fn read_header(path: &str) -> Option<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut buf = [0u8; HEADER_LEN];
    let n = loop {
        match rustix::io::read(&fd, &mut buf) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.ok()?,
        }
    };
    buf.get(..n).map(<[u8]>::to_vec)
}

fn executable(path: &str) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save() -> Save {
        Save { init: "/init".into(), file: SAVE_FILE.into() }
    }

    fn phase(kind: PhaseKind, argv: &[&str]) -> Phase {
        Phase {
            kind,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            interactive: false,
            optional: false,
            limit: None,
            via_sh: false,
        }
    }

    fn interpreter(line: &str) -> Option<Vec<String>> {
        shell_interpreter(line.as_bytes())
    }

    #[test]
    fn shells_are_known_by_name_through_env_and_busybox() {
        let yes: &[(&str, &[&str])] = &[
            ("#!/bin/sh\necho", &["/bin/sh"]),
            ("#!/bin/bash", &["/bin/bash"]),
            ("#! /bin/dash -e \nx", &["/bin/dash", "-e"]),
            ("#!/bin/sh -e -u\n", &["/bin/sh", "-e -u"]),
            ("#!/usr/bin/env bash\n", &["/usr/bin/env", "bash"]),
            ("#!/usr/bin/env -S bash -e\n", &["/usr/bin/env", "-S bash -e"]),
            ("#!/bin/busybox sh\n", &["/bin/busybox", "sh"]),
            ("#!/bin/mksh\n", &["/bin/mksh"]),
            ("#!/bin/sh\0junk\n", &["/bin/sh"]),
        ];
        for (line, want) in yes {
            assert_eq!(
                interpreter(line).as_deref(),
                Some(want.iter().map(|s| s.to_string()).collect::<Vec<_>>().as_slice()),
                "{line:?}"
            );
        }
        for line in [
            "#!/usr/bin/python3\n",
            "#!/usr/bin/env python3\n",
            "#!/usr/bin/env FOO=1 sh\n",
            "#!/usr/bin/env\n",
            "#!/bin/busybox awk\n",
            "#!/bin/bash\r\n",
            "\x7fELF\x02\x01",
            "echo no shebang\n",
            "#!\n",
            "",
        ] {
            assert_eq!(interpreter(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_script_is_sourced_by_its_own_interpreter_keeping_dollar_0_and_the_arguments() {
        let run = phase(PhaseKind::Run, &["/app/run", "a b", "c"]);
        let argv = wrap(&run, Some(b"#!/bin/bash -e\n"), &save()).unwrap();
        assert_eq!(
            argv,
            [
                "/bin/bash",
                "-e",
                "-c",
                "trap '/init --save-env /run/appliance/exported' EXIT; . \"$0\"",
                "/app/run",
                "a b",
                "c"
            ]
        );
        assert_eq!(wrap(&run, Some(b"\x7fELF"), &save()), None);
        assert_eq!(wrap(&run, None, &save()), None);
        // Paths with spaces and quotes survive both levels of quoting: the trap's argument,
        // then the command in it.
        let odd = Save { init: "/x y/init".into(), file: "/it's".into() };
        let words = appliance_cmdline::split_words(&odd.trap()).words;
        assert_eq!(words.len(), 3, "{words:?}");
        assert_eq!(words[0], "trap");
        assert_eq!(words[2], "EXIT;");
        assert_eq!(appliance_cmdline::split_words(&words[1]).words, ["/x y/init", "--save-env", "/it's"]);
    }

    #[test]
    fn an_app_cmd_gets_the_trap_in_front_and_other_phases_are_left_alone() {
        let mut cmd = phase(PhaseKind::Cmd(1), &["/bin/sh", "-c", "export A=1"]);
        cmd.via_sh = true;
        assert_eq!(
            wrap(&cmd, None, &save()).unwrap(),
            ["/bin/sh", "-c", "trap '/init --save-env /run/appliance/exported' EXIT; export A=1"]
        );
        // A command split into words (no shell in the image) is not shell code.
        let split = phase(PhaseKind::Cmd(1), &["/bin/tool", "-c", "x"]);
        assert_eq!(wrap(&split, Some(b"#!/bin/sh\n"), &save()), None);
        let mut debug = phase(PhaseKind::Debug, &["/bin/bash"]);
        debug.interactive = true;
        assert_eq!(wrap(&debug, Some(b"#!/bin/sh\n"), &save()), None);
        // `.` would look a bare name up in PATH.
        assert_eq!(wrap(&phase(PhaseKind::Run, &["run"]), Some(b"#!/bin/sh\n"), &save()), None);
    }

    #[test]
    fn carried_are_the_new_and_changed_exports_but_not_the_inits_or_the_shells() {
        let before = [("PATH".to_string(), "/bin".to_string()), ("HOME".to_string(), "/root".to_string())];
        let exported = parse_environ(
            b"PATH=/opt/bin:/bin\0HOME=/root\0TRIAL_TAG=tag-node1\0APP_RUN=/x\0APP_NEW=1\0PWD=/tmp\0SHLVL=1\0_=/init\0\
              BASH_FUNC_f%%=() {  echo; }\0EMPTY=\0MULTI=a\nb=c\0",
        );
        let want: Vec<(String, String)> =
            [("PATH", "/opt/bin:/bin"), ("TRIAL_TAG", "tag-node1"), ("EMPTY", ""), ("MULTI", "a\nb=c")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(carried(&before, &exported), want);
        assert_eq!(parse_environ(b""), []);
    }
}
