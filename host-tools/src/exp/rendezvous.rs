//! The host half of a rendezvous, as the original's named pipe per node was: nodes connect
//! over their control NIC (QEMU user networking: the host's loopback is 10.0.2.2 to them),
//! say which point they reached, and get `go` once every node of their run has reached it,
//! or `timeout`. One server per batch, on a free loopback port; runs are told apart by a
//! token. The time each node reached each point (seconds since the run was registered)
//! goes into its outcome and the summary. The protocol is `appliance_cmdline::segment`'s.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use appliance_cmdline::segment;

/// Bound on reading a node's request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("cannot start the rendezvous server on the loopback")]
    Listen(#[source] std::io::Error),
}

#[derive(Default)]
struct Run {
    nodes: Vec<String>,
    started: Option<Instant>,
    /// (node, point) -> seconds since `started`.
    reached: BTreeMap<(String, String), f64>,
}

#[derive(Default)]
struct State {
    runs: HashMap<String, Run>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    closing: AtomicBool,
}

/// The batch's rendezvous server; stops when the last handle is dropped.
#[derive(Clone)]
pub struct Rendezvous {
    shared: Arc<Shared>,
    port: u16,
    _stopper: Arc<Stopper>,
}

/// Wakes the accepting thread up to end it.
struct Stopper {
    shared: Arc<Shared>,
    port: u16,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Rendezvous {
    pub fn start() -> Result<Rendezvous, RendezvousError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(RendezvousError::Listen)?;
        let port = listener.local_addr().map_err(RendezvousError::Listen)?.port();
        let shared =
            Arc::new(Shared { state: Mutex::default(), changed: Condvar::new(), closing: AtomicBool::new(false) });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accepting.closing.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let shared = accepting.clone();
                    std::thread::spawn(move || serve(&shared, conn));
                }
            }
        });
        Ok(Rendezvous { _stopper: Arc::new(Stopper { shared: shared.clone(), port }), shared, port })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Registers a run of `nodes` under `token`; its clock starts now.
    pub fn register(&self, token: &str, nodes: &[String]) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.runs.insert(
            token.to_string(),
            Run { nodes: nodes.to_vec(), started: Some(Instant::now()), reached: BTreeMap::new() },
        );
    }

    /// The word that tells a node of run `token` where the server is.
    pub fn guest_word(&self, token: &str) -> String {
        format!("appRendezvous={}:{}/{token}", crate::vm::qemu::HOST_FROM_GUEST, self.port)
    }

    /// When `node` of run `token` reached each point, and forgets the node.
    pub fn reached(&self, token: &str, node: &str) -> BTreeMap<String, f64> {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = state.runs.get(token) else { return BTreeMap::new() };
        run.reached.iter().filter(|((n, _), _)| n == node).map(|((_, p), t)| (p.clone(), *t)).collect()
    }

    /// Forgets run `token`; nodes still waiting get `timeout`.
    pub fn unregister(&self, token: &str) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).runs.remove(token);
        self.shared.changed.notify_all();
    }
}

fn serve(shared: &Shared, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut line = String::new();
    let Ok(reader) = conn.try_clone() else { return };
    if BufReader::new(reader).read_line(&mut line).is_err() {
        return;
    }
    let answer = match segment::parse_request(&line) {
        Some((token, node, point, secs)) => wait(shared, token, node, point, Duration::from_secs(secs.into())),
        None => "error",
    };
    let _ = (&conn).write_all(format!("{answer}\n").as_bytes());
}

/// Records `node` at `point` and waits for the rest of its run.
fn wait(shared: &Shared, token: &str, node: &str, point: &str, bound: Duration) -> &'static str {
    let deadline = Instant::now() + bound;
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    match state.runs.get_mut(token) {
        Some(run) if run.nodes.iter().any(|n| n == node) => {
            let t = run.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            run.reached.entry((node.to_string(), point.to_string())).or_insert(t);
        }
        _ => return "error",
    }
    shared.changed.notify_all();
    loop {
        let all = match state.runs.get(token) {
            Some(run) => run.nodes.iter().all(|n| run.reached.contains_key(&(n.clone(), point.to_string()))),
            None => return "timeout",
        };
        if all {
            return "go";
        }
        let now = Instant::now();
        if now >= deadline || shared.closing.load(Ordering::SeqCst) {
            return "timeout";
        }
        state = shared.changed.wait_timeout(state, deadline - now).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(port: u16, line: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(c).read_line(&mut answer).unwrap();
        answer.trim().to_string()
    }

    #[test]
    fn nodes_go_once_all_reached_the_point_and_the_times_are_kept() {
        let r = Rendezvous::start().unwrap();
        r.register("r1", &["a-1".into(), "b-1".into()]);
        let port = r.port();
        let first = std::thread::spawn(move || ask(port, &segment::request("r1", "a-1", "ready", 30)));
        // b arrives once a is recorded (waiting for the record, bounded).
        let started = Instant::now();
        while r.reached("r1", "a-1").is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(ask(port, &segment::request("r1", "b-1", "ready", 30)), "go");
        assert_eq!(first.join().unwrap(), "go");
        assert!(r.reached("r1", "a-1")["ready"] <= r.reached("r1", "b-1")["ready"]);
        // Alone at a point, with a short bound: timeout; a stranger: error.
        assert_eq!(ask(port, &segment::request("r1", "a-1", "done", 1)), "timeout");
        assert_eq!(ask(port, &segment::request("r1", "c-1", "done", 1)), "error");
    }
}
