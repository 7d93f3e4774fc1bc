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
