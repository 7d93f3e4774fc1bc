//! Counters the engine must keep current while sessions live, not only when they end.

mod common;

use std::time::Duration;

use common::fake::EchoBackend;
use common::proxy;
use handover::admin::api::ControlApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bytes(text: &str, direction: &str) -> u64 {
    let series = format!("handover_bytes_total{{direction=\"{direction}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_while_the_session_is_open() {
    let backend = EchoBackend::start().await;
    let text = proxy::config(
        "raw",
        &[("a", backend.addr.to_string())],
        "",
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
    let payload = vec![b'x'; 10_000];
    sock.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    // The session counts right after its write returns; the client may read a moment sooner.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = running.engine.metrics_text();
        if bytes(&metrics, "backend_to_client") == 10_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bytes(&metrics, "client_to_backend"), 10_000, "{metrics}");
    assert_eq!(bytes(&metrics, "backend_to_client"), 10_000, "{metrics}");
    running.shutdown(Duration::from_secs(2)).await;
}
