//! The admin HTTP API: a small hyper 1 server on its own listener. It parses, authenticates,
//! calls [`ControlApi`] and encodes; it holds no state of its own.
//!
//! | method and path                  | answers                                                   |
//! |----------------------------------|-----------------------------------------------------------|
//! | `GET /healthz`                   | 200 `ok`; never needs a token                             |
//! | `GET /metrics`                   | 200 Prometheus text (`text/plain; version=0.0.4`)         |
//! | `GET /backends`                  | 200 `[BackendView]`                                       |
//! | `GET /backends/{name}`           | 200 `BackendView`; 404                                    |
//! | `PUT /backends/{name}`           | body `PutBackend`; 201 created, 200 changed; 400          |
//! | `DELETE /backends/{name}`        | 204; 404; 409 while it has sessions                       |
//! | `POST /backends/{name}/drain`    | 202 `DrainStarted`; `?wait=true`: 200 `DrainFinished`     |
//! | `POST /backends/{name}/undrain`  | 200 `BackendView`; 404                                    |
//! | `GET /sessions`                  | 200 `[SessionView]`                                       |
//! | `POST /sessions/{id}/migrate`    | optional body `{"to":"name"}`; 200 `MigrateReply`; 404; 409 |
//! | `POST /reload`                   | 200 `ReloadReport`; 422 bad config (old one kept); 409 no file |
//!
//! Every error is `{"error": "one clear sentence"}`: 400 bad body or query, 401 missing or
//! wrong bearer token (when a token is configured), 404 unknown path or object, 405 wrong
//! method (with `Allow`), 409 conflict, 422 a config that cannot be applied, 413 body over 64 KiB, 414 URL over 8 KiB.
//! Path segments are percent-decoded, so the client may encode names.

pub mod api;
pub mod client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reload::Live;
use api::{ControlApi, ControlError, ErrorBody, MigrateRequest, PutBackend};

/// Largest request body accepted (413 past it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest request target accepted (414 past it).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// hyper's read buffer, which bounds the request head; a head past it gets hyper's own 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent a whole request head by then is dropped (slow-loris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, requests in flight (e.g. a `?wait=true` drain) get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long to pause accepting after an accept error such as EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

type Reply = Response<Full<Bytes>>;

/// Serves the admin API on `listener` until `shutdown` is cancelled, then lets requests in
/// flight finish (for at most a few seconds) and returns. When `token` is set, every route but
/// `/healthz` needs `Authorization: Bearer <token>`.
pub async fn serve(
    listener: TcpListener,
    control: Arc<dyn ControlApi>,
    token: impl Into<Token>,
    shutdown: CancellationToken,
) {
    let token = token.into();
    let admin = Arc::new(Admin { control, token });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    while let Some((stream, peer, permit)) = accept(&listener, &permits, &shutdown).await {
        let conn = connection(admin.clone(), stream, peer, permit, shutdown.clone());
        tracker.spawn(conn);
    }
    tracker.close();
    tracker.wait().await;
}

/// The next connection and its permit, or `None` once shutdown is asked for.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return None,
            permit = permits.clone().acquire_owned() => permit.ok()?,
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => return Some((stream, peer, permit)),
            Err(e) => {
                tracing::warn!(error = %e, "admin API cannot accept a connection; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// One HTTP/1.1 connection; holds its permit until it ends.
async fn connection(
    admin: Arc<Admin>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return tracing::debug!(%peer, "admin connection cut at shutdown"),
            }
        }
    };
    if let Err(e) = result {
        // A client hanging up or sending garbage is normal churn, not an operator's problem.
        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// What a handler fails with: a status and one sentence for the JSON error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// The methods the path takes, for a 405's `Allow` header.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: None,
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The paths the API knows, with their path parameters decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Healthz,
    Metrics,
    Backends,
    Backend(String),
    Drain(String),
    Undrain(String),
    Sessions,
    Migrate(String),
    Reload,
}

impl Route {
    /// `None` for a path the API does not have.
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let param = |s: &str| percent_decode(s).filter(|p| !p.is_empty());
        Some(match segments.as_slice() {
            ["healthz"] => Route::Healthz,
            ["metrics"] => Route::Metrics,
            ["backends"] => Route::Backends,
            ["backends", name] => Route::Backend(param(name)?),
            ["backends", name, "drain"] => Route::Drain(param(name)?),
            ["backends", name, "undrain"] => Route::Undrain(param(name)?),
            ["sessions"] => Route::Sessions,
            ["sessions", id, "migrate"] => Route::Migrate(param(id)?),
            ["reload"] => Route::Reload,
            _ => return None,
        })
    }

    /// The `Allow` header for a 405; must agree with [`Admin::dispatch`].
    fn allowed(&self) -> &'static str {
        match self {
            Route::Backend(_) => "GET, PUT, DELETE",
            Route::Drain(_) | Route::Undrain(_) | Route::Migrate(_) | Route::Reload => "POST",
            Route::Healthz | Route::Metrics | Route::Backends | Route::Sessions => "GET",
        }
    }
}

/// The bearer token, if any; a reload may replace it (a new `token_file` or new contents).
pub struct Token(pub Arc<Live<Option<String>>>);

impl From<Option<String>> for Token {
    fn from(token: Option<String>) -> Self {
        Token(Arc::new(Live::new(token)))
    }
}

impl From<Arc<Live<Option<String>>>> for Token {
    fn from(token: Arc<Live<Option<String>>>) -> Self {
        Token(token)
    }
}

struct Admin {
    control: Arc<dyn ControlApi>,
    token: Token,
}

impl Admin {
    /// Every request: limits, then the token, then the route; logs what changed state.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let method = req.method().clone();
        let target = req.uri().path_and_query().map(|p| p.as_str().len());
        // Logged, so cut short: the path is the caller's text.
        let path: String = req.uri().path().chars().take(200).collect();
        let result = if target.unwrap_or(0) > MAX_URL_BYTES {
            Err(ApiError::new(
                StatusCode::URI_TOO_LONG,
                format!("the request URL is longer than {MAX_URL_BYTES} bytes"),
            ))
        } else {
            self.route(req).await
        };
        let reply = result.unwrap_or_else(error_reply);
        let status = reply.status().as_u16();
        if method == Method::GET {
            tracing::debug!(%peer, %method, %path, status, "admin request");
        } else {
            tracing::info!(%peer, %method, %path, status, "admin request");
        }
        reply
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Reply, ApiError> {
        let Some(route) = Route::parse(req.uri().path()) else {
            // Unknown paths need the token too, so an unauthenticated caller cannot map the API.
            self.authorize(req.headers())?;
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such API path"));
        };
        if route != Route::Healthz {
            self.authorize(req.headers())?;
        }
        self.dispatch(route, req).await
    }

    /// The one table of method × route → handler.
    async fn dispatch(&self, route: Route, req: Request<Incoming>) -> Result<Reply, ApiError> {
        let c = &*self.control;
        match (req.method().clone(), route) {
            (Method::GET, Route::Healthz) => Ok(text(StatusCode::OK, "text/plain", "ok")),
            (Method::GET, Route::Metrics) => Ok(metrics(c)),
            (Method::GET, Route::Backends) => json(StatusCode::OK, &c.backends()),
            (Method::GET, Route::Backend(name)) => get_backend(c, &name),
            (Method::PUT, Route::Backend(name)) => put_backend(c, &name, req).await,
            (Method::DELETE, Route::Backend(name)) => delete_backend(c, &name),
            (Method::POST, Route::Drain(name)) => drain(c, &name, req.uri().query()).await,
            (Method::POST, Route::Undrain(name)) => json(StatusCode::OK, &c.undrain(&name)?),
            (Method::GET, Route::Sessions) => json(StatusCode::OK, &c.sessions()),
            (Method::POST, Route::Migrate(id)) => migrate(c, &id, req).await,
            (Method::POST, Route::Reload) => json(StatusCode::OK, &c.reload()?),
            (method, route) => Err(method_not_allowed(&method, &route)),
        }
    }

    /// `Ok` when no token is configured or the request carries the right one.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = self.token.0.get();
        let Some(expected) = token.as_ref() else {
            return Ok(());
        };
        match bearer_token(headers) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request needs an `Authorization: Bearer <token>` header",
            )),
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the bearer token is wrong",
            )),
        }
    }
}

fn get_backend(c: &dyn ControlApi, name: &str) -> Result<Reply, ApiError> {
    match c.backend(name) {
        Some(view) => json(StatusCode::OK, &view),
        None => Err(ControlError::NotFound(format!("no backend is named `{name}`")).into()),
    }
}

async fn put_backend(
    c: &dyn ControlApi,
    name: &str,
    req: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let body = read_body(req).await?;
    let put: PutBackend = parse_json(&body, "a backend like {\"address\":\"host:port\"}")?;
    let created = c.put_backend(name, put)?;
    let view = c
        .backend(name)
        .ok_or_else(|| ControlError::NotFound(format!("backend `{name}` vanished")))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &view)
}

fn delete_backend(c: &dyn ControlApi, name: &str) -> Result<Reply, ApiError> {
    c.delete_backend(name)?;
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::NO_CONTENT;
    Ok(reply)
}

async fn drain(c: &dyn ControlApi, name: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    if wait_requested(query)? {
        json(StatusCode::OK, &c.drain_wait(name).await?)
    } else {
        json(StatusCode::ACCEPTED, &c.drain(name)?)
    }
}

async fn migrate(c: &dyn ControlApi, id: &str, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let body = read_body(req).await?;
    let request: MigrateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MigrateRequest::default()
    } else {
        parse_json(&body, "a migrate request like {\"to\":\"backend\"}")?
    };
    json(StatusCode::OK, &c.migrate(id, request.to).await?)
}

fn metrics(c: &dyn ControlApi) -> Reply {
    text(StatusCode::OK, METRICS_CONTENT_TYPE, c.metrics_text())
}

/// `?wait=true` (or `1`) asks to wait; `false`, `0` or no `wait` does not.
fn wait_requested(query: Option<&str>) -> Result<bool, ApiError> {
    let Some(query) = query else {
        return Ok(false);
    };
    let mut wait = false;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != "wait" {
            continue;
        }
        wait = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`wait` must be true or false, not `{value}`"),
                ))
            }
        };
    }
    Ok(wait)
}

/// The whole body, at most [`MAX_BODY_BYTES`]; a declared length past it is refused unread.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {e}"),
        )),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not {expected}: {e}"),
        )
    })
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guess was right. The loop runs over the expected token's length,
/// whatever the guess's length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// Decodes `%XX` escapes; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn method_not_allowed(method: &Method, route: &Route) -> ApiError {
    let allow = route.allowed();
    ApiError {
        allow: Some(allow),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on this path; use {allow}"),
        )
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the answer could not be encoded: {e}"),
        )
    })?;
    Ok(text(status, "application/json", body))
}

fn error_reply(e: ApiError) -> Reply {
    let body = ErrorBody { error: e.message };
    let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec());
    let mut reply = text(e.status, "application/json", bytes);
    let headers = reply.headers_mut();
    match e.status {
        StatusCode::UNAUTHORIZED => {
            headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG => {
            // The rest of an oversized request is not read, so the connection cannot be reused.
            headers.insert("connection", HeaderValue::from_static("close"));
        }
        _ => {}
    }
    if let Some(allow) = e.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    reply
}

#[cfg(test)]
mod tests;
