//! Prometheus for real: Debian's `prometheus` scrapes handover's admin /metrics with the config
//! and alert rules shipped in deploy/prometheus/, a drain moves sessions, and Prometheus' own
//! HTTP API shows the migrations counted and the sessions moved. promtool checks and unit-tests
//! the shipped files.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fake::EchoBackend;
use common::prometheus::{Prometheus, DEPLOY};
use common::proxy;
use handover::admin::api::ControlApi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(60);

fn promtool(args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(DEPLOY)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run promtool ({e}): install Debian's `prometheus` package \
             (scripts/install-test-deps.sh does)"
        ),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    let said = promtool(&["check", "config", "prometheus.yml"]);
    assert!(said.contains("1 rule files found"), "{said}");
    let said = promtool(&["check", "rules", "handover.rules.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    // Every alert fires on its failure and stays quiet through a normal drain.
    let said = promtool(&["test", "rules", "handover.rules.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

/// A raw client that sends a prelude and then a line every 50 ms, reading the echoes.
pub struct Client {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    pub async fn start(addr: std::net::SocketAddr) -> Self {
        let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(b"HELLO\n").await.unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                if wr
                    .write_all(format!("line {n}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        });
        Self {
            stop,
            tasks: vec![writer, reader],
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn raw_config(backends: &[(&str, String)]) -> String {
    proxy::config(
        "raw",
        backends,
        "prelude_bytes = 6\nprelude_settle_ms = 100\n",
        "[health]\ninterval_ms = 200\ntimeout_ms = 200\nrise = 1\nfall = 1\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_drain_move_every_session() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let running = proxy::start(&raw_config(&[
        ("a", a.addr.to_string()),
        ("b", b.addr.to_string()),
    ]))
    .await;
    let engine = running.engine.clone();
    // Three clients on a: b takes no new sessions while they connect.
    engine.drain("b").unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::start(running.listener("main")).await);
    }
    wait_until("3 sessions on a", || {
        engine.backend("a").unwrap().sessions == 3
    })
    .await;
    engine.undrain("b").unwrap();

    let prom = Prometheus::start("drain", running.admin, "1s").await;
    let target = prom
        .wait_for(r#"up{job="handover"}"#, LIMIT, |v| v == Some(1.0))
        .await;
    assert_eq!(target, Some(1.0), "{}", prom.log());
    prom.wait_for(
        r#"handover_sessions{listener="main",backend="a"}"#,
        LIMIT,
        |v| v == Some(3.0),
    )
    .await;
    assert_eq!(
        prom.value(r#"handover_sessions{backend="b"}"#).await,
        Some(0.0)
    );
    // The migration series exist at zero before the first migration.
    assert_eq!(
        prom.value(r#"sum(handover_migrations_total{protocol="raw"})"#)
            .await,
        Some(0.0)
    );
    assert_eq!(
        prom.query(r#"handover_migrations_total{protocol="raw"}"#)
            .await
            .len(),
        4 * 3,
        "every reason x outcome"
    );
    // A few scrapes at zero, so rate() has a before.
    tokio::time::sleep(Duration::from_secs(3)).await;

    engine.drain("a").unwrap();
    let finished = engine.drain_wait("a").await.unwrap();
    assert_eq!((finished.migrated, finished.failed), (3, 0), "{finished:?}");

    let ok = r#"handover_migrations_total{protocol="raw",reason="drain",outcome="ok"}"#;
    prom.wait_for(ok, LIMIT, |v| v == Some(3.0)).await;
    prom.wait_for(
        r#"handover_sessions{listener="main",backend="a"}"#,
        LIMIT,
        |v| v == Some(0.0),
    )
    .await;
    assert_eq!(
        prom.value(r#"handover_sessions{listener="main",backend="b"}"#)
            .await,
        Some(3.0)
    );
    assert_eq!(
        prom.value(r#"handover_backend_state{backend="a",state="drained"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        prom.value(r#"sum(handover_migrations_total{outcome!="ok"})"#)
            .await,
        Some(0.0)
    );
    // What the dashboard and the alerts compute: increase() sees the drain (the series
    // existed at zero before), and the duration quantile is a real number of seconds.
    let increase = prom
        .wait_for(&format!("sum(increase({ok}[1m]))"), LIMIT, |v| {
            v.is_some_and(|v| v > 0.0)
        })
        .await;
    assert!(increase.unwrap() >= 1.0, "{increase:?}");
    let p50 = prom
        .wait_for(
            "histogram_quantile(0.5, sum by (le) \
             (rate(handover_migration_duration_seconds_bucket[1m])))",
            LIMIT,
            |v| v.is_some_and(f64::is_finite),
        )
        .await
        .unwrap();
    assert!(p50 > 0.0 && p50 <= 60.0, "{p50}");
    let bytes = prom
        .value(r#"handover_bytes_total{direction="client_to_backend"}"#)
        .await
        .unwrap();
    assert!(bytes > 0.0, "{bytes}");

    // The shipped rules loaded and evaluate without error against real series.
    let started = std::time::Instant::now();
    loop {
        let rules = prom.api("/api/v1/rules").await;
        let all: Vec<_> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert_eq!(all.len(), 8, "{rules}");
        if all.iter().all(|r| r["health"] == "ok") {
            // Nothing is wrong in this run, so nothing fires.
            let firing: Vec<_> = all
                .iter()
                .filter(|r| r["state"] != "inactive")
                .map(|r| r["name"].clone())
                .collect();
            assert!(firing.is_empty(), "{firing:?}");
            break;
        }
        assert!(started.elapsed() < LIMIT, "rules not healthy: {rules}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every query of the Grafana dashboard runs on this data; the panels that a drain
    // feeds show something.
    for (title, expr, _) in dashboard_queries() {
        let samples = prom.query(&instant(&expr, "1m")).await;
        let must_show = [
            "Sessions per backend",
            "Backend state",
            "Migrations by outcome",
            "Migration duration",
            "Client pause",
            "Bytes forwarded",
        ];
        if must_show.contains(&title.as_str()) {
            assert!(!samples.is_empty(), "panel {title:?} is empty: {expr}");
        }
    }
    drop(clients);
    drop(prom);
    running.shutdown(Duration::from_secs(2)).await;
}

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/handover.json");

/// (panel title, PromQL with Grafana's variables, legend format) for every panel target.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
                target["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    assert!(out.len() >= 6, "{out:?}");
    out
}

/// A dashboard query as Grafana would send it: every instance, `window` for the rate.
fn instant(expr: &str, window: &str) -> String {
    expr.replace("$__rate_interval", window)
        .replace("$instance", ".*")
}

/// Accepts connections and closes them at once: health checks pass, registrations fail.
async fn closing_backend() -> (std::net::SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    (addr, task)
}

/// Not a check: feeds the dashboard a two-minute run (drains, operator moves, aborted moves,
/// a backend killed, clients leaving) and writes every panel's query_range to
/// $HANDOVER_SNAPSHOT_DIR/panels.json for scripts/dashboard-snapshot.sh to draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a dashboard snapshot; run by scripts/dashboard-snapshot.sh"]
async fn dashboard_snapshot() {
    let out_dir = std::path::PathBuf::from(
        std::env::var("HANDOVER_SNAPSHOT_DIR").expect("HANDOVER_SNAPSHOT_DIR"),
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let (a, b, c) = (
        EchoBackend::start().await,
        EchoBackend::start().await,
        EchoBackend::start().await,
    );
    let (d_addr, _d) = closing_backend().await;
    let running = proxy::start(&raw_config(&[
        ("a", a.addr.to_string()),
        ("b", b.addr.to_string()),
        ("c", c.addr.to_string()),
        ("d", d_addr.to_string()),
    ]))
    .await;
    let engine = running.engine.clone();
    engine.drain("d").unwrap();
    let prom = Prometheus::start("snapshot", running.admin, "1s").await;
    let start = now();
    let mut events: Vec<(f64, String)> = Vec::new();
    let mut event = |what: &str| {
        eprintln!("snapshot: {what}");
        events.push((now(), what.to_string()))
    };
    let sleep = |s: u64| tokio::time::sleep(Duration::from_secs(s));

    sleep(5).await;
    event("12 clients connect");
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(Client::start(running.listener("main")).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sleep(10).await;
    event("drain a");
    engine.drain("a").unwrap();
    engine.drain_wait("a").await.unwrap();
    sleep(10).await;
    event("undrain a; 6 more clients");
    engine.undrain("a").unwrap();
    for _ in 0..6 {
        clients.push(Client::start(running.listener("main")).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sleep(10).await;
    event("drain b");
    engine.drain("b").unwrap();
    engine.drain_wait("b").await.unwrap();
    sleep(8).await;
    event("undrain b; operator moves 3 to b");
    engine.undrain("b").unwrap();
    for s in engine.sessions().iter().take(3) {
        let _ = engine.migrate(&s.id, Some("b".into())).await;
    }
    sleep(8).await;
    event("2 moves to d abort");
    engine.undrain("d").unwrap();
    for s in engine.sessions().iter().take(2) {
        let _ = engine.migrate(&s.id, Some("d".into())).await;
    }
    engine.drain("d").unwrap();
    sleep(8).await;
    event("backend c killed: failover");
    c.kill();
    sleep(12).await;
    event("4 clients leave");
    for _ in 0..4 {
        clients.pop();
    }
    sleep(12).await;
    let end = now();

    let mut panels = Vec::new();
    for (title, expr, legend) in dashboard_queries() {
        let result = prom
            .query_range(&instant(&expr, "5s"), start, end, 1.0)
            .await;
        panels.push(serde_json::json!({
            "title": title, "expr": expr, "legend": legend, "result": result,
        }));
    }
    let snapshot = serde_json::json!({
        "start": start, "end": end, "panels": panels,
        "events": events.iter().map(|(t, w)| serde_json::json!([t, w])).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("panels.json"),
        serde_json::to_string(&snapshot).unwrap(),
    )
    .unwrap();
    eprintln!("snapshot: wrote {}", out_dir.join("panels.json").display());
    drop(clients);
    drop(prom);
    running.shutdown(Duration::from_secs(2)).await;
}
