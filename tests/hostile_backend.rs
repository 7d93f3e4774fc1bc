//! Backends that misbehave: one that never answers registration, one that closes in the middle
//! of it, one that answers garbage, one that floods, and backends that die at awkward moments.
//! Real IRC servers do none of this on purpose, so these backends are scripted
//! (`common::fake_irc`). DESIGN.md's rules: a migration that fails leaves the session on A,
//! working; a failover either lands or closes the client within `failover_timeout_ms`; the
//! client is never left hanging without a bound.

mod common;

use std::time::Duration;

use common::fake_irc::{FakeIrcd, Mode};
use common::irc_client::IrcClient;
use common::proxy;
use handover::admin::api::ControlApi;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Short migration timeouts so every bounded wait is seconds, not minutes.
const MIGRATION: &str = "[migration]\nconnect_timeout_ms = 1000\nregister_timeout_ms = 1500\nflush_timeout_ms = 1000\nfailover_timeout_ms = 5000\n[health]\ninterval_ms = 200\ntimeout_ms = 200\nrise = 1\nfall = 1\n";

fn config(backends: &[&FakeIrcd], listener_extra: &str) -> String {
    let named: Vec<(&str, String)> = backends
        .iter()
        .map(|b| (b.name.split('.').next().unwrap(), b.addr.to_string()))
        .collect();
    proxy::config("irc", &named, listener_extra, MIGRATION)
}

/// Waits until `cond` holds, polling; panics after `limit`.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until EOF or error; panics if the socket stays open past `limit`.
async fn expect_closed(sock: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the client was left hanging for {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_client_whose_backend_dies_is_closed_at_once() {
    let (a, b) = (
        FakeIrcd::start("a.fake").await,
        FakeIrcd::start("b.fake").await,
    );
    let running = proxy::start(&config(&[&a, &b], "")).await;
    let engine = running.engine.clone();
    let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
    use tokio::io::AsyncWriteExt;
    sock.write_all(b"NICK halfway\r\n").await.unwrap();
    until("the session", Duration::from_secs(5), || {
        engine.sessions().len() == 1
    })
    .await;
    let on = engine.sessions()[0].backend.clone();
    if on == "a" {
        a.kill()
    } else {
        b.kill()
    }
    // Nothing to re-create elsewhere (no registration yet): the client sees the close, as it
    // would without a proxy, instead of a socket that neither works nor closes.
    expect_closed(&mut sock, Duration::from_secs(3)).await;
    until("the session gone", Duration::from_secs(2), || {
        engine.sessions().is_empty()
    })
    .await;
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_while_the_nick_is_reclaimed_still_fails_over() {
    let (a, b) = (
        FakeIrcd::start("a.fake").await,
        FakeIrcd::start("b.fake").await,
    );
    let running = proxy::start(&config(&[&a, &b], "")).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let mut alice = IrcClient::register(running.listener("main"), "alice").await;
    alice.join("#c").await;
    engine.undrain("b").unwrap();
    // b registers the session under a temporary nick and then never grants the real one.
    b.set_mode(Mode::IgnoreNickChange);
    let id = engine.sessions()[0].id.clone();
    let moved = engine.migrate(&id, Some("b".into())).await.unwrap();
    assert_eq!(moved.outcome, "ok", "{moved:?}");
    alice.roundtrip().await;
    // b dies while the reclaim is still pending: the session must fail over back to a.
    b.kill();
    // (Lines sent while b's socket was closing could be lost with it: wait for the failover.)
    until("the failover to a", Duration::from_secs(5), || {
        engine.sessions()[0].backend == "a"
    })
    .await;
    alice.roundtrip().await;
    let session = &engine.sessions()[0];
    assert_eq!(session.backend, "a");
    assert_eq!(session.identity.as_deref(), Some("alice"));
    running.shutdown(Duration::from_secs(2)).await;
}

/// A session registered on `a`, with `b` drained until the client is in, and `b` then put in
/// `mode`: the migration target misbehaves.
async fn session_on_a(
    running: &handover::app::Running,
    mode: Mode,
    b: &FakeIrcd,
) -> (IrcClient, String) {
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let mut alice = IrcClient::register(running.listener("main"), "alice").await;
    alice.join("#c").await;
    engine.undrain("b").unwrap();
    b.set_mode(mode);
    let id = engine.sessions()[0].id.clone();
    (alice, id)
}

/// Asks for a move to b, which misbehaves: the move must abort within `limit`, and the
/// session must stay on a, working, with its client none the wiser. Returns the reason and how
/// much this process's RSS grew during the attempt.
async fn move_aborts(mode: Mode, limit: Duration) -> (String, usize) {
    let (a, b) = (
        FakeIrcd::start("a.fake").await,
        FakeIrcd::start("b.fake").await,
    );
    let running = proxy::start(&config(&[&a, &b], "")).await;
    let engine = running.engine.clone();
    let (mut alice, id) = session_on_a(&running, mode, &b).await;
    let before = common::rss::rss_bytes();
    let started = tokio::time::Instant::now();
    let moved = engine.migrate(&id, Some("b".into())).await.unwrap();
    let took = started.elapsed();
    let grew = common::rss::rss_bytes().saturating_sub(before);
    assert_eq!(moved.outcome, "aborted", "{moved:?}");
    assert!(took < limit, "the abort took {took:?}");
    assert_eq!(engine.sessions()[0].backend, "a");
    alice.roundtrip().await;
    // Still in its channel on a, and still one welcome only.
    assert_eq!(alice.seen.iter().filter(|l| l.contains(" 001 ")).count(), 1);
    running.shutdown(Duration::from_secs(2)).await;
    (moved.reason.unwrap_or_default(), grew)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_registration_aborts_at_register_timeout() {
    let _serial = common::rss::serial().await;
    let (why, _) = move_aborts(Mode::Silent, Duration::from_secs(5)).await;
    assert!(why.contains("timed out"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_mid_registration_aborts_at_once() {
    let _serial = common::rss::serial().await;
    let (why, _) = move_aborts(Mode::CloseOnRegister, Duration::from_secs(1)).await;
    assert!(why.contains("closed"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_garbage_aborts_at_once() {
    let _serial = common::rss::serial().await;
    let (why, _) = move_aborts(Mode::Garbage, Duration::from_secs(1)).await;
    assert!(why.contains("NUL"), "{why}");
}

/// The most memory a migration target can make handover hold for one session: B's read buffer
/// (one 32 KiB read plus a partial line, under 48 KiB) and what handover queues for B (the
/// 64 KiB link limit plus the replies to one read's worth of lines, under 64 KiB more): about
/// 180 KiB. The bound allows 4 MiB for allocator arenas and the test's own buffers; the
/// unbounded PONG queue this guards against grew by ~90 MiB in the 1.5 s registration window.
const FLOOD_BOUND: usize = 4 * 1024 * 1024;

/// A move onto a b that floods during registration times out, and handover's RSS stays
/// under [`FLOOD_BOUND`] meanwhile.
async fn assert_flood_is_bounded(flood: Mode) {
    let (why, grew) = move_aborts(flood, Duration::from_secs(5)).await;
    eprintln!("RSS grew by {:.1} MiB", common::rss::mib(grew));
    assert!(why.contains("timed out"), "{why}");
    assert!(
        grew < FLOOD_BOUND,
        "RSS grew by {:.1} MiB while b flooded",
        common::rss::mib(grew)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_floods_pings_during_registration_is_bounded() {
    let _serial = common::rss::serial().await;
    // b sends PINGs as fast as it can and never reads: every PING asks handover for a PONG.
    let ping = format!("PING :{}\r\n", "p".repeat(400));
    let flood = Mode::Flood {
        line: ping.into(),
        limit: 2 << 30,
    };
    assert_flood_is_bounded(flood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_floods_junk_during_registration_is_bounded() {
    let _serial = common::rss::serial().await;
    // Short lines: handover's work per line outweighs the flooder's, so b is always readable.
    let junk = ":b.fake NOTICE * :j\r\n";
    let flood = Mode::Flood {
        line: junk.as_bytes().to_vec().into(),
        limit: 2 << 30,
    };
    assert_flood_is_bounded(flood).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_deadline_holds_while_the_client_floods() {
    let _serial = common::rss::serial().await;
    let (a, b) = (
        FakeIrcd::start("a.fake").await,
        FakeIrcd::start("b.fake").await,
    );
    let running = proxy::start(&config(&[&a, &b], "")).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    // The flooder's socket is always readable and a always takes more, so some branch of
    // the session's select is always ready. b never answers: the migration must still end
    // at register_timeout_ms.
    let flooder = IrcClient::register(running.listener("main"), "flooder").await;
    engine.undrain("b").unwrap();
    b.set_mode(Mode::Silent);
    let (mut rd, mut wr) = flooder.take_stream().into_split();
    let line = b"PRIVMSG #nobody :flood flood flood flood flood flood flood flood\r\n";
    let chunk: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 1000)
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 1 << 30 {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            wr
        })
    };
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flooder_id = engine
        .sessions()
        .into_iter()
        .find(|s| s.identity.as_deref() == Some("flooder"))
        .unwrap()
        .id;
    let started = tokio::time::Instant::now();
    let moved = tokio::time::timeout(
        Duration::from_secs(10),
        engine.migrate(&flooder_id, Some("b".into())),
    )
    .await
    .expect("the migration ended")
    .unwrap();
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(moved.outcome, "aborted", "{moved:?}");
    assert!(took < Duration::from_secs(5), "the abort took {took:?}");
    let _ = writer.await;
    reader.abort();
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_cannot_hold_the_cut_past_flush_timeout() {
    let _serial = common::rss::serial().await;
    let (a, b) = (
        FakeIrcd::start("a.fake").await,
        FakeIrcd::start("b.fake").await,
    );
    let running = proxy::start(&config(&[&a, &b], "")).await;
    let engine = running.engine.clone();
    let (alice, id) = session_on_a(&running, Mode::Normal, &b).await;
    // a floods alice with a gigabyte; its answer to the flush mark queues up behind it. The
    // client reads as fast as it can, so a is readable at every turn of the session loop.
    let mut sock = alice.take_stream();
    {
        use tokio::io::AsyncWriteExt;
        sock.write_all(b"FLOOD 1073741824\r\n").await.unwrap();
    }
    let (mut rd, wr) = sock.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let moved = tokio::time::timeout(
        Duration::from_secs(20),
        engine.migrate(&id, Some("b".into())),
    )
    .await
    .expect("the migration ended")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(moved.outcome, "ok", "{moved:?}");
    assert!(
        took < Duration::from_secs(5),
        "the cut waited {took:?} for a flooding backend (flush_timeout_ms is 1000)"
    );
    assert!(!reader.is_finished(), "the client's socket stayed open");
    reader.abort();
    drop(wr);
    running.shutdown(Duration::from_secs(2)).await;
}
