//! Raw-protocol sessions through drains, failovers and operator moves, against scripted echo
//! backends (raw mode has no real server to stand in for). Every byte the client sends must
//! reach exactly one backend, in order; the client socket must never see EOF or a reset.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::fake::EchoBackend;
use common::proxy;
use common::streamer::{wait_for, Streamer, PRELUDE};
use handover::admin::api::ControlApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn raw_config(a: &EchoBackend, b: &EchoBackend, migration: &str) -> String {
    proxy::config(
        "raw",
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
        "prelude_bytes = 6\nprelude_settle_ms = 100\n",
        &format!("[health]\ninterval_ms = 100\ntimeout_ms = 200\nrise = 1\nfall = 1\n{migration}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_a_streaming_client_byte_for_byte() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let running = proxy::start(&raw_config(&a, &b, "")).await;
    let engine = running.engine.clone();
    // Pin the client to a: b is drained while it connects.
    engine.drain("b").unwrap();
    let client = Streamer::start(running.listener("main")).await;
    wait_for("the client on a", || a.received().len() > 200).await;
    engine.undrain("b").unwrap();
    assert_eq!(engine.backend("a").unwrap().state, "active");

    let drain = engine.drain("a").unwrap();
    assert_eq!((drain.state.as_str(), drain.sessions), ("draining", 1));
    let finished = engine.drain_wait("a").await.unwrap();
    assert_eq!(
        (finished.state.as_str(), finished.migrated, finished.failed),
        ("drained", 1, 0)
    );
    assert_eq!(engine.backend("a").unwrap().state, "drained");
    wait_for("data on b", || b.received().len() > PRELUDE.len() + 200).await;
    let sent = client.finish().await;
    wait_for("everything delivered", || {
        a.received().len() + b.received().len() - PRELUDE.len() >= sent.len()
    })
    .await;

    let (on_a, on_b) = (a.received(), b.received());
    assert!(on_b.starts_with(PRELUDE), "b got the prelude first");
    let mut joined = on_a.clone();
    joined.extend_from_slice(&on_b[PRELUDE.len()..]);
    assert_eq!(joined.len(), sent.len(), "no byte lost or duplicated");
    assert!(joined == sent, "bytes arrive in order, byte for byte");
    assert_eq!(b.data_conns().len(), 1, "exactly one connection to b");
    // handover_bytes_total counts the client's own bytes, once, across the move.
    let counted = format!(
        "handover_bytes_total{{direction=\"client_to_backend\"}} {}\n",
        sent.len()
    );
    wait_for("every client byte counted", || {
        engine.metrics_text().contains(&counted)
    })
    .await;

    let sessions = engine.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (sessions[0].backend.as_str(), sessions[0].migrations),
        ("b", 1)
    );
    let metrics = engine.metrics_text();
    assert!(
        metrics.contains(
            "handover_migrations_total{protocol=\"raw\",reason=\"drain\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_replayed_bytes_total{protocol=\"raw\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_migration_duration_seconds_count{protocol=\"raw\"} 1"),
        "{metrics}"
    );
    for phase in ["connect", "register", "flush", "settle"] {
        let count = format!(
            "handover_migration_phase_seconds_count{{protocol=\"raw\",phase=\"{phase}\"}} 1"
        );
        assert!(metrics.contains(&count), "{count} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("handover_sessions{listener=\"main\",backend=\"b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_backend_state{backend=\"a\",state=\"drained\"} 1"),
        "{metrics}"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_client_and_delivers_what_it_sends_after() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let running = proxy::start(&raw_config(&a, &b, "")).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let client = Streamer::start(running.listener("main")).await;
    wait_for("the client on a", || a.received().len() > 200).await;
    engine.undrain("b").unwrap();

    a.kill();
    wait_for("failover to b", || {
        engine.sessions().first().is_some_and(|s| s.backend == "b")
    })
    .await;
    wait_for("a marked down", || {
        engine.backend("a").unwrap().state == "down"
    })
    .await;
    wait_for("data on b", || b.received().len() > PRELUDE.len() + 500).await;
    let sent = client.finish().await;
    wait_for("the last line on b", || {
        b.received()
            .ends_with(sent.rsplit(|c| *c == b'l').next().unwrap())
    })
    .await;

    let (on_a, on_b) = (a.received(), b.received());
    let on_b = &on_b[PRELUDE.len()..];
    assert!(sent.starts_with(&on_a), "a got a prefix of the stream");
    assert!(
        sent.ends_with(on_b),
        "b got the rest of the stream, in order"
    );
    assert!(on_a.len() + on_b.len() <= sent.len(), "nothing duplicated");
    // What a had been handed by the kernel but never read is lost with a; what the client
    // sent after the loss is all on b.
    let lost = sent.len() - on_a.len() - on_b.len();
    assert!(
        lost < 64 * 1024,
        "lost {lost} bytes: more than a's socket buffer could hold"
    );
    let metrics = engine.metrics_text();
    assert!(
        metrics.contains(
            "handover_migrations_total{protocol=\"raw\",reason=\"failover\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("handover_backend_state{backend=\"a\",state=\"down\"} 1"),
        "{metrics}"
    );

    // a comes back: health marks it active again.
    let a2 = EchoBackend::start_on(a.addr).await;
    wait_for("a active again", || {
        engine.backend("a").unwrap().state == "active"
    })
    .await;
    drop(a2);
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_moves_one_session_and_refusals_leave_it_working() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let running = proxy::start(&raw_config(&a, &b, "")).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let client = Streamer::start(running.listener("main")).await;
    wait_for("the client on a", || a.received().len() > 100).await;
    let id = engine.sessions()[0].id.clone();

    // b is draining: the move is refused and the session stays on a, working.
    let err = engine.migrate(&id, Some("b".into())).await.unwrap_err();
    assert!(err.to_string().contains("takes no sessions"), "{err}");
    let err = engine.migrate("999999", None).await.unwrap_err();
    assert!(
        matches!(err, handover::admin::api::ControlError::NotFound(_)),
        "{err:?}"
    );
    let before = a.received().len();
    wait_for("a still receiving", || a.received().len() > before + 100).await;

    engine.undrain("b").unwrap();
    let reply = engine.migrate(&id, Some("b".into())).await.unwrap();
    assert_eq!(
        (
            reply.from.as_str(),
            reply.to.as_str(),
            reply.outcome.as_str()
        ),
        ("a", "b", "ok")
    );
    let sent = client.finish().await;
    wait_for("everything delivered", || {
        a.received().len() + b.received().len() - PRELUDE.len() >= sent.len()
    })
    .await;
    let mut joined = a.received();
    joined.extend_from_slice(&b.received()[PRELUDE.len()..]);
    assert!(joined == sent, "byte for byte across the move");
    let metrics = engine.metrics_text();
    assert!(
        metrics.contains(
            "handover_migrations_total{protocol=\"raw\",reason=\"admin\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "handover_migrations_total{protocol=\"raw\",reason=\"admin\",outcome=\"aborted\"} 1"
        ),
        "{metrics}"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// Opens `n` idle raw sessions (each sends the prelude) and waits until all are on `on`.
async fn open_sessions(
    addr: std::net::SocketAddr,
    n: usize,
    backend: &EchoBackend,
) -> Vec<TcpStream> {
    let mut socks = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(PRELUDE).await.unwrap();
        socks.push(s);
    }
    wait_for("sessions open", || backend.data_conns().len() >= n).await;
    socks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_honours_max_concurrent() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    // Each migration takes at least the 300 ms prelude settle time.
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
        "prelude_bytes = 6\nprelude_settle_ms = 300\n",
        "[migration]\nmax_concurrent = 2\nmax_per_second = 1000\n[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let _socks = open_sessions(running.listener("main"), 8, &a).await;
    engine.undrain("b").unwrap();
    let finished = engine.drain_wait("a").await.unwrap();
    assert_eq!(finished.migrated, 8);
    let mut starts: Vec<_> = b.data_conns().into_iter().map(|(t, _)| t).collect();
    starts.sort();
    assert_eq!(starts.len(), 8);
    // With two in flight, the third connect can only start once the first finished.
    for w in starts.windows(3) {
        let gap = w[2] - w[0];
        assert!(
            gap >= Duration::from_millis(280),
            "three connects within {gap:?}: more than 2 in flight"
        );
    }
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_honours_max_per_second_and_new_sessions_avoid_draining_backends() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
        "prelude_bytes = 6\nprelude_settle_ms = 10\n",
        "[migration]\nmax_concurrent = 100\nmax_per_second = 5\n[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let _socks = open_sessions(running.listener("main"), 10, &a).await;
    assert!(
        b.data_conns().is_empty(),
        "no new session went to the draining backend"
    );
    engine.undrain("b").unwrap();
    engine.drain("a").unwrap();
    // While a drains, a new client goes to b.
    let _late = open_sessions(running.listener("main"), 1, &b).await;
    let finished = engine.drain_wait("a").await.unwrap();
    assert_eq!(
        (finished.state.as_str(), finished.migrated),
        ("drained", 10)
    );
    let mut starts: Vec<_> = b.data_conns().into_iter().map(|(t, _)| t).collect();
    starts.sort();
    // 11 connections on b: the late client plus 10 migrations at 5 per second.
    assert_eq!(starts.len(), 11);
    let migrations = &starts[1..];
    let span = *migrations.last().unwrap() - migrations[0];
    assert!(
        span >= Duration::from_millis(1700),
        "10 connects at 5/s took only {span:?}"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_means_a_clean_close_and_a_count() {
    let a = EchoBackend::start().await;
    let addr = a.addr;
    a.kill();
    drop(a);
    let text = proxy::config(
        "raw",
        &[("a", addr.to_string())],
        "",
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let mut s = TcpStream::connect(running.listener("main")).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "the client is closed");
    let metrics = running.engine.metrics_text();
    assert!(
        metrics.contains(
            "handover_connections_refused_total{listener=\"main\",reason=\"no_backend\"} 1"
        ),
        "{metrics}"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_backpressures_its_backend() {
    use tokio::net::TcpListener;
    // A backend that floods: it counts how much it could write before the proxy pushed back.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let chunk = vec![b'x'; 65536];
        while sock.write_all(&chunk).await.is_ok() {
            w.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let text = proxy::config(
        "raw",
        &[("a", addr.to_string())],
        "",
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let _client = TcpStream::connect(running.listener("main")).await.unwrap();
    // Let the flood run into the wall, then check it stopped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = written.load(Ordering::Relaxed);
    assert_eq!(first, second, "the backend kept writing: no backpressure");
    // Two loopback socket buffers (a few MiB each) plus the proxy's bounded queue.
    assert!(second < 32 * 1024 * 1024, "{second} bytes went somewhere");
    running.shutdown(Duration::from_secs(2)).await;
}
