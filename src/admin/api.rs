//! The JSON shapes of the admin API (CONTRACT.md), shared by the server and the CLI client,
//! and the [`ControlApi`] the server calls into. Written once so the two sides cannot drift.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// `GET /backends`, `GET /backends/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendView {
    pub name: String,
    pub address: String,
    /// `active`, `draining`, `drained` or `down`.
    pub state: String,
    pub sessions: usize,
    /// The listeners whose pool holds this backend.
    #[serde(default)]
    pub pools: Vec<String>,
}

/// `PUT /backends/{name}` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PutBackend {
    pub address: String,
    /// Listener names whose pool this backend joins (replaces its pools when given).
    #[serde(default)]
    pub pools: Option<Vec<String>>,
    #[serde(default)]
    pub proxy_protocol: Option<crate::config::ProxyProtocol>,
}

/// `POST /backends/{name}/drain` without wait: 202.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainStarted {
    pub backend: String,
    pub state: String,
    pub sessions: usize,
}

/// `POST /backends/{name}/drain?wait=true`: 200 when the drain is over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainFinished {
    pub backend: String,
    pub state: String,
    pub migrated: u64,
    pub failed: u64,
}

/// `GET /sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub id: String,
    pub listener: String,
    pub protocol: String,
    /// The client's address.
    pub client: String,
    /// The name of the backend the session is on now.
    pub backend: String,
    /// IRC nick or OSCAR screen name, when known.
    pub identity: Option<String>,
    /// When the session began, RFC 3339 UTC.
    pub since: String,
    pub migrations: u64,
}

/// `POST /sessions/{id}/migrate` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    #[serde(default)]
    pub to: Option<String>,
}

/// `POST /sessions/{id}/migrate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrateReply {
    pub id: String,
    pub from: String,
    pub to: String,
    /// `ok`, `aborted` or `failed`.
    pub outcome: String,
    /// Why, when the outcome is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /reload`: what the reload changed. Every list is sorted; all empty means the file
/// says what was already running.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// New backends, taking sessions now.
    pub backends_added: Vec<String>,
    /// Backends gone from the file that had no sessions: removed at once.
    pub backends_removed: Vec<String>,
    /// Backends gone from the file that still have sessions: draining to the rest of their
    /// pools, out of every pool now, removed once empty.
    pub backends_removing: Vec<String>,
    /// Backends whose settings changed; new connections to them use the new settings.
    pub backends_changed: Vec<String>,
    /// Listeners whose certificate and key were read again (every TLS listener, every reload).
    pub tls_reloaded: Vec<String>,
    /// Other keys whose value changed, like `migration.max_concurrent` or
    /// `listener.irc.max_sessions`; they apply to new sessions, drains and checks.
    pub settings_changed: Vec<String>,
}

impl ReloadReport {
    /// One line for the log and the CLI, like `backends added: c; settings changed: ...`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("backends draining for removal", &self.backends_removing),
            ("backends changed", &self.backends_changed),
            ("certificates reloaded", &self.tls_reloaded),
            ("settings changed", &self.settings_changed),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(what, v)| format!("{what}: {}", v.join(", ")))
        .collect();
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Every error body: `{"error": "one clear sentence"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a control request failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409
    #[error("{0}")]
    Conflict(String),
    /// 400
    #[error("{0}")]
    BadRequest(String),
    /// 422: a new config that cannot be applied, as `file: key: problem`.
    #[error("{0}")]
    Invalid(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin API can ask of the running proxy. The engine implements it; the HTTP layer
/// only parses, authenticates, calls and encodes.
pub trait ControlApi: Send + Sync + 'static {
    fn backends(&self) -> Vec<BackendView>;
    fn backend(&self, name: &str) -> Option<BackendView>;
    /// Adds (`Ok(true)`) or changes (`Ok(false)`) a backend.
    fn put_backend(&self, name: &str, body: PutBackend) -> Result<bool, ControlError>;
    /// Removes a backend that has no sessions; `Conflict` while it has some.
    fn delete_backend(&self, name: &str) -> Result<(), ControlError>;
    /// Starts a drain and answers at once.
    fn drain(&self, name: &str) -> Result<DrainStarted, ControlError>;
    /// Starts (or joins) a drain and answers when it is over.
    fn drain_wait(&self, name: &str) -> BoxFuture<'_, Result<DrainFinished, ControlError>>;
    fn undrain(&self, name: &str) -> Result<BackendView, ControlError>;
    fn sessions(&self) -> Vec<SessionView>;
    /// Moves one session; `NotFound` for an unknown id, `Conflict` when it cannot move now.
    fn migrate(
        &self,
        id: &str,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<MigrateReply, ControlError>>;
    /// The Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// Reads the config file again and applies it; `Invalid` (the old config keeps running)
    /// when it is bad or changes what needs a restart, `Conflict` when there is no file.
    fn reload(&self) -> Result<ReloadReport, ControlError>;
}
