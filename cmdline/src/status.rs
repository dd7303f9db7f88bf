//! The status record: one JSON object per line, written by the init to a dedicated serial
//! port (`/dev/ttyS1` under `appliance run`) so the host learns how a run ended without
//! scraping the console.
//!
//! Times are microseconds of `CLOCK_BOOTTIME`, which starts at zero when the kernel starts,
//! so `init.t_us` is also the kernel's time to reach `/init`.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// Version of the record format; bumped on incompatible changes.
pub const STATUS_VERSION: u32 = 1;

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
    /// A phase ended. `status` is `exit.status()`. Absent optional phases (prerun,
    /// postrun) have neither a start nor an end.
    PhaseEnd {
        t_us: u64,
        phase: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        exit: Exit,
        status: i32,
    },
    /// Something went wrong that the user should know about.
    Error { t_us: u64, message: String },
    /// The end action is about to happen. `status` is the run phase's status (the
    /// appliance's result); `action` is what the init does now.
    End { t_us: u64, action: String, status: i32 },
}

impl Event {
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
            Event::PhaseEnd { t_us: 3, phase: "run".to_string(), index: None, exit: Exit::Signal(9), status: 137 },
            Event::Error { t_us: 4, message: "no /app/run".to_string() },
            Event::End { t_us: 5, action: "halt".to_string(), status: 3 },
        ];
        for e in events {
            let line = e.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Event::from_line(&line).unwrap(), e);
        }
    }

    #[test]
    fn exit_status_is_code_or_128_plus_signal() {
        assert_eq!(Exit::Code(3).status(), 3);
        assert_eq!(Exit::Signal(15).status(), 143);
    }
}
