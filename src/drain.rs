//! The drain controller: one job per draining backend, migrating its sessions away with at
//! most `max_concurrent` in flight and at most `max_per_second` new backend connections per
//! second, because legacy IRC servers throttle bursts from one address (ngircd's listen
//! backlog is 10). A drain ends `drained` when the backend is empty, or stays `draining` after
//! three rounds that moved nobody.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::api::{ControlError, DrainFinished, DrainStarted};
use crate::config::MigrationConfig;
use crate::metrics::{MigrationReason, Outcome};
use crate::registry::{AdminState, Registry};
use crate::reload::Live;

struct Job {
    cancel: CancellationToken,
    done: watch::Receiver<Option<DrainFinished>>,
}

pub struct Drains {
    registry: Arc<Registry>,
    /// Read when a drain starts: a reload's new pacing applies to the next drain.
    config: Live<MigrationConfig>,
    jobs: Mutex<HashMap<String, Job>>,
    /// The proxy's runtime: drains may be started from any thread (admin, tests, embedders).
    runtime: tokio::runtime::Handle,
}

impl Drains {
    /// Must be called inside the proxy's runtime.
    pub fn new(registry: Arc<Registry>, config: MigrationConfig) -> Self {
        Self {
            registry,
            config: Live::new(config),
            jobs: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The pacing for drains started from now on.
    pub fn set_config(&self, config: MigrationConfig) {
        self.config.set(config);
    }

    /// Marks the backend draining and starts its job unless one is running.
    pub fn start(
        &self,
        name: &str,
    ) -> Result<(DrainStarted, watch::Receiver<Option<DrainFinished>>), ControlError> {
        if !self.registry.set_admin(name, AdminState::Draining) {
            return Err(ControlError::NotFound(format!(
                "no backend is named `{name}`"
            )));
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let running = jobs.get(name).is_some_and(|j| j.done.borrow().is_none());
        if !running {
            let (tx, rx) = watch::channel(None);
            let cancel = CancellationToken::new();
            let job = DrainJob {
                registry: self.registry.clone(),
                config: self.config.get(),
                backend: name.to_string(),
                cancel: cancel.clone(),
            };
            self.runtime.spawn(async move {
                let result = job.run().await;
                let _ = tx.send(Some(result));
            });
            jobs.insert(name.to_string(), Job { cancel, done: rx });
        }
        let done = jobs[name].done.clone();
        drop(jobs);
        let b = self.registry.backend(name).expect("exists");
        Ok((
            DrainStarted {
                backend: name.to_string(),
                state: b.state().to_string(),
                sessions: b.sessions,
            },
            done,
        ))
    }

    /// Starts (or joins) a drain and waits until it is over.
    pub async fn wait(&self, name: &str) -> Result<DrainFinished, ControlError> {
        let (_, mut done) = self.start(name)?;
        loop {
            if let Some(result) = done.borrow().clone() {
                return Ok(result);
            }
            if done.changed().await.is_err() {
                return Err(ControlError::Conflict(format!(
                    "the drain of `{name}` was stopped"
                )));
            }
        }
    }

    /// Stops a drain; the backend takes sessions again.
    pub fn undrain(&self, name: &str) -> Result<(), ControlError> {
        if !self.registry.set_admin(name, AdminState::Active) {
            return Err(ControlError::NotFound(format!(
                "no backend is named `{name}`"
            )));
        }
        if let Some(job) = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            job.cancel.cancel();
        }
        Ok(())
    }
}

struct DrainJob {
    registry: Arc<Registry>,
    config: Arc<MigrationConfig>,
    backend: String,
    cancel: CancellationToken,
}

impl DrainJob {
    async fn run(self) -> DrainFinished {
        let migrated = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let started = tokio::time::Instant::now();
        let mut stalled = 0;
        info!(backend = %self.backend, sessions = self.registry.sessions_on(&self.backend).len(), "drain started");
        while !self.cancel.is_cancelled() {
            let before = self.registry.sessions_on(&self.backend).len();
            if before == 0 {
                self.registry.set_admin(&self.backend, AdminState::Drained);
                break;
            }
            self.round(&migrated, &failed).await;
            let after = self.registry.sessions_on(&self.backend).len();
            stalled = if after >= before { stalled + 1 } else { 0 };
            if stalled >= 3 {
                break;
            }
            if after > 0 {
                tokio::select! {
                    _ = self.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        let state = self
            .registry
            .backend(&self.backend)
            .map(|b| b.state())
            .unwrap_or("drained");
        let result = DrainFinished {
            backend: self.backend.clone(),
            state: state.to_string(),
            migrated: migrated.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
        };
        info!(
            backend = %self.backend, state, migrated = result.migrated, failed = result.failed,
            seconds = started.elapsed().as_secs_f64(), "drain finished"
        );
        result
    }

    /// One pass over the backend's sessions, paced.
    async fn round(&self, migrated: &Arc<AtomicU64>, failed: &Arc<AtomicU64>) {
        let slots = Arc::new(Semaphore::new(self.config.max_concurrent));
        let mut pace = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(self.config.max_per_second),
        ));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = JoinSet::new();
        for (_, handle) in self.registry.sessions_on(&self.backend) {
            let permit = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = pace.tick() => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (migrated, failed) = (migrated.clone(), failed.clone());
            tasks.spawn(async move {
                let result = handle.migrate(None, MigrationReason::Drain).await;
                drop(permit);
                match result {
                    Some(r) if r.outcome == Outcome::Ok => {
                        migrated.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused before anything was tried: it may wait for another session of
                    // this round (an OSCAR service connection for its BOS session), so it
                    // gets one more try once the round's moves are over.
                    Some(r) if !r.attempted => return Some(handle),
                    Some(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {} // the session ended meanwhile
                }
                None
            });
        }
        let mut refused = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            refused.extend(joined.ok().flatten());
        }
        for handle in refused {
            match handle.migrate(None, MigrationReason::Drain).await {
                Some(r) if r.outcome == Outcome::Ok => migrated.fetch_add(1, Ordering::Relaxed),
                Some(_) => failed.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
        }
    }
}
