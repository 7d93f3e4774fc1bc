//! The registry: backends (config, admin state, health, session counts), listeners' pools and
//! sessions. The only shared mutable state; the admin API reads it, the drain controller and
//! health checker act on it, sessions report into it. One std `Mutex`, held for a few
//! statements and never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::{BackendConfig, Config};
use crate::metrics::{Gauges, Metrics};
use crate::session::SessionHandle;

/// What the operator asked of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Active,
    Draining,
    Drained,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub config: BackendConfig,
    pub admin: AdminState,
    pub healthy: bool,
    pub sessions: usize,
    /// Migrations in flight towards this backend; counted for placement.
    pub pending: usize,
}

impl Backend {
    /// The state shown by the API and the `handover_backend_state` gauge.
    pub fn state(&self) -> &'static str {
        match (self.healthy, self.admin) {
            (false, _) => "down",
            (true, AdminState::Active) => "active",
            (true, AdminState::Draining) => "draining",
            (true, AdminState::Drained) => "drained",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub listener: String,
    pub protocol: &'static str,
    pub client: SocketAddr,
    pub backend: String,
    pub identity: Option<String>,
    pub since: SystemTime,
    pub migrations: u64,
}

struct Entry {
    /// Boxed: the map keeps room for up to twice its entries, so an entry is paid for about
    /// twice per session; 16 bytes rather than 160 keeps that small.
    info: Box<SessionInfo>,
    handle: SessionHandle,
}

#[derive(Default)]
struct Inner {
    backends: BTreeMap<String, Backend>,
    /// listener name → pool (backend names)
    pools: BTreeMap<String, Vec<String>>,
    sessions: HashMap<u64, Entry>,
    /// Set by [`Registry::shut_down_sessions`]: a session added later is told at once.
    shutting_down: bool,
}

pub struct Registry {
    inner: Mutex<Inner>,
    pub metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// Woken whenever a session ends or moves, for drains waiting on "empty".
    pub changed: Notify,
}

impl Registry {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let mut inner = Inner::default();
        for b in &config.backend {
            inner.backends.insert(
                b.name.clone(),
                Backend {
                    config: b.clone(),
                    admin: AdminState::Active,
                    healthy: true,
                    sessions: 0,
                    pending: 0,
                },
            );
        }
        for l in &config.listener {
            inner.pools.insert(l.name.clone(), l.backends.clone());
        }
        Self {
            inner: Mutex::new(inner),
            metrics,
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Picks the least-loaded active, healthy backend of a listener's pool (or `to` when
    /// named and usable), and reserves a place on it. Release with [`Registry::release`].
    pub fn reserve(
        &self,
        listener: &str,
        exclude: &[&str],
        to: Option<&str>,
    ) -> Result<BackendConfig, String> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let pool: &[String] = inner.pools.get(listener).map_or(&[], Vec::as_slice);
        let name = match to {
            Some(to) => {
                let b = inner
                    .backends
                    .get(to)
                    .ok_or_else(|| format!("no backend is named `{to}`"))?;
                if !pool.iter().any(|p| p == to) {
                    return Err(format!(
                        "backend `{to}` is not in the pool of listener `{listener}`"
                    ));
                }
                if exclude.contains(&to) {
                    return Err(format!("the session is already on `{to}`"));
                }
                if b.admin != AdminState::Active || !b.healthy {
                    return Err(format!(
                        "backend `{to}` is {} and takes no sessions",
                        b.state()
                    ));
                }
                to.to_string()
            }
            None => pool
                .iter()
                .filter(|n| !exclude.contains(&n.as_str()))
                .filter_map(|n| inner.backends.get(n))
                .filter(|b| b.admin == AdminState::Active && b.healthy)
                .min_by_key(|b| b.sessions + b.pending)
                .map(|b| b.config.name.clone())
                .ok_or_else(|| format!("no backend of listener `{listener}` can take a session"))?,
        };
        let b = inner.backends.get_mut(&name).expect("picked from the map");
        b.pending += 1;
        Ok(b.config.clone())
    }

    /// Reserves a place on the named backend whatever its state: for a connection that belongs
    /// to a session the backend already holds (an OSCAR BOS or service connection). A drain
    /// then moves it like any other.
    pub fn reserve_on(&self, backend: &str) -> Option<BackendConfig> {
        let mut inner = self.lock();
        let b = inner.backends.get_mut(backend)?;
        b.pending += 1;
        Some(b.config.clone())
    }

    /// Gives back a reservation that did not become a session.
    pub fn release(&self, backend: &str) {
        if let Some(b) = self.lock().backends.get_mut(backend) {
            b.pending = b.pending.saturating_sub(1);
        }
    }

    /// A session is now on `info.backend` (whose reservation it consumes).
    pub fn add_session(&self, info: SessionInfo, handle: SessionHandle) {
        let mut inner = self.lock();
        if let Some(b) = inner.backends.get_mut(&info.backend) {
            b.pending = b.pending.saturating_sub(1);
            b.sessions += 1;
        }
        if inner.shutting_down {
            handle.shut_down();
        }
        let entry = Entry {
            info: Box::new(info),
            handle,
        };
        inner.sessions.insert(entry.info.id, entry);
    }

    /// Tells every session, and every session added from now on, that handover is shutting
    /// down. Sessions learn it through their mailbox rather than each polling the shutdown
    /// token on every event: the token's futures lock one mutex that all sessions share.
    pub fn shut_down_sessions(&self) {
        let handles: Vec<SessionHandle> = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.sessions.values().map(|e| e.handle.clone()).collect()
        };
        for handle in handles {
            handle.shut_down();
        }
    }

    /// A session moved to `to` (consuming its reservation there).
    pub fn session_moved(&self, id: u64, to: &str) {
        let mut inner = self.lock();
        let Some(from) = inner.sessions.get(&id).map(|e| e.info.backend.clone()) else {
            return;
        };
        if let Some(b) = inner.backends.get_mut(&from) {
            b.sessions = b.sessions.saturating_sub(1);
        }
        if let Some(b) = inner.backends.get_mut(to) {
            b.pending = b.pending.saturating_sub(1);
            b.sessions += 1;
        }
        if let Some(e) = inner.sessions.get_mut(&id) {
            e.info.backend = to.to_string();
            e.info.migrations += 1;
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    pub fn remove_session(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(e) = inner.sessions.remove(&id) {
            if let Some(b) = inner.backends.get_mut(&e.info.backend) {
                b.sessions = b.sessions.saturating_sub(1);
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    pub fn set_identity(&self, id: u64, identity: Option<String>) {
        if let Some(e) = self.lock().sessions.get_mut(&id) {
            e.info.identity = identity;
        }
    }

    pub fn session(&self, id: u64) -> Option<(SessionInfo, SessionHandle)> {
        self.lock()
            .sessions
            .get(&id)
            .map(|e| (SessionInfo::clone(&e.info), e.handle.clone()))
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self
            .lock()
            .sessions
            .values()
            .map(|e| SessionInfo::clone(&e.info))
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The sessions on one backend, with their handles.
    pub fn sessions_on(&self, backend: &str) -> Vec<(u64, SessionHandle)> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .sessions
            .values()
            .filter(|e| e.info.backend == backend)
            .map(|e| (e.info.id, e.handle.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    pub fn all_handles(&self) -> Vec<SessionHandle> {
        self.lock()
            .sessions
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }

    pub fn backend(&self, name: &str) -> Option<Backend> {
        self.lock().backends.get(name).cloned()
    }

    pub fn backends(&self) -> Vec<Backend> {
        self.lock().backends.values().cloned().collect()
    }

    /// Listener names whose pool holds `backend`.
    pub fn pools_of(&self, backend: &str) -> Vec<String> {
        self.lock()
            .pools
            .iter()
            .filter(|(_, pool)| pool.iter().any(|b| b == backend))
            .map(|(l, _)| l.clone())
            .collect()
    }

    pub fn set_admin(&self, name: &str, state: AdminState) -> bool {
        match self.lock().backends.get_mut(name) {
            Some(b) => {
                b.admin = state;
                true
            }
            None => false,
        }
    }

    /// Records a health verdict; returns true when it changed.
    pub fn set_healthy(&self, name: &str, healthy: bool) -> bool {
        match self.lock().backends.get_mut(name) {
            Some(b) if b.healthy != healthy => {
                b.healthy = healthy;
                true
            }
            _ => false,
        }
    }

    /// Adds or changes a backend, and sets its pools when given. Returns true when created.
    pub fn put_backend(
        &self,
        config: BackendConfig,
        pools: Option<Vec<String>>,
    ) -> Result<bool, String> {
        let mut inner = self.lock();
        if let Some(pools) = &pools {
            if let Some(unknown) = pools.iter().find(|p| !inner.pools.contains_key(*p)) {
                return Err(format!("no listener is named `{unknown}`"));
            }
        }
        let name = config.name.clone();
        let created = match inner.backends.get_mut(&name) {
            Some(b) => {
                b.config = config;
                false
            }
            None => {
                inner.backends.insert(
                    name.clone(),
                    Backend {
                        config,
                        admin: AdminState::Active,
                        healthy: true,
                        sessions: 0,
                        pending: 0,
                    },
                );
                true
            }
        };
        if let Some(pools) = pools {
            for (listener, pool) in inner.pools.iter_mut() {
                let member = pools.contains(listener);
                pool.retain(|b| b != &name);
                if member {
                    pool.push(name.clone());
                }
            }
        }
        Ok(created)
    }

    /// Replaces the pool of each listener named (a reload's pools; the file's order is the
    /// pool's order).
    pub fn set_pools(&self, pools: &[(String, Vec<String>)]) {
        let mut inner = self.lock();
        for (listener, pool) in pools {
            inner.pools.insert(listener.clone(), pool.clone());
        }
    }

    /// Removes a backend with no sessions. `Err(Some(n))`: it still has n; `Err(None)`: unknown.
    pub fn remove_backend(&self, name: &str) -> Result<(), Option<usize>> {
        let mut inner = self.lock();
        let b = inner.backends.get(name).ok_or(None)?;
        if b.sessions + b.pending > 0 {
            return Err(Some(b.sessions + b.pending));
        }
        inner.backends.remove(name);
        for pool in inner.pools.values_mut() {
            pool.retain(|b| b != name);
        }
        Ok(())
    }

    pub fn gauges(&self) -> Gauges {
        let inner = self.lock();
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (listener, pool) in &inner.pools {
            for b in pool {
                counts.insert((listener.clone(), b.clone()), 0);
            }
        }
        for e in inner.sessions.values() {
            *counts
                .entry((e.info.listener.clone(), e.info.backend.clone()))
                .or_insert(0) += 1;
        }
        Gauges {
            sessions: counts.into_iter().map(|((l, b), n)| (l, b, n)).collect(),
            backends: inner
                .backends
                .values()
                .map(|b| (b.config.name.clone(), b.state()))
                .collect(),
        }
    }
}
