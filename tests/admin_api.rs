//! The admin HTTP API over the real engine: bearer token, drains with and without wait,
//! sessions, migrate, backend add/remove, metrics after a drain and a failover.

mod common;

use std::time::Duration;

use common::fake::EchoBackend;
use common::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request; returns (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep the JSON between the chunk-size lines.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        body
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_over_the_real_engine() {
    let dir = std::env::temp_dir().join(format!("handover-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string()), ("b", b.addr.to_string())],
        "prelude_bytes = 3\nprelude_settle_ms = 20\n",
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n",
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            dir.join("token").display()
        ),
    );
    let running = proxy::start(&text).await;
    let admin = running.admin;
    let t = Some("s3cret");

    assert_eq!(
        http(admin, "GET", "/healthz", None, "").await,
        (200, "ok".to_string())
    );
    assert_eq!(http(admin, "GET", "/backends", None, "").await.0, 401);
    assert_eq!(
        http(admin, "GET", "/backends", Some("wrong"), "").await.0,
        401
    );
    let (status, body) = http(admin, "GET", "/backends", t, "").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["name"], "a");
    assert_eq!(list[0]["state"], "active");

    // Pin one client on a, then drain a and wait.
    let (s, _) = http(admin, "POST", "/backends/b/drain", t, "").await;
    assert_eq!(s, 202);
    let mut client = TcpStream::connect(running.listener("main")).await.unwrap();
    client.write_all(b"hi\nmore\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = client.read(&mut buf).await.unwrap();
    assert_eq!(
        http(admin, "POST", "/backends/b/undrain", t, "").await.0,
        200
    );
    let (status, body) = http(admin, "GET", "/sessions", t, "").await;
    assert_eq!(status, 200);
    let sessions: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sessions[0]["backend"], "a");
    assert_eq!(sessions[0]["protocol"], "raw");
    assert!(sessions[0]["since"].as_str().unwrap().ends_with('Z'));
    let id = sessions[0]["id"].as_str().unwrap().to_string();

    let (status, body) = http(admin, "POST", "/backends/a/drain?wait=true", t, "").await;
    assert_eq!(status, 200, "{body}");
    let done: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            done["state"].as_str(),
            done["migrated"].as_u64(),
            done["failed"].as_u64()
        ),
        (Some("drained"), Some(1), Some(0))
    );
    let (_, body) = http(admin, "GET", "/backends/a", t, "").await;
    assert!(body.contains("\"state\":\"drained\""), "{body}");

    // Move it back by hand, then fail: unknown session, unknown target, same backend.
    assert_eq!(
        http(admin, "POST", "/backends/a/undrain", t, "").await.0,
        200
    );
    let (status, body) = http(
        admin,
        "POST",
        &format!("/sessions/{id}/migrate"),
        t,
        "{\"to\":\"a\"}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"outcome\":\"ok\""), "{body}");
    assert_eq!(
        http(admin, "POST", "/sessions/424242/migrate", t, "")
            .await
            .0,
        404
    );
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/sessions/{id}/migrate"),
            t,
            "{\"to\":\"nope\"}"
        )
        .await
        .0,
        404
    );
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/sessions/{id}/migrate"),
            t,
            "{\"to\":\"a\"}"
        )
        .await
        .0,
        409
    );

    // Backends: add, change, refuse to delete one with sessions, delete an empty one.
    let c = EchoBackend::start().await;
    let put = format!("{{\"address\":\"{}\",\"pools\":[\"main\"]}}", c.addr);
    assert_eq!(http(admin, "PUT", "/backends/c", t, &put).await.0, 201);
    assert_eq!(http(admin, "PUT", "/backends/c", t, &put).await.0, 200);
    let (status, body) = http(admin, "DELETE", "/backends/a", t, "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(http(admin, "DELETE", "/backends/c", t, "").await.0, 204);
    assert_eq!(http(admin, "GET", "/backends/c", t, "").await.0, 404);

    // Failover: kill a (where the session is now); it lands on b. The session shows b at
    // the cut; the migration is counted when the client resumes, a moment later: wait for
    // the count.
    a.kill();
    let failed_over =
        "handover_migrations_total{protocol=\"raw\",reason=\"failover\",outcome=\"ok\"} 1";
    for _ in 0..100 {
        let (_, body) = http(admin, "GET", "/metrics", t, "").await;
        if body.contains(failed_over) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, metrics) = http(admin, "GET", "/metrics", t, "").await;
    assert_eq!(status, 200);
    for needle in [
        "handover_migrations_total{protocol=\"raw\",reason=\"drain\",outcome=\"ok\"} 1",
        "handover_migrations_total{protocol=\"raw\",reason=\"admin\",outcome=\"ok\"} 1",
        failed_over,
        "handover_sessions{listener=\"main\",backend=\"b\"} 1",
        "handover_sessions_accepted_total{listener=\"main\"} 1",
        "handover_client_pause_seconds_count{protocol=\"raw\"} 3",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // The client is still connected and served by b.
    client.write_all(b"after\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"after\n");
    running.shutdown(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(dir).ok();
}
