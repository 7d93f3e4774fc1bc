//! The admin server over real HTTP on loopback, against an in-memory [`FakeControl`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::header::WWW_AUTHENTICATE;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::api::*;
use super::*;

/// An in-memory engine: backends `irc-a` (one session, `s1`) and `irc-b` (empty).
pub(crate) struct FakeControl {
    state: Mutex<FakeState>,
}

struct FakeState {
    backends: BTreeMap<String, BackendView>,
    sessions: Vec<SessionView>,
    /// Reloads so far: the first one applies, later ones find a bad file.
    reloads: u32,
}

impl FakeControl {
    pub(crate) fn new() -> Self {
        let backend = |name: &str, port: u16, sessions| BackendView {
            name: name.into(),
            address: format!("127.0.0.1:{port}"),
            state: "active".into(),
            sessions,
            pools: vec!["irc".into()],
        };
        let session = SessionView {
            id: "s1".into(),
            listener: "irc".into(),
            protocol: "irc".into(),
            client: "192.0.2.7:50000".into(),
            backend: "irc-a".into(),
            identity: Some("alice".into()),
            since: "2026-01-02T03:04:05Z".into(),
            migrations: 0,
        };
        let backends = [backend("irc-a", 6668, 1), backend("irc-b", 6669, 0)]
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        FakeControl {
            state: Mutex::new(FakeState {
                backends,
                sessions: vec![session],
                reloads: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, name: &str, state: &str) -> Result<BackendView, ControlError> {
        let mut s = self.lock();
        let b = s.backends.get_mut(name).ok_or_else(|| not_found(name))?;
        b.state = state.into();
        Ok(b.clone())
    }
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("no backend is named `{name}`"))
}

impl ControlApi for FakeControl {
    fn backends(&self) -> Vec<BackendView> {
        self.lock().backends.values().cloned().collect()
    }

    fn backend(&self, name: &str) -> Option<BackendView> {
        self.lock().backends.get(name).cloned()
    }

    fn put_backend(&self, name: &str, body: PutBackend) -> Result<bool, ControlError> {
        if !body.address.contains(':') {
            return Err(ControlError::BadRequest(format!(
                "`{}` is not a host:port address",
                body.address
            )));
        }
        let mut s = self.lock();
        let created = !s.backends.contains_key(name);
        let entry = s.backends.entry(name.into()).or_insert(BackendView {
            name: name.into(),
            address: String::new(),
            state: "active".into(),
            sessions: 0,
            pools: vec![],
        });
        entry.address = body.address;
        if let Some(pools) = body.pools {
            entry.pools = pools;
        }
        Ok(created)
    }

    fn delete_backend(&self, name: &str) -> Result<(), ControlError> {
        let mut s = self.lock();
        let b = s.backends.get(name).ok_or_else(|| not_found(name))?;
        if b.sessions > 0 {
            return Err(ControlError::Conflict(format!(
                "backend `{name}` still has {} sessions",
                b.sessions
            )));
        }
        s.backends.remove(name);
        Ok(())
    }

    fn drain(&self, name: &str) -> Result<DrainStarted, ControlError> {
        let b = self.set_state(name, "draining")?;
        Ok(DrainStarted {
            backend: b.name,
            state: b.state,
            sessions: b.sessions,
        })
    }

    fn drain_wait(&self, name: &str) -> BoxFuture<'_, Result<DrainFinished, ControlError>> {
        let result = self.set_state(name, "drained").map(|b| DrainFinished {
            backend: b.name,
            state: b.state,
            migrated: b.sessions as u64,
            failed: 0,
        });
        Box::pin(async move { result })
    }

    fn undrain(&self, name: &str) -> Result<BackendView, ControlError> {
        self.set_state(name, "active")
    }

    fn sessions(&self) -> Vec<SessionView> {
        self.lock().sessions.clone()
    }

    fn migrate(
        &self,
        id: &str,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<MigrateReply, ControlError>> {
        let result = self.migrate_now(id, to);
        Box::pin(async move { result })
    }

    fn metrics_text(&self) -> String {
        "# TYPE handover_sessions gauge\nhandover_sessions{listener=\"irc\",backend=\"irc-a\"} 1\n"
            .into()
    }

    fn reload(&self) -> Result<ReloadReport, ControlError> {
        let mut s = self.lock();
        s.reloads += 1;
        if s.reloads > 1 {
            return Err(ControlError::Invalid(
                "t.toml: backend[0].address: `x` is not a host:port address".into(),
            ));
        }
        Ok(ReloadReport {
            backends_added: vec!["irc-c".into()],
            ..ReloadReport::default()
        })
    }
}

impl FakeControl {
    fn migrate_now(&self, id: &str, to: Option<String>) -> Result<MigrateReply, ControlError> {
        let mut s = self.lock();
        let to = to.unwrap_or_else(|| "irc-b".into());
        if !s.backends.contains_key(&to) {
            return Err(not_found(&to));
        }
        let session = s
            .sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no session has id `{id}`")))?;
        if to == session.backend {
            return Err(ControlError::Conflict(format!(
                "session `{id}` is already on `{to}`"
            )));
        }
        let from = std::mem::replace(&mut session.backend, to.clone());
        session.migrations += 1;
        Ok(MigrateReply {
            id: id.into(),
            from,
            to,
            outcome: "ok".into(),
            reason: None,
        })
    }
}

/// A running admin server on 127.0.0.1:0.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub(crate) async fn start(token: Option<&str>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let control = Arc::new(FakeControl::new());
        let task = tokio::spawn(serve(
            listener,
            control,
            token.map(String::from),
            shutdown.clone(),
        ));
        TestServer {
            addr,
            shutdown,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts the status and that the body is exactly `{"error": "<sentence>"}`.
    fn assert_error(&self, status: u16) -> String {
        let start: String = self.body.chars().take(200).collect();
        assert_eq!(self.status.as_u16(), status, "{start}");
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "{}", self.body);
        let msg = obj["error"]
            .as_str()
            .expect("error is a string")
            .to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg}");
        msg
    }
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, None, "").await
}

/// Sends raw bytes and reads the answer until the server closes.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn healthz_is_open_even_with_a_token() {
    let srv = TestServer::start(Some("s3cret")).await;
    let a = get(srv.addr, "/healthz").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "ok");
    call(srv.addr, "POST", "/healthz", None, "")
        .await
        .assert_error(405);
    srv.stop().await;
}

#[tokio::test]
async fn reload_needs_the_token_and_answers_what_changed_or_422() {
    let srv = TestServer::start(Some("s3cret")).await;
    call(srv.addr, "POST", "/reload", None, "")
        .await
        .assert_error(401);
    let a = call(srv.addr, "POST", "/reload", Some("s3cret"), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["backends_added"], json!(["irc-c"]));
    let msg = call(srv.addr, "POST", "/reload", Some("s3cret"), "")
        .await
        .assert_error(422);
    assert!(msg.starts_with("t.toml: backend[0].address: "), "{msg}");
    let a = call(srv.addr, "GET", "/reload", Some("s3cret"), "").await;
    a.assert_error(405);
    assert_eq!(a.headers[ALLOW], "POST");
    srv.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let srv = TestServer::start(None).await;
    let a = get(srv.addr, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[CONTENT_TYPE], "text/plain; version=0.0.4");
    assert!(a.body.contains("handover_sessions{"), "{}", a.body);
    srv.stop().await;
}

#[tokio::test]
async fn backends_list_and_one() {
    let srv = TestServer::start(None).await;
    let a = get(srv.addr, "/backends").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers[CONTENT_TYPE], "application/json");
    let list = a.json();
    let first = &list.as_array().unwrap()[0];
    for key in ["name", "address", "state", "sessions"] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["state"], "active");
    let one = get(srv.addr, "/backends/irc-b").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["address"], "127.0.0.1:6669");
    let msg = get(srv.addr, "/backends/nope").await.assert_error(404);
    assert!(msg.contains("nope"), "{msg}");
    srv.stop().await;
}

#[tokio::test]
async fn put_creates_then_changes() {
    let srv = TestServer::start(None).await;
    let body = r#"{"address":"127.0.0.1:7000","pools":["irc"]}"#;
    let a = call(srv.addr, "PUT", "/backends/irc-c", None, body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.json()["address"], "127.0.0.1:7000");
    let body = r#"{"address":"127.0.0.1:7001"}"#;
    let a = call(srv.addr, "PUT", "/backends/irc-c", None, body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["address"], "127.0.0.1:7001");
    assert_eq!(a.json()["pools"], json!(["irc"]));
    srv.stop().await;
}

#[tokio::test]
async fn put_rejects_bad_bodies() {
    let srv = TestServer::start(None).await;
    for body in [
        "",
        "{",
        "[]",
        r#"{"address":"a:1","bogus":1}"#,
        r#"{"pools":[]}"#,
    ] {
        let a = call(srv.addr, "PUT", "/backends/x", None, body).await;
        a.assert_error(400);
    }
    // The engine's own refusal comes through as 400 too.
    let a = call(
        srv.addr,
        "PUT",
        "/backends/x",
        None,
        r#"{"address":"nope"}"#,
    )
    .await;
    assert!(a.assert_error(400).contains("nope"));
    srv.stop().await;
}

#[tokio::test]
async fn delete_answers_204_409_404() {
    let srv = TestServer::start(None).await;
    let a = call(srv.addr, "DELETE", "/backends/irc-b", None, "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.body.is_empty());
    get(srv.addr, "/backends/irc-b").await.assert_error(404);
    let msg = call(srv.addr, "DELETE", "/backends/irc-a", None, "")
        .await
        .assert_error(409);
    assert!(msg.contains("sessions"), "{msg}");
    call(srv.addr, "DELETE", "/backends/irc-b", None, "")
        .await
        .assert_error(404);
    srv.stop().await;
}

#[tokio::test]
async fn drain_starts_or_waits() {
    let srv = TestServer::start(None).await;
    let a = call(srv.addr, "POST", "/backends/irc-a/drain", None, "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(keys(&a.json()), ["backend", "sessions", "state"]);
    assert_eq!(a.json()["state"], "draining");
    let a = call(
        srv.addr,
        "POST",
        "/backends/irc-a/drain?wait=true",
        None,
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        json!({"backend":"irc-a","state":"drained","migrated":1,"failed":0})
    );
    let a = call(
        srv.addr,
        "POST",
        "/backends/irc-b/drain?wait=false",
        None,
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    call(
        srv.addr,
        "POST",
        "/backends/irc-a/drain?wait=soon",
        None,
        "",
    )
    .await
    .assert_error(400);
    call(srv.addr, "POST", "/backends/nope/drain", None, "")
        .await
        .assert_error(404);
    call(srv.addr, "POST", "/backends/nope/drain?wait=true", None, "")
        .await
        .assert_error(404);
    srv.stop().await;
}

#[tokio::test]
async fn undrain_returns_the_backend() {
    let srv = TestServer::start(None).await;
    call(srv.addr, "POST", "/backends/irc-a/drain", None, "").await;
    let a = call(srv.addr, "POST", "/backends/irc-a/undrain", None, "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["name"], "irc-a");
    assert_eq!(a.json()["state"], "active");
    call(srv.addr, "POST", "/backends/nope/undrain", None, "")
        .await
        .assert_error(404);
    srv.stop().await;
}

#[tokio::test]
async fn sessions_list_shape() {
    let srv = TestServer::start(None).await;
    let a = get(srv.addr, "/sessions").await;
    assert_eq!(a.status, StatusCode::OK);
    let first = a.json()[0].clone();
    assert_eq!(
        keys(&first),
        [
            "backend",
            "client",
            "id",
            "identity",
            "listener",
            "migrations",
            "protocol",
            "since"
        ]
    );
    assert_eq!(first["identity"], "alice");
    srv.stop().await;
}

#[tokio::test]
async fn migrate_with_and_without_a_target() {
    let srv = TestServer::start(None).await;
    let a = call(srv.addr, "POST", "/sessions/s1/migrate", None, "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"id":"s1","from":"irc-a","to":"irc-b","outcome":"ok"})
    );
    let a = call(
        srv.addr,
        "POST",
        "/sessions/s1/migrate",
        None,
        r#"{"to":"irc-a"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json()["to"], "irc-a");
    call(
        srv.addr,
        "POST",
        "/sessions/s1/migrate",
        None,
        r#"{"to":"irc-a"}"#,
    )
    .await
    .assert_error(409);
    call(srv.addr, "POST", "/sessions/zz/migrate", None, "")
        .await
        .assert_error(404);
    call(
        srv.addr,
        "POST",
        "/sessions/s1/migrate",
        None,
        r#"{"to":1}"#,
    )
    .await
    .assert_error(400);
    srv.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let srv = TestServer::start(None).await;
    for path in [
        "/",
        "/nope",
        "/backends/",
        "/backends/a/b/c",
        "/sessions/s1",
        "//x",
    ] {
        get(srv.addr, path).await.assert_error(404);
    }
    let a = call(srv.addr, "DELETE", "/sessions", None, "").await;
    a.assert_error(405);
    assert_eq!(a.headers[ALLOW], "GET");
    let a = call(srv.addr, "POST", "/backends/irc-a", None, "").await;
    a.assert_error(405);
    assert_eq!(a.headers[ALLOW], "GET, PUT, DELETE");
    let a = get(srv.addr, "/backends/irc-a/drain").await;
    a.assert_error(405);
    assert_eq!(a.headers[ALLOW], "POST");
    call(srv.addr, "GET", "/sessions/s1/migrate", None, "")
        .await
        .assert_error(405);
    srv.stop().await;
}

#[tokio::test]
async fn token_is_required_and_checked() {
    let srv = TestServer::start(Some("s3cret")).await;
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/backends"),
        ("GET", "/sessions"),
        ("POST", "/backends/irc-a/drain"),
        ("GET", "/no-such-path"),
    ] {
        let a = call(srv.addr, method, path, None, "").await;
        assert!(a.assert_error(401).contains("Bearer"));
        assert_eq!(a.headers[WWW_AUTHENTICATE], "Bearer");
        let a = call(srv.addr, method, path, Some("s3cre"), "").await;
        assert!(a.assert_error(401).contains("wrong"));
        call(srv.addr, method, path, Some("s3cretX"), "")
            .await
            .assert_error(401);
    }
    let a = call(srv.addr, "GET", "/backends", Some("s3cret"), "").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(srv.addr, "GET", "/nope", Some("s3cret"), "").await;
    a.assert_error(404);
    let basic = raw(
        srv.addr,
        b"GET /backends HTTP/1.1\r\nHost: a\r\nAuthorization: Basic czNjcmV0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");
    let lower = raw(
        srv.addr,
        b"GET /backends HTTP/1.1\r\nHost: a\r\nAuthorization: bearer s3cret\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(lower.starts_with("HTTP/1.1 200"), "{lower}");
    srv.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let srv = TestServer::start(None).await;
    // Declared too large: refused before it is read.
    let head = format!(
        "PUT /backends/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    let answer = raw(srv.addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    // Chunked, so only reading finds out.
    let chunk = "x".repeat(MAX_BODY_BYTES / 2 + 1);
    let request = format!(
        "POST /sessions/s1/migrate HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let answer = raw(srv.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Just under the limit is read and judged on its content.
    let body = format!("{{\"to\":\"{}\"}}", "b".repeat(MAX_BODY_BYTES - 20));
    let a = call(srv.addr, "POST", "/sessions/s1/migrate", None, &body).await;
    a.assert_error(404);
    srv.stop().await;
}

#[tokio::test]
async fn long_urls_are_414() {
    let srv = TestServer::start(None).await;
    let path = format!("/backends/{}", "a".repeat(MAX_URL_BYTES));
    get(srv.addr, &path).await.assert_error(414);
    let path = format!("/backends/{}", "a".repeat(MAX_URL_BYTES - 20));
    get(srv.addr, &path).await.assert_error(404);
    srv.stop().await;
}

#[tokio::test]
async fn garbage_does_not_hurt_the_server() {
    let srv = TestServer::start(None).await;
    for junk in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /backends/%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /backends/%ff HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"PUT /backends/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = raw(srv.addr, junk).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    assert_eq!(get(srv.addr, "/healthz").await.status, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn percent_encoded_names_are_decoded() {
    let srv = TestServer::start(None).await;
    let a = get(srv.addr, "/backends/irc%2Db").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["name"], "irc-b");
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_lets_serve_return_with_idle_connections_open() {
    let srv = TestServer::start(None).await;
    let idle = TcpStream::connect(srv.addr).await.unwrap();
    srv.stop().await;
    drop(idle);
}

#[test]
fn constant_time_eq_matches_eq() {
    for (a, b) in [
        ("", ""),
        ("a", ""),
        ("", "a"),
        ("abc", "abc"),
        ("abc", "abd"),
        ("ab", "abc"),
        ("abcd", "abc"),
    ] {
        assert_eq!(
            constant_time_eq(a.as_bytes(), b.as_bytes()),
            a == b,
            "{a:?} {b:?}"
        );
    }
    // A guess padded with what `!e` would produce must not match.
    assert!(!constant_time_eq(&[0xff], &[]));
}

#[test]
fn routes_parse() {
    assert_eq!(
        Route::parse("/backends/a%20b"),
        Some(Route::Backend("a b".into()))
    );
    assert_eq!(
        Route::parse("/sessions/x/migrate"),
        Some(Route::Migrate("x".into()))
    );
    assert_eq!(Route::parse("/backends/%"), None);
    assert_eq!(Route::parse("/backends/%2"), None);
    assert_eq!(Route::parse("/backends/%C3"), None);
    assert_eq!(
        Route::parse("/backends/%C3%A9"),
        Some(Route::Backend("é".into()))
    );
    assert_eq!(Route::parse("backends"), None);
}

#[test]
fn wait_query() {
    assert!(!wait_requested(None).unwrap());
    assert!(wait_requested(Some("wait=true")).unwrap());
    assert!(wait_requested(Some("x=1&wait=1")).unwrap());
    assert!(wait_requested(Some("wait")).unwrap());
    assert!(!wait_requested(Some("wait=false")).unwrap());
    assert!(wait_requested(Some("wait=yes")).is_err());
}

/// The admin listener is no proxy and no file server: `CONNECT`, absolute-form URIs naming
/// another host, and paths that climb out with `..` (plain or percent-encoded) get an API
/// answer (404/405), never a connection to that host or a file's bytes.
#[tokio::test]
async fn the_admin_api_reaches_no_other_host_and_reads_no_file() {
    let victim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = victim.local_addr().unwrap();
    let srv = TestServer::start(None).await;
    let requests = [
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        format!("GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
        "GET /../../../../etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(),
        "GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(),
        "GET /backends/..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            .into(),
        "GET /metrics/../../etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(),
        "GET file:///etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into(),
    ];
    for request in &requests {
        let answer = raw(srv.addr, request.as_bytes()).await;
        let status = answer.split(' ').nth(1).unwrap_or_default();
        assert!(
            ["400", "404", "405"].contains(&status),
            "{request:?} got {answer:?}"
        );
        assert!(
            !answer.contains("root:"),
            "{request:?} read a file: {answer}"
        );
    }
    let reached = tokio::time::timeout(Duration::from_millis(300), victim.accept()).await;
    assert!(reached.is_err(), "the admin API connected to {target}");
    srv.stop().await;
}
