//! The command line of `appliance-init` when it is not PID 1 (supervisor mode).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub const USAGE: &str = "\
usage: appliance-init [--status FILE] -- PROGRAM [ARGS...]
       appliance-init --phases --app-dir DIR [--cmdline LINE] [--status FILE]

As PID 1 (the /init of an appliance) it takes no arguments: it reads /proc/cmdline.
Run as an ordinary process it is a supervisor: it becomes a child subreaper, runs
PROGRAM (or the appliance phases of DIR: prerun, appCmds, run with appArgs, postrun,
as the kernel command line LINE describes), forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1
and SIGUSR2 to it, reaps every orphan, and exits with its status (the code, 128+signal,
127 when the program is missing, 126 when it cannot be executed).

  --status FILE   append the JSON status record to FILE
  --phases        run the phases of --app-dir instead of one program
  --app-dir DIR   the application directory (what /app is in an appliance)
  --cmdline LINE  parameters as on a kernel command line (appCmds, appArgs, ...)
  -h, --help      this text

       appliance-init --save-env FILE

writes its own environment to FILE (NAME=value entries, each ended by a NUL): the
exit trap of shell-script phases runs it to carry their exported variables.
";

/// What supervisor mode was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Help,
    Command { argv: Vec<String>, status: Option<String> },
    Phases { app_dir: String, cmdline: String, status: Option<String> },
    SaveEnv { file: String },
}

/// Parses the arguments after argv[0].
pub fn parse(args: &[String]) -> Result<Mode, String> {
    let mut status = None;
    let mut app_dir = None;
    let mut cmdline = String::new();
    let mut phases = false;
    if let [option, file] = args
        && option == crate::exports::SAVE_OPTION
    {
        return Ok(Mode::SaveEnv { file: file.clone() });
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| alloc::format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Mode::Help),
            "--status" => status = Some(value("--status")?),
            "--app-dir" => app_dir = Some(value("--app-dir")?),
            "--cmdline" => cmdline = value("--cmdline")?,
            "--phases" => phases = true,
            "--" => {
                let argv: Vec<String> = it.cloned().collect();
                if argv.is_empty() {
                    return Err("no program after `--`".to_string());
                }
                return command(argv, status, phases || app_dir.is_some() || !cmdline.is_empty());
            }
            other if !other.starts_with('-') => {
                let mut argv = alloc::vec![other.to_string()];
                argv.extend(it.cloned());
                return command(argv, status, phases || app_dir.is_some() || !cmdline.is_empty());
            }
            other => return Err(alloc::format!("unknown option `{other}`")),
        }
    }
    match (phases, app_dir) {
        (true, Some(app_dir)) => Ok(Mode::Phases { app_dir, cmdline, status }),
        (true, None) => Err("--phases needs --app-dir DIR".to_string()),
        (false, _) => Err("nothing to run: give `-- PROGRAM [ARGS...]` or `--phases --app-dir DIR`".to_string()),
    }
}

/// A program to run, unless options of phases mode were given too: silently running the
/// program instead of the phases asked for (or the other way round) hides the mistake.
fn command(argv: Vec<String>, status: Option<String>, phase_options: bool) -> Result<Mode, String> {
    if phase_options {
        let program = argv.first().map(String::as_str).unwrap_or_default();
        return Err(alloc::format!("--phases, --app-dir and --cmdline take no program (`{program}`)"));
    }
    Ok(Mode::Command { argv, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_both_modes_and_rejects_nonsense() {
        assert_eq!(
            parse(&v(&["--status", "s", "--", "sh", "-c", "x"])),
            Ok(Mode::Command { argv: v(&["sh", "-c", "x"]), status: Some("s".into()) })
        );
        assert_eq!(parse(&v(&["true"])), Ok(Mode::Command { argv: v(&["true"]), status: None }));
        assert_eq!(
            parse(&v(&["--phases", "--app-dir", "/a", "--cmdline", "appArgs=1"])),
            Ok(Mode::Phases { app_dir: "/a".into(), cmdline: "appArgs=1".into(), status: None })
        );
        assert!(parse(&v(&["--phases"])).unwrap_err().contains("--app-dir"));
        assert!(parse(&v(&["--bogus"])).unwrap_err().contains("--bogus"));
        assert!(parse(&v(&[])).is_err());
        assert!(parse(&v(&["--"])).is_err());
        assert_eq!(parse(&v(&["-h"])), Ok(Mode::Help));
        assert_eq!(parse(&v(&["--save-env", "/f"])), Ok(Mode::SaveEnv { file: "/f".into() }));
        assert!(parse(&v(&["--save-env"])).is_err());
        // Regression: `--phases ... -- PROGRAM` ran PROGRAM and ignored --phases.
        assert!(parse(&v(&["--phases", "--app-dir", "/a", "--", "true"])).unwrap_err().contains("--phases"));
        assert!(parse(&v(&["--app-dir", "/a", "true"])).unwrap_err().contains("`true`"));
        assert!(parse(&v(&["--cmdline", "appArgs=1", "--", "true"])).is_err());
    }
}
