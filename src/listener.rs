//! One accept loop per `[[listener]]`. The loop only accepts and spawns: the TLS handshake,
//! the backend choice and connect all run in the spawned task, under timeouts, so one slow
//! client never holds up the others. What it serves with is a [`ListenerState`] read per
//! accepted client, which a config reload replaces.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{BackendConfig, ListenerConfig, MigrationConfig};
use crate::net::connect::connect;
use crate::net::Stream;
use crate::protocol::{Protocol, Route, SessionAdapter};
use crate::registry::Registry;
use crate::reload::Live;
use crate::session::{self, SessionCtx};
use crate::workers::{Place, Workers};

/// What a listener serves new clients with; a reload swaps it whole, and a session keeps
/// the one it was accepted under.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub ctx: Arc<SessionCtx>,
    pub protocol: Arc<dyn Protocol>,
    /// The client-facing TLS config; a reload re-reads the certificate and key, so new
    /// handshakes get the rotated certificate while open sessions keep theirs.
    pub tls: Option<TlsAcceptor>,
}

pub struct ListenerTask {
    pub state: Arc<Live<ListenerState>>,
    pub tracker: TaskTracker,
    /// Sessions open now, against `max_sessions` (read anew for every client, so a reload
    /// that changes the limit counts the sessions already open).
    pub open: Arc<AtomicUsize>,
    /// Sessions per client address, for `max_sessions_per_ip`; an address leaves the map
    /// with its last session. Kept across reloads like `open`.
    pub per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Where the accepted sessions run.
    pub workers: Arc<Workers>,
}

/// One session's share of its client address's count; given back on drop.
pub struct IpSlot {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// One session's place under `max_sessions`; given back on drop.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ListenerTask {
    pub async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        let shutdown = this.state.get().ctx.shutdown.clone();
        // Accepted sockets go to a worker's reactor, never this one's: accepting through the
        // listener's readiness, not `TcpListener::accept`, spares each of them a
        // registration here and its removal (two epoll_ctl calls per session).
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may not own its
        // descriptor; a `std::net::TcpListener` does (an `OwnedFd`), which is what the
        // unsafe `register` asks the caller to promise, and this crate forbids `unsafe`.
        #[allow(deprecated)]
        let listener = match listener.into_std().and_then(AsyncFd::new) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(listener = %this.state.get().config.name, error = %e, "cannot watch the listening socket; not accepting");
                return;
            }
        };
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = accept(&listener) => r,
            };
            // The state of the moment: a reload between two accepts applies to the second.
            let state = this.state.get();
            match accepted {
                Ok((tcp, addr)) => {
                    backoff = Duration::from_millis(5);
                    state
                        .ctx
                        .registry
                        .metrics
                        .session_accepted(&state.config.name);
                    let Some(slot) = this.slot(state.config.max_sessions) else {
                        state.refuse(
                            addr,
                            "max_sessions",
                            "the listener holds max_sessions already",
                        );
                        continue;
                    };
                    let Some(ip_slot) = this.ip_slot(addr.ip(), state.config.max_sessions_per_ip)
                    else {
                        state.refuse(
                            addr,
                            "max_sessions_per_ip",
                            "the client address holds max_sessions_per_ip already",
                        );
                        continue;
                    };
                    // The session runs on a worker; its socket joins that worker's reactor
                    // in `serve`.
                    this.workers.spawn(|place| {
                        let slots = (slot, ip_slot, place);
                        this.tracker.track_future(state.serve(tcp, addr, slots))
                    });
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    // Out of file descriptors: back off instead of spinning on accept.
                    warn!(listener = %state.config.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => debug!(listener = %state.config.name, error = %e, "accept failed"),
            }
        }
    }

    /// A place for one more session, or `None` when `limit` are open.
    fn slot(&self, limit: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.open.clone()))
    }

    /// Counts a session against its address, or `None` when the address is at `limit`
    /// (0: no limit).
    fn ip_slot(&self, ip: IpAddr, limit: usize) -> Option<Option<IpSlot>> {
        if limit == 0 {
            return Some(None);
        }
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Some(IpSlot {
            per_ip: self.per_ip.clone(),
            ip,
        }))
    }
}

/// What every listener's sessions share, whatever the config: made once at start.
#[derive(Clone)]
pub struct Shared {
    /// The threads sessions run on; the accept loops hand each client to one.
    pub workers: Arc<Workers>,
    pub registry: Arc<Registry>,
    pub shutdown: CancellationToken,
    /// Bounds failovers in flight, so a dead backend's sessions reach the next one paced.
    pub failover_limiter: Arc<Semaphore>,
}

impl ListenerState {
    /// The state a listener serves with under `config`; reads the TLS certificate and key.
    pub fn build(
        config: &ListenerConfig,
        migration: &MigrationConfig,
        shared: &Shared,
    ) -> Result<Self, String> {
        let protocol = crate::protocol::lookup(&config.protocol, config)
            .ok_or_else(|| format!("unknown protocol `{}`", config.protocol))?;
        let tls = match &config.tls {
            Some(files) => Some(TlsAcceptor::from(crate::net::tls::server_config(files)?)),
            None => None,
        };
        let ctx = Arc::new(SessionCtx {
            registry: shared.registry.clone(),
            listener: config.name.clone(),
            protocol: protocol.name(),
            migration: migration.clone(),
            shutdown: shared.shutdown.clone(),
            failover_limiter: shared.failover_limiter.clone(),
            registration_timeout: Duration::from_millis(config.registration_timeout_ms),
            client_stall_timeout: Duration::from_millis(config.client_stall_timeout_ms),
            splice: config.splice.unwrap_or(true),
        });
        Ok(Self {
            config: config.clone(),
            ctx,
            protocol: Arc::from(protocol),
            tls,
        })
    }

    fn refuse(&self, addr: SocketAddr, label: &'static str, why: &str) {
        self.ctx
            .registry
            .metrics
            .connection_refused(&self.config.name, label);
        info!(listener = %self.config.name, client.addr = %addr, why, "connection refused");
    }

    /// The whole life of one client connection. The set-up (TLS handshake, backend connect)
    /// runs in its own boxed future: a task's future is allocated once at its largest, and
    /// for the session's whole life it should be only as large as the session itself. Not an
    /// `async fn` for the same reason: those store by-value arguments twice.
    #[allow(clippy::manual_async_fn)] // deliberate, see above
    fn serve(
        self: Arc<Self>,
        tcp: std::net::TcpStream,
        addr: SocketAddr,
        slots: (Slot, Option<IpSlot>, Place),
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            let _slots = slots;
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    debug!(listener = %self.config.name, client.addr = %addr, error = %e, "cannot register the accepted socket");
                    return;
                }
            };
            let mut adapter = self.protocol.new_session(&self.config);
            let Some((client, backend, backend_config)) =
                Box::pin(self.set_up(tcp, addr, &mut *adapter)).await
            else {
                return;
            };
            // Everything is moved into the call, so only the session's future is kept.
            session::run(
                self.ctx.clone(),
                client,
                addr,
                backend,
                &backend_config,
                adapter,
            )
            .await;
        }
    }

    /// TLS handshake and backend connect: the client stream, the backend stream and the
    /// backend's config, or `None` when refused.
    async fn set_up(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        adapter: &mut dyn SessionAdapter,
    ) -> Option<(Stream, Stream, BackendConfig)> {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        // On every refusal below the client's socket is still open when the refusal is
        // counted, and closes after: whoever sees the close and then scrapes sees the count.
        let mut client = match &self.tls {
            None => Stream::Plain(tcp),
            Some(acceptor) => {
                let limit = Duration::from_millis(self.config.handshake_timeout_ms);
                let mut accept = std::pin::pin!(acceptor.accept(tcp).into_fallible());
                match tokio::time::timeout(limit, &mut accept).await {
                    Ok(Ok(tls)) => Stream::TlsServer(Box::new(tls)),
                    Ok(Err((e, _tcp))) => {
                        self.refuse(addr, "tls_handshake", &format!("TLS handshake failed: {e}"));
                        return None;
                    }
                    Err(_) => {
                        self.refuse(addr, "tls_timeout", "TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        let limit = Duration::from_millis(self.config.handshake_timeout_ms);
        let route =
            match tokio::time::timeout(limit, route::route(&mut client, local, adapter)).await {
                Ok(Ok(route)) => route,
                Ok(Err(why)) => {
                    self.refuse(addr, "first_frame", &why);
                    return None;
                }
                Err(_) => {
                    self.refuse(
                        addr,
                        "first_frame",
                        "the client's first frame took too long",
                    );
                    return None;
                }
            };
        let (send, connected) = match route {
            Route::Need(_) => unreachable!("route() loops until routed"),
            Route::Pool(send) => (send, self.connect_backend(addr).await),
            Route::To {
                backend,
                address,
                send,
            } => (Some(send), self.connect_to(addr, &backend, address).await),
        };
        let Some((mut backend, config)) = connected else {
            self.refuse(
                addr,
                "no_backend",
                "no backend of the pool could take the session",
            );
            return None;
        };
        if let Some(send) = send {
            if let Err(e) = backend.write_all(&send).await {
                self.ctx.registry.release(&config.name);
                let why = format!("backend {} failed the first write: {e}", config.name);
                self.refuse(addr, "no_backend", &why);
                return None;
            }
        }
        Some((client, backend, config))
    }

    /// A connection routed to a backend's session (OSCAR BOS or service), at the address the
    /// backend itself named.
    async fn connect_to(
        &self,
        addr: SocketAddr,
        backend: &str,
        address: String,
    ) -> Option<(Stream, BackendConfig)> {
        let timeout = Duration::from_millis(self.ctx.migration.connect_timeout_ms);
        let mut config = self.ctx.registry.reserve_on(backend)?;
        config.address = address;
        match connect(&config, addr, timeout).await {
            Ok(stream) => Some((stream, config)),
            Err(e) => {
                self.ctx.registry.release(&config.name);
                info!(listener = %self.config.name, backend = %config.name, error = %e, "backend connect failed");
                None
            }
        }
    }

    /// Tries the pool's backends, least-loaded first, each once.
    async fn connect_backend(&self, addr: SocketAddr) -> Option<(Stream, BackendConfig)> {
        let timeout = Duration::from_millis(self.ctx.migration.connect_timeout_ms);
        let mut failed: Vec<String> = Vec::new();
        loop {
            let exclude: Vec<&str> = failed.iter().map(String::as_str).collect();
            let backend = self
                .ctx
                .registry
                .reserve(&self.config.name, &exclude, None)
                .ok()?;
            match connect(&backend, addr, timeout).await {
                Ok(stream) => return Some((stream, backend)),
                Err(e) => {
                    self.ctx.registry.release(&backend.name);
                    info!(listener = %self.config.name, backend = %backend.name, error = %e, "backend connect failed");
                    failed.push(backend.name);
                }
            }
        }
    }
}

mod route {
    //! Before a backend is chosen: the adapter's greeting, and reading the client's first
    //! frame for protocols that route by it (OSCAR's cookie). Reads exactly what the adapter
    //! asks for, so nothing past that frame is consumed here.

    use std::net::SocketAddr;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::net::Stream;
    use crate::protocol::{Route, SessionAdapter};

    pub async fn route(
        client: &mut Stream,
        local: Option<SocketAddr>,
        adapter: &mut dyn SessionAdapter,
    ) -> Result<Route, String> {
        if let Some(local) = local {
            if let Some(greeting) = adapter.greeting(local) {
                client
                    .write_all(&greeting)
                    .await
                    .map_err(|e| format!("client: {e}"))?;
            }
        }
        let mut buf = BytesMut::new();
        loop {
            match adapter
                .route(&mut buf)
                .map_err(|e| format!("client sent {e}"))?
            {
                Route::Need(n) => {
                    let want = n.saturating_sub(buf.len()).max(1) as u64;
                    let read = (&mut *client)
                        .take(want)
                        .read_buf(&mut buf)
                        .await
                        .map_err(|e| format!("client: {e}"))?;
                    if read == 0 {
                        return Err("the client closed before its first frame".into());
                    }
                }
                route => return Ok(route),
            }
        }
    }
}

/// Accepts one client: a non-blocking socket registered with no reactor yet, and its
/// address.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{acceptfrom_with, SocketFlags};
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            Ok(acceptfrom_with(
                l.get_ref(),
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            )?)
        });
        if let Ok(accepted) = accepted {
            let (fd, addr) = accepted?;
            let addr = addr
                .and_then(|a| SocketAddr::try_from(a).ok())
                .ok_or_else(|| std::io::Error::other("the client's address is not IP"))?;
            return Ok((std::net::TcpStream::from(fd), addr));
        }
    }
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux.
    matches!(e.raw_os_error(), Some(23) | Some(24))
}
