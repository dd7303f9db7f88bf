//! The status record: one JSON object per line, written by the init to a dedicated serial
//! port (`/dev/ttyS1` under `appliance run`) so the host learns how a run ended without
//! scraping the console.
//!
//! Times are microseconds of `CLOCK_BOOTTIME`, which starts at zero when the kernel starts,
//! so `init.t_us` is also the kernel's time to reach `/init`.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Version of the record format; bumped on incompatible changes.
pub const STATUS_VERSION: u32 = 1;

/// The status of a phase that ran past its time limit and was ended by the init, as
/// `timeout(1)` reports it.
pub const TIMED_OUT: i32 = 124;

fn is_false(b: &bool) -> bool {
    !*b
}

/// How a phase's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The status as a shell reports it: the code, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => s.saturating_add(128),
        }
    }
}

/// One line of the status record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The init started.
    Init { t_us: u64, version: String, v: u32 },
    /// A phase started. `phase` is `debug`, `prerun`, `cmd`, `run` or `postrun`;
    /// `index` numbers the appCmds from 1.
    PhaseStart {
        t_us: u64,
        phase: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    /// A phase ended. `status` is `exit.status()`, or [`TIMED_OUT`] when `timed_out`: the
    /// phase ran past its time limit (`appRunTimeout`) and the init ended it (`exit` says
    /// how its process ended then). Absent optional phases (prerun, postrun) have neither
    /// a start nor an end.
    PhaseEnd {
        t_us: u64,
        phase: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        exit: Exit,
        status: i32,
        #[serde(default, skip_serializing_if = "is_false")]
        timed_out: bool,
        /// For a phase that failed: the processes the kernel's out-of-memory killer ended
        /// since boot or the last failed phase, as the kernel's log names them; the likely
        /// reason it failed (the guest's memory, and the initramfs in it, were full).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        oom_killed: Vec<OomKill>,
    },
    /// A console shell starts on the console's terminal `tty`: `phase` is `debug`
    /// (`appDebug`) or `end` (`appEnd=shell`, or beside the SSH server). Console input the
    /// host held back (from a pipe or a file) is for it.
    Shell { t_us: u64, phase: String, tty: String },
    /// Something went wrong that the user should know about.
    Error { t_us: u64, message: String },
    /// The init configured the control NIC: `method` is `static` or `dhcp`, `addr` the
    /// address in force (`a.b.c.d/nn`), `mac` the NIC's.
    Network {
        t_us: u64,
        nic: String,
        addr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        method: String,
    },
    /// The control NIC's counters just before and just after `/app/run`: equal packet
    /// counts prove nothing crossed the NIC during the run. `link_down` says the link was
    /// down meanwhile (`appNetDown`).
    RunTraffic { t_us: u64, nic: String, link_down: bool, before: NetCounters, after: NetCounters },
    /// The results step (`appResultsTo`) ended. `dest` is where the files went (the
    /// run's directory on the server, e.g. `nfs:10.0.2.2:/run-1`); `files` and `bytes` count
    /// what was copied; the three durations are the step's parts. `ok` is false, with
    /// `error`, when anything failed: the results are then still in the guest only, and a
    /// partial copy is never reported as success.
    Results {
        t_us: u64,
        ok: bool,
        transport: String,
        dest: String,
        files: u64,
        bytes: u64,
        mount_us: u64,
        copy_us: u64,
        umount_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `appEnd=kexec` fetched and checked the next app dir (`from`, `appKexec`), and loaded
    /// its kernel: `bytes` fetched in `fetch_us`. `ok` is false, with `error`, when a fetch,
    /// a sum or the load failed: the init then powers off as for `halt`. When `ok`, the
    /// `end` event that follows has the action `kexec`, and the next appliance's record
    /// follows on the same port, from its own `init` event.
    Kexec {
        t_us: u64,
        ok: bool,
        from: String,
        bytes: u64,
        fetch_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A node of a multi-node run (`appNode`) was at rendezvous `point` (`appRendezvous`)
    /// from `t_us - waited_us` to `t_us`: `ok` when every node of the run got there (the
    /// host's `go`), else `error` says why (the time ran out, the server could not be
    /// reached). Written by the program that waited (`appliance-rendezvous`), to a serial
    /// status port only: a virtio-serial port is the init's alone.
    Rendezvous {
        t_us: u64,
        node: String,
        point: String,
        ok: bool,
        waited_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The end action is about to happen. `status` is the run phase's status (the
    /// appliance's result); `action` is what the init does now.
    End { t_us: u64, action: String, status: i32 },
}

/// A process the kernel's out-of-memory killer ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    pub pid: u32,
    /// Its command name (`comm`, at most 15 bytes).
    pub name: String,
}

/// A network interface's counters (sysfs `statistics/`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl NetCounters {
    /// Packets in either direction from `self` to `later`.
    pub fn packets_until(&self, later: &NetCounters) -> u64 {
        later
            .rx_packets
            .saturating_sub(self.rx_packets)
            .saturating_add(later.tx_packets.saturating_sub(self.tx_packets))
    }
}

impl Event {
    /// When the event happened: microseconds of `CLOCK_BOOTTIME`.
    pub fn t_us(&self) -> u64 {
        match self {
            Event::Init { t_us, .. }
            | Event::PhaseStart { t_us, .. }
            | Event::PhaseEnd { t_us, .. }
            | Event::Shell { t_us, .. }
            | Event::Error { t_us, .. }
            | Event::Network { t_us, .. }
            | Event::RunTraffic { t_us, .. }
            | Event::Results { t_us, .. }
            | Event::Kexec { t_us, .. }
            | Event::Rendezvous { t_us, .. }
            | Event::End { t_us, .. } => *t_us,
        }
    }

    /// The event as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail; fall back to a fixed line anyway so
        // PID 1 never panics.
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            String::from("{\"event\":\"error\",\"t_us\":0,\"message\":\"status encoding failed\"}")
        });
        s.push('\n');
        s
    }

    /// Parses one line of the record.
    pub fn from_line(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn round_trips_every_event() {
        let events = [
            Event::Init { t_us: 1, version: "0.1.0".to_string(), v: STATUS_VERSION },
            Event::PhaseStart { t_us: 2, phase: "cmd".to_string(), index: Some(1) },
            Event::PhaseEnd {
                t_us: 3,
                phase: "run".to_string(),
                index: None,
                exit: Exit::Signal(9),
                status: 137,
                timed_out: false,
                oom_killed: alloc::vec![OomKill { pid: 57, name: "tail".to_string() }],
            },
            Event::PhaseEnd {
                t_us: 4,
                phase: "run".to_string(),
                index: None,
                exit: Exit::Signal(15),
                status: TIMED_OUT,
                timed_out: true,
                oom_killed: Vec::new(),
            },
            Event::Error { t_us: 4, message: "no /app/run".to_string() },
            Event::Shell { t_us: 4, phase: "debug".to_string(), tty: "/dev/ttyS0".to_string() },
            Event::End { t_us: 5, action: "halt".to_string(), status: 3 },
            Event::Network {
                t_us: 6,
                nic: "eth0".to_string(),
                addr: "10.0.2.15/24".to_string(),
                mac: Some("52:54:00:12:34:56".to_string()),
                method: "dhcp".to_string(),
            },
            Event::RunTraffic {
                t_us: 7,
                nic: "eth0".to_string(),
                link_down: false,
                before: NetCounters { rx_packets: 1, tx_packets: 2, rx_bytes: 3, tx_bytes: 4 },
                after: NetCounters { rx_packets: 5, tx_packets: 6, rx_bytes: 7, tx_bytes: 8 },
            },
            Event::Results {
                t_us: 8,
                ok: false,
                transport: "nfs".to_string(),
                dest: "nfs:10.0.2.2:/r1".to_string(),
                files: 2,
                bytes: 10,
                mount_us: 1,
                copy_us: 2,
                umount_us: 3,
                error: Some("cannot mount: timed out".to_string()),
            },
            Event::Kexec {
                t_us: 9,
                ok: false,
                from: "http://10.0.2.2:8000/app/".to_string(),
                bytes: 100,
                fetch_us: 5,
                error: Some("initrd: SHA-256 is 00, SHA256SUMS says 01".to_string()),
            },
            Event::Rendezvous {
                t_us: 10,
                node: "client-2".to_string(),
                point: "server-ready".to_string(),
                ok: false,
                waited_us: 7,
                error: Some("not every node reached `server-ready` within 5 s".to_string()),
            },
        ];
        for e in events {
            let line = e.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Event::from_line(&line).unwrap(), e);
        }
    }

    /// Records written before `timed_out` and `oom_killed` existed still read, and a
    /// phase that ended in time with nothing killed writes neither field.
    #[test]
    fn timed_out_is_written_only_when_true() {
        let line = "{\"event\":\"phase_end\",\"t_us\":3,\"phase\":\"run\",\"exit\":{\"code\":0},\"status\":0}";
        let e = Event::from_line(line).unwrap();
        assert!(matches!(e, Event::PhaseEnd { timed_out: false, .. }), "{e:?}");
        assert_eq!(e.to_line().trim_end(), line);
    }

    #[test]
    fn packets_between_two_readings() {
        let a = NetCounters { rx_packets: 10, tx_packets: 5, rx_bytes: 0, tx_bytes: 0 };
        assert_eq!(a.packets_until(&a), 0);
        assert_eq!(a.packets_until(&NetCounters { rx_packets: 12, tx_packets: 6, ..a }), 3);
    }

    #[test]
    fn exit_status_is_code_or_128_plus_signal() {
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Signal(15).status(), 143);
    }
}
