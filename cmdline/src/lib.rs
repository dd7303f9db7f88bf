//! The appliance protocol, shared by the PID 1 (`appliance-init`) and the host tools: the
//! `app*` kernel command-line parameters, the status record and the image's module index.
//! `docs/protocol.md` is the contract this crate implements.
//!
//! It does: split `/proc/cmdline` into words (kernel double quotes and the original's
//! single quotes), parse the `app*` parameters into a typed [`Config`] with a diagnostic for
//! every problem ([`parse`], lenient, for PID 1) or the first one ([`parse_strict`], for
//! host tools), compute the `APP_*` environment of the phases ([`Config::env`]), render a
//! config back to words the kernel keeps as one word each ([`Config::render`]), define the
//! status record ([`status`]), what `appEnd=kexec` fetches and checks ([`kexec`]) and the lists of kernel modules an image packs ([`modules`]),
//! and find the known name closest to a mistyped one ([`suggest`]).
//!
//! It does not: touch the system (no I/O, no syscalls: the init reads `/proc/cmdline`,
//! `appCmdsFile` and the module lists, and runs the phases), interpret kernel parameters
//! other than its own, or do shell expansions. It is `no_std` + `alloc` without its default
//! `std` feature, and never panics on any input: it runs inside PID 1, where a panic is a
//! kernel panic.
#![cfg_attr(not(feature = "std"), no_std)]
// Runs inside PID 1: nothing here may panic on any input.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
extern crate alloc;

mod cmds;
mod config;
mod error;
pub mod kexec;
mod params;
mod parse;
mod render;
mod results;
mod value;
mod words;

pub mod modules;
pub mod segment;
pub mod status;
pub mod suggest;

pub use cmds::{join_cmds, parse_cmds_file, split_cmds};
pub use config::{APP_DIR, APP_OUT, APP_POSTRUN, APP_PRERUN, APP_RUN, Config, DEFAULT_STOP_GRACE};
pub use error::Error;
pub use params::KNOWN_KEYS;
pub use parse::{Parsed, parse, parse_strict};
pub use render::{check_len, render_param};
pub use results::{
    DEFAULT_RESULTS_DIR, NFS_REQUEST_LIMIT_S, NFS_TIMEOUTS, ResultsTo, is_valid_results_dir, is_valid_run_id,
};
pub use value::{
    DEFAULT_PREFIX, End, IpCidr, LogLevel, MacAddr, STATUS_PORT_NAME, StatusPort, is_valid_module, is_valid_node,
};
pub use words::{Words, join_words, quote_word, split_words};

/// The longest command line the kernel takes: x86's `COMMAND_LINE_SIZE` is 2048 including
/// the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 2047;

#[cfg(test)]
mod tests;
