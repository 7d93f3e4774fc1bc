//! The real binary: SIGTERM stops accepting, closes sessions and exits within the grace
//! period; SIGINT exits at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::binary;
use common::fake::EchoBackend;

/// Starts `handover serve` on port 0; returns the child and the listener's bound address,
/// read from its "listening" log line.
fn serve(backend: SocketAddr) -> (Child, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "handover-shutdown-{}-{}",
        std::process::id(),
        backend.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("handover.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"raw\"\nbackends = [\"a\"]\n[[backend]]\nname = \"a\"\naddress = \"{backend}\"\n"
        ),
    )
    .unwrap();
    let (child, lines) = binary::spawn(&["serve", "--config", config.to_str().unwrap()]);
    let addr = loop {
        let line = lines.recv().expect("the proxy logs before exiting");
        if line.contains("listening") && line.contains("listener=main") {
            let at = line.find("address=").unwrap() + "address=".len();
            break line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    (child, addr, dir)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn echo_roundtrip(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_exits_within_the_grace_period() {
    let backend = EchoBackend::start().await;
    let (mut child, addr, dir) = serve(backend.addr);
    let mut client = tokio::task::spawn_blocking(move || echo_roundtrip(addr))
        .await
        .unwrap();
    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child, Duration::from_secs(12));
        if status.is_none() {
            let _ = child.kill();
        }
        status
    })
    .await
    .unwrap();
    let status = status.expect("exited within the 10 s grace period");
    assert!(status.success(), "{status:?}");
    // The session was closed cleanly: the client reads end of stream.
    let mut buf = [0u8; 8];
    let n = client.read(&mut buf);
    assert!(matches!(n, Ok(0)), "{n:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once() {
    let backend = EchoBackend::start().await;
    let (mut child, addr, dir) = serve(backend.addr);
    let _client = tokio::task::spawn_blocking(move || echo_roundtrip(addr))
        .await
        .unwrap();
    signal(&child, "-INT");
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child, Duration::from_secs(2));
        if status.is_none() {
            let _ = child.kill();
        }
        status
    })
    .await
    .unwrap();
    assert!(status.is_some(), "still running 2 s after SIGINT");
    std::fs::remove_dir_all(dir).ok();
}
