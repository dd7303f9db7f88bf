//! The phases with the control NIC watched around `/app/run`: its counters just before and
//! just after the run go to the status record (`run_traffic`: equal packet counts prove
//! nothing crossed the NIC while the experiment ran), and with `appNetDown` its link is
//! down meanwhile, as the original's prerun did with `ctlIfaceDown`.
//!
//! The phase list is cut around the run phase and each part goes through
//! [`sequence::run`], so the sequence itself knows nothing of the network.

use alloc::string::String;
use appliance_cmdline::status::Event;

use crate::nic::{self, Control};
use crate::plan::{Phase, PhaseKind};
use crate::sequence::{self, Context, Outcome};
use crate::supervisor::Supervisor;

/// Runs `phases` like [`sequence::run`], watching `nic` (the control NIC, or the first
/// Ethernet NIC when the network is not configured) around the run phase.
pub fn run(
    sup: &mut Supervisor,
    phases: &[Phase],
    ctx: &mut Context<'_>,
    control: Option<&Control>,
    nic: Option<&str>,
    link_down: bool,
) -> Outcome {
    let Some(at) = phases.iter().position(|p| p.kind == PhaseKind::Run) else {
        return sequence::run(sup, phases, ctx);
    };
    let (before, rest) = phases.split_at(at);
    let (run, after) = rest.split_at(1);
    let first = sequence::run(sup, before, ctx);
    if first.interrupted {
        // Stopped before the run phase started, which `before` does not hold.
        return Outcome { run_status: sequence::STOPPED_BEFORE_RUN, interrupted: true };
    }
    // Without a configured control NIC the link was never brought up: nothing to take down
    // (and bringing it up afterwards would only start IPv6 chatter).
    let down = link_down
        && control.is_some()
        && nic.is_some_and(|nic| match nic::set_link(nic, false) {
            Ok(()) => {
                log::info!("network: {nic} is down during run (appNetDown)");
                true
            }
            Err(e) => {
                log::error!("network: {e}");
                ctx.status.error(alloc::format!("network: {e}"));
                false
            }
        });
    let counters_before = nic.map(nic::counters);
    let middle = sequence::run(sup, run, ctx);
    let counters_after = nic.map(nic::counters);
    if down {
        restore(nic.unwrap_or_default(), control, ctx);
    }
    if let (Some(nic), Some(b), Some(a)) = (nic, counters_before, counters_after) {
        ctx.status.emit(&Event::RunTraffic {
            t_us: crate::status::t_us(),
            nic: String::from(nic),
            link_down: down,
            before: b,
            after: a,
        });
    }
    if middle.interrupted {
        return middle;
    }
    let last = sequence::run(sup, after, ctx);
    Outcome { run_status: middle.run_status, interrupted: last.interrupted }
}

/// Link up again, with the address and the default route (a link going down drops the
/// routes through it).
fn restore(nic: &str, control: Option<&Control>, ctx: &mut Context<'_>) {
    let result = match control {
        Some(c) => {
            let nic = nic::Nic { name: c.nic.clone(), ifindex: 0, mac: c.mac, ethernet: true };
            nic::configure(&nic, c.addr, c.gateway).map(drop)
        }
        None => nic::set_link(nic, true),
    };
    match result {
        Ok(()) => log::info!("network: {nic} is up again"),
        Err(e) => {
            log::error!("network: {e}");
            ctx.status.error(alloc::format!("network: {e}"));
        }
    }
}

/// The NIC to watch: the control NIC, or the first Ethernet NIC if there is one.
pub fn nic_to_watch(control: Option<&Control>, want: Option<appliance_cmdline::MacAddr>) -> Option<String> {
    match control {
        Some(c) => Some(c.nic.clone()),
        None => nic::choose(&nic::read_nics(nic::SYS_CLASS_NET), want).ok().map(|n| n.name.clone()),
    }
}
