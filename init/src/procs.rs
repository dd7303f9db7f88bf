//! The processes of the system as `/proc` lists them, for ending everything a phase left
//! behind when it ran out of time: PID 1 has `kill(-1, SIGKILL)` for that, a supervisor
//! run as a plain process only its own descendants (processes that moved to a group or a
//! session of their own included).
//!
//! Parsing and the family tree are pure and unit-tested; [`list`] reads `/proc`.

use alloc::vec::Vec;

/// One process: its pid, its parent's, and whether it is a zombie (dead, not yet reaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub zombie: bool,
}

/// Reads `/proc/PID/stat`: `pid (comm) state ppid ...`. The command name may hold spaces
/// and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Proc> {
    let (head, rest) = text.rsplit_once(") ")?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc { pid, ppid, zombie: state == "Z" || state == "X" })
}

/// Every process `/proc` lists now (those that end while it is read are left out).
pub fn list() -> Vec<Proc> {
    let Ok(names) = crate::read_dir("/proc") else { return Vec::new() };
    names
        .iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| parse_stat(&crate::read_to_string(&alloc::format!("/proc/{n}/stat"))?))
        .collect()
}

/// The live (not zombie) descendants of `root` among `procs`, at any depth.
pub fn live_descendants(root: i32, procs: &[Proc]) -> Vec<i32> {
    let mut family = alloc::vec![root];
    let mut i = 0;
    while let Some(&parent) = family.get(i) {
        family.extend(procs.iter().filter(|p| p.ppid == parent && p.pid != root).map(|p| p.pid));
        i += 1;
        // A cycle cannot happen in a real tree; a list read while processes come and go
        // could fake one (a pid reused as its own ancestor's child): stop there.
        if family.len() > procs.len() + 1 {
            break;
        }
    }
    family.into_iter().skip(1).filter(|pid| procs.iter().any(|p| p.pid == *pid && !p.zombie)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        let p = parse_stat("42 (sleep) S 7 42 42 0 -1 4194560 0 0").unwrap();
        assert_eq!(p, Proc { pid: 42, ppid: 7, zombie: false });
        let p = parse_stat("43 (a) b (c) Z 1 43 43 0").unwrap();
        assert_eq!(p, Proc { pid: 43, ppid: 1, zombie: true });
        assert_eq!(parse_stat("44 (x"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn descendants_at_any_depth_without_zombies_or_strangers() {
        let p = |pid, ppid, zombie| Proc { pid, ppid, zombie };
        let procs = [
            p(1, 0, false),
            p(10, 1, false),  // us
            p(11, 10, false), // a phase
            p(12, 11, false), // its child, in a session of its own or not
            p(13, 12, false), // deeper
            p(14, 10, true),  // a zombie child: reaped, not killed
            p(15, 14, false), // (impossible, but not ours to miss)
            p(20, 1, false),  // someone else's
            p(21, 20, false), // and theirs
        ];
        let mut d = live_descendants(10, &procs);
        d.sort();
        assert_eq!(d, [11, 12, 13, 15]);
        assert!(live_descendants(99, &procs).is_empty());
        // A list that fakes a cycle still ends.
        let cycle = [p(2, 3, false), p(3, 2, false)];
        assert_eq!(live_descendants(2, &cycle), [3]);
    }
}
