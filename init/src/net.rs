//! The control network as the command line asks for it: find the control NIC, then give it
//! the address of `appIp=a.b.c.d/nn`, or one from DHCP; and the segment NIC of a
//! multi-node run, with the address of `appSegIp`. It sits above [`crate::nic`] (the
//! interface itself) and [`crate::dhcp`] (the lease), which know nothing of `appIp`.

use core::time::Duration;

use appliance_cmdline::Config;

use crate::dhcp;
use crate::nic::{self, Control, NetError};

/// How long to wait for the control NIC to appear: a driver loaded as a module probes its
/// device as it loads, so this only covers a slow probe (or says there is no NIC).
pub const NIC_WAIT: Duration = Duration::from_secs(3);

/// Finds the control NIC and configures it: statically with `appIp=a.b.c.d/nn`, else by
/// DHCP (`appIp=dhcp`, or no `appIp` when the results step needs the network).
pub fn bring_up(config: &Config) -> Result<Control, NetError> {
    let nic = nic::find_nic(config.mac, NIC_WAIT)?;
    match config.ip {
        Some(addr) => nic::configure(&nic, addr, config.gateway),
        None => dhcp::bring_up(&nic, config.gateway),
    }
}

/// The segment NIC (`appSegIp`), beside the control NIC `control`: its address, its link
/// up, and no route beyond its own subnet (the nodes of a run share one).
pub fn bring_up_segment(config: &Config, control: Option<&str>) -> Option<Result<Control, NetError>> {
    let addr = config.seg_ip?;
    Some(nic::find_segment_nic(control, NIC_WAIT).and_then(|nic| nic::configure(&nic, addr, None)))
}
