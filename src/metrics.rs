//! Every `handover_*` metric: names, label sets and the Prometheus text encoding, in one place.
//!
//! Counters are counted where the event happens (session, migration, listener); the two
//! gauges (`handover_sessions`, `handover_backend_state`) are read from the registry when
//! scraped, so they can never drift from what the registry holds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::protocol::Direction;

/// Upper bounds (seconds) of the duration histograms.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A counter family keyed by its label values.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<Vec<String>, u64>>);

impl Counters {
    fn add(&self, labels: &[&str], n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A family has a handful of label sets: find it without allocating (counted on every
        // accept and close); allocate the key only the first time.
        if let Some((_, v)) = map
            .iter_mut()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
        {
            *v += n;
            return;
        }
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        *map.entry(key).or_insert(0) += n;
    }

    fn get(&self, labels: &[&str]) -> u64 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (values, v) in map.iter() {
            let _ = writeln!(out, "{name}{} {v}", labels(names, values));
        }
    }
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// A histogram family keyed by its label values.
#[derive(Default)]
struct Histograms(Mutex<BTreeMap<Vec<String>, Histogram>>);

impl Histograms {
    fn observe(&self, labels: &[&str], value: Duration) {
        let secs = value.as_secs_f64();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let h = map
            .entry(labels.iter().map(|s| s.to_string()).collect())
            .or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Makes the series exist (all zero) before its first observation.
    fn touch(&self, labels: &[&str]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(labels.iter().map(|s| s.to_string()).collect())
            .or_default();
    }

    fn render(&self, out: &mut String, name: &str, help: &str, names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (values, h) in map.iter() {
            let base = labels(names, values);
            let inner = base.trim_start_matches('{').trim_end_matches('}');
            let sep = if inner.is_empty() { "" } else { "," };
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{inner}{sep}le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{base} {}", h.sum);
            let _ = writeln!(out, "{name}_count{base} {}", h.count);
        }
    }
}

fn labels(names: &[&str], values: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{n}=\"{v}\"");
    }
    s.push('}');
    s
}

/// Why a migration started (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationReason {
    Drain,
    Admin,
    Failover,
    Backend,
}

impl MigrationReason {
    pub const ALL: [MigrationReason; 4] = [
        MigrationReason::Drain,
        MigrationReason::Admin,
        MigrationReason::Failover,
        MigrationReason::Backend,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MigrationReason::Drain => "drain",
            MigrationReason::Admin => "admin",
            MigrationReason::Failover => "failover",
            MigrationReason::Backend => "backend",
        }
    }
}

/// How a migration ended (the `outcome` label): `aborted` left the session where it was,
/// `failed` lost it (failover with nowhere to go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Aborted,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Aborted, Outcome::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Aborted => "aborted",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    accepted: Counters,
    closed: Counters,
    migrations: Counters,
    migration_duration: Histograms,
    client_pause: Histograms,
    migration_phase: Histograms,
    replayed: Counters,
    bytes_c2b: AtomicU64,
    bytes_b2c: AtomicU64,
    spliced_c2b: AtomicU64,
    spliced_b2c: AtomicU64,
    refused: Counters,
    reloads: Counters,
    /// Unix time of the last successful config load (the start counts as one).
    last_reload_ok: AtomicU64,
    /// 1 when the last reload was applied, 0 when it was refused.
    last_reload_successful: AtomicU64,
    /// Each session worker's count of sessions (`workers.rs`), read at scrape time.
    worker_sessions: OnceLock<Vec<Arc<AtomicUsize>>>,
}

/// What the registry knows at scrape time.
pub struct Gauges {
    /// (listener, backend, sessions)
    pub sessions: Vec<(String, String, usize)>,
    /// (backend, current state)
    pub backends: Vec<(String, &'static str)>,
}

pub const BACKEND_STATES: [&str; 4] = ["active", "draining", "drained", "down"];

/// The `phase` labels of `handover_migration_phase_seconds`, in order: `connect` (decision to
/// connected), `register` (to the new backend's welcome), `flush` (the client paused until the
/// old backend answered the flush mark: the cut), `settle` (cut to the new backend settled,
/// e.g. an IRC nick reclaimed).
pub const MIGRATION_PHASES: [&str; 4] = ["connect", "register", "flush", "settle"];

/// The `reason` labels of `handover_connections_refused_total` (see `listener.rs`).
pub const REFUSED_REASONS: [&str; 5] = [
    "max_sessions",
    "no_backend",
    "tls_handshake",
    "tls_timeout",
    "first_frame",
];

/// The `reason` labels of `handover_sessions_closed_total` (`session::CloseReason::label`).
pub const CLOSE_REASONS: [&str; 7] = [
    "client",
    "backend",
    "backend_lost",
    "protocol_error",
    "shutdown",
    "admin",
    "io_error",
];

impl Metrics {
    /// Creates, at zero, the counter and histogram series that the configured listeners can
    /// produce, so they are scraped from the start: Prometheus' `rate()` and `increase()`
    /// see no increase when a series first appears already at 1, so without this the first
    /// failed migration after a start would never fire an alert, and a dashboard would show
    /// no first drain. `listeners` is (listener name, protocol name).
    pub fn preregister(&self, listeners: &[(&str, &str)]) {
        for (listener, protocol) in listeners {
            self.accepted.add(&[listener], 0);
            for reason in CLOSE_REASONS {
                self.closed.add(&[listener, reason], 0);
            }
            for reason in REFUSED_REASONS {
                self.refused.add(&[listener, reason], 0);
            }
            for reason in MigrationReason::ALL {
                for outcome in Outcome::ALL {
                    self.migration_n(protocol, reason, outcome, 0);
                }
            }
            self.migration_duration.touch(&[protocol]);
            self.client_pause.touch(&[protocol]);
            for phase in MIGRATION_PHASES {
                self.migration_phase.touch(&[protocol, phase]);
            }
            self.replayed.add(&[protocol], 0);
        }
    }

    fn migration_n(&self, protocol: &str, reason: MigrationReason, outcome: Outcome, n: u64) {
        self.migrations
            .add(&[protocol, reason.label(), outcome.label()], n);
    }

    /// A reload was applied (`ok`) or refused (`failed`).
    pub fn reload(&self, ok: bool) {
        self.reloads.add(&[if ok { "ok" } else { "failed" }], 1);
        self.last_reload_successful
            .store(u64::from(ok), Ordering::Relaxed);
        if ok {
            self.config_loaded();
        }
    }

    /// The config in force was loaded now (at start, and by each successful reload).
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_reload_ok.store(now, Ordering::Relaxed);
        self.last_reload_successful.store(1, Ordering::Relaxed);
        // The series exist from the start, so the first failure shows in rate().
        for outcome in ["ok", "failed"] {
            self.reloads.add(&[outcome], 0);
        }
    }

    pub fn session_accepted(&self, listener: &str) {
        self.accepted.add(&[listener], 1);
    }

    pub fn session_closed(&self, listener: &str, reason: &'static str) {
        self.closed.add(&[listener, reason], 1);
    }

    /// A client refused before a session began (limits, no backend).
    pub fn connection_refused(&self, listener: &str, reason: &'static str) {
        self.refused.add(&[listener, reason], 1);
    }

    pub fn migration(&self, protocol: &str, reason: MigrationReason, outcome: Outcome) {
        self.migration_n(protocol, reason, outcome, 1);
    }

    pub fn migration_timing(
        &self,
        protocol: &str,
        duration: Duration,
        pause: Duration,
        replayed: u64,
    ) {
        self.migration_duration.observe(&[protocol], duration);
        self.client_pause.observe(&[protocol], pause);
        self.replayed.add(&[protocol], replayed);
    }

    /// Where a successful migration's time went, phase by phase (see [`MIGRATION_PHASES`]).
    pub fn migration_phases(&self, protocol: &str, phases: [Duration; 4]) {
        for (phase, took) in MIGRATION_PHASES.iter().zip(phases) {
            self.migration_phase.observe(&[protocol, phase], took);
        }
    }

    pub fn bytes(&self, client_to_backend: u64, backend_to_client: u64) {
        if client_to_backend > 0 {
            self.bytes_c2b
                .fetch_add(client_to_backend, Ordering::Relaxed);
        }
        if backend_to_client > 0 {
            self.bytes_b2c
                .fetch_add(backend_to_client, Ordering::Relaxed);
        }
    }

    /// Bytes a session moved with splice(2) (counted as they enter the pipe); they are in
    /// `handover_bytes_total` too.
    pub fn spliced(&self, dir: Direction, n: u64) {
        let counter = match dir {
            Direction::ClientToBackend => &self.spliced_c2b,
            Direction::BackendToClient => &self.spliced_b2c,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value, for tests and the drain summary.
    pub fn migrations_count(
        &self,
        protocol: &str,
        reason: MigrationReason,
        outcome: Outcome,
    ) -> u64 {
        self.migrations
            .get(&[protocol, reason.label(), outcome.label()])
    }

    /// Reports the session workers' loads as `handover_worker_sessions{worker}`; the first
    /// call counts (the workers are made once, at start).
    pub fn watch_workers(&self, loads: Vec<Arc<AtomicUsize>>) {
        let _ = self.worker_sessions.set(loads);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP handover_sessions Sessions open now.\n# TYPE handover_sessions gauge"
        );
        for (listener, backend, n) in &gauges.sessions {
            let _ = writeln!(
                out,
                "handover_sessions{} {n}",
                labels(
                    &["listener", "backend"],
                    &[listener.clone(), backend.clone()]
                )
            );
        }
        self.accepted.render(
            &mut out,
            "handover_sessions_accepted_total",
            "Client connections accepted.",
            &["listener"],
        );
        self.closed.render(
            &mut out,
            "handover_sessions_closed_total",
            "Sessions closed, by who ended them.",
            &["listener", "reason"],
        );
        self.refused.render(
            &mut out,
            "handover_connections_refused_total",
            "Client connections closed before a session began.",
            &["listener", "reason"],
        );
        self.migrations.render(
            &mut out,
            "handover_migrations_total",
            "Migrations by protocol, reason and outcome.",
            &["protocol", "reason", "outcome"],
        );
        self.migration_duration.render(
            &mut out,
            "handover_migration_duration_seconds",
            "Time from the start of a migration to its end.",
            &["protocol"],
        );
        self.client_pause.render(
            &mut out,
            "handover_client_pause_seconds",
            "Time a client's input was held.",
            &["protocol"],
        );
        self.migration_phase.render(
            &mut out,
            "handover_migration_phase_seconds",
            "Time a successful migration spent in each phase: connect to the new backend, register there, flush the old one, settle the new one after the cut.",
            &["protocol", "phase"],
        );
        self.replayed.render(
            &mut out,
            "handover_replayed_bytes_total",
            "Client bytes replayed to a new backend.",
            &["protocol"],
        );
        if let Some(loads) = self.worker_sessions.get() {
            let _ = writeln!(
                out,
                "# HELP handover_worker_sessions Sessions on each worker thread now.\n# TYPE handover_worker_sessions gauge"
            );
            for (i, n) in loads.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                let _ = writeln!(out, "handover_worker_sessions{{worker=\"{i}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP handover_backend_state 1 for the backend's current state.\n# TYPE handover_backend_state gauge"
        );
        for (backend, state) in &gauges.backends {
            for s in BACKEND_STATES {
                let v = u8::from(s == *state);
                let _ = writeln!(
                    out,
                    "handover_backend_state{{backend=\"{backend}\",state=\"{s}\"}} {v}"
                );
            }
        }
        by_direction(
            &mut out,
            "handover_bytes_total",
            "Bytes forwarded.",
            [&self.bytes_c2b, &self.bytes_b2c],
        );
        by_direction(
            &mut out,
            "handover_spliced_bytes_total",
            "Bytes of handover_bytes_total forwarded with splice(2) (raw passthrough).",
            [&self.spliced_c2b, &self.spliced_b2c],
        );
        self.reloads.render(
            &mut out,
            "handover_reloads_total",
            "Config reloads (SIGHUP, POST /reload), applied (ok) or refused (failed).",
            &["outcome"],
        );
        let _ = writeln!(
            out,
            "# HELP handover_config_last_reload_successful 1 when the last reload was applied, 0 when it was refused.\n\
             # TYPE handover_config_last_reload_successful gauge\n\
             handover_config_last_reload_successful {}",
            self.last_reload_successful.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP handover_config_last_reload_success_timestamp_seconds When the config in force was loaded.\n\
             # TYPE handover_config_last_reload_success_timestamp_seconds gauge\n\
             handover_config_last_reload_success_timestamp_seconds {}",
            self.last_reload_ok.load(Ordering::Relaxed)
        );
        out
    }
}

/// A counter with a `direction` label: client to backend, then backend to client.
fn by_direction(out: &mut String, name: &str, help: &str, values: [&AtomicU64; 2]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (direction, v) in ["client_to_backend", "backend_to_client"]
        .iter()
        .zip(values)
    {
        let v = v.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{direction=\"{direction}\"}} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preregistered_series_exist_at_zero() {
        let m = Metrics::default();
        m.preregister(&[("irc", "irc"), ("game", "raw")]);
        m.migration("raw", MigrationReason::Drain, Outcome::Ok);
        let text = m.render(&Gauges {
            sessions: vec![],
            backends: vec![],
        });
        for needle in [
            "handover_sessions_accepted_total{listener=\"irc\"} 0",
            "handover_sessions_closed_total{listener=\"game\",reason=\"backend_lost\"} 0",
            "handover_connections_refused_total{listener=\"game\",reason=\"no_backend\"} 0",
            "handover_migrations_total{protocol=\"irc\",reason=\"failover\",outcome=\"failed\"} 0",
            "handover_migrations_total{protocol=\"raw\",reason=\"drain\",outcome=\"ok\"} 1",
            "handover_migration_duration_seconds_bucket{protocol=\"irc\",le=\"+Inf\"} 0",
            "handover_migration_duration_seconds_count{protocol=\"raw\"} 0",
            "handover_client_pause_seconds_sum{protocol=\"irc\"} 0",
            "handover_migration_phase_seconds_count{protocol=\"irc\",phase=\"settle\"} 0",
            "handover_replayed_bytes_total{protocol=\"raw\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(series("handover_migrations_total{"), 2 * 4 * 3);
    }

    #[test]
    fn renders_contract_names() {
        let m = Metrics::default();
        m.session_accepted("irc");
        m.session_closed("irc", "client");
        m.migration("irc", MigrationReason::Drain, Outcome::Ok);
        m.migration_timing(
            "irc",
            Duration::from_millis(30),
            Duration::from_millis(2),
            17,
        );
        m.migration_phases("irc", [1, 20, 3, 6].map(Duration::from_millis));
        m.bytes(10, 20);
        m.watch_workers(vec![Arc::new(AtomicUsize::new(2)), Default::default()]);
        let text = m.render(&Gauges {
            sessions: vec![("irc".into(), "a".into(), 3)],
            backends: vec![("a".into(), "draining")],
        });
        for needle in [
            "handover_sessions{listener=\"irc\",backend=\"a\"} 3",
            "handover_sessions_accepted_total{listener=\"irc\"} 1",
            "handover_sessions_closed_total{listener=\"irc\",reason=\"client\"} 1",
            "handover_migrations_total{protocol=\"irc\",reason=\"drain\",outcome=\"ok\"} 1",
            "handover_migration_duration_seconds_bucket{protocol=\"irc\",le=\"0.05\"} 1",
            "handover_migration_duration_seconds_bucket{protocol=\"irc\",le=\"0.025\"} 0",
            "handover_client_pause_seconds_count{protocol=\"irc\"} 1",
            "handover_migration_phase_seconds_bucket{protocol=\"irc\",phase=\"register\",le=\"0.025\"} 1",
            "handover_migration_phase_seconds_bucket{protocol=\"irc\",phase=\"register\",le=\"0.01\"} 0",
            "handover_migration_phase_seconds_sum{protocol=\"irc\",phase=\"connect\"} 0.001",
            "handover_replayed_bytes_total{protocol=\"irc\"} 17",
            "handover_backend_state{backend=\"a\",state=\"draining\"} 1",
            "handover_backend_state{backend=\"a\",state=\"active\"} 0",
            "handover_bytes_total{direction=\"client_to_backend\"} 10",
            "handover_bytes_total{direction=\"backend_to_client\"} 20",
            "handover_worker_sessions{worker=\"0\"} 2",
            "handover_worker_sessions{worker=\"1\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(
            m.migrations_count("irc", MigrationReason::Drain, Outcome::Ok),
            1
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&["a"], &["x\"y".into()]), "{a=\"x\\\"y\"}");
    }
}
