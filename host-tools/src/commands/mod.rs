//! One module per subcommand: each turns its arguments into a library call and
//! prints the outcome.

pub mod build;
pub mod cpio;
pub mod exp;
pub mod image;
pub mod kernel;
pub mod keys;
pub mod netboot;
pub mod publish;
pub mod pull;
pub mod root;
pub mod run;
pub mod ssh;
pub mod stop;
pub mod trace;
pub mod update;
