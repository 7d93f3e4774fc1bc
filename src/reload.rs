//! Config reload (SIGHUP, `POST /reload`): read the file the proxy started with again, refuse
//! it whole when it is bad or changes what needs a restart, and otherwise apply it without
//! closing a session:
//!
//! - backends: added ones take sessions at once; changed ones are used with their new settings
//!   by new connections (open links stay); removed ones leave every pool at once, are drained
//!   by the drain controller (its pacing) and removed once empty;
//! - listeners: each gets a new [`ListenerState`] (pool, limits, TLS certificate read again),
//!   which new clients are served with; open sessions keep theirs;
//! - migration pacing for new drains, health-check settings, the admin token.
//!
//! Everything that can fail (the file, certificates, the token) is read before anything
//! changes, so a refused reload leaves the running config untouched.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::api::ReloadReport;
use crate::config::{self, Config, ConfigError, HealthConfig};
use crate::drain::Drains;
use crate::listener::{ListenerState, Shared};
use crate::registry::Registry;

/// A value read often and replaced whole now and then: readers get the `Arc` of the moment
/// and keep it as long as they like; a reload swaps in a new one.
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// What a reload acts on; built by `app::start` for a proxy started from a file.
pub struct Reloader {
    pub path: PathBuf,
    /// The config in force; locked for a whole reload, so two reloads never interleave.
    pub current: Mutex<Config>,
    pub registry: Arc<Registry>,
    pub drains: Arc<Drains>,
    pub shared: Shared,
    /// Each listener's state, by name.
    pub listeners: Vec<(String, Arc<Live<ListenerState>>)>,
    pub health: Arc<Live<HealthConfig>>,
    pub token: Arc<Live<Option<String>>>,
    /// Backends removed from the file that still have sessions; cancelled when a later
    /// reload brings the backend back.
    pub retiring: Arc<Mutex<HashMap<String, CancellationToken>>>,
    pub runtime: tokio::runtime::Handle,
}

impl Reloader {
    /// Reloads, logs one line and counts the outcome. On `Err` nothing changed.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.apply(&mut current);
        self.registry.metrics.reload(result.is_ok());
        match &result {
            Ok(report) => info!(summary = %report.summary(), "config reloaded"),
            Err(e) => warn!(error = %e, "config reload refused; the running config is kept"),
        }
        result
    }

    fn apply(&self, current: &mut Config) -> Result<ReloadReport, ConfigError> {
        // Flags given to `serve` still hold for the file read again.
        let flag = current.admin_insecure_flag;
        let new = config::load_with(&self.path, |c| {
            c.admin.insecure |= flag;
            c.admin_insecure_flag = flag;
        })?;
        needs_restart(current, &new)?;
        // Everything that reads files, before anything changes. `load` has checked the
        // certificates already; they are read again here in case they changed meanwhile.
        let mut states = Vec::new();
        for (i, l) in new.listener.iter().enumerate() {
            let state = ListenerState::build(l, &new.migration, &self.shared)
                .map_err(|p| ConfigError::new(&new.source, format!("listener[{i}].tls"), p))?;
            states.push(state);
        }
        let token = match &new.admin.token_file {
            Some(path) => Some(
                config::read_token(path)
                    .map_err(|p| ConfigError::new(&new.source, "admin.token_file", p))?,
            ),
            None => None,
        };

        let mut report = ReloadReport::default();
        self.apply_backends(&new, &mut report);
        for state in states {
            let name = state.config.name.clone();
            if state.tls.is_some() {
                report.tls_reloaded.push(name.clone());
            }
            if let Some((_, live)) = self.listeners.iter().find(|(n, _)| *n == name) {
                live.set(state);
            }
        }
        self.drains.set_config(new.migration.clone());
        self.health.set(new.health.clone());
        report.settings_changed = settings_changed(current, &new);
        if *self.token.get() != token {
            report.settings_changed.push("admin.token".into());
            self.token.set(token);
        }
        *current = new;
        report.tls_reloaded.sort();
        report.settings_changed.sort();
        Ok(report)
    }

    /// Adds, changes and removes backends, and sets the pools, as `new` says.
    fn apply_backends(&self, new: &Config, report: &mut ReloadReport) {
        for b in &new.backend {
            let came_back = self.stop_retiring(&b.name);
            match self.registry.backend(&b.name) {
                None => report.backends_added.push(b.name.clone()),
                Some(_) if came_back => report.backends_added.push(b.name.clone()),
                Some(old) if old.config != *b => report.backends_changed.push(b.name.clone()),
                Some(_) => continue,
            }
            // Only a backend with pools named in the request is refused, and none are.
            let _ = self.registry.put_backend(b.clone(), None);
        }
        let pools: Vec<(String, Vec<String>)> = new
            .listener
            .iter()
            .map(|l| (l.name.clone(), l.backends.clone()))
            .collect();
        self.registry.set_pools(&pools);
        for old in self.registry.backends() {
            let name = old.config.name;
            if new.backend(&name).is_some() {
                continue;
            }
            if self.retiring_lock().contains_key(&name) {
                report.backends_removing.push(name);
                continue;
            }
            match self.registry.remove_backend(&name) {
                Ok(()) => report.backends_removed.push(name),
                Err(Some(_)) => {
                    self.retire(&name);
                    report.backends_removing.push(name);
                }
                Err(None) => {}
            }
        }
        report.backends_added.sort();
        report.backends_changed.sort();
        report.backends_removed.sort();
        report.backends_removing.sort();
    }

    fn retiring_lock(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.retiring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend being removed is in the file again: stop removing it and let it take
    /// sessions. True when it was being removed.
    fn stop_retiring(&self, name: &str) -> bool {
        let Some(cancel) = self.retiring_lock().remove(name) else {
            return false;
        };
        cancel.cancel();
        // Stops its drain; the backend is active again.
        let _ = self.drains.undrain(name);
        true
    }

    /// Drains a removed backend that still has sessions, then removes it once it is empty.
    /// It is out of every pool already, so it takes no new session meanwhile.
    fn retire(&self, name: &str) {
        let cancel = self.shared.shutdown.child_token();
        self.retiring_lock()
            .insert(name.to_string(), cancel.clone());
        // Started here, so the backend is `draining` when the reload answers.
        if let Err(e) = self.drains.start(name) {
            warn!(backend = %name, error = %e, "cannot drain a removed backend");
        }
        let job = Retirement {
            registry: self.registry.clone(),
            drains: self.drains.clone(),
            retiring: self.retiring.clone(),
            name: name.to_string(),
            cancel,
        };
        self.runtime.spawn(job.run());
    }
}

/// How long a removed backend whose drain could not move everyone waits before draining
/// again (sessions ending meanwhile are noticed at once).
const RETRY_DRAIN: Duration = Duration::from_secs(10);

/// Moves a removed backend's sessions away and removes it once it is empty.
struct Retirement {
    registry: Arc<Registry>,
    drains: Arc<Drains>,
    retiring: Arc<Mutex<HashMap<String, CancellationToken>>>,
    name: String,
    cancel: CancellationToken,
}

impl Retirement {
    async fn run(self) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.drains.wait(&self.name) => {}
            }
            let retry = tokio::time::Instant::now() + RETRY_DRAIN;
            loop {
                let changed = self.registry.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.cancel.is_cancelled() {
                    return;
                }
                match self.registry.remove_backend(&self.name) {
                    Ok(()) => {
                        info!(backend = %self.name, "backend removed: its sessions have moved");
                        return self.forget();
                    }
                    Err(None) => return self.forget(),
                    Err(Some(_)) => {}
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = &mut changed => {}
                    // Reservations given back do not notify: look again now and then.
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if tokio::time::Instant::now() >= retry {
                    break;
                }
            }
            let left = self.registry.sessions_on(&self.name).len();
            warn!(backend = %self.name, sessions = left, "a removed backend still has sessions; draining it again");
        }
    }

    fn forget(&self) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        if !self.cancel.is_cancelled() {
            retiring.remove(&self.name);
        }
    }
}

/// Refuses the changes that need the sockets bound again: a listener added, removed or moved
/// to another address or protocol, and the admin API's address.
fn needs_restart(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let restart = |key: String, what: String| {
        ConfigError::new(
            &new.source,
            key,
            format!("{what}: that needs a restart, so the running config is kept"),
        )
    };
    if old.admin.listen != new.admin.listen {
        return Err(restart(
            "admin.listen".into(),
            format!(
                "the admin API's address changed from {} to {}",
                old.admin.listen, new.admin.listen
            ),
        ));
    }
    if old.runtime.workers != new.runtime.workers {
        return Err(restart(
            "runtime.workers".into(),
            format!(
                "the worker threads changed from {} to {}",
                old.runtime.workers, new.runtime.workers
            ),
        ));
    }
    for (i, l) in new.listener.iter().enumerate() {
        let Some(o) = old.listener.iter().find(|o| o.name == l.name) else {
            return Err(restart(
                format!("listener[{i}].name"),
                format!("listener `{}` is new", l.name),
            ));
        };
        for (key, was, now) in [
            ("listen", &o.listen, &l.listen),
            ("protocol", &o.protocol, &l.protocol),
        ] {
            if was != now {
                return Err(restart(
                    format!("listener[{i}].{key}"),
                    format!("listener `{}` changed {key} from {was} to {now}", l.name),
                ));
            }
        }
    }
    if let Some(gone) = old
        .listener
        .iter()
        .find(|o| !new.listener.iter().any(|l| l.name == o.name))
    {
        return Err(restart(
            "listener".into(),
            format!("listener `{}` is gone", gone.name),
        ));
    }
    Ok(())
}

/// The keys, other than backends, whose values differ: `migration.max_concurrent`,
/// `listener.<name>.max_sessions`, ... Only names: values may be secrets.
fn settings_changed(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (settings(old), settings(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// A config's settings as dotted keys; listeners keyed by name, backends left out (they are
/// reported one by one).
fn settings(config: &Config) -> BTreeMap<String, Value> {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.remove("backend");
        if let Some(Value::Array(listeners)) = obj.remove("listener") {
            let by_name = listeners
                .into_iter()
                .filter_map(|l| Some((l.get("name")?.as_str()?.to_string(), l)))
                .collect();
            obj.insert("listener".into(), Value::Object(by_name));
        }
    }
    let mut out = BTreeMap::new();
    flatten(String::new(), value, &mut out);
    out
}

fn flatten(prefix: String, value: Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(key, v, out);
            }
        }
        leaf => {
            out.insert(prefix, leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:2'\n";

    fn parse(text: &str) -> Config {
        config::parse(text, "t.toml").unwrap()
    }

    #[test]
    fn listener_and_admin_address_changes_need_a_restart() {
        let old = parse(BASE);
        let moved = parse(&BASE.replace("127.0.0.1:1", "127.0.0.1:3"));
        let err = needs_restart(&old, &moved).unwrap_err();
        assert_eq!(
            (err.file.as_str(), err.key.as_str()),
            ("t.toml", "listener[0].listen")
        );
        assert!(err.problem.contains("needs a restart"), "{err}");
        let renamed = parse(&BASE.replace("name='a'", "name='b'"));
        assert_eq!(
            needs_restart(&old, &renamed).unwrap_err().key,
            "listener[0].name"
        );
        let admin = parse(&format!("[admin]\nlisten='127.0.0.1:9'\n{BASE}"));
        assert_eq!(needs_restart(&old, &admin).unwrap_err().key, "admin.listen");
        let irc = parse(&BASE.replace("backends=['x']", "backends=['x']\nprotocol='irc'"));
        assert_eq!(
            needs_restart(&old, &irc).unwrap_err().key,
            "listener[0].protocol"
        );
        let workers = parse(&format!("{BASE}[runtime]\nworkers = 3\n"));
        assert_eq!(
            needs_restart(&old, &workers).unwrap_err().key,
            "runtime.workers"
        );
        assert!(needs_restart(&old, &parse(BASE)).is_ok());
    }

    #[test]
    fn changed_settings_are_named_by_key() {
        let old = parse(BASE);
        let text = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\nmax_sessions=5\n[[backend]]\nname='x'\naddress='127.0.0.1:7'\n[migration]\nmax_concurrent=3\n";
        // The backend's new address is not here: backends are reported one by one.
        assert_eq!(
            settings_changed(&old, &parse(text)),
            ["listener.a.max_sessions", "migration.max_concurrent"]
        );
        assert!(settings_changed(&old, &parse(BASE)).is_empty());
    }
}
