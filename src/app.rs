//! Wiring: binds the listeners and the admin API, builds the registry, metrics and adapters,
//! spawns every task on one `TaskTracker`, and shuts down gracefully (SIGTERM) or fast
//! (SIGINT).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::control::Engine;
use crate::drain::Drains;
use crate::listener::ListenerTask;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::SessionCtx;

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

/// Binds everything the config names and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::new(&config, metrics));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let engine = Arc::new(Engine {
        registry: registry.clone(),
        drains: Drains::new(registry.clone(), config.migration.clone()),
    });
    let failover_limiter = Arc::new(tokio::sync::Semaphore::new(config.migration.max_concurrent));
    // Sessions hear of a shutdown through their mailboxes, not by each polling the token.
    let (sessions, cancelled) = (registry.clone(), shutdown.clone());
    tracker.spawn(async move {
        cancelled.cancelled().await;
        sessions.shut_down_sessions();
    });

    let mut listeners = Vec::new();
    for l in &config.listener {
        let protocol = crate::protocol::lookup(&l.protocol, l).context("protocol validated")?;
        // Zero series from the start, so rate() and alerts see the first event.
        registry.metrics.preregister(&[(&l.name, protocol.name())]);
        let tls = match &l.tls {
            Some(files) => Some(TlsAcceptor::from(
                crate::net::tls::server_config(files).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        let socket = TcpListener::bind(&l.listen)
            .await
            .with_context(|| format!("cannot listen on {} for listener `{}`", l.listen, l.name))?;
        let addr = socket.local_addr()?;
        info!(listener = %l.name, address = %addr, protocol = protocol.name(), "listening");
        listeners.push((l.name.clone(), addr));
        let ctx = Arc::new(SessionCtx {
            registry: registry.clone(),
            listener: l.name.clone(),
            protocol: protocol.name(),
            migration: config.migration.clone(),
            shutdown: shutdown.clone(),
            failover_limiter: failover_limiter.clone(),
            registration_timeout: Duration::from_millis(l.registration_timeout_ms),
            client_stall_timeout: Duration::from_millis(l.client_stall_timeout_ms),
        });
        let task = ListenerTask {
            config: l.clone(),
            ctx,
            protocol: Arc::from(protocol),
            tls,
            tracker: tracker.clone(),
            per_ip: Default::default(),
        };
        tracker.spawn(task.run(socket));
    }

    let admin_socket = TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", config.admin.listen))?;
    let admin = admin_socket.local_addr()?;
    let token = match &config.admin.token_file {
        Some(path) => Some(crate::config::read_token(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    tracker.spawn(crate::admin::serve(
        admin_socket,
        engine.clone(),
        token,
        shutdown.clone(),
    ));
    tracker.spawn(crate::health::run(
        registry.clone(),
        config.health.clone(),
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

/// `handover serve`: runs until SIGTERM (graceful, 10 s grace) or SIGINT (at once). Under
/// systemd (`Type=notify`) it reports readiness once everything is bound.
pub async fn serve_forever(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = start(config).await?;
    // Everything is bound: clients can connect and the admin API answers.
    crate::notify::ready(&format!(
        "serving {} listener(s), admin on {}",
        running.listeners.len(),
        running.admin
    ));
    tokio::select! {
        _ = term.recv() => {
            info!("SIGTERM: closing sessions and exiting");
            crate::notify::stopping("closing sessions");
            running.shutdown(Duration::from_secs(10)).await;
        }
        _ = int.recv() => {
            info!("SIGINT: exiting now");
        }
    }
    Ok(())
}
