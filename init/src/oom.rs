//! Naming the out-of-memory killer when a phase fails because of it.
//!
//! An appliance's files live in its memory (the initramfs, `/tmp`, the results), and a
//! guest has far less of it than the machines the original system ran on (512 MiB by
//! default against 8 GiB). A program that outgrows it is ended by the kernel's
//! out-of-memory killer with SIGKILL, and all a phase shows is "exited with status 137".
//! So when a phase fails, the init reads the kernel's log records written since it last
//! looked and names the processes the killer ended there.
//!
//! Why the log (`/dev/kmsg`) and not the `oom_kill` counter of `/proc/vmstat`: the
//! project's kernels are built without VM event counters (`CONFIG_VM_EVENT_COUNTERS`, an
//! option of `tinyconfig`'s), and the log also says which process it was. Nothing is
//! read while phases succeed.
//!
//! The same look finds the other way a guest's memory fails an application: an initramfs
//! the kernel could not unpack whole ("Initramfs unpacking failed: write error"). With a
//! small compressed initramfs and memory to spare the kernel starts `/init` all the same,
//! without the files that did not fit, and the application fails for want of them.

use alloc::string::String;
use alloc::vec::Vec;
use appliance_cmdline::status::OomKill;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// The largest kernel log record we read whole (the kernel's own limit is 1 KiB of text
/// plus its prefix and dictionary).
const RECORD_MAX: usize = 8192;

/// Where the last look at the kernel's log ended.
#[derive(Debug, Default)]
pub struct Watch {
    /// The sequence number of the last record read.
    seen: Option<u64>,
    /// The kernel's message when it could not unpack the whole initramfs, once read.
    pub unpack_failed: Option<String>,
}

impl Watch {
    /// The processes the out-of-memory killer ended since boot or the last call, read
    /// from `/dev/kmsg` (none when it cannot be read).
    pub fn kills(&mut self) -> Vec<OomKill> {
        let Ok(fd) = rustix::fs::open("/dev/kmsg", OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
        else {
            return Vec::new();
        };
        let mut kills = Vec::new();
        let mut buf = alloc::vec![0u8; RECORD_MAX];
        // Each read returns one record; the end is EAGAIN. The bound only keeps a log
        // that grows as fast as we read from holding us.
        for _ in 0..100_000 {
            let n = match rustix::io::read(&fd, buf.as_mut_slice()) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => n,
                // Records overwritten before we got to them, or a signal: go on.
                Err(Errno::PIPE) | Err(Errno::INTR) => continue,
                Err(_) => break,
            };
            let Some((seq, message)) = buf.get(..n).and_then(record) else { continue };
            if self.seen.is_some_and(|seen| seq <= seen) {
                continue;
            }
            self.seen = Some(seq);
            kills.extend(parse(message));
            if message.starts_with(UNPACK_FAILED) {
                self.unpack_failed = Some(String::from(message));
            }
        }
        kills
    }
}

/// How the kernel reports an initramfs it could not unpack whole (`init/initramfs.c`,
/// the same in every series since 2.6), followed by the reason.
pub const UNPACK_FAILED: &str = "Initramfs unpacking failed:";

/// The sequence number and message of a `/dev/kmsg` record:
/// `PRIORITY,SEQUENCE,MICROSECONDS,FLAGS[,...];MESSAGE\n` then ` KEY=value` lines.
fn record(data: &[u8]) -> Option<(u64, &str)> {
    let text = core::str::from_utf8(data).ok()?;
    let (prefix, rest) = text.split_once(';')?;
    let seq = prefix.split(',').nth(1)?.parse().ok()?;
    Some((seq, rest.split('\n').next().unwrap_or_default()))
}

/// The kill a kernel log message reports, as the kernels since 5.1 write it (`Out of
/// memory: Killed process 57 (tail) total-vm:...`, or `Memory cgroup out of memory: ...`)
/// and older ones did (`Out of memory: Kill process 57 (tail) score 912 or sacrifice
/// child`).
pub fn parse(message: &str) -> Option<OomKill> {
    let at = message.find("ut of memory: Kill")?;
    let rest = message.get(at..)?;
    let rest = rest.split_once(" process ")?.1;
    let (pid, rest) = rest.split_once(' ')?;
    let pid = pid.parse().ok()?;
    let name = rest.strip_prefix('(')?;
    // The name may hold `)` itself: it ends at the `)` before a space or the end.
    let end = name.find(") ").or_else(|| name.strip_suffix(')').map(str::len))?;
    Some(OomKill { pid, name: String::from(name.get(..end)?) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(message: &str) -> Option<(u32, String)> {
        parse(message).map(|k| (k.pid, k.name))
    }

    #[test]
    fn reads_the_kill_as_each_kernel_writes_it() {
        let now = "Out of memory: Killed process 57 (tail) total-vm:419564kB, anon-rss:409600kB, \
                   file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:844kB oom_score_adj:0";
        assert_eq!(kill(now), Some((57, "tail".into())));
        let cgroup = "Memory cgroup out of memory: Killed process 812 (python3) total-vm:1kB";
        assert_eq!(kill(cgroup), Some((812, "python3".into())));
        let old = "Out of memory: Kill process 9 (my app) score 912 or sacrifice child";
        assert_eq!(kill(old), Some((9, "my app".into())));
        assert_eq!(kill("Out of memory: Killed process 3 (a) b)"), Some((3, "a".into())));
        assert_eq!(kill("Out of memory: Killed process 4 (x)y)"), Some((4, "x)y".into())));
    }

    #[test]
    fn other_messages_are_no_kill() {
        for message in [
            "tail invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0",
            "oom_reaper: reaped process 57 (tail), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
            "Out of memory and no killable processes...",
            "Out of memory: Killed process x (tail)",
            "",
        ] {
            assert_eq!(kill(message), None, "{message}");
        }
    }

    #[test]
    fn a_record_is_its_sequence_number_and_first_line() {
        let data = b"3,1234,5678901,-;Out of memory: Killed process 57 (tail)\n SUBSYSTEM=x\n";
        assert_eq!(record(data), Some((1234, "Out of memory: Killed process 57 (tail)")));
        assert_eq!(record(b"6,77,1,c,caller=T1;a;b\n"), Some((77, "a;b")));
        assert_eq!(record(b"no prefix"), None);
        assert_eq!(record(b"6,x,1,-;text\n"), None);
    }
}
