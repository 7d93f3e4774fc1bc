//! Wiring: binds the listeners and the admin API, builds the registry, metrics and adapters,
//! spawns every task on one `TaskTracker`, reloads the config on SIGHUP, and shuts down
//! gracefully (SIGTERM) or fast (SIGINT).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::admin::api::ControlApi;
use crate::config::{Config, ListenerConfig};
use crate::control::Engine;
use crate::drain::Drains;
use crate::listener::{ListenerState, ListenerTask, Shared};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::{Live, Reloader};
use crate::workers::Workers;

/// A running proxy: its bound addresses and the means to stop it.
pub struct Running {
    /// (listener name, bound address), in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub engine: Arc<Engine>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("no such listener")
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.engine.registry
    }

    /// Stops accepting, closes every session (flushing what is queued) and waits up to
    /// `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the grace period; exiting anyway");
        }
    }
}

/// Binds everything the config names and starts serving. A config read from a file can be
/// reloaded later ([`Engine::reload`](crate::admin::api::ControlApi::reload), SIGHUP).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    metrics.config_loaded();
    let registry = Arc::new(Registry::new(&config, metrics));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let drains = Arc::new(Drains::new(registry.clone(), config.migration.clone()));
    let workers = Arc::new(
        Workers::start(config.runtime.workers).context("cannot start the worker threads")?,
    );
    registry.metrics.watch_workers(workers.counters());
    info!(workers = workers.len(), "session workers started");
    let shared = Shared {
        workers,
        registry: registry.clone(),
        shutdown: shutdown.clone(),
        failover_limiter: Arc::new(Semaphore::new(config.migration.max_concurrent)),
    };
    // Sessions hear of a shutdown through their mailboxes, not by each polling the token.
    let (sessions, cancelled) = (registry.clone(), shutdown.clone());
    tracker.spawn(async move {
        cancelled.cancelled().await;
        sessions.shut_down_sessions();
    });

    let mut listeners = Vec::new();
    let mut states = Vec::new();
    for l in &config.listener {
        let (addr, state) = bind_listener(l, &config, &shared, &tracker).await?;
        listeners.push((l.name.clone(), addr));
        states.push((l.name.clone(), state));
    }

    let admin_socket = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", config.admin.listen))?;
    let admin = admin_socket.local_addr()?;
    let token = match &config.admin.token_file {
        Some(path) => Some(crate::config::read_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let token = Arc::new(Live::new(token));
    let health = Arc::new(Live::new(config.health.clone()));
    let reloader = config.path.clone().map(|path| Reloader {
        path,
        current: Mutex::new(config.clone()),
        registry: registry.clone(),
        drains: drains.clone(),
        shared: shared.clone(),
        listeners: states,
        health: health.clone(),
        token: token.clone(),
        retiring: Default::default(),
        runtime: tokio::runtime::Handle::current(),
    });
    let engine = Arc::new(Engine {
        registry: registry.clone(),
        drains,
        reloader,
    });
    tracker.spawn(crate::admin::serve(
        admin_socket,
        engine.clone(),
        token,
        shutdown.clone(),
    ));
    tracker.spawn(crate::health::run(
        registry.clone(),
        health,
        shutdown.clone(),
    ));
    Ok(Running {
        listeners,
        admin,
        engine,
        shutdown,
        tracker,
    })
}

/// Binds one listener and spawns its accept loop; its state is what a reload replaces.
async fn bind_listener(
    l: &ListenerConfig,
    config: &Config,
    shared: &Shared,
    tracker: &TaskTracker,
) -> anyhow::Result<(SocketAddr, Arc<Live<ListenerState>>)> {
    let state = ListenerState::build(l, &config.migration, shared).map_err(|problem| {
        anyhow::anyhow!("{}: listener `{}`: {problem}", config.source, l.name)
    })?;
    // Zero series from the start, so rate() and alerts see the first event.
    shared
        .registry
        .metrics
        .preregister(&[(&l.name, state.protocol.name())]);
    let socket = TcpListener::bind(&l.listen)
        .await
        .with_context(|| format!("cannot listen on {} for listener `{}`", l.listen, l.name))?;
    let addr = socket.local_addr()?;
    info!(listener = %l.name, address = %addr, protocol = state.protocol.name(), "listening");
    let state = Arc::new(Live::new(state));
    let task = ListenerTask {
        state: state.clone(),
        tracker: tracker.clone(),
        open: Default::default(),
        per_ip: Default::default(),
        workers: shared.workers.clone(),
    };
    tracker.spawn(task.run(socket));
    Ok((addr, state))
}

/// `handover serve`: runs until SIGTERM (graceful, 10 s grace) or SIGINT (at once). Under
/// systemd (`Type=notify`) it reports readiness once everything is bound.
pub async fn serve_forever(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = start(config).await?;
    // Everything is bound: clients can connect and the admin API answers.
    crate::notify::ready(&format!(
        "serving {} listener(s), admin on {}",
        running.listeners.len(),
        running.admin
    ));
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!("SIGTERM: closing sessions and exiting");
                crate::notify::stopping("closing sessions");
                running.shutdown(Duration::from_secs(10)).await;
                return Ok(());
            }
            _ = int.recv() => {
                info!("SIGINT: exiting now");
                return Ok(());
            }
            _ = hup.recv() => sighup(&running),
        }
    }
}

/// SIGHUP: reload the config file, telling systemd (`RELOADING=1`, then `READY=1` whatever the
/// outcome: the proxy serves either way). The reload logs its own line.
fn sighup(running: &Running) {
    crate::notify::reloading("reloading the config");
    let status = match running.engine.reload() {
        Ok(report) => format!("config reloaded: {}", report.summary()),
        Err(e) => format!("config reload refused: {e}"),
    };
    crate::notify::ready(&status);
}
