//! The admin API client behind `handover status`, `drain`, `undrain`, `migrate` and `reload`, and the
//! table `status` prints. It speaks the same [`super::api`] types as the server, one HTTP/1.1
//! connection per call (the CLI makes one or two calls and exits).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::api::{
    BackendView, DrainFinished, DrainStarted, ErrorBody, MigrateReply, MigrateRequest,
    ReloadReport, SessionView,
};

/// The admin API when `--admin` is not given.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9797";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read; `GET /sessions` with many thousands of sessions stays well under it.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why a call failed, as one sentence for the CLI to print.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an admin API URL like http://127.0.0.1:9797")]
    BadUrl(String),
    #[error("cannot reach the admin API at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    /// The server said no; `message` is its own `error` sentence.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the admin API at {base} sent an answer that cannot be read: {reason}")]
    BadAnswer { base: String, reason: String },
}

/// What `drain` answered: at once (202), or when the drain was over (`wait`, 200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainReply {
    Started(DrainStarted),
    Finished(DrainFinished),
}

/// A client for one admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `http://host:port`, as shown in errors.
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// `base` is `http://host:port` (the scheme may be left out); an empty `token` counts as
    /// none. A URL that cannot be used is kept as given and refused on the first call.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let base = base.trim();
        let base = match base.strip_prefix("http://") {
            Some(rest) => format!("http://{}", rest.trim_end_matches('/')),
            None if base.contains("://") => base.to_string(),
            None => format!("http://{}", base.trim_end_matches('/')),
        };
        AdminClient {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
        }
    }

    /// The normalised base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn backends(&self) -> Result<Vec<BackendView>, ClientError> {
        self.call(Method::GET, "/backends".into(), None).await
    }

    pub async fn sessions(&self) -> Result<Vec<SessionView>, ClientError> {
        self.call(Method::GET, "/sessions".into(), None).await
    }

    /// Starts a drain; with `wait`, answers only when the backend is empty.
    pub async fn drain(&self, name: &str, wait: bool) -> Result<DrainReply, ClientError> {
        let path = format!("/backends/{}/drain", encode(name));
        if wait {
            let path = format!("{path}?wait=true");
            Ok(DrainReply::Finished(
                self.call(Method::POST, path, None).await?,
            ))
        } else {
            Ok(DrainReply::Started(
                self.call(Method::POST, path, None).await?,
            ))
        }
    }

    pub async fn undrain(&self, name: &str) -> Result<BackendView, ClientError> {
        let path = format!("/backends/{}/undrain", encode(name));
        self.call(Method::POST, path, None).await
    }

    /// Moves one session, to `to` or wherever the proxy picks.
    pub async fn migrate(&self, id: &str, to: Option<&str>) -> Result<MigrateReply, ClientError> {
        let path = format!("/sessions/{}/migrate", encode(id));
        let body = MigrateRequest {
            to: to.map(String::from),
        };
        let body = serde_json::to_vec(&body).map_err(|e| self.bad_answer(e))?;
        self.call(Method::POST, path, Some(body)).await
    }

    /// Asks the proxy to read its config file again; what changed, or why it was refused.
    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        self.call(Method::POST, "/reload".into(), None).await
    }

    /// One request on a fresh connection; a non-2xx answer becomes [`ClientError::Refused`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let authority = self.authority()?;
        let stream = self.connect(&authority).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let request = self.request(method, &path, &authority, body)?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| self.bad_answer(e))?
            .to_bytes();
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.bad_answer(e))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        authority: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, authority);
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| ClientError::BadUrl(self.base.clone()))
    }

    async fn connect(&self, authority: &str) -> Result<TcpStream, ClientError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.unreachable(io_reason(&e))),
            Err(_) => Err(self.unreachable("timed out")),
        }
    }

    /// `host:port` from the base, port 80 when none is given; only plain `http` is spoken.
    fn authority(&self) -> Result<String, ClientError> {
        let bad = || ClientError::BadUrl(self.base.clone());
        let rest = self.base.strip_prefix("http://").ok_or_else(bad)?;
        if rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) || rest.contains("://") {
            return Err(bad());
        }
        let has_port = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                port.parse::<u16>().map_err(|_| bad())?;
                !host.is_empty()
            }
            _ => false,
        };
        if has_port {
            Ok(rest.to_string())
        } else {
            Ok(format!("{rest}:80"))
        }
    }

    fn unreachable(&self, reason: impl ToString) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    fn bad_answer(&self, reason: impl ToString) -> ClientError {
        ClientError::BadAnswer {
            base: self.base.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The server's own sentence when it sent one; a hint for the token when it was refused.
fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.error.trim().is_empty() => e.error,
        _ => format!("the admin API answered {status}"),
    };
    let message = if status == StatusCode::UNAUTHORIZED {
        format!("{message} (set HANDOVER_ADMIN_TOKEN to the admin token)")
    } else {
        message
    };
    ClientError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// Short lower-case reasons for the usual connect failures, without the OS error number.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Backends, a blank line, then sessions, each as an aligned table.
pub fn status_table(backends: &[BackendView], sessions: &[SessionView]) -> String {
    let backend_rows = backends
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.address.clone(),
                b.state.clone(),
                b.sessions.to_string(),
            ]
        })
        .collect();
    let session_rows = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.listener.clone(),
                s.backend.clone(),
                s.client.clone(),
                s.identity.clone().unwrap_or_default(),
                s.since.clone(),
                s.migrations.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["NAME", "ADDRESS", "STATE", "SESSIONS"],
        backend_rows,
        "backends",
    );
    out.push('\n');
    out += &table(
        &[
            "ID",
            "LISTENER",
            "BACKEND",
            "CLIENT",
            "IDENTITY",
            "SINCE",
            "MIGRATIONS",
        ],
        session_rows,
        "sessions",
    );
    out
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
fn table(header: &[&str], rows: Vec<Vec<String>>, what: &str) -> String {
    if rows.is_empty() {
        return format!("no {what}\n");
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// A cell as printed: `-` when empty; control characters (a nick could carry terminal escape
/// sequences) and spaces, which would break the columns, become `?` and `_`.
fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| match c {
            ' ' => '_',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::TestServer;
    use super::*;

    fn backend(name: &str, address: &str, state: &str, sessions: usize) -> BackendView {
        BackendView {
            name: name.into(),
            address: address.into(),
            state: state.into(),
            sessions,
            pools: vec![],
        }
    }

    fn session(id: &str, identity: Option<&str>) -> SessionView {
        SessionView {
            id: id.into(),
            listener: "irc".into(),
            protocol: "irc".into(),
            client: "192.0.2.7:50000".into(),
            backend: "irc-a".into(),
            identity: identity.map(String::from),
            since: "2026-01-02T03:04:05Z".into(),
            migrations: 2,
        }
    }

    #[test]
    fn table_is_aligned() {
        let backends = [
            backend("irc-a", "127.0.0.1:6668", "active", 12),
            backend("irc-backup", "10.0.0.2:6667", "draining", 0),
        ];
        let sessions = [session("01J0ABC", Some("alice")), session("01J0ABD", None)];
        let expected = "\
NAME        ADDRESS         STATE     SESSIONS
irc-a       127.0.0.1:6668  active    12
irc-backup  10.0.0.2:6667   draining  0

ID       LISTENER  BACKEND  CLIENT           IDENTITY  SINCE                 MIGRATIONS
01J0ABC  irc       irc-a    192.0.2.7:50000  alice     2026-01-02T03:04:05Z  2
01J0ABD  irc       irc-a    192.0.2.7:50000  -         2026-01-02T03:04:05Z  2
";
        assert_eq!(status_table(&backends, &sessions), expected);
    }

    #[test]
    fn empty_tables_say_so() {
        assert_eq!(status_table(&[], &[]), "no backends\n\nno sessions\n");
    }

    #[test]
    fn hostile_identities_cannot_break_the_table() {
        let sessions = [session("s1", Some("\u{1b}[2Jévil nick"))];
        let out = status_table(&[], &sessions);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("?[2Jévil_nick"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        // Columns line up in characters, not bytes, even with a non-ASCII cell.
        let column = |line: &str, text: &str| line[..line.find(text).unwrap()].chars().count();
        assert_eq!(
            column(lines[2], "SINCE"),
            column(lines[3], "2026-"),
            "{out}"
        );
    }

    #[test]
    fn urls_are_normalised_and_checked() {
        let auth = |base: &str| AdminClient::new(base, None).authority();
        assert_eq!(auth("http://127.0.0.1:9797").unwrap(), "127.0.0.1:9797");
        assert_eq!(auth("127.0.0.1:9797/").unwrap(), "127.0.0.1:9797");
        assert_eq!(auth("http://admin.example").unwrap(), "admin.example:80");
        assert_eq!(auth("http://[::1]:9797").unwrap(), "[::1]:9797");
        assert_eq!(auth("http://[::1]").unwrap(), "[::1]:80");
        for bad in [
            "https://a:1",
            "http://",
            "http://a:1/x",
            "http://a:99999",
            "ftp://a",
        ] {
            assert!(matches!(auth(bad), Err(ClientError::BadUrl(_))), "{bad}");
        }
        assert_eq!(AdminClient::new("h:1", None).base(), "http://h:1");
        let err = auth("https://h:1").unwrap_err().to_string();
        assert_eq!(
            err,
            "`https://h:1` is not an admin API URL like http://127.0.0.1:9797"
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode("irc-a.b_c~"), "irc-a.b_c~");
        assert_eq!(encode("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[tokio::test]
    async fn calls_round_trip() {
        let srv = TestServer::start(None).await;
        let client = AdminClient::new(&srv.addr.to_string(), None);
        assert_eq!(client.backends().await.unwrap().len(), 2);
        assert_eq!(client.sessions().await.unwrap()[0].id, "s1");
        let started = client.drain("irc-a", false).await.unwrap();
        assert!(matches!(started, DrainReply::Started(ref s) if s.state == "draining"));
        let finished = client.drain("irc-a", true).await.unwrap();
        assert!(matches!(finished, DrainReply::Finished(ref f) if f.migrated == 1));
        assert_eq!(client.undrain("irc-a").await.unwrap().state, "active");
        let moved = client.migrate("s1", Some("irc-b")).await.unwrap();
        assert_eq!((moved.from.as_str(), moved.to.as_str()), ("irc-a", "irc-b"));
        let moved = client.migrate("s1", None).await.unwrap_err();
        assert!(matches!(moved, ClientError::Refused { status: 409, .. }));
        srv.stop().await;
    }

    #[tokio::test]
    async fn server_sentences_come_through() {
        let srv = TestServer::start(Some("t0k")).await;
        let client = AdminClient::new(&srv.addr.to_string(), Some("t0k".into()));
        let err = client.undrain("nope").await.unwrap_err();
        assert_eq!(err.to_string(), "no backend is named `nope`");
        let err = client.migrate("a b", None).await.unwrap_err();
        assert_eq!(err.to_string(), "no session has id `a b`");
        let wrong = AdminClient::new(&srv.addr.to_string(), Some("nope".into()));
        let err = wrong.backends().await.unwrap_err().to_string();
        assert!(
            err.contains("wrong") && err.contains("HANDOVER_ADMIN_TOKEN"),
            "{err}"
        );
        srv.stop().await;
    }

    #[tokio::test]
    async fn refused_connections_are_one_sentence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = AdminClient::new(&format!("http://{addr}"), None);
        let err = client.sessions().await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("cannot reach the admin API at http://{addr}: connection refused")
        );
    }
}
