//! The typed configuration the parameters describe, its checks, and the environment every
//! phase gets.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cmds::join_cmds;
use crate::kexec::KexecFrom;
use crate::results::{DEFAULT_RESULTS_DIR, ResultsTo};
use crate::value::{End, IpCidr, LogLevel, MacAddr, StatusPort};
use crate::words::join_words;

/// The application directory and its files, fixed by the protocol.
pub const APP_DIR: &str = "/app";
pub const APP_PRERUN: &str = "/app/prerun";
pub const APP_RUN: &str = "/app/run";
pub const APP_POSTRUN: &str = "/app/postrun";
pub const APP_OUT: &str = "/app/output";

/// Seconds a program has to end after SIGTERM before it is killed, unless `appStopGrace`
/// says otherwise.
pub const DEFAULT_STOP_GRACE: u32 = 5;

/// What the appliance parameters ask for. `Default` is what an empty command line means.
/// Deserialising accepts any subset of the fields (the rest take their defaults).
///
/// Each field is one parameter, which its entry in the parameter table parses, checks and
/// renders: a new field needs one there, in the same place.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `appCmds` (alias `appCmd`): commands run after prerun, before run.
    pub cmds: Vec<String>,
    /// `appCmdsFile`: a file in the image with one command per line, run after `cmds`.
    pub cmds_file: Option<String>,
    /// `appEnd`: what happens after postrun.
    pub end: End,
    /// `appDebug`: a console shell before prerun.
    pub debug: bool,
    /// `appArgs`: the arguments of `/app/run`.
    pub args: Vec<String>,
    /// `appMac`: MAC address of the control NIC.
    pub mac: Option<MacAddr>,
    /// `appIp`: address of the control NIC.
    pub ip: Option<IpCidr>,
    /// `appNode`: node name, also the hostname.
    pub node: Option<String>,
    /// `appCtlServer`: host to report back to.
    pub ctl_server: Option<String>,
    /// `appCtlUser`: user on the control server.
    pub ctl_user: Option<String>,
    /// `appCtlDir`: directory on the control server.
    pub ctl_dir: Option<String>,
    /// `appCtlFile`: file on the control server; see [`Config::ctl_file_or_default`].
    pub ctl_file: Option<String>,
    /// `appLog`: the init's log level; `None` means the init's default (info).
    pub log: Option<LogLevel>,
    /// `appModules`: kernel modules the init loads (with their dependencies) on top of
    /// those the image loads anyway; names as `modprobe` takes them.
    pub modules: Vec<String>,
    /// `appGateway`: the default route's gateway, on the control NIC; no default route
    /// when unset (a NIC address alone reaches its own subnet).
    pub gateway: Option<Ipv4Addr>,
    /// `appIp=dhcp`: the control NIC's address comes from DHCP (then `ip` is `None`).
    pub dhcp: bool,
    /// `appNetDown`: the control NIC's link is down while `/app/run` runs.
    pub net_down: bool,
    /// `appResultsTo`: where the results are saved after postrun.
    pub results_to: Option<ResultsTo>,
    /// `appResultsDir`: the guest directory saved with `/app/output`; `None` means
    /// [`DEFAULT_RESULTS_DIR`].
    pub results_dir: Option<String>,
    /// `appRunId`: the run's directory name on the results server.
    pub run_id: Option<String>,
    /// `appRunTimeout`: seconds after which the init ends `/app/run` (and, separately,
    /// `/app/postrun`), where no host is watching the run.
    pub run_timeout: Option<u32>,
    /// `appStopGrace`: seconds a program has to end after the SIGTERM of a stop request or
    /// of its time limit before the init kills it; `None` means [`DEFAULT_STOP_GRACE`].
    pub stop_grace: Option<u32>,
    /// `appCarryEnv=0`: the variables a shell-script phase exports stay in that phase
    /// instead of reaching the later ones (see `docs/protocol.md`, "Carrying variables").
    /// Inverted so that the default, carrying them as the original did, is `false`.
    pub no_carry_env: bool,
    /// `appStatus`: the port of the status record.
    pub status_port: StatusPort,
    /// `appKexec`: the app dir `appEnd=kexec` fetches and boots.
    pub kexec: Option<KexecFrom>,
    /// `appSegIp`: the address of the segment NIC, the Ethernet NIC beside the control
    /// one that links the nodes of a run.
    pub seg_ip: Option<IpCidr>,
    /// `appPeers`: the nodes of the run and their segment addresses, `name=a.b.c.d,...`.
    pub peers: Option<String>,
    /// `appRendezvous`: the host's rendezvous server and the run's token,
    /// `a.b.c.d:port/token`.
    pub rendezvous: Option<String>,
}

impl Config {
    /// `appStopGrace`, or [`DEFAULT_STOP_GRACE`].
    pub fn stop_grace_or_default(&self) -> u32 {
        self.stop_grace.unwrap_or(DEFAULT_STOP_GRACE)
    }

    /// `appResultsDir`, or `/app/results`.
    pub fn results_dir_or_default(&self) -> &str {
        self.results_dir.as_deref().unwrap_or(DEFAULT_RESULTS_DIR)
    }

    /// `appCtlFile`, or the original's intended default `<node>-<address>.out` when node and
    /// IP are set (the address without its prefix, which would be a path separator).
    pub fn ctl_file_or_default(&self) -> Option<String> {
        match (&self.ctl_file, &self.node, &self.ip) {
            (Some(f), _, _) => Some(f.clone()),
            (None, Some(node), Some(ip)) => Some(format!("{node}-{}.out", ip.addr())),
            _ => None,
        }
    }

    /// The `APP_*` environment every phase gets, in a fixed order. `APP_ARGS` is the
    /// arguments quoted for `sh` (`eval "set -- $APP_ARGS"`); `APP_CMDS` is the commands in
    /// `appCmds` form (`:`-separated, `\:` and `\\` escaped). The optional variables are
    /// present only when set.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("APP_DIR", APP_DIR),
            ("APP_PRERUN", APP_PRERUN),
            ("APP_RUN", APP_RUN),
            ("APP_POSTRUN", APP_POSTRUN),
            ("APP_OUT", APP_OUT),
            ("APP_END", self.end.as_str()),
            ("APP_DEBUG", if self.debug { "1" } else { "0" }),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("APP_ARGS".to_string(), join_words(&self.args)));
        env.push(("APP_CMDS".to_string(), join_cmds(&self.cmds)));
        let optional = [
            ("APP_MYMAC", self.mac.map(|m| m.to_string())),
            ("APP_MYIP", self.ip.map(|ip| ip.to_string()).or_else(|| self.dhcp.then(|| "dhcp".to_string()))),
            ("APP_MYNODE", self.node.clone()),
            ("APP_CTLSERVER", self.ctl_server.clone()),
            ("APP_CTLUSER", self.ctl_user.clone()),
            ("APP_CTLDIR", self.ctl_dir.clone()),
            ("APP_CTLFILE", self.ctl_file_or_default()),
            ("APP_LOG", self.log.map(|l| l.to_string())),
            ("APP_MODULES", (!self.modules.is_empty()).then(|| self.modules.join(","))),
            ("APP_GATEWAY", self.gateway.map(|g| g.to_string())),
            ("APP_RESULTS_TO", self.results_to.as_ref().map(|r| r.to_string())),
            ("APP_RUNID", self.run_id.clone()),
            ("APP_RUN_TIMEOUT", self.run_timeout.map(|t| t.to_string())),
            ("APP_STOP_GRACE", self.stop_grace.map(|t| t.to_string())),
            ("APP_KEXEC", self.kexec.as_ref().map(|k| k.to_string())),
            ("APP_SEGIP", self.seg_ip.map(|ip| ip.to_string())),
            ("APP_PEERS", self.peers.clone()),
            ("APP_RENDEZVOUS", self.rendezvous.clone()),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                env.push((k.to_string(), v));
            }
        }
        env.push(("APP_RESULTS".to_string(), self.results_dir_or_default().to_string()));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_env_has_fixed_variables_only() {
        let env = Config::default().env();
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "APP_DIR",
                "APP_PRERUN",
                "APP_RUN",
                "APP_POSTRUN",
                "APP_OUT",
                "APP_END",
                "APP_DEBUG",
                "APP_ARGS",
                "APP_CMDS",
                "APP_RESULTS"
            ]
        );
        assert_eq!(get(&env, "APP_END"), Some("halt"));
        assert_eq!(get(&env, "APP_DEBUG"), Some("0"));
        assert_eq!(get(&env, "APP_ARGS"), Some(""));
        assert_eq!(get(&env, "APP_OUT"), Some("/app/output"));
    }

    #[test]
    fn full_env() {
        let c = Config {
            cmds: vec!["echo a:b".into(), "ls".into()],
            end: End::Shell,
            debug: true,
            args: vec!["10".into(), "a b".into()],
            mac: Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            ip: IpCidr::new(Ipv4Addr::new(10, 0, 2, 15), 24),
            node: Some("n1".into()),
            ctl_server: Some("10.0.2.2".into()),
            ctl_user: Some("me".into()),
            ctl_dir: Some("/tmp/runs".into()),
            log: Some(LogLevel::Debug),
            ..Config::default()
        };
        let env = c.env();
        assert_eq!(get(&env, "APP_END"), Some("shell"));
        assert_eq!(get(&env, "APP_DEBUG"), Some("1"));
        assert_eq!(get(&env, "APP_ARGS"), Some("10 'a b'"));
        assert_eq!(get(&env, "APP_CMDS"), Some("echo a\\:b:ls"));
        assert_eq!(get(&env, "APP_MYMAC"), Some("52:54:00:12:34:56"));
        assert_eq!(get(&env, "APP_MYIP"), Some("10.0.2.15/24"));
        assert_eq!(get(&env, "APP_MYNODE"), Some("n1"));
        assert_eq!(get(&env, "APP_CTLSERVER"), Some("10.0.2.2"));
        assert_eq!(get(&env, "APP_CTLUSER"), Some("me"));
        assert_eq!(get(&env, "APP_CTLDIR"), Some("/tmp/runs"));
        assert_eq!(get(&env, "APP_LOG"), Some("debug"));
        let c = Config { modules: vec!["virtio_net".into(), "9p".into()], ..Config::default() };
        assert_eq!(get(&c.env(), "APP_MODULES"), Some("virtio_net,9p"));
        let c = Config { gateway: Some(Ipv4Addr::new(10, 0, 2, 2)), ..Config::default() };
        assert_eq!(get(&c.env(), "APP_GATEWAY"), Some("10.0.2.2"));
    }

    /// The original once copied appCtlFile from the wrong variable; the default it meant is
    /// `<node>-<ip>.out`.
    #[test]
    fn ctl_file_defaults_to_node_and_address() {
        let mut c =
            Config { node: Some("n1".into()), ip: IpCidr::new(Ipv4Addr::new(10, 0, 2, 15), 24), ..Config::default() };
        assert_eq!(get(&c.env(), "APP_CTLFILE"), Some("n1-10.0.2.15.out"));
        c.ctl_file = Some("x.out".into());
        assert_eq!(get(&c.env(), "APP_CTLFILE"), Some("x.out"));
        c.ctl_file = None;
        c.ip = None;
        assert_eq!(get(&c.env(), "APP_CTLFILE"), None);
    }

    #[test]
    fn validate_rejects_what_parsing_cannot_produce() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = [
            Config { cmds: vec![" ls".into()], ..Config::default() },
            Config { cmds: vec![String::new()], ..Config::default() },
            Config { ctl_user: Some(String::new()), ..Config::default() },
            Config { node: Some("a b".into()), ..Config::default() },
            Config { args: vec!["a\0".into()], ..Config::default() },
            Config { cmds_file: Some("x\0".into()), ..Config::default() },
            Config { modules: vec!["virtio net".into()], ..Config::default() },
            Config { modules: vec![String::new()], ..Config::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn serde_accepts_partial_and_rejects_unknown_fields() {
        let c: Config = serde_json::from_str(r#"{"cmds":["ls"],"end":"bash","ip":"10.0.2.15/24"}"#).unwrap();
        assert_eq!(c.cmds, ["ls"]);
        assert_eq!(c.end, End::Shell);
        assert_eq!(c.ip.map(|i| i.prefix()), Some(24));
        assert!(serde_json::from_str::<Config>(r#"{"cmd":["ls"]}"#).is_err());
        let full = Config { mac: Some(MacAddr([1, 2, 3, 4, 5, 6])), log: Some(LogLevel::Warn), ..c };
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), full);
    }
}
