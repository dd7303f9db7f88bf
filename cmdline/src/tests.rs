//! Table tests of every parsing rule (docs/protocol.md), regression tests named after the
//! original's defects, and the property tests: render/parse round trip, one kernel word
//! per parameter, and no panic on any bytes.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use proptest::prelude::*;

use crate::kexec::KexecFrom;
use crate::*;

fn parsed(line: &str) -> Parsed {
    parse(line.as_bytes())
}

/// A line that must parse without diagnostics.
fn clean(line: &str) -> Config {
    let p = parsed(line);
    assert_eq!(p.diagnostics, [], "{line:?}");
    p.config
}

fn cmds(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The kernel's tokenizer (lib/cmdline.c `next_arg`): splits on `isspace` (ASCII whitespace
/// and the Latin-1 NBSP byte 0xA0) outside `"`, toggling on every `"`; `'` is nothing.
fn kernel_words(line: &[u8]) -> Vec<Vec<u8>> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if space(line[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut in_quote = false;
        while i < line.len() && (in_quote || !space(line[i])) {
            if line[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        words.push(line[start..i].to_vec());
    }
    words
}

// ---- The original README's examples ----

#[test]
fn readme_cmds_with_trailing_colon_and_space() {
    let c = clean("console=ttyS0 appCmds='mkdir --help:ls :'");
    assert_eq!(c.cmds, cmds(&["mkdir --help", "ls"]));
}

#[test]
fn readme_end_bash_quoted_with_cmds() {
    let c = clean("console=ttyS0 appEnd='bash' appCmds='mkdir --help:ls:ls /app:'");
    assert_eq!(c.end, End::Shell);
    assert_eq!(c.cmds, cmds(&["mkdir --help", "ls", "ls /app"]));
}

#[test]
fn readme_end_bash_unquoted_and_quoted() {
    assert_eq!(clean("console=ttyS0 appEnd=bash").end, End::Shell);
    assert_eq!(clean("console=ttyS0 appEnd='bash'").end, End::Shell);
}

#[test]
fn readme_debug_flag() {
    let c = clean("console=ttyS0 appDebug");
    assert!(c.debug);
    assert_eq!(c, Config { debug: true, ..Config::default() });
}

#[test]
fn readme_cmds_example() {
    let c = clean("appCmds='ls /app:ifconfig eth0 ..:mount ..'");
    assert_eq!(c.cmds, cmds(&["ls /app", "ifconfig eth0 ..", "mount .."]));
}

// ---- Regressions: the original's defects ----

#[test]
fn debug_flag_is_not_matched_as_substring() {
    let c = clean("xappDebug foo=appDebug console=appDebug");
    assert!(!c.debug);
    let p = parsed("appDebugX=1");
    assert!(!p.config.debug);
    assert_eq!(p.diagnostics, [Error::UnknownParameter { key: "appDebugX".into(), suggestion: Some("appDebug") }]);
}

#[test]
fn unquoted_values_are_not_ignored() {
    let c = clean("appEnd=shell appArgs=10 appNode=n1 appCmds=ls");
    assert_eq!(c.end, End::Shell);
    assert_eq!(c.args, cmds(&["10"]));
    assert_eq!(c.node.as_deref(), Some("n1"));
    assert_eq!(c.cmds, cmds(&["ls"]));
}

#[test]
fn cmds_without_trailing_colon_end() {
    assert_eq!(clean("appCmds=ls").cmds, cmds(&["ls"]));
    assert_eq!(clean("appCmds='ls /app:date'").cmds, cmds(&["ls /app", "date"]));
    assert_eq!(clean("appCmds='ls /app:date:'").cmds, cmds(&["ls /app", "date"]));
}

#[test]
fn cmds_can_hold_a_literal_colon_and_backslash() {
    let c = clean(r"appCmds='echo a\:b:printf %s\\:date'");
    assert_eq!(c.cmds, cmds(&["echo a:b", r"printf %s\", "date"]));
}

#[test]
fn unknown_end_is_reported_and_halts() {
    let p = parsed("appEnd=reboot appEnd=wait");
    assert_eq!(p.config.end, End::Halt);
    assert_eq!(p.diagnostics.len(), 1);
    assert_eq!(
        p.diagnostics[0].to_string(),
        "appEnd: `wait` is not one of halt, poweroff, reboot, shell (alias bash), sshd, kexec"
    );
}

#[test]
fn cmd_alias_is_kept() {
    assert_eq!(clean("appCmd='ls:date'").cmds, cmds(&["ls", "date"]));
    assert_eq!(clean("appCmd=a appCmds=b").cmds, cmds(&["b"]));
    assert_eq!(clean("appCmds=b appCmd=a").cmds, cmds(&["a"]));
}

// ---- Words and quoting ----

#[test]
fn kernel_double_quotes() {
    assert_eq!(clean("\"appCmds=ls /app:echo hi\"").cmds, cmds(&["ls /app", "echo hi"]));
    assert_eq!(clean("appCmds=\"ls /app\"").cmds, cmds(&["ls /app"]));
    assert_eq!(clean("app\"Cmds=ls /a\"pp").cmds, cmds(&["ls /app"]));
}

#[test]
fn single_quotes_keep_double_quotes_that_group_args() {
    let c = clean("appArgs='10 \"a b\"'");
    assert_eq!(c.args, cmds(&["10", "a b"]));
    let c = clean("\"appArgs=10 'a b' c\\ d\"");
    assert_eq!(c.args, cmds(&["10", "a b", "c d"]));
}

#[test]
fn unbalanced_quote_runs_to_the_end_and_is_reported() {
    let p = parsed("appArgs='a b appEnd=shell\n");
    assert_eq!(
        p.diagnostics,
        [Error::UnbalancedQuote { param: Some("appArgs".into()), text: "appArgs='a b appEnd=shell".into() }]
    );
    assert_eq!(p.config.args, cmds(&["a", "b", "appEnd=shell"]));
    assert_eq!(p.config.end, End::Halt);

    // Someone else's word swallows ours.
    let p = parsed("console=\"ttyS0 appDebug");
    assert!(!p.config.debug);
    assert!(matches!(&p.diagnostics[..], [Error::UnbalancedQuote { param: Some(k), .. }] if k == "console"));

    let p = parsed("appDebug 'x");
    assert!(p.config.debug);
    assert_eq!(p.diagnostics, [Error::UnbalancedQuote { param: None, text: "'x".into() }]);
}

#[test]
fn unbalanced_quote_inside_args_is_reported_best_effort() {
    let p = parsed("\"appArgs=a 'b c\"");
    assert_eq!(p.config.args, cmds(&["a", "b c"]));
    assert_eq!(p.diagnostics, [Error::UnbalancedQuote { param: Some("appArgs".into()), text: "a 'b c".into() }]);
}

#[test]
fn odd_double_quotes_inside_single_quotes_are_reported() {
    let p = parsed("appCmds='echo \"' console=ttyS0");
    assert_eq!(p.config.cmds, cmds(&["echo \""]));
    assert_eq!(
        p.diagnostics,
        [Error::OddDoubleQuotes { param: Some("appCmds".into()), text: "appCmds='echo \"'".into() }]
    );
    assert_eq!(kernel_words(b"appCmds='echo \"' console=ttyS0").len(), 2);
}

#[test]
fn other_words_are_ignored_silently() {
    let c = clean("console=ttyS0 quiet root=/dev/sda1 8250.nr_uarts=4 apparmor=0 app apple=1");
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_app_parameters_get_a_suggestion() {
    let p = parsed("appEdn=shell appdebug appXyzzyPlugh=1 APPEND=1");
    assert_eq!(
        p.diagnostics,
        [
            Error::UnknownParameter { key: "appEdn".into(), suggestion: Some("appEnd") },
            Error::UnknownParameter { key: "appdebug".into(), suggestion: Some("appDebug") },
            Error::UnknownParameter { key: "appXyzzyPlugh".into(), suggestion: None },
            Error::UnknownParameter { key: "APPEND".into(), suggestion: Some("appEnd") },
        ]
    );
    assert_eq!(p.diagnostics[0].to_string(), "unknown parameter `appEdn`; did you mean `appEnd`?");
    assert_eq!(p.config, Config::default());
}

#[test]
fn words_after_double_dash_are_for_init() {
    let c = clean("appDebug -- appEnd=shell appFoo");
    assert!(c.debug);
    assert_eq!(c.end, End::Halt);
    // Not a lone `--`.
    assert_eq!(clean("--x appEnd=shell").end, End::Shell);
}

#[test]
fn last_occurrence_wins() {
    let c = clean("appEnd=reboot appNode=a appEnd=shell appNode=b");
    assert_eq!(c.end, End::Shell);
    assert_eq!(c.node.as_deref(), Some("b"));
}

#[test]
fn empty_value_resets_to_default() {
    let c = clean(
        "appEnd=shell appArgs=x appNode=n appDebug appCmds=ls appEnd= appArgs=\"\" appNode='' appDebug= appCmds=",
    );
    assert_eq!(c, Config::default());
    assert_eq!(clean("appArgs=\"''\"").args, cmds(&[""]));
}

#[test]
fn bare_key_needs_a_value_except_debug() {
    let p = parsed("appEnd=shell appEnd");
    assert_eq!(p.config.end, End::Halt);
    assert_eq!(p.diagnostics, [Error::MissingValue { param: "appEnd".into() }]);
    assert_eq!(p.diagnostics[0].to_string(), "appEnd: missing value (expected `appEnd=VALUE`)");
}

#[test]
fn debug_values() {
    assert!(clean("appDebug=1").debug);
    assert!(clean("appDebug=YES").debug);
    assert!(!clean("appDebug appDebug=off").debug);
    let p = parsed("appDebug appDebug=maybe");
    assert!(!p.config.debug);
    assert!(
        matches!(&p.diagnostics[..], [Error::InvalidValue { param, value, .. }] if param == "appDebug" && value == "maybe")
    );
}

#[test]
fn invalid_values_are_reported_and_reset() {
    let p = parsed("appIp=10.0.2.15/24 appIp=10.0.2.300/24");
    assert_eq!(p.config.ip, None);
    assert_eq!(
        p.diagnostics[0].to_string(),
        "appIp: `10.0.2.300/24` is not an IPv4 address with a prefix (expected a.b.c.d/nn, e.g. 10.0.2.15/24)"
    );
    let p = parsed("appMac=52:54:00:12:34 appNode=a/b appLog=loud");
    assert_eq!(p.config, Config::default());
    let params: Vec<&str> = p
        .diagnostics
        .iter()
        .map(|d| match d {
            Error::InvalidValue { param, .. } => param.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(params, ["appMac", "appNode", "appLog"]);
}

#[test]
fn ip_without_prefix_assumes_24_with_a_diagnostic() {
    let p = parsed("appIp=10.0.2.15");
    assert_eq!(p.config.ip, IpCidr::new(Ipv4Addr::new(10, 0, 2, 15), 24));
    assert_eq!(p.diagnostics, [Error::IpWithoutPrefix { value: "10.0.2.15".into(), assumed: 24 }]);
    assert_eq!(
        p.diagnostics[0].to_string(),
        "appIp: `10.0.2.15` has no prefix length; assuming /24 (write `10.0.2.15/24`)"
    );
    assert!(parse_strict(b"appIp=10.0.2.15").is_err());
}

#[test]
fn modules_are_a_comma_separated_list() {
    assert_eq!(clean("appModules=virtio_net").modules, ["virtio_net"]);
    assert_eq!(clean("appModules=virtio_net,,9p,").modules, ["virtio_net", "9p"]);
    assert_eq!(clean("\"appModules=a, b-c\"").modules, ["a", "b-c"]);
    assert!(clean("appModules=a appModules=").modules.is_empty());
    let p = parsed("appModules=a,b/c");
    assert!(p.config.modules.is_empty());
    assert_eq!(
        p.diagnostics[0].to_string(),
        "appModules: `b/c` is not a kernel module name (expected 1 to 55 of A-Z a-z 0-9 - _)"
    );
    assert_eq!(Config { modules: cmds(&["a", "b"]), ..Config::default() }.to_words(), ["appModules=a,b"]);
}

#[test]
fn every_parameter() {
    let c = clean(
        "appCmds='a:b' appCmdsFile=/app/cmds appEnd=sshd appDebug appArgs='x \"y z\"' \
         appMac=52-54-00-AB-CD-EF appIp=192.168.1.5/16 appNode=node_1 appCtlServer=10.0.2.2 \
         appCtlUser=me appCtlDir=/tmp/runs appCtlFile=out.txt appLog=trace appModules=virtio_net,9p \
         appGateway=192.168.1.1 appNetDown appResultsTo=nfs:10.0.2.2:/,port=2049 appResultsDir=/app/r \
         appRunId=run-1 appRunTimeout=600 appStopGrace=30 appCarryEnv=0 appStatus=ttyS0 appKexec=http://10.0.2.2:8000/app/ \
         appSegIp=10.77.0.2/24 appPeers=server-1=10.77.0.1,client-1=10.77.0.2 appRendezvous=10.0.2.2:4567/r1",
    );
    let want = Config {
        cmds: cmds(&["a", "b"]),
        cmds_file: Some("/app/cmds".into()),
        end: End::Sshd,
        debug: true,
        args: cmds(&["x", "y z"]),
        mac: Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
        ip: IpCidr::new(Ipv4Addr::new(192, 168, 1, 5), 16),
        node: Some("node_1".into()),
        ctl_server: Some("10.0.2.2".into()),
        ctl_user: Some("me".into()),
        ctl_dir: Some("/tmp/runs".into()),
        ctl_file: Some("out.txt".into()),
        log: Some(LogLevel::Trace),
        modules: cmds(&["virtio_net", "9p"]),
        gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        dhcp: false,
        net_down: true,
        results_to: Some(ResultsTo::Nfs {
            server: Ipv4Addr::new(10, 0, 2, 2),
            export: "/".into(),
            options: "port=2049".into(),
        }),
        results_dir: Some("/app/r".into()),
        run_id: Some("run-1".into()),
        run_timeout: Some(600),
        stop_grace: Some(30),
        no_carry_env: true,
        status_port: StatusPort::Serial(0),
        kexec: Some(KexecFrom::Http { addr: Ipv4Addr::new(10, 0, 2, 2), port: 8000, path: "/app/".into() }),
        seg_ip: IpCidr::new(Ipv4Addr::new(10, 77, 0, 2), 24),
        peers: Some("server-1=10.77.0.1,client-1=10.77.0.2".into()),
        rendezvous: Some("10.0.2.2:4567/r1".into()),
    };
    assert_eq!(c, want);
    assert_eq!(parse_strict(want.render().unwrap().as_bytes()), Ok(want));
    assert_eq!(KNOWN_KEYS.len(), 28);
}

#[test]
fn run_timeout_is_whole_seconds_from_one() {
    assert_eq!(clean("appRunTimeout=1").run_timeout, Some(1));
    assert_eq!(clean("appRunTimeout=4294967295").run_timeout, Some(u32::MAX));
    assert_eq!(clean("appRunTimeout=5 appRunTimeout=").run_timeout, None);
    for bad in ["0", "+5", "-1", "1.5", "10s", "4294967296", " 5"] {
        let p = parsed(&format!("appRunTimeout='{bad}'"));
        assert_eq!(p.config.run_timeout, None, "{bad}");
        assert_eq!(
            p.diagnostics[0].to_string(),
            format!("appRunTimeout: `{bad}` is not a whole number of seconds from 1 (e.g. 600)")
        );
    }
    let c = Config { run_timeout: Some(90), ..Config::default() };
    assert_eq!(c.to_words(), ["appRunTimeout=90"]);
    assert!(c.env().contains(&("APP_RUN_TIMEOUT".into(), "90".into())));
    assert!(Config { run_timeout: Some(0), ..Config::default() }.validate().is_err());
}

#[test]
fn stop_grace_is_whole_seconds_from_zero() {
    assert_eq!(clean("appStopGrace=0").stop_grace, Some(0));
    assert_eq!(clean("appStopGrace=120").stop_grace, Some(120));
    assert_eq!(clean("appStopGrace=5 appStopGrace=").stop_grace, None);
    assert_eq!(Config::default().stop_grace_or_default(), DEFAULT_STOP_GRACE);
    for bad in ["+5", "-1", "1.5", "30s", "4294967296", " 5"] {
        let p = parsed(&format!("appStopGrace='{bad}'"));
        assert_eq!(p.config.stop_grace, None, "{bad}");
        assert_eq!(
            p.diagnostics[0].to_string(),
            format!("appStopGrace: `{bad}` is not a whole number of seconds (e.g. 30; 0 kills at once)")
        );
    }
    let c = Config { stop_grace: Some(30), ..Config::default() };
    assert_eq!(c.to_words(), ["appStopGrace=30"]);
    assert_eq!(c.stop_grace_or_default(), 30);
    assert!(c.env().contains(&("APP_STOP_GRACE".into(), "30".into())));
}

#[test]
fn not_utf8_in_our_words_is_reported_with_offset() {
    let p = parse(b"appNode=n\xff1 appEnd=shell x=\xfe");
    assert_eq!(p.diagnostics, [Error::NotUtf8 { param: "appNode".into(), offset: 9 }]);
    assert_eq!(p.config.node, None);
    assert_eq!(p.config.end, End::Shell);
    // Offsets count raw bytes, quotes included.
    let p = parse(b"appNode=a appNode='n\xff'");
    assert_eq!(p.diagnostics, [Error::NotUtf8 { param: "appNode".into(), offset: 20 }]);
    assert_eq!(p.config.node, None);
    let p = parse(b"appF\xff=1");
    assert_eq!(p.diagnostics, [Error::NotUtf8 { param: "appF\u{fffd}".into(), offset: 4 }]);
}

#[test]
fn proc_cmdline_framing() {
    assert!(parse_strict(b"appDebug\n").unwrap().debug);
    assert_eq!(parse_strict(b"").unwrap(), Config::default());
    assert_eq!(parse_strict(b" \n").unwrap(), Config::default());
    // A C string ends at its NUL.
    assert_eq!(parse_strict(b"appDebug\0appEnd=shell").unwrap(), Config { debug: true, ..Config::default() });
}

#[test]
fn too_long_line_is_reported_but_parsed() {
    let mut line = "x".repeat(MAX_CMDLINE_LEN);
    line.push_str(" appDebug");
    let p = parsed(&line);
    assert!(p.config.debug);
    assert_eq!(p.diagnostics, [Error::TooLong { len: MAX_CMDLINE_LEN + 9, max: MAX_CMDLINE_LEN }]);
}

#[test]
fn strict_returns_the_first_diagnostic() {
    assert_eq!(
        parse_strict(b"appEnd=x appFoo"),
        Err(Error::InvalidValue {
            param: "appEnd".into(),
            value: "x".into(),
            expected: "one of halt, poweroff, reboot, shell (alias bash), sshd, kexec",
        })
    );
}

#[test]
fn env_of_a_parsed_line() {
    let c = clean("appNode=n1 appIp=10.0.2.15/24 appArgs='a \"b c\"' appCmds='x\\:y:z'");
    let env = c.env();
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("APP_CTLFILE"), Some("n1-10.0.2.15.out"));
    assert_eq!(get("APP_ARGS"), Some("a 'b c'"));
    assert_eq!(get("APP_CMDS"), Some("x\\:y:z"));
    assert_eq!(split_words(get("APP_ARGS").unwrap()).words, c.args);
    assert_eq!(split_cmds(get("APP_CMDS").unwrap()), c.cmds);
}

#[test]
fn rendered_words_are_one_kernel_word_each() {
    let c = Config {
        cmds: cmds(&["echo \"a b\"", "ls /app", "printf '%s\\n' x:y"]),
        args: cmds(&["it's", "\"quoted\" word", "à la"]),
        ctl_dir: Some("/tmp/my runs".into()),
        ..Config::default()
    };
    let line = c.render().unwrap();
    assert_eq!(kernel_words(line.as_bytes()).len(), 3, "{line}");
    assert_eq!(parse_strict(line.as_bytes()), Ok(c));
}

// ---- Properties ----

fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        12 => proptest::char::range(' ', '~'),
        2 => prop::sample::select(vec!['"', '\'', ' ', ':', '\\', '=']),
        1 => prop::sample::select(vec!['é', 'à', 'ß', 'Ω', '日', '\u{a0}']),
    ]
}

/// Mostly with an even number of `"` (an odd number cannot be rendered, and would make most
/// configs fail to render).
fn text(max: usize) -> impl Strategy<Value = String> {
    (prop::collection::vec(text_char(), 0..max), prop::bool::weighted(0.9)).prop_map(|(chars, even)| {
        let mut s = String::from_iter(chars);
        if even && s.matches('"').count() % 2 == 1 {
            s.push('"');
        }
        s
    })
}

/// Non-empty, as the parser produces optional strings.
fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text(12).prop_filter("non-empty", |s| !s.is_empty()))
}

fn arb_base_config() -> impl Strategy<Value = Config> {
    let cmd = text(16).prop_map(|s| s.trim_matches(|c: char| c.is_ascii_whitespace()).to_string());
    let cmds = prop::collection::vec(cmd, 0..4).prop_map(|v| v.into_iter().filter(|c| !c.is_empty()).collect());
    let end = prop::sample::select(End::ALL.to_vec());
    let log = prop::option::of(prop::sample::select(LogLevel::ALL.to_vec()));
    let mac = prop::option::of(any::<[u8; 6]>().prop_map(MacAddr));
    let ip = prop::option::of((any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpCidr::new(Ipv4Addr::from(a), p)))
        .prop_map(Option::flatten);
    let node = prop::option::of("[A-Za-z0-9._-]{1,64}");
    (
        (cmds, opt_text(), end, any::<bool>(), prop::collection::vec(text(8), 0..4), mac, ip),
        (node, opt_text(), opt_text(), opt_text(), opt_text(), log, prop::collection::vec("[A-Za-z0-9_-]{1,20}", 0..4)),
    )
        .prop_map(
            |(
                (cmds, cmds_file, end, debug, args, mac, ip),
                (node, ctl_server, ctl_user, ctl_dir, ctl_file, log, modules),
            )| {
                Config {
                    cmds,
                    cmds_file,
                    end,
                    debug,
                    args,
                    mac,
                    ip,
                    node,
                    ctl_server,
                    ctl_user,
                    ctl_dir,
                    ctl_file,
                    log,
                    modules,
                    ..Config::default()
                }
            },
        )
}

/// [`arb_base_config`] with the network and results parameters.
fn arb_config() -> impl Strategy<Value = Config> {
    let gateway = prop::option::of(any::<u32>().prop_map(Ipv4Addr::from));
    let results_to = prop::option::of(prop_oneof![
        // Keys without `t`: never `timeo`, which could exceed the bound on NFS requests.
        (any::<u32>(), "/[a-z/]{0,12}", "(,[a-s]{1,5}=[0-9]{1,5}){0,2}").prop_map(|(a, export, o)| {
            ResultsTo::Nfs { server: Ipv4Addr::from(a), export, options: o.trim_start_matches(',').to_string() }
        }),
        ("[a-z0-9_]{1,31}", "(,[a-z]{1,5}=[0-9]{1,5}){0,2}")
            .prop_map(|(tag, o)| ResultsTo::NineP { tag, options: o.trim_start_matches(',').to_string() }),
        "[A-Za-z0-9._-]{1,31}".prop_map(|port| ResultsTo::Serial { port }),
    ]);
    let run_id = prop::option::of("[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}");
    let results_dir = prop::option::of("/[A-Za-z0-9/._-]{0,20}");
    let run_timeout = prop::option::of(1u32..);
    let status_port =
        prop_oneof![(0u8..=31).prop_map(StatusPort::Serial), Just(StatusPort::Virtio), Just(StatusPort::None)];
    let stop_grace = prop::option::of(any::<u32>());
    let extra = (run_timeout, stop_grace, any::<bool>(), status_port);
    (arb_base_config(), gateway, any::<bool>(), any::<bool>(), results_to, run_id, results_dir, extra).prop_map(
        |(
            c,
            gateway,
            dhcp,
            net_down,
            results_to,
            run_id,
            results_dir,
            (run_timeout, stop_grace, no_carry_env, status_port),
        )| {
            Config {
                gateway,
                dhcp: dhcp && c.ip.is_none(),
                net_down,
                results_to,
                run_id,
                results_dir,
                run_timeout,
                stop_grace,
                no_carry_env,
                status_port,
                ..c
            }
        },
    )
}

/// Byte strings made of the pieces that matter to the parser.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"appCmds=",
        b"appCmd=",
        b"appArgs=",
        b"appEnd=",
        b"appDebug",
        b"appDebug=",
        b"appIp=",
        b"appMac=",
        b"appNode=",
        b"appLog=",
        b"appModules=",
        b",",
        b"appFoo",
        b"apparmor=",
        b"'",
        b"\"",
        b" ",
        b"\t",
        b"\n",
        b"\\",
        b":",
        b"=",
        b"--",
        b"\xff",
        b"\xc3",
        b"\xa0",
        b"\0",
        b"a",
        b"shell",
        b"10.0.2.15",
        b"/24",
        b"ls /app",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..40).prop_map(|v| v.concat())
}

/// What the fuzz target checks too: parse never panics; its config is always valid; and
/// when the line was clean, the config renders (unless too long) and parses back equal.
fn check_parse_invariants(bytes: &[u8]) -> Result<(), TestCaseError> {
    let p = parse(bytes);
    prop_assert_eq!(p.config.validate(), Ok(()));
    if p.diagnostics.is_empty() {
        match p.config.render() {
            Ok(line) => prop_assert_eq!(parse_strict(line.as_bytes()), Ok(p.config)),
            Err(Error::TooLong { .. }) => {}
            Err(e) => prop_assert!(false, "clean line {:?} does not render: {}", bytes, e),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn render_then_parse_gives_the_config_back(c in arb_config()) {
        prop_assert_eq!(c.validate(), Ok(()));
        match c.render() {
            Ok(line) => {
                prop_assert_eq!(parse_strict(line.as_bytes()), Ok(c.clone()));
                let words = c.to_words();
                prop_assert_eq!(kernel_words(line.as_bytes()).len(), words.len(), "{}", line);
                prop_assert!(line.matches('"').count() % 2 == 0);
            }
            Err(Error::TooLong { .. }) => {}
            Err(Error::InvalidValue { expected, .. }) => prop_assert!(expected.contains("odd number")),
            Err(e) => prop_assert!(false, "unexpected {:?}", e),
        }
    }

    #[test]
    fn render_param_is_one_word_for_us_and_the_kernel(value in text(24)) {
        match render_param("appCmdsFile", &value) {
            Ok(word) => {
                prop_assert_eq!(kernel_words(word.as_bytes()).len(), 1, "{}", word);
                let c = parse_strict(word.as_bytes());
                let want = (!value.is_empty()).then(|| value.clone());
                prop_assert_eq!(c.map(|c| c.cmds_file), Ok(want));
            }
            Err(_) => prop_assert!(value.matches('"').count() % 2 == 1),
        }
    }

    #[test]
    fn args_join_then_split(args in prop::collection::vec(text(8), 0..5)) {
        let w = split_words(&join_words(&args));
        prop_assert!(!w.unclosed_quote);
        prop_assert_eq!(w.words, args);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_parse_invariants(&bytes)?;
    }

    #[test]
    fn parse_never_panics_on_token_soup(bytes in token_soup()) {
        check_parse_invariants(&bytes)?;
    }
}

/// `APP_ARGS` is for scripts: a real `sh` must give the same words back.
#[cfg(feature = "std")]
#[test]
fn app_args_round_trip_through_a_real_sh() {
    let args = cmds(&["", "a b", "it's", "\"q\"", "\\", "$HOME", "`id`", "*", "~", "#x", "é à", "-n", "a\nb"]);
    let c = Config { args: args.clone(), ..Config::default() };
    let env = c.env();
    let app_args = env.iter().find(|(k, _)| k == "APP_ARGS").map(|(_, v)| v.clone()).unwrap();
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "eval \"set -- $APP_ARGS\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done"])
        .env("APP_ARGS", &app_args)
        .output()
        .expect("/bin/sh runs");
    let got: Vec<String> = String::from_utf8(out.stdout).unwrap().split_terminator('\0').map(String::from).collect();
    assert_eq!(got, args, "APP_ARGS={app_args}");
}

#[test]
fn gateway_is_an_address_without_prefix() {
    assert_eq!(clean("appGateway=10.0.2.2").gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
    for bad in ["appGateway=10.0.2.2/24", "appGateway=gw.example", "appGateway=10.0.2"] {
        let p = parsed(&format!("appGateway=10.0.2.1 {bad}"));
        assert_eq!(p.config.gateway, None, "{bad}");
        assert!(matches!(&p.diagnostics[..], [Error::InvalidValue { param, .. }] if param == "appGateway"), "{bad}");
    }
}

#[test]
fn carry_env_is_on_unless_a_false_boolean_turns_it_off() {
    assert!(!clean("").no_carry_env);
    assert!(clean("appCarryEnv=0").no_carry_env);
    assert!(clean("appCarryEnv=off").no_carry_env);
    assert!(!clean("appCarryEnv=0 appCarryEnv=yes").no_carry_env);
    // An empty value resets to the default: carried.
    assert!(!clean("appCarryEnv=0 appCarryEnv=").no_carry_env);
    assert_eq!(Config { no_carry_env: true, ..Config::default() }.render().unwrap(), "appCarryEnv=0");
    assert_eq!(Config::default().render().unwrap(), "");
    let p = parsed("appCarryEnv=0 appCarryEnv=maybe");
    assert!(!p.config.no_carry_env);
    assert!(matches!(&p.diagnostics[..], [Error::InvalidValue { param, .. }] if param == "appCarryEnv"));
    let p = parsed("appCarryEnv");
    assert!(matches!(&p.diagnostics[..], [Error::MissingValue { .. }]), "{:?}", p.diagnostics);
}

#[test]
fn app_ip_dhcp_and_the_results_parameters() {
    let c = clean("appIp=DHCP appRunId=r1");
    assert!(c.dhcp && c.ip.is_none());
    assert_eq!(c.render().unwrap(), "appIp=dhcp appRunId=r1");
    let env = c.env();
    assert!(env.contains(&("APP_MYIP".to_string(), "dhcp".to_string())), "{env:?}");
    assert!(env.contains(&("APP_RESULTS".to_string(), "/app/results".to_string())), "{env:?}");
    // The last appIp wins, whichever kind.
    let c = clean("appIp=dhcp appIp=10.0.2.15/24");
    assert!(!c.dhcp && c.ip.is_some());
    let c = clean("appIp=10.0.2.15/24 appIp=dhcp");
    assert!(c.dhcp && c.ip.is_none());
    assert!(clean("appNetDown").net_down);
    assert!(!clean("appNetDown appNetDown=off").net_down);
    let p = parsed("appResultsTo=nfs:nfs.example:/x appRunId=../x appResultsDir=rel");
    let params: Vec<String> = p
        .diagnostics
        .iter()
        .map(|d| match d {
            Error::InvalidValue { param, .. } => param.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(params, ["appResultsTo", "appRunId", "appResultsDir"]);
    assert_eq!(p.config.results_to, None);
}
