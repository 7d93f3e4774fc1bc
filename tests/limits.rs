//! The listener's limits: `max_sessions`, `max_sessions_per_ip`, and the accept loop's
//! back-off when the process runs out of file descriptors (the real binary under
//! `prlimit --nofile`); and the admin API's refusal to start open to the network.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::echo::{echoes, echoes_within, is_closed};
use common::fake::EchoBackend;
use common::proxy;
use handover::app::Running;
use tokio::net::{TcpSocket, TcpStream};

fn refused(running: &Running, reason: &str) -> u64 {
    let series =
        format!("handover_connections_refused_total{{listener=\"main\",reason=\"{reason}\"}}");
    handover::admin::api::ControlApi::metrics_text(&*running.engine)
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Connects from a given loopback address (all of 127/8 is local on Linux).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

async fn raw_proxy(backend: &EchoBackend, listener_extra: &str) -> Running {
    let text = proxy::config(
        "raw",
        &[("a", backend.addr.to_string())],
        listener_extra,
        "[health]\ninterval_ms = 60000\n",
    );
    proxy::start(&text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_per_ip_closes_the_extra_connections_of_one_address() {
    let backend = EchoBackend::start().await;
    let running = raw_proxy(&backend, "max_sessions_per_ip = 3\n").await;
    let addr = running.listener("main");
    let mut three = Vec::new();
    for i in 0..3 {
        let mut sock = connect_from("127.0.0.1", addr).await;
        assert!(echoes(&mut sock, &format!("ok{i}\n")).await);
        three.push(sock);
    }
    let mut fourth = connect_from("127.0.0.1", addr).await;
    assert!(
        is_closed(&mut fourth).await,
        "a fourth session from one address"
    );
    assert_eq!(refused(&running, "max_sessions_per_ip"), 1);
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", addr).await;
    assert!(echoes(&mut other, "other\n").await);
    // A closed session gives its slot back.
    drop(three.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut sock = connect_from("127.0.0.1", addr).await;
        if echoes(&mut sock, "again\n").await {
            again = Some(sock);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the freed slot was never reused");
    for sock in three.iter_mut() {
        assert!(
            echoes(sock, "still\n").await,
            "the first sessions still work"
        );
    }
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_closes_connections_past_the_cap() {
    let backend = EchoBackend::start().await;
    let running = raw_proxy(&backend, "max_sessions = 4\n").await;
    let addr = running.listener("main");
    let mut held = Vec::new();
    for i in 0..4 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut sock, &format!("s{i}\n")).await);
        held.push(sock);
    }
    for _ in 0..3 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        assert!(is_closed(&mut sock).await, "a session past max_sessions");
    }
    assert_eq!(refused(&running, "max_sessions"), 3);
    for sock in held.iter_mut() {
        assert!(echoes(sock, "still\n").await);
    }
    running.shutdown(Duration::from_secs(2)).await;
}

/// Starts the real binary under `prlimit --nofile=LIMIT:LIMIT`; returns it and its listener's
/// address, read from its "listening" log line.
fn serve_with_fd_limit(
    limit: u32,
    backend: SocketAddr,
    dir: &std::path::Path,
) -> (Child, SocketAddr) {
    let config = dir.join("handover.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"raw\"\nbackends = [\"a\"]\n[[backend]]\nname = \"a\"\naddress = \"{backend}\"\n[health]\ninterval_ms = 60000\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(env!("CARGO_BIN_EXE_handover"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("prlimit runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the proxy logs").unwrap();
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
    let log = dir.join("stderr.log");
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(log).unwrap();
        for line in lines.map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(out, "{line}");
        }
    });
    (child, addr)
}

/// The proxy process, killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let backend = EchoBackend::start().await;
    let dir = std::env::temp_dir().join(format!("handover-emfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, addr) = serve_with_fd_limit(64, backend.addr, &dir);
    let child = KillOnDrop(child);
    // Each session takes two descriptors (client, backend): 64 runs out at about 25 sessions.
    // Open 80 connections; the kernel completes their handshakes (listen backlog) whether or
    // not the proxy can accept them.
    let mut socks = Vec::new();
    for _ in 0..80 {
        socks.push(TcpStream::connect(addr).await.unwrap());
    }
    // The last 40 are left alone; of the first 40, those that echo are the working sessions.
    let mut waiting = socks.split_off(40);
    let mut working = Vec::new();
    for (i, mut sock) in socks.into_iter().enumerate() {
        let first = format!("first{i}\n");
        if echoes_within(&mut sock, &first, Duration::from_millis(500)).await {
            working.push(sock);
        }
    }
    assert!(
        (10..40).contains(&working.len()),
        "{} sessions work under a 64-descriptor limit",
        working.len()
    );
    // Out of descriptors with clients still waiting: the proxy must not spin on accept.
    let pid = child.0.id();
    let (t0, ticks0) = (std::time::Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = (cpu_ticks(pid) - ticks0) as f64 / clock_ticks_per_second() as f64;
    let share = used / t0.elapsed().as_secs_f64();
    eprintln!(
        "out of fds: {} working, CPU {:.1}% of one core",
        working.len(),
        share * 100.0
    );
    assert!(
        share < 0.25,
        "the proxy used {:.0}% CPU out of fds",
        share * 100.0
    );
    // Clients leave: the proxy recovers and serves the ones that were waiting.
    let freed = working.len();
    drop(working);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut served = 0;
    for (i, sock) in waiting.iter_mut().enumerate().take(freed.min(10)) {
        if echoes(sock, &format!("later{i}\n")).await {
            served += 1;
        }
    }
    // Waiting clients that were accepted while the backend connect had no descriptor were
    // closed ("no_backend"); those still in the listen queue are served now. Fresh ones must
    // work in any case, once the waiting clients (who leave now) no longer hold descriptors:
    // the listen queue is first come, first served.
    drop(waiting);
    let mut fresh_ok = false;
    for attempt in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        if echoes_within(
            &mut fresh,
            &format!("fresh{attempt}\n"),
            Duration::from_secs(1),
        )
        .await
        {
            fresh_ok = true;
            break;
        }
    }
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let backoffs = log.matches("backing off").count();
    eprintln!("after recovery: {served} waiting clients served, fresh client ok: {fresh_ok}, {backoffs} back-off log lines");
    drop(child);
    assert!(fresh_ok, "no recovery after clients closed; log:\n{log}");
    assert!(
        backoffs > 0,
        "EMFILE never reached the accept loop; log:\n{log}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_admin_api_will_not_start_open_to_the_network_without_a_token() {
    let dir = std::env::temp_dir().join(format!("handover-admin-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("handover.toml");
    // The check runs before anything is bound, so nothing ever listens on 0.0.0.0 here.
    std::fs::write(
        &config,
        "[admin]\nlisten = \"0.0.0.0:9797\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"raw\"\nbackends = [\"a\"]\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    for args in [
        vec!["serve", "--config", config.to_str().unwrap()],
        vec!["check", "--config", config.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_handover"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("admin.token_file") && stderr.contains("admin.insecure"),
            "{args:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
