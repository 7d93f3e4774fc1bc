//! The real binary with `--log-format json`: every stderr line is one JSON object, and a drain
//! leaves one `migration` event that carries the session's id (from its span), the reason,
//! the outcome, both backends and the timings, so an operator can find it by `session.id`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use common::binary;
use common::fake::EchoBackend;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_handover");

struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Proxy {
    /// The next JSON line; panics on a line that is not a JSON object.
    fn next(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line within 30 s");
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        self.seen.push(value.clone());
        value
    }

    /// Reads lines until one whose message is `message` and that `matches`.
    fn until(&mut self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next();
            if v["fields"]["message"] == message && matches(&v) {
                return v;
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(a: SocketAddr, b: SocketAddr) -> Proxy {
    let dir = std::env::temp_dir().join(format!("handover-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("handover.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"raw\"\n\
             backends = [\"a\", \"b\"]\nprelude_bytes = 6\nprelude_settle_ms = 100\n\
             [[backend]]\nname = \"a\"\naddress = \"{a}\"\n\
             [[backend]]\nname = \"b\"\naddress = \"{b}\"\n"
        ),
    )
    .unwrap();
    let (child, lines) = binary::spawn(&[
        "--log-format",
        "json",
        "serve",
        "--config",
        config.to_str().unwrap(),
    ]);
    Proxy {
        child,
        lines,
        seen: Vec::new(),
    }
}

fn address(v: &Value, field: &str) -> SocketAddr {
    v["fields"][field].as_str().unwrap().parse().unwrap()
}

fn cli(admin: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--admin", &format!("http://{admin}")])
        .env_remove("HANDOVER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET on the admin API with a bare HTTP/1.0 request.
fn admin_get(admin: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(admin).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let body = reply.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_logs_one_json_migration_line_with_the_session_id() {
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    let (a_addr, b_addr) = (a.addr, b.addr);
    let result = tokio::task::spawn_blocking(move || {
        let mut proxy = start(a_addr, b_addr);
        let listen = address(
            &proxy.until("listening", |v| v["fields"]["listener"] == "main"),
            "address",
        );
        let admin = address(&proxy.until("admin API listening", |_| true), "addr");

        // Pin the client to a: b takes no new sessions while it connects.
        cli(admin, &["drain", "b"]);
        let mut client = TcpStream::connect(listen).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(b"HELLO\nbefore\n").unwrap();
        let mut echo = [0u8; 13];
        client.read_exact(&mut echo).unwrap();
        cli(admin, &["undrain", "b"]);
        let sessions = admin_get(admin, "/sessions");
        let id = sessions[0]["id"].clone();
        assert_eq!(sessions[0]["backend"], "a", "{sessions}");

        let said = cli(admin, &["drain", "a", "--wait"]);
        assert!(said.contains("1 migrated, 0 failed"), "{said}");
        client.write_all(b"after\n").unwrap();
        let mut echo = [0u8; 6];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"after\n", "the client still talks, now through b");

        let migration = proxy.until("migration", |_| true);
        (id, migration, proxy)
    })
    .await;
    let (id, migration, proxy) = result.unwrap();

    let fields = &migration["fields"];
    assert_eq!(migration["level"], "INFO", "{migration}");
    for (key, want) in [
        ("reason", "drain"),
        ("outcome", "ok"),
        ("from", "a"),
        ("to", "b"),
    ] {
        assert_eq!(fields[key], want, "{key} in {migration}");
    }
    for key in ["duration_ms", "pause_ms", "replayed_bytes"] {
        assert!(fields[key].is_number(), "{key} in {migration}");
    }
    // The session's span carries its id, listener and client address.
    let span = &migration["span"];
    assert_eq!(span["name"], "session", "{migration}");
    // The API's id is a string ("1"), the log field a number (1): the same session.
    assert_eq!(
        span["session.id"].to_string(),
        id.as_str().unwrap(),
        "{migration}"
    );
    assert_eq!(span["listener"], "main", "{migration}");
    assert!(span["client.addr"].is_string(), "{migration}");
    // Exactly one migration line for this one move.
    let migrations = proxy
        .seen
        .iter()
        .filter(|v| v["fields"]["message"] == "migration")
        .count();
    assert_eq!(migrations, 1);
    // The drain's own lines are there too, as JSON.
    assert!(proxy
        .seen
        .iter()
        .any(|v| v["fields"]["message"] == "drain started" && v["fields"]["backend"] == "a"));
}
