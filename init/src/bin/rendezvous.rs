//! `appliance-rendezvous POINT [SECONDS]`: blocks until every node of the run has reached
//! POINT (default 300 s), for `appCmds` and scripts of a multi-node experiment. Exits 0 when
//! all are there, 1 when the time ran out, 2 on any other error.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

extern crate alloc;

use appliance_init::rendezvous::{self, Error};
use appliance_init::rt::Args;
use appliance_init::{outln, sys};

appliance_init::entry!(main);

fn main(args: Args) -> ! {
    let (Some(point), seconds) = (args.argv.get(1), args.argv.get(2)) else {
        outln!("usage: appliance-rendezvous POINT [SECONDS]");
        sys::exit(2)
    };
    let Ok(seconds) = seconds.map_or(Ok(300), |s| s.parse::<u32>()) else {
        outln!("appliance-rendezvous: SECONDS is a whole number");
        sys::exit(2)
    };
    match rendezvous::reach(&args.envp, point, seconds) {
        Ok(()) => {
            outln!("rendezvous: every node reached {point}");
            sys::exit(0)
        }
        Err(e @ Error::TimedOut { .. }) => {
            outln!("rendezvous: {e}");
            sys::exit(1)
        }
        Err(e) => {
            outln!("rendezvous: {e}");
            sys::exit(2)
        }
    }
}
