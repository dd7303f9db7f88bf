//! `appliance-hello`, the application of `images/hello`: prints its arguments, writes
//! them to `$APP_DIR/results/hello.txt`, and exits with N when given `exit=N`. For
//! experiments: `sleep=S` waits S seconds first (a run that outlasts its time bound), and
//! each `metric=NAME=NUMBER` goes into `$APP_DIR/results/metrics.json`.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use appliance_init::rt::Args;
use appliance_init::{console, outln, sys};
use rustix::fs::{Mode, OFlags};

appliance_init::entry!(main);

fn main(args: Args) -> ! {
    let words = args.argv.get(1..).unwrap_or_default();
    outln!("hello: {} argument(s)", words.len());
    let mut record = String::new();
    let mut code = 0;
    let mut metrics = String::new();
    for (i, w) in words.iter().enumerate() {
        outln!("arg[{}]={w}", i + 1);
        record.push_str(&format!("arg[{}]={w}\n", i + 1));
        if let Some(n) = w.strip_prefix("exit=") {
            match n.parse::<u8>() {
                Ok(n) => code = i32::from(n),
                Err(_) => outln!("hello: `{w}`: expected exit=N with N in 0..=255"),
            }
        }
        if let Some(s) = w.strip_prefix("sleep=") {
            match s.parse::<i64>() {
                Ok(secs) => {
                    let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: secs, tv_nsec: 0 });
                }
                Err(_) => outln!("hello: `{w}`: expected sleep=SECONDS"),
            }
        }
        if let Some((name, value)) = w.strip_prefix("metric=").and_then(|m| m.split_once('=')) {
            // A number as JSON writes it, and a name that needs no escaping.
            let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let number = value.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
            match (plain && number, value.parse::<f64>()) {
                (true, Ok(_)) => {
                    metrics.push_str(if metrics.is_empty() { "{" } else { "," });
                    metrics.push_str(&format!("\"{name}\":{value}"));
                }
                _ => outln!("hello: `{w}`: expected metric=NAME=NUMBER"),
            }
        }
    }
    let app = args.envp.iter().find_map(|e| e.strip_prefix("APP_DIR=")).unwrap_or("/app");
    let dir = format!("{app}/results");
    let _ = rustix::fs::mkdir(dir.as_str(), Mode::from_raw_mode(0o755));
    let path = format!("{dir}/hello.txt");
    let written =
        rustix::fs::open(path.as_str(), OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, Mode::from_raw_mode(0o644))
            .and_then(|fd| console::write_all(rustix::fd::AsFd::as_fd(&fd), record.as_bytes()));
    match written {
        Ok(()) => outln!("hello: wrote {path}"),
        Err(e) => outln!("hello: cannot write {path}: {e}"),
    }
    if !metrics.is_empty() {
        metrics.push_str("}\n");
        let path = format!("{dir}/metrics.json");
        let written = rustix::fs::open(
            path.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o644),
        )
        .and_then(|fd| console::write_all(rustix::fd::AsFd::as_fd(&fd), metrics.as_bytes()));
        if let Err(e) = written {
            outln!("hello: cannot write {path}: {e}");
        }
    }
    outln!("hello: exiting with {code}");
    sys::exit(code)
}
