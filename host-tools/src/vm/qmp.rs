//! A minimal QMP client: the JSON exchange over QEMU's control socket that
//! `appliance stop` (and a signal to `appliance run`) needs to ask the guest to shut down.
//! One line per message: QEMU's greeting, `qmp_capabilities` to leave negotiation mode,
//! then `system_powerdown` and `send-key`; asynchronous events in between are skipped.
//! Every read and write is bounded by a timeout: a wedged QEMU must not hang the caller.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the QEMU control socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP exchange over {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: QEMU closed {} before answering", path.display())]
    Closed { path: PathBuf },
    #[error("QMP: unexpected message from QEMU: {line}")]
    Unexpected { line: String },
    #[error("QMP: {command} failed: {message}")]
    Command { command: String, message: String },
}

/// An open QMP session, past capability negotiation.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and negotiates capabilities; `timeout`
    /// bounds each read and write.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, Error> {
        let path = socket.to_owned();
        let stream = UnixStream::connect(socket).map_err(|source| Error::Connect { path: path.clone(), source })?;
        let io = |source| Error::Io { path: path.clone(), source };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp { path, reader: BufReader::new(stream), writer };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Unexpected { line: greeting.to_string() });
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value, Error> {
        self.execute_with(command, None)
    }

    /// Runs a command with `arguments` (a JSON object) and returns its `return` value.
    pub fn execute_with(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
        let request = match arguments {
            Some(arguments) => serde_json::json!({ "execute": command, "arguments": arguments }),
            None => serde_json::json!({ "execute": command }),
        };
        let line = format!("{request}\n");
        self.writer.write_all(line.as_bytes()).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let message = error.get("desc").and_then(Value::as_str).unwrap_or("unknown error").to_owned();
                return Err(Error::Command { command: command.to_owned(), message });
            }
            // {"event": ...}: asynchronous, not our answer.
        }
    }

    fn read_message(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Err(Error::Closed { path: self.path.clone() });
        }
        serde_json::from_str(line.trim()).map_err(|_| Error::Unexpected { line: line.trim().to_owned() })
    }
}

/// Asks the guest to shut down, through the QMP socket at `socket`, both ways a PC has:
/// its ACPI power button (`system_powerdown`), which a kernel with the ACPI button and
/// evdev drivers reports to the init, and Ctrl-Alt-Del on its PC keyboard (`send-key`),
/// which a kernel with the i8042 keyboard and the VT layer turns into SIGINT to PID 1.
/// Debian's cloud kernel has the keyboard built in and the button only as modules; the
/// project's kernel has the button and no keyboard: whichever the guest hears, the init
/// takes as the same stop request, and needs no driver loaded for it. Fails only when
/// neither could be sent.
pub fn request_stop(socket: &Path, timeout: Duration) -> Result<(), Error> {
    let mut qmp = Qmp::connect(socket, timeout)?;
    let button = qmp.execute("system_powerdown");
    let keys = ["ctrl", "alt", "delete"].map(|key| serde_json::json!({ "type": "qcode", "data": key }));
    let keyboard = qmp.execute_with("send-key", Some(serde_json::json!({ "keys": keys })));
    match (button, keyboard) {
        (Err(e), Err(_)) => Err(e),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => {
            log::debug!("{e}: the guest gets the other stop request only");
            Ok(())
        }
        (Ok(_), Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each request line with the next canned reply
    /// lines, and returns the requests it got.
    fn fake_qemu(replies: Vec<&'static str>) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            writer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
            let mut requests = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                requests.push(line.trim().to_owned());
                writer.write_all(reply.as_bytes()).unwrap();
            }
            requests
        });
        (dir, path, handle)
    }

    #[test]
    fn a_stop_request_negotiates_then_presses_the_button_and_ctrl_alt_del() {
        let (_dir, path, server) = fake_qemu(vec![
            "{\"return\": {}}\r\n",
            "{\"timestamp\": {}, \"event\": \"POWERDOWN\"}\r\n{\"return\": {}}\r\n",
            "{\"return\": {}}\r\n",
        ]);
        request_stop(&path, Duration::from_secs(5)).unwrap();
        let requests = server.join().unwrap();
        assert_eq!(
            requests,
            [
                "{\"execute\":\"qmp_capabilities\"}",
                "{\"execute\":\"system_powerdown\"}",
                "{\"arguments\":{\"keys\":[{\"data\":\"ctrl\",\"type\":\"qcode\"},{\"data\":\"alt\",\"type\":\"qcode\"},\
                 {\"data\":\"delete\",\"type\":\"qcode\"}]},\"execute\":\"send-key\"}"
            ]
        );
    }

    #[test]
    fn errors_name_the_command_and_the_socket() {
        // A machine without ACPI still gets Ctrl-Alt-Del; one without either fails.
        let (_dir, path, server) = fake_qemu(vec![
            "{\"return\": {}}\r\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no ACPI\"}}\r\n",
            "{\"return\": {}}\r\n",
        ]);
        request_stop(&path, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        let (_dir, path, server) = fake_qemu(vec![
            "{\"return\": {}}\r\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no ACPI\"}}\r\n",
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no keyboard\"}}\r\n",
        ]);
        let err = request_stop(&path, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.to_string(), "QMP: system_powerdown failed: no ACPI");
        server.join().unwrap();
        let missing = request_stop(&path.with_file_name("none.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(missing.to_string().contains("none.sock"), "{missing}");
    }

    #[test]
    fn a_silent_qemu_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(request_stop(&path, Duration::from_millis(200)), Err(Error::Io { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
