//! The control NIC, interface by interface: which one it is (the one whose MAC is
//! `appMac`, or the first Ethernet NIC), giving it an IPv4 address and the default route,
//! its link, its packet counters, and the variables that describe it to the phases. Done
//! with ioctls from the init itself ([`crate::sys`]), so an image needs no `ip` or
//! `ifconfig`. Where the address comes from (`appIp`, or DHCP) is decided above, in
//! `net`; DHCP uses what is here.
//!
//! Pure parts (choosing the NIC, the netmask, the exported variables) are unit-tested;
//! the rest reads `/sys/class/net` and calls the kernel.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

use appliance_cmdline::status::NetCounters;
use appliance_cmdline::{IpCidr, MacAddr};
use rustix::io::Errno;

use crate::console::Describe;

/// Where the kernel lists network interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// `ARPHRD_ETHER`, the `type` of an Ethernet interface in sysfs.
const ARPHRD_ETHER: u32 = 1;

/// A network interface, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub ifindex: u32,
    pub mac: Option<MacAddr>,
    pub ethernet: bool,
}

/// The control NIC once configured: the values in force, which the phases get as
/// `APP_MYIP` and `APP_MYMAC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub nic: String,
    pub mac: Option<MacAddr>,
    pub addr: IpCidr,
    pub gateway: Option<Ipv4Addr>,
    /// `static` or `dhcp`.
    pub method: &'static str,
}

impl Control {
    /// The status record's `network` event.
    pub fn event(&self) -> appliance_cmdline::status::Event {
        appliance_cmdline::status::Event::Network {
            t_us: crate::status::t_us(),
            nic: self.nic.clone(),
            addr: self.addr.to_string(),
            mac: self.mac.map(|m| m.to_string()),
            method: String::from(self.method),
        }
    }
}

/// Why the network could not be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// No interface matches: `mac` is what `appMac` asked for, `seen` the interfaces found.
    NoNic { mac: Option<MacAddr>, seen: Vec<String> },
    /// A system call on interface `nic` failed.
    Kernel { what: &'static str, nic: String, errno: Errno },
    /// DHCP found no lease on `nic`.
    Dhcp { nic: String, reason: String },
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = |seen: &[String]| if seen.is_empty() { String::from("none") } else { seen.join(", ") };
        match self {
            NetError::NoNic { mac: Some(mac), seen: s } => {
                write!(f, "no network interface has the MAC address {mac} of appMac (interfaces: {})", seen(s))
            }
            NetError::NoNic { mac: None, seen: s } => write!(
                f,
                "no Ethernet interface (interfaces: {}); does the VM have a NIC, and the image its driver \
                 (modules = [\"virtio_pci\", \"virtio_net\"] on Debian's kernel)?",
                seen(s)
            ),
            NetError::Kernel { what, nic, errno } => write!(f, "cannot {what} on {nic}: {}", Describe(*errno)),
            NetError::Dhcp { nic, reason } => write!(f, "DHCP on {nic}: {reason}"),
        }
    }
}

/// The netmask of a prefix length (prefixes above 32 count as 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::from(prefix.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
}

/// The control NIC: the interface whose MAC is `want`, or else the Ethernet interface
/// with the lowest index (the first the kernel found).
pub fn choose(nics: &[Nic], want: Option<MacAddr>) -> Result<&Nic, NetError> {
    let found = match want {
        Some(mac) => nics.iter().find(|n| n.mac == Some(mac)),
        None => nics.iter().filter(|n| n.ethernet).min_by_key(|n| n.ifindex),
    };
    found.ok_or_else(|| NetError::NoNic { mac: want, seen: nics.iter().map(|n| n.name.clone()).collect() })
}

/// The segment NIC (`appSegIp`): the Ethernet interface with the lowest index that is not
/// the control NIC `control`.
pub fn choose_segment<'a>(nics: &'a [Nic], control: Option<&str>) -> Result<&'a Nic, NetError> {
    nics.iter()
        .filter(|n| n.ethernet && Some(n.name.as_str()) != control)
        .min_by_key(|n| n.ifindex)
        .ok_or_else(|| NetError::NoNic { mac: None, seen: nics.iter().map(|n| n.name.clone()).collect() })
}

/// The variables that describe the control NIC to the phases: `APP_MYIP`, `APP_MYMAC`,
/// and `APP_MYNODE` when `appNode` did not set it (the original's default: the MAC with
/// `_` for `:`).
pub fn env(control: &Control, node: Option<&str>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    env.push((String::from("APP_MYIP"), control.addr.to_string()));
    if let Some(mac) = control.mac {
        env.push((String::from("APP_MYMAC"), mac.to_string()));
    }
    match (node, control.mac) {
        (Some(node), _) => env.push((String::from("APP_MYNODE"), String::from(node))),
        (None, Some(mac)) => env.push((String::from("APP_MYNODE"), mac.to_string().replace(':', "_"))),
        (None, None) => {}
    }
    if let Some(gw) = control.gateway {
        env.push((String::from("APP_GATEWAY"), gw.to_string()));
    }
    env
}

/// The interfaces in `root` (`/sys/class/net`), unsorted.
pub fn read_nics(root: &str) -> Vec<Nic> {
    let names = crate::read_dir(root).unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let read = |file: &str| crate::read_to_string(&format!("{root}/{name}/{file}")).unwrap_or_default();
            let ifindex = read("ifindex").trim().parse().unwrap_or(u32::MAX);
            let mac = read("address").trim().parse().ok();
            let ethernet = read("type").trim().parse::<u32>() == Ok(ARPHRD_ETHER) && name != "lo";
            Nic { name, ifindex, mac, ethernet }
        })
        .collect()
}

/// Waits up to `timeout` for the control NIC to appear.
pub fn find_nic(want: Option<MacAddr>, timeout: Duration) -> Result<Nic, NetError> {
    wait_for_nic(timeout, |nics| choose(nics, want))
}

/// Waits up to `timeout` for the segment NIC ([`choose_segment`]) to appear.
pub fn find_segment_nic(control: Option<&str>, timeout: Duration) -> Result<Nic, NetError> {
    wait_for_nic(timeout, |nics| choose_segment(nics, control))
}

fn wait_for_nic(timeout: Duration, pick: impl Fn(&[Nic]) -> Result<&Nic, NetError>) -> Result<Nic, NetError> {
    let deadline = crate::supervisor::now().saturating_add(timeout);
    loop {
        let nics = read_nics(SYS_CLASS_NET);
        match pick(&nics) {
            Ok(nic) => return Ok(nic.clone()),
            Err(e) if crate::supervisor::now() >= deadline => return Err(e),
            Err(_) => {
                let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: 0, tv_nsec: 50_000_000 });
            }
        }
    }
}

/// Sets the link of `nic` up or down.
pub fn set_link(nic: &str, up: bool) -> Result<(), NetError> {
    crate::sys::if_set_up(nic, up).map_err(|errno| NetError::Kernel {
        what: if up { "set the link up" } else { "set the link down" },
        nic: String::from(nic),
        errno,
    })
}

/// Gives `nic` its address, sets the link up and adds the default route through
/// `gateway`.
pub fn configure(nic: &Nic, addr: IpCidr, gateway: Option<Ipv4Addr>) -> Result<Control, NetError> {
    let name = nic.name.as_str();
    let kernel = |what| move |errno| NetError::Kernel { what, nic: String::from(name), errno };
    quiet_ipv6(name);
    crate::sys::if_set_ipv4(name, addr.addr().octets(), netmask(addr.prefix()).octets())
        .map_err(kernel("set the address"))?;
    set_link(name, true)?;
    if let Some(gw) = gateway {
        match crate::sys::add_default_route(gw.octets(), name) {
            // Configured again (after a link down and up, say): the route is there.
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(kernel("add the default route")(e)),
        }
    }
    Ok(Control { nic: nic.name.clone(), mac: nic.mac, addr, gateway, method: "static" })
}

/// Turns IPv6 off on `nic` before its link comes up. The protocol is IPv4; left on, the
/// kernel sends router solicitations and duplicate-address probes on its own, seconds
/// after the link comes up, which is traffic in the middle of the experiment. A kernel
/// without IPv6 has no such file: nothing to do.
pub fn quiet_ipv6(nic: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{nic}/disable_ipv6");
    if let Ok(fd) = rustix::fs::open(path.as_str(), rustix::fs::OFlags::WRONLY, rustix::fs::Mode::empty()) {
        let _ = rustix::io::write(&fd, b"1\n");
    }
}

/// The packet and byte counters of `nic` now (sysfs `statistics/`); zero where unreadable.
pub fn counters(nic: &str) -> NetCounters {
    let read = |what: &str| {
        crate::read_to_string(&format!("{SYS_CLASS_NET}/{nic}/statistics/{what}"))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    NetCounters {
        rx_packets: read("rx_packets"),
        tx_packets: read("tx_packets"),
        rx_bytes: read("rx_bytes"),
        tx_bytes: read("tx_bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn nic(name: &str, ifindex: u32, mac: u8, ethernet: bool) -> Nic {
        Nic { name: name.into(), ifindex, mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, mac])), ethernet }
    }

    #[test]
    fn netmask_of_every_interesting_prefix() {
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(25), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(40), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn the_segment_nic_is_the_first_ethernet_one_that_is_not_the_control_nic() {
        let lo = Nic { name: "lo".into(), ifindex: 1, mac: Some(MacAddr([0; 6])), ethernet: false };
        let nics = vec![nic("eth1", 3, 2, true), lo, nic("eth0", 2, 1, true), nic("eth2", 4, 3, true)];
        assert_eq!(choose_segment(&nics, Some("eth0")).unwrap().name, "eth1");
        assert_eq!(choose_segment(&nics, Some("eth1")).unwrap().name, "eth0");
        assert_eq!(choose_segment(&nics, None).unwrap().name, "eth0");
        assert!(choose_segment(&nics[..2], Some("eth1")).is_err());
    }

    #[test]
    fn the_nic_with_app_mac_or_the_first_ethernet_one() {
        let lo = Nic { name: "lo".into(), ifindex: 1, mac: Some(MacAddr([0; 6])), ethernet: false };
        let nics = vec![nic("eth1", 3, 2, true), lo, nic("eth0", 2, 1, true), nic("sit0", 4, 3, false)];
        assert_eq!(choose(&nics, None).unwrap().name, "eth0");
        assert_eq!(choose(&nics, Some(MacAddr([0x52, 0x54, 0, 0, 0, 2]))).unwrap().name, "eth1");
        let e = choose(&nics, Some(MacAddr([1, 2, 3, 4, 5, 6]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no network interface has the MAC address 01:02:03:04:05:06 of appMac (interfaces: eth1, lo, eth0, sit0)"
        );
        let e = choose(&nics[1..2], None).unwrap_err();
        assert!(e.to_string().starts_with("no Ethernet interface (interfaces: lo); "), "{e}");
    }

    #[test]
    fn exported_variables_are_the_values_in_force() {
        let control = Control {
            nic: "eth0".into(),
            mac: Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            addr: "10.0.2.15/24".parse().unwrap(),
            gateway: None,
            method: "static",
        };
        let env = env(&control, None);
        let want: Vec<(String, String)> =
            [("APP_MYIP", "10.0.2.15/24"), ("APP_MYMAC", "52:54:00:12:34:56"), ("APP_MYNODE", "52_54_00_12_34_56")]
                .iter()
                .map(|(k, v)| (String::from(*k), String::from(*v)))
                .collect();
        assert_eq!(env, want);
        let env = super::env(&control, Some("n1"));
        assert_eq!(env[2], (String::from("APP_MYNODE"), String::from("n1")));
        let control = Control { gateway: Some(Ipv4Addr::new(10, 0, 2, 2)), ..control };
        assert_eq!(super::env(&control, None)[3], (String::from("APP_GATEWAY"), String::from("10.0.2.2")));
    }

    #[test]
    fn kernel_errors_name_the_step_and_the_nic() {
        let e = NetError::Kernel { what: "set the address", nic: "eth0".into(), errno: Errno::PERM };
        assert_eq!(e.to_string(), "cannot set the address on eth0: operation not permitted");
    }
}
