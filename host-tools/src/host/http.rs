//! A read-only HTTP/1.0 server for a directory: GET and HEAD of regular files under it,
//! nothing else. Enough for iPXE and for an appliance fetching another one; written here
//! because the HTTP server crates bring an async runtime for what is one thread and a
//! hundred lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request line longer than this is refused.
const MAX_LINE: usize = 8192;
/// A client silent for this long is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot serve {} over HTTP on {addr}", root.display())]
pub struct HttpError {
    pub root: PathBuf,
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// A running server; dropping it stops it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `root` on `addr` (`127.0.0.1:0` picks a free port), one thread per client.
    /// `log` is told each request's path and status.
    pub fn start(root: &Path, addr: &str, log: fn(&str, u16)) -> Result<HttpServer, HttpError> {
        let error = |source| HttpError { root: root.to_path_buf(), addr: addr.to_string(), source };
        let listener = TcpListener::bind(addr).map_err(error)?;
        let local = listener.local_addr().map_err(error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (root, stopping) = (root.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = client.set_read_timeout(Some(CLIENT_TIMEOUT));
                    let _ = client.set_write_timeout(Some(CLIENT_TIMEOUT));
                    if let Some((path, status)) = serve(&root, client) {
                        log(&path, status);
                    }
                });
            }
        });
        Ok(HttpServer { addr: local, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file under `root` that the request path `target` names: no `..`, no absolute
/// components, no query; `None` for anything else.
pub fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Answers one request; returns its path and status.
fn serve(root: &Path, client: TcpStream) -> Option<(String, u16)> {
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut line = String::new();
    reader.by_ref().take(MAX_LINE as u64).read_line(&mut line).ok()?;
    // The headers: read and ignored.
    loop {
        let mut header = String::new();
        let n = reader.by_ref().take(MAX_LINE as u64).read_line(&mut header).ok()?;
        if n == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?, words.next()?.to_string());
    let mut client = client;
    let file = resolve(root, &target).filter(|p| p.is_file());
    let status = match (method, file) {
        ("GET" | "HEAD", Some(path)) => match std::fs::File::open(&path) {
            Ok(mut f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                );
                client.write_all(head.as_bytes()).ok()?;
                if method == "GET" {
                    std::io::copy(&mut f, &mut client).ok()?;
                }
                200
            }
            Err(_) => reply(&mut client, 403, "Forbidden")?,
        },
        ("GET" | "HEAD", None) => reply(&mut client, 404, "Not Found")?,
        _ => reply(&mut client, 405, "Method Not Allowed")?,
    };
    Some((target, status))
}

fn reply(client: &mut TcpStream, status: u16, reason: &str) -> Option<u16> {
    let body = format!("{status} {reason}\n");
    let head =
        format!("HTTP/1.0 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    client.write_all(head.as_bytes()).ok()?;
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/srv");
        assert_eq!(resolve(root, "/a/b.txt"), Some(PathBuf::from("/srv/a/b.txt")));
        assert_eq!(resolve(root, "/a/./b?x=1"), Some(PathBuf::from("/srv/a/b")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/../../x"), None);
        assert_eq!(resolve(root, "a"), None);
    }

    #[test]
    fn serves_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"contents").unwrap();
        let server = HttpServer::start(dir.path(), "127.0.0.1:0", |_, _| {}).unwrap();
        let get = |req: &str| {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /f HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n") && ok.contains("Content-Length: 8") && ok.ends_with("contents"));
        assert!(get("GET /missing HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get("GET /../f HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get("POST /f HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        assert!(!get("HEAD /f HTTP/1.0\r\n\r\n").ends_with("contents"));
    }
}
