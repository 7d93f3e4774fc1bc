//! Config reload (SIGHUP, `POST /reload`) against the real engine: backends added, removed
//! with live sessions (drained first, none closed), changed; a rotated certificate; a changed
//! limit; bad configs refused with file/key/problem while the old config keeps serving; and
//! SIGHUP on the real binary.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::binary;
use common::echo::{echoes, is_closed};
use common::fake::EchoBackend;
use common::proxy;
use common::streamer::{assert_moved_byte_for_byte, wait_for, Streamer, PRELUDE};
use handover::admin::api::{ControlApi, ControlError, ReloadReport};
use handover::admin::client::{AdminClient, ClientError};
use handover::app::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config file in its own temp directory.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(test: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("handover-reload-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = ConfigFile {
            path: dir.join("handover.toml"),
            dir,
        };
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

const RAW: &str = "prelude_bytes = 6\nprelude_settle_ms = 100\n";
const HEALTH: &str = "[health]\ninterval_ms = 100\ntimeout_ms = 200\nrise = 1\nfall = 1\n";

/// A raw listener `main` whose pool is `backends`, each defined as a `[[backend]]`.
fn raw_config(backends: &[(&str, &EchoBackend)], listener_extra: &str, sections: &str) -> String {
    let list: Vec<(&str, String)> = backends
        .iter()
        .map(|(n, b)| (*n, b.addr.to_string()))
        .collect();
    proxy::config(
        "raw",
        &list,
        &format!("{RAW}{listener_extra}"),
        &format!("{HEALTH}{sections}"),
    )
}

fn reload(running: &Running) -> ReloadReport {
    running.engine.reload().expect("the reload is applied")
}

fn metric(running: &Running, series: &str) -> Option<f64> {
    running
        .engine
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_backend_takes_a_drain_at_once() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let file = ConfigFile::new("add", &raw_config(&[("a", &a)], "", ""));
    let running = proxy::start_file(&file.path).await;
    let engine = running.engine.clone();
    let client = Streamer::start(running.listener("main")).await;
    wait_for("the client on a", || a.received().len() > 200).await;

    file.write(&raw_config(&[("a", &a), ("b", &b)], "", ""));
    let report = reload(&running);
    assert_eq!(report.backends_added, ["b"], "{report:?}");
    assert!(report.backends_changed.is_empty() && report.backends_removed.is_empty());
    assert!(
        report.settings_changed == ["listener.main.backends"],
        "{report:?}"
    );
    let view = engine.backend("b").expect("b is in GET /backends");
    assert_eq!(
        (view.state.as_str(), view.pools.as_slice()),
        ("active", &["main".to_string()][..])
    );

    let finished = engine.drain_wait("a").await.unwrap();
    assert_eq!((finished.migrated, finished.failed), (1, 0), "{finished:?}");
    assert_eq!(engine.sessions()[0].backend, "b");
    wait_for("data on b", || b.received().len() > PRELUDE.len() + 200).await;
    let sent = client.finish().await;
    wait_for("everything delivered", || {
        a.received().len() + b.received().len() - PRELUDE.len() >= sent.len()
    })
    .await;
    assert_moved_byte_for_byte(&sent, &a.received(), &b.received());
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_is_drained_then_removed_and_no_session_closes() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let both = raw_config(&[("a", &a), ("b", &b)], "", "");
    let file = ConfigFile::new("remove", &both);
    let running = proxy::start_file(&file.path).await;
    let engine = running.engine.clone();
    // Both clients on a: b is drained while they connect.
    engine.drain("b").unwrap();
    let clients = [
        Streamer::tagged(running.listener("main"), "one ").await,
        Streamer::tagged(running.listener("main"), "two ").await,
    ];
    wait_for("both clients on a", || a.data_conns().len() == 2).await;
    engine.undrain("b").unwrap();

    file.write(&raw_config(&[("b", &b)], "", ""));
    let report = reload(&running);
    assert_eq!(report.backends_removing, ["a"], "{report:?}");
    assert!(report.backends_removed.is_empty(), "{report:?}");
    // Out of the pool at once: while it drains it takes no new session.
    let view = engine.backend("a");
    assert!(view.as_ref().is_none_or(|v| v.pools.is_empty()), "{view:?}");

    wait_for("a gone from GET /backends", || {
        engine.backend("a").is_none()
    })
    .await;
    assert!(engine.backends().iter().all(|v| v.name != "a"));
    assert!(engine.sessions().iter().all(|s| s.backend == "b"));
    let metrics = engine.metrics_text();
    assert!(
        metrics.contains(
            "handover_migrations_total{protocol=\"raw\",reason=\"drain\",outcome=\"ok\"} 2"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("backend=\"a\""), "a left the metrics too");

    // Every byte of each client reached a, then b, in order; no socket closed.
    let mut sent = Vec::new();
    for client in clients {
        sent.push(client.finish().await);
    }
    let total: usize = sent.iter().map(Vec::len).sum();
    wait_for("everything delivered", || {
        a.received().len() + b.received().len() - 2 * PRELUDE.len() >= total
    })
    .await;
    let (on_a, on_b) = (a.data_conns(), b.data_conns());
    assert_eq!((on_a.len(), on_b.len()), (2, 2));
    for (s, tag) in sent.iter().zip(["one ", "two "]) {
        // Each client's lines carry its tag; the prelude is the same for both.
        let mine = |r: &&(std::time::Instant, Vec<u8>)| {
            r.1.windows(tag.len()).any(|w| w == tag.as_bytes())
        };
        let first = on_a.iter().find(mine).expect("its start on a");
        let second = on_b.iter().find(mine).expect("its rest on b");
        assert_moved_byte_for_byte(s, &first.1, &second.1);
    }
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_that_cannot_drain_keeps_its_session_and_can_come_back() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let file = ConfigFile::new("comeback", &raw_config(&[("a", &a), ("b", &b)], "", ""));
    let running = proxy::start_file(&file.path).await;
    let engine = running.engine.clone();
    // b is drained by the operator and stays so: a's session has nowhere to go.
    engine.drain("b").unwrap();
    let mut client = TcpStream::connect(running.listener("main")).await.unwrap();
    assert!(echoes(&mut client, "HELLO\none\n").await);

    file.write(&raw_config(&[("b", &b)], "", ""));
    assert_eq!(reload(&running).backends_removing, ["a"]);
    wait_for("a drain that cannot move the session", || {
        metric(
            &running,
            "handover_migrations_total{protocol=\"raw\",reason=\"drain\",outcome=\"aborted\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(engine.backend("a").unwrap().state, "draining");
    assert!(
        echoes(&mut client, "two\n").await,
        "the session stays, working"
    );

    // Back in the file: the removal stops and a takes sessions again.
    file.write(&raw_config(&[("a", &a), ("b", &b)], "", ""));
    assert_eq!(reload(&running).backends_added, ["a"]);
    let view = engine.backend("a").unwrap();
    assert_eq!(
        (view.state.as_str(), view.pools.as_slice()),
        ("active", &["main".to_string()][..])
    );
    assert!(echoes(&mut client, "three\n").await);
    let mut second = TcpStream::connect(running.listener("main")).await.unwrap();
    assert!(echoes(&mut second, "HELLO\nsecond\n").await);
    assert_eq!(
        engine
            .sessions()
            .iter()
            .filter(|s| s.backend == "a")
            .count(),
        2
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_address_is_used_by_new_sessions_and_open_ones_stay() {
    let (a, moved, c) = (
        EchoBackend::start().await,
        EchoBackend::start().await,
        EchoBackend::start().await,
    );
    let file = ConfigFile::new("change", &raw_config(&[("a", &a)], "", ""));
    let running = proxy::start_file(&file.path).await;
    let engine = running.engine.clone();
    let old = Streamer::start(running.listener("main")).await;
    wait_for("the first client on a", || a.received().len() > 100).await;

    // `a` now lives elsewhere, and `c` is defined but in no pool.
    let text = raw_config(&[("a", &moved)], "", "")
        + &format!("[[backend]]\nname = \"c\"\naddress = \"{}\"\n", c.addr);
    file.write(&text);
    let report = reload(&running);
    assert_eq!(report.backends_changed, ["a"], "{report:?}");
    assert_eq!(report.backends_added, ["c"], "{report:?}");
    assert_eq!(engine.backend("a").unwrap().address, moved.addr.to_string());

    let mut new = TcpStream::connect(running.listener("main")).await.unwrap();
    assert!(echoes(&mut new, "HELLO\nnew client\n").await);
    assert_eq!(
        moved.received(),
        b"HELLO\nnew client\n",
        "the new session went to the new address"
    );
    // The open session was not moved or closed: it still streams to the old address.
    let before = a.received().len();
    wait_for("the old session still flowing", || {
        a.received().len() > before + 100
    })
    .await;
    let sent = old.finish().await;
    wait_for("everything on the old address", || {
        a.received().len() >= sent.len()
    })
    .await;
    assert_eq!(a.received(), sent);
    assert_eq!(
        engine
            .sessions()
            .iter()
            .filter(|s| s.migrations > 0)
            .count(),
        0
    );

    // A removed backend without sessions goes at once.
    file.write(&raw_config(&[("a", &moved)], "", ""));
    let report = reload(&running);
    assert_eq!(report.backends_removed, ["c"], "{report:?}");
    assert!(engine.backend("c").is_none());
    running.shutdown(Duration::from_secs(2)).await;
}

/// A self-signed certificate for `localhost`, written as `cert.pem`/`key.pem` in `dir`;
/// returns the certificate's PEM.
fn write_cert(dir: &Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    cert.cert.pem()
}

/// A TLS client that trusts only `cert_pem`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

async fn tls_echoes(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &str) -> bool {
    if tls.write_all(text.as_bytes()).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; text.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf == text.as_bytes()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_clients_and_open_tls_sessions_continue() {
    let a = EchoBackend::start().await;
    let file = ConfigFile::new("tls", "");
    let first = write_cert(&file.dir);
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        file.dir.join("cert.pem").display(),
        file.dir.join("key.pem").display()
    );
    file.write(&raw_config(&[("a", &a)], &tls, ""));
    let running = proxy::start_file(&file.path).await;
    let addr = running.listener("main");
    let mut old = tls_connect(addr, &first)
        .await
        .expect("the first certificate");
    assert!(tls_echoes(&mut old, "HELLO\nbefore\n").await);

    let second = write_cert(&file.dir);
    assert_ne!(first, second);
    let report = reload(&running);
    assert_eq!(report.tls_reloaded, ["main"], "{report:?}");

    let mut new = tls_connect(addr, &second)
        .await
        .expect("a new client gets the new certificate");
    assert!(tls_echoes(&mut new, "HELLO\nnew\n").await);
    assert!(
        tls_connect(addr, &first).await.is_err(),
        "the old certificate is no longer served"
    );
    assert!(
        tls_echoes(&mut old, "after\n").await,
        "the open session continues"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_sessions_counts_the_open_ones_and_applies_to_new_clients() {
    let a = EchoBackend::start().await;
    let file = ConfigFile::new("limit", &raw_config(&[("a", &a)], "", ""));
    let running = proxy::start_file(&file.path).await;
    let addr = running.listener("main");
    let mut open = Vec::new();
    for i in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(echoes(&mut c, &format!("HELLO\n{i}\n")).await);
        open.push(c);
    }
    let refused = "handover_connections_refused_total{listener=\"main\",reason=\"max_sessions\"}";
    assert_eq!(metric(&running, refused), Some(0.0));

    file.write(&raw_config(
        &[("a", &a)],
        "max_sessions = 2\n",
        "[migration]\nmax_concurrent = 4\n",
    ));
    let report = reload(&running);
    assert_eq!(
        report.settings_changed,
        ["listener.main.max_sessions", "migration.max_concurrent"],
        "{report:?}"
    );
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        is_closed(&mut third).await,
        "two are open: the third is refused"
    );
    assert_eq!(metric(&running, refused), Some(1.0));
    for (i, c) in open.iter_mut().enumerate() {
        assert!(
            echoes(c, &format!("still {i}\n")).await,
            "open sessions stay"
        );
    }

    file.write(&raw_config(&[("a", &a)], "max_sessions = 3\n", ""));
    reload(&running);
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        echoes(&mut third, "HELLO\nthird\n").await,
        "room for a third now"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_over_http_and_the_old_one_keeps_serving() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let file = ConfigFile::new("bad", "");
    std::fs::write(file.dir.join("token"), "s3cret\n").unwrap();
    let admin = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        file.dir.join("token").display()
    );
    let good =
        raw_config(&[("a", &a)], "", "").replacen("[admin]\nlisten = \"127.0.0.1:0\"\n", &admin, 1);
    file.write(&good);
    let running = proxy::start_file(&file.path).await;
    let url = format!("http://{}", running.admin);
    let client = AdminClient::new(&url, Some("s3cret".into()));
    let mut open = TcpStream::connect(running.listener("main")).await.unwrap();
    assert!(echoes(&mut open, "HELLO\nbefore\n").await);

    let refusal = |e: ClientError| match e {
        ClientError::Refused { status, message } => (status, message),
        other => panic!("not a refusal: {other}"),
    };
    // No token: 401, and nothing was read.
    let (status, _) = refusal(AdminClient::new(&url, None).reload().await.unwrap_err());
    assert_eq!(status, 401);

    // A bad address and a new backend in one file: refused whole, naming file, key, problem.
    let with_b = raw_config(&[("a", &a), ("b", &b)], "", "").replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &admin,
        1,
    );
    file.write(&with_b.replace(&a.addr.to_string(), "nowhere"));
    let (status, message) = refusal(client.reload().await.unwrap_err());
    assert_eq!(status, 422);
    let expected = format!(
        "{}: backend[0].address: `nowhere` is not a host:port address",
        file.path.display()
    );
    assert_eq!(message, expected);
    // `handover check` prints the same sentence, and so does `handover reload` (exit 1).
    let (path, admin_url) = (file.path.clone(), url.clone());
    let (check, cli) = tokio::task::spawn_blocking(move || {
        let bin = env!("CARGO_BIN_EXE_handover");
        let check = Command::new(bin)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let cli = Command::new(bin)
            .args(["reload", "--admin", &admin_url])
            .env("HANDOVER_ADMIN_TOKEN", "s3cret")
            .output()
            .unwrap();
        (check, cli)
    })
    .await
    .unwrap();
    for out in [&check, &cli] {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&expected), "{err}");
    }

    // A listener moved: refused too, as needing a restart.
    file.write(&good.replacen(
        "listen = \"127.0.0.1:0\"\nprotocol",
        "listen = \"127.0.0.1:1\"\nprotocol",
        1,
    ));
    let (status, message) = refusal(client.reload().await.unwrap_err());
    assert_eq!(status, 422);
    assert!(
        message.contains("listener[0].listen") && message.contains("needs a restart"),
        "{message}"
    );

    // The old config keeps serving: no b, the open session and new ones work.
    let engine = &running.engine;
    assert!(engine.backend("b").is_none());
    assert!(echoes(&mut open, "after\n").await);
    let mut new = TcpStream::connect(running.listener("main")).await.unwrap();
    assert!(echoes(&mut new, "HELLO\nnew\n").await);
    assert_eq!(
        metric(&running, "handover_reloads_total{outcome=\"failed\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&running, "handover_reloads_total{outcome=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&running, "handover_config_last_reload_successful"),
        Some(0.0)
    );
    let loaded_at = metric(
        &running,
        "handover_config_last_reload_success_timestamp_seconds",
    );
    assert!(loaded_at.is_some_and(|t| t > 1.7e9), "{loaded_at:?}");

    // Fixed: applied, and a rotated token takes over.
    std::fs::write(file.dir.join("token"), "n3w\n").unwrap();
    file.write(&with_b);
    let report = client.reload().await.expect("the fixed file is applied");
    assert_eq!(report.backends_added, ["b"], "{report:?}");
    assert!(
        report.settings_changed.contains(&"admin.token".to_string()),
        "{report:?}"
    );
    assert_eq!(
        metric(&running, "handover_reloads_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&running, "handover_config_last_reload_successful"),
        Some(1.0)
    );
    let (status, _) = refusal(client.backends().await.unwrap_err());
    assert_eq!(status, 401, "the old token no longer works");
    let views = AdminClient::new(&url, Some("n3w".into()))
        .backends()
        .await
        .unwrap();
    assert_eq!(views.len(), 2);
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_from_flags_has_nothing_to_reload() {
    let a = EchoBackend::start().await;
    let config = handover::config::Config::from_flags(
        "raw",
        "127.0.0.1:0",
        &[("a".into(), a.addr.to_string())],
        Some("127.0.0.1:0"),
        false,
    )
    .unwrap();
    let running = handover::app::start(config).await.unwrap();
    let err = running.engine.reload().unwrap_err();
    assert!(matches!(err, ControlError::Conflict(_)), "{err:?}");
    assert_eq!(
        metric(&running, "handover_reloads_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// The real binary: its stderr lines arrive on a channel, so the test can wait for one
/// with a deadline.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Binary {
    fn start(config: &Path) -> Binary {
        let (child, lines) = binary::spawn(&["serve", "--config", config.to_str().unwrap()]);
        Binary { child, lines }
    }

    /// The next line containing `needle`, within 15 s.
    fn line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?} within 15 s");
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blocking_echo(sock: &mut std::net::TcpStream, text: &str) -> bool {
    let mut buf = vec![0u8; text.len()];
    sock.write_all(text.as_bytes()).is_ok()
        && sock.read_exact(&mut buf).is_ok()
        && buf == text.as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_binary_and_refuses_a_bad_file() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let file = ConfigFile::new("sighup", &raw_config(&[("a", &a)], "", ""));
    let path = file.path.clone();
    let a_text = raw_config(&[("a", &a)], "", "");
    let b_text = raw_config(&[("b", &b)], "", "");
    let a_addr = a.addr.to_string();
    tokio::task::spawn_blocking(move || {
        let proxy = Binary::start(&path);
        let line = proxy.line("listener=main");
        let at = line.find("address=").unwrap() + "address=".len();
        let addr: std::net::SocketAddr = line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(blocking_echo(&mut client, "HELLO\none\n"));

        // A bad file: refused, logged with file/key/problem, and the proxy keeps serving.
        std::fs::write(&path, a_text.replace(&a_addr, "nowhere")).unwrap();
        proxy.hup();
        let refused = proxy.line("config reload refused");
        assert!(
            refused.contains(&format!("{}: backend[0].address:", path.display())),
            "{refused}"
        );
        assert!(blocking_echo(&mut client, "two\n"));

        // a replaced by b: the session moves to b, the client keeps its socket.
        std::fs::write(&path, &b_text).unwrap();
        proxy.hup();
        let reloaded = proxy.line("config reloaded");
        assert!(reloaded.contains("backends added: b"), "{reloaded}");
        assert!(
            reloaded.contains("backends draining for removal: a"),
            "{reloaded}"
        );
        proxy.line("backend removed");
        assert!(blocking_echo(&mut client, "three\n"));
    })
    .await
    .unwrap();
    assert_eq!(
        b.received(),
        b"HELLO\nthree\n",
        "b got the replayed prelude, then the rest"
    );
    assert_eq!(a.received(), b"HELLO\none\ntwo\n");
}
