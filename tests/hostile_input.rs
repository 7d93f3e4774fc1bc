//! Hostile clients on an IRC listener in front of two real, linked ngircd servers: a line that
//! never ends, a line over the limit, a NUL byte, binary garbage, TLS handshakes that never
//! finish, a thousand connections that say nothing, and a client that never reads while its
//! backend floods it. Each gets a timeout or a clean close, counted in the metrics; two
//! ordinary users chatting in a channel keep working throughout (asserted before and after
//! every attack); and handover's memory stays under a bound derived from its limits.
//!
//! The proxy runs in this process, so its memory is this process's RSS (VmRSS). The tests of
//! this file take a lock and run one at a time, so no neighbour's allocations are counted.
//! The flood case needs a backend that floods on command, which ngircd won't do (it kills the
//! reader for exceeding its SendQ first): that one backend is the scripted `fake_irc`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::fake_irc::FakeIrcd;
use common::irc_client::IrcClient;
use common::ircd::{IrcNetwork, IrcdKind, Options};
use common::proxy;
use common::rss::{mib, rss_bytes, serial};
use handover::admin::api::ControlApi;
use handover::app::Running;
use handover::protocol::irc::message::MAX_BUFFERED;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short limits so that each bounded wait is seconds.
const LIMITS: &str = "registration_timeout_ms = 3000\nclient_stall_timeout_ms = 2000\n";

/// Two users in one channel through handover; every attack must leave them working.
struct Bystanders {
    alice: IrcClient,
    bob: IrcClient,
    said: u32,
}

impl Bystanders {
    async fn join(addr: SocketAddr) -> Self {
        let mut alice = IrcClient::register(addr, "alice").await;
        let mut bob = IrcClient::register(addr, "bob").await;
        alice.join("#calm").await;
        bob.join("#calm").await;
        // On linked servers bob's JOIN reaches alice's server after bob's own 366: wait for it
        // there, or alice's first message may not be routed to bob yet.
        alice
            .expect(|l| l.starts_with(":bob!") && l.contains("JOIN"))
            .await;
        let mut b = Self {
            alice,
            bob,
            said: 0,
        };
        b.still_work().await;
        b
    }

    /// A channel message each way and a PING round trip each.
    async fn still_work(&mut self) {
        self.said += 1;
        let n = self.said;
        self.alice
            .send(&format!("PRIVMSG #calm :from alice {n}"))
            .await;
        let want = format!("PRIVMSG #calm :from alice {n}");
        self.bob.expect(|l| l.ends_with(&want)).await;
        self.bob.send(&format!("PRIVMSG #calm :from bob {n}")).await;
        let want = format!("PRIVMSG #calm :from bob {n}");
        self.alice.expect(|l| l.ends_with(&want)).await;
        self.alice.roundtrip().await;
        self.bob.roundtrip().await;
    }
}

struct Env {
    _net: IrcNetwork,
    running: Running,
    people: Bystanders,
}

async fn env(listener_extra: &str, sections: &str) -> Env {
    let net = IrcNetwork::start_async(IrcdKind::Ngircd, Options::default())
        .await
        .expect("ngircd network");
    let text = proxy::config(
        "irc",
        &[
            ("a", net.a.client_addr().to_string()),
            ("b", net.b.client_addr().to_string()),
        ],
        &format!("{LIMITS}{listener_extra}"),
        sections,
    );
    let running = proxy::start(&text).await;
    let people = Bystanders::join(running.listener("main")).await;
    Env {
        _net: net,
        running,
        people,
    }
}

/// A counter's value from the metrics text (0 when absent).
fn metric(running: &Running, series: &str) -> u64 {
    running
        .engine
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn closed(running: &Running, reason: &str) -> u64 {
    metric(
        running,
        &format!("handover_sessions_closed_total{{listener=\"main\",reason=\"{reason}\"}}"),
    )
}

/// Reads until the peer closes; panics if it is still open after `limit`.
async fn closes_within(sock: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(limit, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "still open after {limit:?}");
    got
}

/// Registers a raw socket through handover; the welcome is read and dropped.
async fn registered_socket(addr: SocketAddr, nick: &str) -> TcpStream {
    IrcClient::register(addr, nick).await.take_stream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_close_only_their_own_session() {
    let _serial = serial().await;
    let mut env = env("", "").await;
    let addr = env.running.listener("main");
    let endless = format!("PRIVMSG #calm :{}", "x".repeat(3 * MAX_BUFFERED));
    let over_limit = format!("PRIVMSG #calm :{}\r\n", "y".repeat(600));
    let mut garbage = vec![0u8; 64 * 1024];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for b in garbage.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    let cases: [(&str, Vec<u8>); 4] = [
        ("a line that never ends", endless.into_bytes()),
        ("a line over 512 bytes", over_limit.into_bytes()),
        ("a NUL byte", b"PRIVMSG #calm :nul\0here\r\n".to_vec()),
        ("binary garbage", garbage),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let before = closed(&env.running, "protocol_error");
        let mut sock = registered_socket(addr, &format!("bad{i}")).await;
        sock.write_all(b"JOIN #calm\r\n").await.unwrap();
        // Whatever the kernel takes: handover may close before reading all of it.
        let _ = sock.write_all(bytes).await;
        closes_within(&mut sock, Duration::from_secs(5)).await;
        assert_eq!(
            closed(&env.running, "protocol_error"),
            before + 1,
            "{what}: one protocol_error close"
        );
        env.people.still_work().await;
    }
    // Nothing of the bad lines reached the channel.
    let seen = env.people.alice.seen.join("\n") + &env.people.bob.seen.join("\n");
    assert!(!seen.contains("xxxx") && !seen.contains("yyyy") && !seen.contains("nul"));
    env.running.shutdown(Duration::from_secs(2)).await;
}

/// A client that resets its socket (a program closing with the server's goodbye or channel
/// traffic unread), after a QUIT or not, left: counted `client`, not `io_error`, whether
/// handover meets the reset reading or writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_quits_and_resets_is_counted_as_leaving() {
    let _serial = serial().await;
    let mut env = env("", "").await;
    let addr = env.running.listener("main");
    for i in 0..5 {
        let before = closed(&env.running, "client");
        let mut sock = registered_socket(addr, &format!("quitter{i}")).await;
        if i % 2 == 0 {
            sock.write_all(b"QUIT :bye\r\n").await.unwrap();
        }
        // SO_LINGER 0: the close sends a reset, not a FIN.
        rustix::net::sockopt::set_socket_linger(&sock, Some(Duration::ZERO)).unwrap();
        drop(sock);
        let mut counted = false;
        for _ in 0..100 {
            if closed(&env.running, "client") == before + 1 {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(counted, "quit {i} was not counted as the client's close");
        assert_eq!(closed(&env.running, "io_error"), 0, "quit {i}");
    }
    env.people.still_work().await;
    env.running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_line_that_never_ends_meets_the_registration_timeout() {
    let _serial = serial().await;
    let mut env = env("", "").await;
    let mut sock = TcpStream::connect(env.running.listener("main"))
        .await
        .unwrap();
    // Slow-loris: a few bytes at a time, never a newline, never registered.
    let started = tokio::time::Instant::now();
    let drip = async {
        for _ in 0..40 {
            if sock.write_all(b"NICK sl").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    drip.await;
    closes_within(&mut sock, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "closed early: {took:?}");
    assert_eq!(closed(&env.running, "registration_timeout"), 1);
    env.people.still_work().await;
    env.running.shutdown(Duration::from_secs(2)).await;
}

/// A self-signed pair for the TLS listener.
fn tls_files(tag: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("handover-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    (dir, cert.cert.pem())
}

fn tls_connector(cert_pem: &str) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_never_finish_time_out() {
    let _serial = serial().await;
    let (dir, cert_pem) = tls_files("tls");
    let tls_listener = format!(
        "[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"irc\"\nbackends = [\"a\", \"b\"]\nhandshake_timeout_ms = 1000\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let mut env = env("", &tls_listener).await;
    let addr = env.running.listener("tls");
    // 50 say nothing, 50 send the first bytes of a ClientHello and stop.
    let mut stuck = Vec::new();
    for i in 0..100 {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            sock.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
        }
        stuck.push(sock);
    }
    // Meanwhile a real TLS client gets in and registers.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls_connector(&cert_pem).connect(name, tcp).await.unwrap();
    tls.write_all(b"NICK carol\r\nUSER carol 0 * :carol\r\n")
        .await
        .unwrap();
    let mut welcome = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&welcome).contains(" 001 carol ") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("the TLS client is welcomed")
            .unwrap();
        assert!(n > 0, "the TLS client was closed");
        welcome.extend_from_slice(&buf[..n]);
    }
    for sock in stuck.iter_mut() {
        closes_within(sock, Duration::from_secs(5)).await;
    }
    let timeouts = metric(
        &env.running,
        "handover_connections_refused_total{listener=\"tls\",reason=\"tls_timeout\"}",
    );
    assert_eq!(timeouts, 100);
    env.people.still_work().await;
    tls.write_all(b"PING :tls-alive\r\n").await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tls-alive") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("the TLS session still works")
            .unwrap();
        assert!(n > 0, "the TLS client was closed");
        got.extend_from_slice(&buf[..n]);
    }
    env.running.shutdown(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(dir).ok();
}

/// What one idle session (a client that connected and said nothing) may cost: an idle session
/// holds no read buffer and no queue (see `handover::session::max_buffered_bytes` for the
/// buffered worst case), only its task, its two links, its registry entry and adapter state,
/// a few KiB. 16 KiB per session covers that and the test's own socket with margin.
const IDLE_SESSION_BYTES: usize = 16 * 1024;
/// The proxy's fixed overhead and allocator slack.
const SLACK_BYTES: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_are_bounded_and_timed_out() {
    let _serial = serial().await;
    const SILENT: usize = 1000;
    let mut env = env("", "").await;
    let addr = env.running.listener("main");
    let engine = env.running.engine.clone();
    let before = rss_bytes();
    // In batches, so ngircd's short listen backlog (10) is not what this test measures.
    let mut silent = Vec::with_capacity(SILENT);
    for batch in 0..SILENT / 10 {
        for _ in 0..10 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let want = 2 + (batch + 1) * 10;
        for _ in 0..500 {
            if engine.sessions().len() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(
        engine.sessions().len(),
        2 + SILENT,
        "every silent client has a session"
    );
    let grew = rss_bytes().saturating_sub(before);
    let bound = SILENT * IDLE_SESSION_BYTES + SLACK_BYTES;
    eprintln!(
        "{SILENT} silent sessions: RSS +{:.1} MiB ({:.1} KiB each), bound {:.1} MiB",
        mib(grew),
        grew as f64 / 1024.0 / SILENT as f64,
        mib(bound)
    );
    assert!(grew < bound, "RSS grew by {:.1} MiB", mib(grew));
    env.people.still_work().await;
    // None of them registers: each is closed at registration_timeout_ms (3 s).
    for sock in silent.iter_mut() {
        closes_within(sock, Duration::from_secs(10)).await;
    }
    assert_eq!(closed(&env.running, "registration_timeout"), SILENT as u64);
    assert_eq!(engine.sessions().len(), 2);
    env.people.still_work().await;
    env.running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_while_its_backend_floods_is_bounded_and_closed() {
    let _serial = serial().await;
    let fake = FakeIrcd::start("flood.fake").await;
    let text = proxy::config(
        "irc",
        &[("f", fake.addr.to_string())],
        LIMITS,
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let addr = running.listener("main");
    let mut calm = Bystanders::join(addr).await;
    let mut sock = registered_socket(addr, "sink").await;
    let before = rss_bytes();
    // 256 MiB of PRIVMSGs towards a client that reads none of them.
    sock.write_all(b"FLOOD 268435456\r\n").await.unwrap();
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes().saturating_sub(before));
        calm.still_work().await;
    }
    // The stalled session holds at most its buffers; the fake backend's own queue is 2 MiB.
    let bound =
        handover::session::max_buffered_bytes(65_536, MAX_BUFFERED) + 2 * 1024 * 1024 + SLACK_BYTES;
    eprintln!(
        "stalled reader: RSS peak +{:.1} MiB, bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );
    assert!(peak < bound, "RSS grew by {:.1} MiB", mib(peak));
    // Not a byte read for client_stall_timeout_ms (2 s): closed.
    let started = tokio::time::Instant::now();
    while closed(&running, "client_stalled") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stalled client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    calm.still_work().await;
    drop(sock);
    running.shutdown(Duration::from_secs(2)).await;
}
