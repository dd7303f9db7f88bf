//! `appliance-hello`, the application of `images/hello`: prints its arguments, writes
//! them to `$APP_DIR/results/hello.txt`, and exits with N when given `exit=N`.
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
    for (i, w) in words.iter().enumerate() {
        outln!("arg[{}]={w}", i + 1);
        record.push_str(&format!("arg[{}]={w}\n", i + 1));
        if let Some(n) = w.strip_prefix("exit=") {
            match n.parse::<u8>() {
                Ok(n) => code = i32::from(n),
                Err(_) => outln!("hello: `{w}`: expected exit=N with N in 0..=255"),
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
    outln!("hello: exiting with {code}");
    sys::exit(code)
}
