//! TLS on both sides and PROXY protocol headers: a TLS client keeps its session through a
//! drain; a TLS backend link verifies the backend's certificate; a backend configured for
//! PROXY v1/v2 sees the client's real address first.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake::EchoBackend;
use common::proxy;
use handover::admin::api::ControlApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::ServerName};

struct Pki {
    dir: std::path::PathBuf,
    cert_pem: String,
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("handover-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    Pki {
        dir,
        cert_pem: cert.cert.pem(),
    }
}

fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_keeps_its_session_through_a_drain() {
    let pki = pki("listener");
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let extra = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\nprelude_bytes = 4\nprelude_settle_ms = 50\n",
        pki.dir.join("cert.pem").display(),
        pki.dir.join("key.pem").display()
    );
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string())],
        &extra,
        "[health]\ninterval_ms = 60000\n",
    );
    let text = text.replace("backends = [\"a\"]", "backends = [\"a\", \"b\"]")
        + &format!("[[backend]]\nname = \"b\"\naddress = \"{}\"\n", b.addr);
    let running = proxy::start(&text).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();

    let tcp = TcpStream::connect(running.listener("main")).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut sent = Vec::new();
    let mut echoed = Vec::new();
    let mut buf = [0u8; 256];
    for i in 0..40 {
        if i == 20 {
            engine.undrain("b").unwrap();
            let done = engine.drain_wait("a").await.unwrap();
            assert_eq!((done.state.as_str(), done.migrated), ("drained", 1));
        }
        let line = format!("msg{i:03}\n");
        tls.write_all(line.as_bytes()).await.unwrap();
        sent.extend_from_slice(line.as_bytes());
        // Each line comes back from whichever backend has the session now.
        let mut got = 0;
        while got < line.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "TLS client saw EOF");
            echoed.extend_from_slice(&buf[..n]);
            got += n;
        }
    }
    assert_eq!(
        echoed, sent,
        "every line echoed once, in order, across the drain"
    );
    let mut joined = a.received();
    joined.extend_from_slice(&b.received()[4..]);
    assert_eq!(joined, sent);
    assert_eq!(engine.sessions()[0].backend, "b");
    running.shutdown(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(pki.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_tls_closes_only_that_client() {
    let pki = pki("garbage");
    let a = EchoBackend::start().await;
    let extra = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        pki.dir.join("cert.pem").display(),
        pki.dir.join("key.pem").display()
    );
    let text = proxy::config(
        "raw",
        &[("a", a.addr.to_string())],
        &extra,
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    // Several times over: the refusal must be counted by the time the client sees the
    // close (a scrape right after a close once raced the count).
    for i in 1..=20 {
        let mut bad = TcpStream::connect(running.listener("main")).await.unwrap();
        bad.write_all(b"NICK garbage\r\nUSER x 0 * :not tls at all\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .expect("closed in time");
        // rustls may answer with an alert before closing; either way the connection ends.
        if let Ok(n) = r {
            if n > 0 {
                let r = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
                    .await
                    .unwrap();
                assert!(matches!(r, Ok(0) | Err(_)));
            }
        }
        let metrics = running.engine.metrics_text();
        let counted = format!("reason=\"tls_handshake\"}} {i}\n");
        assert!(metrics.contains(&counted), "after {i}: {metrics}");
    }
    assert!(a.data_conns().is_empty(), "nothing reached the backend");
    running.shutdown(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(pki.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_link_over_tls_verifies_the_certificate() {
    let pki = pki("backend");
    // A TLS echo backend with the test certificate.
    let server_cfg = handover::net::tls::server_config(&handover::config::TlsFiles {
        cert: pki.dir.join("cert.pem"),
        key: pki.dir.join("key.pem"),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    let ca = pki.dir.join("cert.pem");
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"raw\"\nbackends = [\"t\"]\n\
         [[backend]]\nname = \"t\"\naddress = \"{addr}\"\ntls = {{ ca = \"{}\", server_name = \"localhost\" }}\n[health]\ninterval_ms = 60000\n",
        ca.display()
    );
    let running = proxy::start(&text).await;
    let mut c = TcpStream::connect(running.listener("main")).await.unwrap();
    c.write_all(b"ping over tls\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping over tls\n");
    running.shutdown(Duration::from_secs(2)).await;

    // The same backend under a name its certificate does not carry is refused.
    let text = text.replace(
        "server_name = \"localhost\"",
        "server_name = \"elsewhere.test\"",
    );
    let running = proxy::start(&text).await;
    let mut c = TcpStream::connect(running.listener("main")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "a backend with the wrong certificate is not used"
    );
    running.shutdown(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(pki.dir).ok();
}

/// Reads what a PROXY-speaking backend got first on its one connection.
async fn header_seen(version: &str) -> (Vec<u8>, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        // Health checks connect and close without a byte: skip those connections.
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.ends_with(b"hello\n") {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if got.ends_with(b"hello\n") {
                return got;
            }
        }
    });
    let text = proxy::config(
        "raw",
        &[("p", addr.to_string())],
        "",
        "[health]\ninterval_ms = 60000\n",
    )
    .replace(
        &format!("address = \"{addr}\"\n"),
        &format!("address = \"{addr}\"\nproxy_protocol = \"{version}\"\n"),
    );
    let running = proxy::start(&text).await;
    let mut c = TcpStream::connect(running.listener("main")).await.unwrap();
    let client_addr = c.local_addr().unwrap();
    c.write_all(b"hello\n").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .unwrap()
        .unwrap();
    running.shutdown(Duration::from_secs(1)).await;
    (got, client_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_header_names_the_client() {
    let (got, client) = header_seen("v1").await;
    let text = String::from_utf8(got).unwrap();
    let expected_prefix = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} ", client.port());
    assert!(text.starts_with(&expected_prefix), "{text:?}");
    assert!(text.ends_with("\r\nhello\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_names_the_client() {
    let (got, client) = header_seen("v2").await;
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(&got[16..20], &[127, 0, 0, 1]);
    assert_eq!(
        u16::from_be_bytes([got[24], got[25]]),
        client.port(),
        "the client's own port"
    );
    assert_eq!(&got[28..], b"hello\n");
}
