//! handover: a front proxy for long-lived TCP and TLS sessions that moves live sessions
//! between backends without the client noticing.
//!
//! # Layout
//!
//! - [`config`]: the TOML file and `serve` flags, validated into one [`config::Config`].
//! - [`app`]: wiring; binds listeners and the admin API, spawns tasks, shuts down.
//! - [`listener`]: accept loops; TLS handshakes and backend connects in spawned tasks.
//! - [`session`]: the per-session task (the only `select!`), its links and the migration.
//! - [`protocol`]: sans-I/O adapters (framing, observation, re-registration), one table.
//! - [`net`]: streams (plain/TLS), backend connect, PROXY headers.
//! - [`registry`]: backends, pools and sessions; the only shared mutable state.
//! - [`drain`] and [`health`]: the drain controller and health checks.
//! - [`reload`]: config reload (SIGHUP, `POST /reload`) without closing a session.
//! - [`admin`] and [`control`]: the admin HTTP API and the engine behind it.
//! - [`metrics`]: every metric name and the Prometheus text encoding.
//! - [`notify`]: systemd readiness (`READY=1` to `$NOTIFY_SOCKET`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod drain;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod protocol;
pub mod registry;
pub mod reload;
pub mod session;
pub mod telemetry;
pub mod workers;
