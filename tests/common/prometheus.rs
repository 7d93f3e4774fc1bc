//! A real Prometheus (Debian's `prometheus` package) on loopback, configured from
//! deploy/prometheus/ with the target and intervals swapped for the test's, and a small
//! client for its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// One sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every `interval` (like "1s") with the shipped
    /// config and rules, and waits (up to 60 s) until it is ready.
    pub async fn start(name: &str, target: SocketAddr, interval: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("handover-prom-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let shipped = std::fs::read_to_string(format!("{DEPLOY}/prometheus.yml")).unwrap();
        let config = shipped
            .replace(
                "scrape_interval: 15s",
                &format!("scrape_interval: {interval}"),
            )
            .replace(
                "evaluation_interval: 15s",
                &format!("evaluation_interval: {interval}"),
            )
            .replace("127.0.0.1:9797", &target.to_string());
        assert!(
            config.contains(&target.to_string()) && config.contains(interval),
            "deploy/prometheus/prometheus.yml no longer has the target or intervals to swap"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::copy(
            format!("{DEPLOY}/handover.rules.yml"),
            dir.join("handover.rules.yml"),
        )
        .unwrap();

        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = match Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run prometheus ({e}): install Debian's `prometheus` package \
                 (scripts/install-test-deps.sh does)"
            ),
        };
        let mut prometheus = Prometheus { addr, child, dir };
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = get(addr, "/-/ready").await {
                break;
            }
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("prometheus not ready after 60 s:\n{}", prometheus.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` member of a successful answer.
    pub async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = get(self.addr, path_and_query)
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        let value: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {status} {e}: {body}"));
        assert_eq!(value["status"], "success", "GET {path_and_query}: {body}");
        value["data"].clone()
    }

    /// An instant query, as (labels, value) samples.
    pub async fn query(&self, promql: &str) -> Vec<Sample> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await;
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: not a vector: {data}"))
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The single value of `promql`, or None when it returns no sample.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let samples = self.query(promql).await;
        assert!(samples.len() <= 1, "{promql}: {samples:?}");
        samples.first().map(|(_, v)| *v)
    }

    /// Polls `promql` (up to `limit`) until its single value satisfies `ok`; returns it.
    pub async fn wait_for(
        &self,
        promql: &str,
        limit: Duration,
        ok: impl Fn(Option<f64>) -> bool,
    ) -> Option<f64> {
        let started = Instant::now();
        loop {
            let v = self.value(promql).await;
            if ok(v) {
                return v;
            }
            if started.elapsed() > limit {
                panic!("{promql} is still {v:?} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A range query's raw `result` (a matrix).
    pub async fn query_range(&self, promql: &str, start: f64, end: f64, step: f64) -> Value {
        let data = self
            .api(&format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                encode(promql)
            ))
            .await;
        data["result"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bare HTTP/1.0 GET: (status, body).
pub async fn get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply))
        .await
        .map_err(|_| std::io::Error::other("no answer in 30 s"))??;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
