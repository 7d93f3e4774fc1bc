//! splice(2) on raw listeners: bulk traffic both ways arrives byte for byte and really went
//! through pipes (`handover_spliced_bytes_total`); end of stream, a backend's close, a slow
//! reader and a drain in the middle of a spliced stream behave as on the copy path, which
//! each test runs too (`splice = false`) where the two must match.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bulk::{self, RecordingEcho};
use common::proxy;
use common::streamer::{wait_for, PRELUDE};
use handover::admin::api::ControlApi;
use handover::app::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1024 * 1024;

async fn raw_proxy(backend: std::net::SocketAddr, splice: bool, extra: &str) -> Running {
    let text = proxy::config(
        "raw",
        &[("a", backend.to_string())],
        &format!("splice = {splice}\n"),
        &format!("[health]\ninterval_ms = 60000\n{extra}"),
    );
    proxy::start(&text).await
}

/// The first connection that sends a byte (health checks send none), the byte read.
async fn first_talker(listener: &TcpListener) -> TcpStream {
    loop {
        let (mut sock, _) = listener.accept().await.unwrap();
        if let Ok(1..) = sock.read(&mut [0]).await {
            return sock;
        }
    }
}

fn spliced(running: &Running) -> (u64, u64) {
    bulk::spliced(&running.engine.metrics_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_is_byte_exact_and_goes_through_pipes() {
    let backend = bulk::echo_backend().await;
    for splice in [true, false] {
        let running = raw_proxy(backend, splice, "").await;
        let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
        bulk::round_trip(&mut sock, 0, 64 * MIB).await;
        wait_for("every byte counted", || {
            bulk::forwarded(&running.engine.metrics_text()) == (64 * MIB, 64 * MIB)
        })
        .await;
        let (c2b, b2c) = spliced(&running);
        if splice {
            // The first reads of each side are copied, until one shows bulk traffic.
            assert!(c2b > 60 * MIB && b2c > 60 * MIB, "spliced {c2b} / {b2c}");
        } else {
            assert_eq!((c2b, b2c), (0, 0), "splice = false copies");
        }
        running.shutdown(Duration::from_secs(2)).await;
    }
}

/// A backend that checks the stream it reads up to its end, then reports how much came.
/// Connections that send nothing (health checks) are not counted.
async fn checking_sink() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = vec![0; 256 * 1024];
        let mut want = vec![0; buf.len()];
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut at = 0u64;
            while let Ok(n @ 1..) = sock.read(&mut buf).await {
                bulk::fill(at, &mut want[..n]);
                assert!(buf[..n] == want[..n], "the sink got a wrong byte near {at}");
                at += n as u64;
            }
            if at > 0 {
                let _ = tx.send(at);
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_end_of_stream_follows_its_last_byte() {
    for splice in [true, false] {
        let (backend, got) = checking_sink().await;
        let running = raw_proxy(backend, splice, "").await;
        let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
        bulk::send(&mut sock, 0, 16 * MIB, 256 * 1024).await;
        sock.shutdown().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .expect("the backend saw the end of stream")
            .unwrap();
        assert_eq!(got, 16 * MIB, "every byte, then the end of stream");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
            .await
            .expect("the client is closed once its bytes are delivered");
        assert!(matches!(n, Ok(0)), "{n:?}");
        assert_eq!(spliced(&running).0 > 0, splice);
        running.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_backend_sent_before_it_closed_reaches_the_client() {
    for splice in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut sock = first_talker(&listener).await;
            bulk::send(&mut sock, 0, 16 * MIB, 256 * 1024).await;
            // Closes: raw fails over, finds no other backend, and gives up.
        });
        let running = raw_proxy(backend, splice, "[migration]\nfailover_timeout_ms = 300\n").await;
        let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
        sock.write_all(b"g").await.unwrap();
        bulk::expect(&mut sock, 0, 16 * MIB).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
            .await
            .expect("the client is closed after the failover gave up");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert!(rest.is_empty(), "{} bytes after the stream", rest.len());
        assert_eq!(spliced(&running).1 > 0, splice);
        running.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_backpressures_a_spliced_backend() {
    // A backend that floods the stream and counts what the proxy took.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        let mut sock = first_talker(&listener).await;
        let mut buf = vec![0; 64 * 1024];
        let mut at = 0;
        loop {
            bulk::fill(at, &mut buf);
            if sock.write_all(&buf).await.is_err() {
                return;
            }
            at += buf.len() as u64;
            w.store(at, Ordering::Relaxed);
        }
    });
    let running = raw_proxy(backend, true, "").await;
    let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
    sock.write_all(b"g").await.unwrap();
    bulk::expect(&mut sock, 0, 8 * MIB).await;
    assert!(spliced(&running).1 > 0, "the flood is spliced");
    // The client stops reading: the flood must run into a wall.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = written.load(Ordering::Relaxed);
    assert_eq!(first, stopped, "the backend kept writing: no backpressure");
    // What the four sockets' buffers can hold (they grow up to the sysctl maximums once
    // the stream has run), and one pipe at most in between.
    let held = stopped - 8 * MIB;
    let max = |path: &str| -> u64 {
        let text = std::fs::read_to_string(path).unwrap();
        text.split_whitespace().last().unwrap().parse().unwrap()
    };
    let buffers = 2 * max("/proc/sys/net/ipv4/tcp_rmem") + 2 * max("/proc/sys/net/ipv4/tcp_wmem");
    assert!(held < buffers + MIB, "{held} bytes went somewhere");
    // Everything held arrives, in order, once the client reads again.
    bulk::expect(&mut sock, 8 * MIB, held).await;
    running.shutdown(Duration::from_secs(2)).await;
}

/// A client that sends the prelude and then the stream in 32 KiB writes (each one a bulk
/// read for the proxy), paced to 16 MB/s so the backends' records stay small; it reads and
/// drops the echo. Returns how many stream bytes it sent once stopped.
fn paced_sender(sock: TcpStream, stop: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    let (mut r, mut w) = sock.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0; 64 * 1024];
        while let Ok(1..) = r.read(&mut sink).await {}
    });
    tokio::spawn(async move {
        w.write_all(PRELUDE).await.unwrap();
        let mut at = 0;
        while stop.load(Ordering::Relaxed) == 0 {
            bulk::send(&mut w, at, 32 * 1024, 32 * 1024).await;
            at += 32 * 1024;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Keep the socket open: the session must still be there.
        std::mem::forget(w);
        at
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_the_middle_of_a_spliced_stream_loses_and_doubles_no_client_byte() {
    let (a, b) = (RecordingEcho::start().await, RecordingEcho::start().await);
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
        "prelude_bytes = 6\nprelude_settle_ms = 100\n",
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let sock = TcpStream::connect(running.listener("main")).await.unwrap();
    let stop = Arc::new(AtomicU64::new(0));
    let sender = paced_sender(sock, stop.clone());
    wait_for("a spliced stream to a", || spliced(&running).0 > 2 * MIB).await;
    engine.undrain("b").unwrap();

    let finished = {
        engine.drain("a").unwrap();
        engine.drain_wait("a").await.unwrap()
    };
    assert_eq!((finished.migrated, finished.failed), (1, 0));
    let at_cut = spliced(&running).0;
    wait_for("the stream on b", || b.len() > 2 * MIB as usize).await;
    // Once the old link is closed (2 s after the cut), the stream to b is spliced too.
    wait_for("splicing again after the move", || {
        spliced(&running).0 > at_cut + MIB
    })
    .await;
    stop.store(1, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    wait_for("every byte delivered", || {
        (a.len() + b.len()) as u64 == PRELUDE.len() as u64 * 2 + sent
    })
    .await;

    let (on_a, on_b) = (a.received(), b.received());
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "one connection each");
    let (on_a, on_b) = (&on_a[0], &on_b[0]);
    assert!(on_a.starts_with(PRELUDE) && on_b.starts_with(PRELUDE));
    let mut joined = on_a[PRELUDE.len()..].to_vec();
    joined.extend_from_slice(&on_b[PRELUDE.len()..]);
    let mut want = vec![0; sent as usize];
    bulk::fill(0, &mut want);
    assert_eq!(joined.len(), want.len(), "no byte lost or doubled");
    assert!(joined == want, "byte for byte, in order, across the move");
    running.shutdown(Duration::from_secs(2)).await;
}
