//! Experiments: the same appliance booted over a grid of parameters, with repetitions,
//! each run's results collected into a directory of its own, and a summary of them all.
//! `appliance exp` is a thin layer over this.
//!
//! Layered bottom up; a module imports only those before it in this list:
//! - [`definition`]: `experiment.toml`, checked before anything boots;
//! - [`matrix`]: the points of the parameter matrix, `{name}` substitution, `--filter`;
//! - [`network`]: the private segment of a multi-node run (QEMU multicast sockets);
//! - [`rendezvous`]: the host's rendezvous server, which nodes reach over their control NIC;
//! - [`node`]: one VM of a run, over [`crate::vm`] (QEMU, graceful stop, results step);
//! - [`summary`]: the rows of a batch, as CSV and JSON;
//! - [`batch`]: run directories, resuming, and the scheduler that runs them N VMs at once;
//! - [`report`]: statistics per point and a plot, from the summary's rows;
//! - [`slurm`]: a batch as one Slurm job array, its status and cancelling it.
//!
//! It does not build images (the CLI builds each role's image first) and runs nothing as
//! root: the results come back over a virtio-serial stream or 9p, without a server.

pub mod batch;
pub mod definition;
pub mod matrix;
pub mod network;
pub mod node;
pub mod rendezvous;
pub mod report;
pub mod slurm;
pub mod summary;
