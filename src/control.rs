//! The engine behind the admin API: [`ControlApi`] over the registry and drain controller.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admin::api::*;
use crate::config::{BackendConfig, BackendTls};
use crate::drain::Drains;
use crate::metrics::MigrationReason;
use crate::registry::{Backend, Registry};
use crate::reload::Reloader;

pub struct Engine {
    pub registry: Arc<Registry>,
    pub drains: Arc<Drains>,
    /// `None` when the proxy was started from flags: there is no file to read again.
    pub reloader: Option<Reloader>,
}

impl Engine {
    fn view(&self, b: &Backend) -> BackendView {
        BackendView {
            name: b.config.name.clone(),
            address: b.config.address.clone(),
            state: b.state().to_string(),
            sessions: b.sessions,
            pools: self.registry.pools_of(&b.config.name),
        }
    }

    fn not_found(name: &str) -> ControlError {
        ControlError::NotFound(format!("no backend is named `{name}`"))
    }
}

impl ControlApi for Engine {
    fn backends(&self) -> Vec<BackendView> {
        self.registry
            .backends()
            .iter()
            .map(|b| self.view(b))
            .collect()
    }

    fn backend(&self, name: &str) -> Option<BackendView> {
        self.registry.backend(name).map(|b| self.view(&b))
    }

    fn put_backend(&self, name: &str, body: PutBackend) -> Result<bool, ControlError> {
        crate::config::check_backend_address("request", "address", &body.address)
            .map_err(|e| ControlError::BadRequest(e.problem))?;
        let old = self.registry.backend(name);
        let config = BackendConfig {
            name: name.to_string(),
            address: body.address,
            tls: old
                .as_ref()
                .map(|b| b.config.tls.clone())
                .unwrap_or(BackendTls::Enabled(false)),
            proxy_protocol: body
                .proxy_protocol
                .or(old.as_ref().map(|b| b.config.proxy_protocol))
                .unwrap_or_default(),
            webirc: old.and_then(|b| b.config.webirc),
        };
        self.registry
            .put_backend(config, body.pools)
            .map_err(ControlError::BadRequest)
    }

    fn delete_backend(&self, name: &str) -> Result<(), ControlError> {
        match self.registry.remove_backend(name) {
            Ok(()) => Ok(()),
            Err(None) => Err(Self::not_found(name)),
            Err(Some(n)) => Err(ControlError::Conflict(format!(
                "backend `{name}` still has {n} sessions; drain it first"
            ))),
        }
    }

    fn drain(&self, name: &str) -> Result<DrainStarted, ControlError> {
        self.drains.start(name).map(|(started, _)| started)
    }

    fn drain_wait(&self, name: &str) -> BoxFuture<'_, Result<DrainFinished, ControlError>> {
        let name = name.to_string();
        Box::pin(async move { self.drains.wait(&name).await })
    }

    fn undrain(&self, name: &str) -> Result<BackendView, ControlError> {
        self.drains.undrain(name)?;
        self.backend(name).ok_or_else(|| Self::not_found(name))
    }

    fn sessions(&self) -> Vec<SessionView> {
        self.registry
            .sessions()
            .into_iter()
            .map(|s| SessionView {
                id: s.id.to_string(),
                listener: s.listener,
                protocol: s.protocol.to_string(),
                client: s.client.to_string(),
                backend: s.backend,
                identity: s.identity,
                since: rfc3339(s.since),
                migrations: s.migrations,
            })
            .collect()
    }

    fn migrate(
        &self,
        id: &str,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<MigrateReply, ControlError>> {
        let id = id.to_string();
        Box::pin(async move {
            let unknown = || ControlError::NotFound(format!("no session has id `{id}`"));
            let num: u64 = id.parse().map_err(|_| unknown())?;
            let (_, handle) = self.registry.session(num).ok_or_else(unknown)?;
            if let Some(to) = &to {
                if self.registry.backend(to).is_none() {
                    return Err(Self::not_found(to));
                }
            }
            let result = handle
                .migrate(to, MigrationReason::Admin)
                .await
                .ok_or_else(unknown)?;
            if !result.attempted {
                return Err(ControlError::Conflict(
                    result
                        .reason
                        .unwrap_or_else(|| "the session cannot move now".into()),
                ));
            }
            Ok(MigrateReply {
                id,
                from: result.from,
                to: result.to,
                outcome: result.outcome.label().to_string(),
                reason: result.reason,
            })
        })
    }

    fn metrics_text(&self) -> String {
        self.registry.metrics.render(&self.registry.gauges())
    }

    fn reload(&self) -> Result<ReloadReport, ControlError> {
        let Some(reloader) = &self.reloader else {
            let why =
                "the proxy was started from flags, not a config file: there is nothing to reload";
            tracing::warn!("config reload refused: {why}");
            self.registry.metrics.reload(false);
            return Err(ControlError::Conflict(why.into()));
        };
        reloader
            .reload()
            .map_err(|e| ControlError::Invalid(e.to_string()))
    }
}

/// Formats a time as RFC 3339 UTC (seconds), without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
