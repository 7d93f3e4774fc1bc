//! The real `handover` binary as a child process, its log lines read on a thread.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Starts `handover ARGS` with `RUST_LOG=info`; returns the child and its stderr, line by
/// line. The reading thread keeps draining stderr, so the child never blocks on a full pipe.
pub fn spawn(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The receiver may be gone; keep draining regardless.
            let _ = tx.send(line);
        }
    });
    (child, lines)
}
