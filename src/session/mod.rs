//! The session task: one per client, owning the client link, the current backend link and
//! the adapter (with its snapshot). Everything else reaches it through a [`SessionHandle`].
//!
//! This is the only place with `select!`; every branch polls a cancel-safe future
//! ([`link::Link::io`], channel `recv`, timers). The migration's phases live in `migrate.rs`.

pub mod link;
mod migrate;
mod timer;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use crate::config::{BackendConfig, MigrationConfig};
use crate::metrics::MigrationReason;
use crate::protocol::{ClientInfo, Direction, SessionAdapter, Verdict};
use crate::registry::{Registry, SessionInfo};
use link::{IoEvent, Link};
use migrate::Migration;
use timer::Timer;

/// Most bytes queued towards one side before the other side stops being read.
pub const OUT_LIMIT: usize = 64 * 1024;

/// The most bytes of buffers one session can hold, for a protocol whose longest frame is
/// `max_frame` bytes (IRC: 8191 + 512), with `inflight_limit` the migration's
/// `inflight_limit_bytes`. Each link (client, backend, and a second backend during a migration)
/// has a read buffer of at most one read plus a partial frame, and an outgoing queue of at most
/// [`OUT_LIMIT`] plus one read's worth (reading stops at the limit, after the read that crossed
/// it); the in-flight queue and the new backend's held output are bounded the same way. Memory
/// is this times the sessions held, plus a few KiB of fixed state per session; an idle session
/// holds no buffers at all.
pub fn max_buffered_bytes(inflight_limit: usize, max_frame: usize) -> usize {
    let read_buffer = link::READ_CHUNK + max_frame;
    let queue = OUT_LIMIT + link::READ_CHUNK;
    3 * (read_buffer + queue) + (inflight_limit + link::READ_CHUNK) + queue
}

/// What the rest of the program can ask of a session.
pub enum SessionCommand {
    Migrate {
        to: Option<String>,
        reason: MigrationReason,
        reply: oneshot::Sender<MigrationResult>,
    },
    Close,
    /// handover is shutting down (see [`crate::registry::Registry::shut_down_sessions`]).
    Shutdown,
}

/// How a migration ended, as the admin API reports it.
#[derive(Debug, Clone)]
pub struct MigrationResult {
    pub from: String,
    pub to: String,
    pub outcome: crate::metrics::Outcome,
    pub reason: Option<String>,
    /// False when the migration was refused before anything was tried (409 in the API).
    pub attempted: bool,
}

/// A cheap handle to a session task; dropping every handle does not end the session.
#[derive(Clone)]
pub struct SessionHandle {
    mailbox: Arc<Mailbox>,
}

/// A session's command queue. Commands are rare (an operator's or a drain's migrate, a
/// close), so a locked queue and one waker do: about 80 bytes per session, where a tokio mpsc
/// channel allocates some 700 up front, and polling it registers nothing. Unbounded, but
/// every sender except `close` waits for its reply before it sends again.
struct Mailbox {
    inner: std::sync::Mutex<MailboxInner>,
}

struct MailboxInner {
    /// `None` once the session has ended: sends fail, queued commands were dropped.
    queue: Option<VecDeque<SessionCommand>>,
    waker: Option<std::task::Waker>,
}

impl Mailbox {
    fn new() -> Self {
        Self {
            inner: std::sync::Mutex::new(MailboxInner {
                queue: Some(VecDeque::new()),
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command; gives it back when the session has ended.
    fn send(&self, cmd: SessionCommand) -> Result<(), SessionCommand> {
        let waker = {
            let mut inner = self.lock();
            match inner.queue.as_mut() {
                Some(queue) => queue.push_back(cmd),
                None => return Err(cmd),
            }
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The next command. Cancel-safe: a command leaves the queue only when this returns it.
    async fn recv(&self) -> SessionCommand {
        std::future::poll_fn(|cx| {
            let mut inner = self.lock();
            if let Some(cmd) = inner.queue.as_mut().and_then(VecDeque::pop_front) {
                return std::task::Poll::Ready(cmd);
            }
            if !inner
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.waker = Some(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The session has ended: refuse new commands and drop queued ones (their reply senders
    /// with them, so whoever waits gets `None`).
    fn close(&self) {
        let queued = self.lock().queue.take();
        drop(queued);
    }
}

impl SessionHandle {
    /// Asks the session to migrate and waits for the outcome. `None` if the session is gone.
    pub async fn migrate(
        &self,
        to: Option<String>,
        reason: MigrationReason,
    ) -> Option<MigrationResult> {
        let (reply, rx) = oneshot::channel();
        self.mailbox
            .send(SessionCommand::Migrate { to, reason, reply })
            .ok()?;
        rx.await.ok()
    }

    pub fn close(&self) {
        let _ = self.mailbox.send(SessionCommand::Close);
    }

    pub fn shut_down(&self) {
        let _ = self.mailbox.send(SessionCommand::Shutdown);
    }
}

/// A client frame held while paused. Frames are observed when released, not when held, so
/// the adapter sees them in the state of the backend they go to (IRC rewrites a client's
/// `MODE <nick>` while the nick is being reclaimed on B).
struct Held {
    frame: Bytes,
    observed: bool,
}

/// Who ended a session (the `reason` label of `handover_sessions_closed_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    Client,
    Backend,
    BackendLost,
    Protocol(String),
    Shutdown,
    Admin,
    /// The client link failed (typically a reset).
    Io(ClientIoError),
    /// The client did not complete its registration within `registration_timeout_ms`.
    RegistrationTimeout,
    /// The client left a full queue of output unread for `client_stall_timeout_ms`.
    ClientStalled,
}

impl CloseReason {
    /// One of each, for the labels (`metrics::CLOSE_REASONS` must list every one).
    pub fn examples() -> [CloseReason; 7] {
        [
            CloseReason::Client,
            CloseReason::Backend,
            CloseReason::BackendLost,
            CloseReason::Protocol(String::new()),
            CloseReason::Shutdown,
            CloseReason::Admin,
            CloseReason::Io(ClientIoError(std::io::ErrorKind::Other.into())),
        ]
    }

    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Backend => "backend",
            CloseReason::BackendLost => "backend_lost",
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Admin => "admin",
            CloseReason::Io(_) => "io_error",
            CloseReason::RegistrationTimeout => "registration_timeout",
            CloseReason::ClientStalled => "client_stalled",
        }
    }
}

/// The error that ended a client link, formatted only if it is logged: a reset client is
/// common churn, and formatting its error (`strerror`, an allocation) cost more than the rest
/// of the close when the log line is off.
#[derive(Debug)]
pub struct ClientIoError(pub std::io::Error);

impl Clone for ClientIoError {
    fn clone(&self) -> Self {
        Self(match self.0.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(self.0.kind(), self.0.to_string()),
        })
    }
}

impl PartialEq for ClientIoError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for ClientIoError {}

impl std::fmt::Display for ClientIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client: {}", self.0)
    }
}

/// What every session of a listener shares.
pub struct SessionCtx {
    pub registry: Arc<Registry>,
    pub listener: String,
    pub protocol: &'static str,
    pub migration: MigrationConfig,
    /// Stops the accept loop; sessions hear of the shutdown through their mailbox.
    pub shutdown: CancellationToken,
    /// Bounds failovers in flight, so a dead backend's sessions reach the next one paced.
    pub failover_limiter: Arc<tokio::sync::Semaphore>,
    /// The listener's `registration_timeout_ms`.
    pub registration_timeout: Duration,
    /// The listener's `client_stall_timeout_ms`.
    pub client_stall_timeout: Duration,
    /// The listener's `splice`: raw passthrough may splice(2) instead of copying.
    pub splice: bool,
}

pub struct Session {
    id: u64,
    ctx: Arc<SessionCtx>,
    client: Link,
    client_info: ClientInfo,
    /// The current backend link; `None` between losing a backend and failing over.
    backend: Option<Link>,
    backend_name: String,
    adapter: Box<dyn SessionAdapter>,
    cmds: Arc<Mailbox>,
    /// Boxed: most sessions never migrate, and an idle session should stay small.
    migration: Option<Box<Migration>>,
    /// A migration past its cut whose new backend is still settling, and until when to wait.
    settling: Option<(Box<Migration>, Instant)>,
    /// Client frames held while paused, in order (the in-flight queue).
    held: VecDeque<Held>,
    held_len: usize,
    paused: bool,
    /// The client closed its sending side; the session ends when the backend is done.
    client_done: bool,
    identity: Option<String>,
    /// When a lost backend was noticed; the failover gives up after `failover_timeout_ms`.
    lost_since: Option<Instant>,
    /// When the next failover attempt may start.
    retry_at: Option<Instant>,
    /// An operator's migrate request that a failover in progress will answer.
    pending_reply: Option<oneshot::Sender<MigrationResult>>,
    /// The client link's (read, written) totals already added to `handover_bytes_total`.
    counted_bytes: (u64, u64),
    /// The client limit being watched (registration, then stalls).
    watch: Watch,
    /// The old backend after a cut, read until it closes.
    detached: Option<Box<Detached>>,
    /// The migration's, settling's or failover retry's deadline, and the watched limit's.
    deadline_timer: Timer,
    limit_timer: Timer,
    /// Whether the next turn polls the client link before the backend link (it alternates).
    client_first: bool,
}

/// How long the old backend is read after a cut before it is closed regardless.
const DETACHED_GRACE: Duration = Duration::from_secs(2);

/// The old backend after a cut: it has the adapter's detach frame (IRC `QUIT`) queued and is
/// read until it closes or `until`; what it says goes through `SessionAdapter::after_detach`.
struct Detached {
    link: Link,
    until: Instant,
}

/// The one client limit a session watches at a time, in one small field: until the client
/// has registered, the registration deadline (which bounds everything before it); after, a
/// queue to the client that stays full without a byte written.
#[derive(Debug, Clone, Copy)]
enum Watch {
    Nothing,
    /// Closed with `registration_timeout` at this instant unless the adapter reports the
    /// client registered.
    Register(Instant),
    /// The queue to the client has been full since `since`, with `written` bytes written.
    Stall {
        since: Instant,
        written: u64,
    },
}

/// Runs a session on an established backend link until it ends.
///
/// The session is built before the returned future, so it lives in that future once (the
/// future is the session's whole per-task memory while it is idle).
pub fn run(
    ctx: Arc<SessionCtx>,
    client: crate::net::Stream,
    client_addr: SocketAddr,
    backend: crate::net::Stream,
    backend_config: &BackendConfig,
    mut adapter: Box<dyn SessionAdapter>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let id = ctx.registry.next_session_id();
    let cmds = Arc::new(Mailbox::new());
    let handle = SessionHandle {
        mailbox: cmds.clone(),
    };
    let info = SessionInfo {
        id,
        listener: ctx.listener.clone(),
        protocol: ctx.protocol,
        client: client_addr,
        backend: backend_config.name.clone(),
        identity: None,
        since: std::time::SystemTime::now(),
        migrations: 0,
    };
    ctx.registry.add_session(info, handle);
    let tls = client.is_tls();
    let client_info = ClientInfo {
        addr: client_addr,
        tls,
    };
    adapter.on_backend(backend_config);
    let mut backend = Link::new(backend);
    // The same prelude as on every later backend (IRC WEBIRC), before any client byte.
    if let Some(prelude) = adapter.backend_prelude(backend_config, &client_info) {
        backend.push(prelude);
    }
    let watch = match adapter.registered() {
        true => Watch::Nothing,
        false => Watch::Register(Instant::now() + ctx.registration_timeout),
    };
    let session = Session {
        id,
        client: Link::new(client),
        client_info,
        backend: Some(backend),
        backend_name: backend_config.name.clone(),
        adapter,
        cmds,
        migration: None,
        settling: None,
        held: VecDeque::new(),
        held_len: 0,
        paused: false,
        client_done: false,
        identity: None,
        lost_since: None,
        retry_at: None,
        pending_reply: None,
        counted_bytes: (0, 0),
        watch,
        detached: None,
        deadline_timer: Timer::default(),
        limit_timer: Timer::default(),
        client_first: true,
        ctx,
    };
    let span = tracing::info_span!("session", session.id = id, listener = %session.ctx.listener, client.addr = %client_addr);
    session.run().instrument(span)
}

impl Session {
    /// Not an `async fn`: one taking `self` by value stores it twice in its future (the
    /// argument and the body's copy); an `async move` block keeps the captured session once.
    #[allow(clippy::manual_async_fn)] // deliberate, see above
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            debug!(backend = %self.backend_name, "session started");
            let reason = self.main_loop().await;
            // Boxed: closing needs a large future that an idle session should not carry.
            Box::pin(self.finish(reason)).await;
        }
    }

    async fn main_loop(&mut self) -> CloseReason {
        loop {
            // Nothing of the first await is held across the second: the session's future
            // stays as small as it was without the second.
            if let Some(reason) = self.step().await {
                self.count_bytes();
                return reason;
            }
            let closed = self.write_through().await;
            self.count_bytes();
            if let Some(reason) = closed {
                return reason;
            }
            if let Some(reason) = self.after_event() {
                return reason;
            }
        }
    }

    /// Waits for one event and handles it; `Some` ends the session.
    async fn step(&mut self) -> Option<CloseReason> {
        self.choose_splicing();
        let read_client = self.want_client_read();
        let read_backend = !self.client.full();
        let client_pollable = self.client.pollable(read_client);
        let backend_pollable = self
            .backend
            .as_ref()
            .is_some_and(|b| b.pollable(read_backend));
        self.deadline_timer
            .set(match (self.deadline(), self.adapter.wake_at()) {
                (Some(d), Some(w)) => Some(d.min(w)),
                (d, w) => d.or(w),
            });
        self.limit_timer.set(self.limit_deadline());
        // Boxed, and only for the few seconds after a cut: an idle session's future stays small.
        let has_detached = self.detached.is_some();
        let detached = self
            .detached
            .as_deref_mut()
            .map(|old| Box::pin(detached_io(old, read_backend)));
        let client_first = self.client_first;
        self.client_first = !client_first;
        // `biased`: a fixed order spares each turn tokio's random start (a thread-local RNG)
        // and the polls of branches before a ready one. Fairness comes from the order instead:
        // a peer that is always ready must not starve the others. First the branches that are
        // ready only for a bounded while: a command or a deadline is consumed when handled (a
        // deadline is always moved or cleared by its handler, or one that fired would win every
        // turn); the new backend's input is bounded by its queue and its deadlines, the old
        // one's by the client's queue and its grace. Then the client and the current backend,
        // which may be ready for ever (a flood): polled last, in an order that alternates every
        // turn, so neither starves the other.
        // Shutdown arrives as a command: polling the shared token here would lock a mutex
        // that every session shares, twice per event.
        tokio::select! {
            biased;
            cmd = self.cmds.recv() => match cmd {
                SessionCommand::Migrate { to, reason, reply } => {
                    self.start_migration(to, reason, Some(reply));
                    None
                }
                SessionCommand::Close => Some(CloseReason::Admin),
                SessionCommand::Shutdown => Some(CloseReason::Shutdown),
            },
            _ = self.deadline_timer.fired(), if self.deadline_timer.is_set() => {
                self.on_timer();
                None
            },
            _ = self.limit_timer.fired(), if self.limit_timer.is_set() => self.limit_reached(),
            ev = migrate::poll(&mut self.migration) => self.on_migration_event(ev),
            ev = maybe(detached), if has_detached => {
                self.on_detached_io(ev);
                None
            }
            ev = links_io(
                client_pollable.then_some((&mut self.client, read_client)),
                self.backend.as_mut().filter(|_| backend_pollable).map(|b| (b, read_backend)),
                client_first,
            ), if client_pollable || backend_pollable => match ev {
                LinkEvent::Client(ev) => self.on_client_io(ev),
                LinkEvent::Backend(ev) => self.on_backend_io(ev),
            },
        }
    }

    /// Writes what the last event queued on the client or the current backend now, in the same
    /// wake-up, instead of in a further turn of the `select!` loop: a small message then costs
    /// one turn per hop instead of two (each turn re-polls every branch). The same write the
    /// next turn would have made, through the same handlers; one that can't go now leaves its
    /// link waiting on write readiness, and the next turn polls it as before.
    async fn write_through(&mut self) -> Option<CloseReason> {
        if let Some(link) = self.backend.as_mut().filter(|b| b.busy()) {
            if let Some(ev) = write_now(link).await {
                if let Some(reason) = self.on_backend_io(ev) {
                    return Some(reason);
                }
            }
        }
        if self.client.busy() {
            if let Some(ev) = write_now(&mut self.client).await {
                return self.on_client_io(ev);
            }
        }
        None
    }

    /// When the watched client limit runs out.
    fn limit_deadline(&self) -> Option<Instant> {
        match self.watch {
            Watch::Nothing => None,
            Watch::Register(by) => Some(by),
            Watch::Stall { since, .. } => Some(since + self.ctx.client_stall_timeout),
        }
    }

    /// A limit's deadline passed: close the session if it still applies.
    fn limit_reached(&mut self) -> Option<CloseReason> {
        let expired = self.limit_deadline().is_some_and(|at| at <= Instant::now());
        match self.watch {
            _ if !expired => None,
            Watch::Nothing => None,
            Watch::Register(_) => Some(CloseReason::RegistrationTimeout),
            Watch::Stall { .. } => Some(CloseReason::ClientStalled),
        }
    }

    /// Keeps the watched limit current after an event.
    fn track_limits(&mut self) {
        if let Watch::Register(_) = self.watch {
            if !self.adapter.registered() {
                // The registration deadline bounds everything before it, stalls included.
                return;
            }
            self.watch = Watch::Nothing;
        }
        // Stalled: the queue to the client is full (so the backend is no longer read) and not
        // a byte of it was written since the queue filled.
        let now_written = self.client.written_total;
        self.watch = match self.watch {
            _ if !self.client.full() => Watch::Nothing,
            Watch::Stall { since, written } if written == now_written => {
                Watch::Stall { since, written }
            }
            _ => Watch::Stall {
                since: Instant::now(),
                written: now_written,
            },
        };
    }

    fn want_client_read(&self) -> bool {
        if self.client_done {
            return false;
        }
        if self.paused {
            return self.held_len < self.ctx.migration.inflight_limit_bytes;
        }
        self.backend.as_ref().is_some_and(|b| !b.full())
    }

    /// Decides before each wait whose reads are spliced (`net/splice.rs`): a side that has
    /// shown bulk traffic, when nothing queued for the other side would be overtaken.
    fn choose_splicing(&mut self) {
        let allowed = self.splice_allowed();
        let client = &mut self.client;
        match self.backend.as_mut() {
            Some(backend) => {
                client.splice_reads =
                    allowed && client.bulk && client.rbuf.is_empty() && backend.nothing_queued();
                backend.splice_reads =
                    allowed && backend.bulk && backend.rbuf.is_empty() && client.nothing_queued();
            }
            None => client.splice_reads = false,
        }
    }

    /// Splicing skips the adapter, so only its passthrough (raw, once the prelude is kept),
    /// on two plain sockets, and never around a migration: from its start to the old link's
    /// close, and while anything is held, every byte goes through the frames as before.
    fn splice_allowed(&self) -> bool {
        self.ctx.splice
            && self.migration.is_none()
            && self.settling.is_none()
            && self.detached.is_none()
            && !self.paused
            && self.held.is_empty()
            && !self.client.is_tls()
            && self.backend.as_ref().is_some_and(|b| !b.is_tls())
            && self.adapter.passthrough()
    }

    /// A spliced side was readable: moves its bytes on ([`Link::splice_to`]) and answers as
    /// its read would have; `None` when nothing moved.
    fn splice(&mut self, dir: Direction) -> Option<std::io::Result<IoEvent>> {
        let backend = self.backend.as_mut()?;
        let moved = match dir {
            Direction::ClientToBackend => self.client.splice_to(backend),
            Direction::BackendToClient => backend.splice_to(&mut self.client),
        };
        match moved {
            Ok(None) => None,
            Ok(Some(n)) => {
                self.ctx.registry.metrics.spliced(dir, n as u64);
                Some(Ok(IoEvent::Read(n)))
            }
            Err(e) => Some(Err(e)),
        }
    }

    fn on_client_io(&mut self, ev: std::io::Result<IoEvent>) -> Option<CloseReason> {
        match ev {
            // A client that reset its socket left, as one that closed it did: a program that
            // closes with data unread (the server's goodbye to its QUIT, a channel's traffic)
            // sends a reset, and the next read or write meets it, whichever comes first.
            Err(e) if is_reset(&e) => Some(CloseReason::Client),
            Err(e) => Some(CloseReason::Io(ClientIoError(e))),
            Ok(IoEvent::Wrote) => None,
            Ok(IoEvent::Readable) => {
                let ev = self.splice(Direction::ClientToBackend)?;
                self.on_client_io(ev)
            }
            Ok(IoEvent::Read(0)) => {
                self.client_done = true;
                // Half-close: whatever the client sent still goes to the backend.
                if self.migration.is_some() && !self.paused {
                    self.abort_migration("the client closed");
                }
                if self.backend.is_none() || self.paused {
                    return Some(CloseReason::Client);
                }
                None
            }
            Ok(IoEvent::Read(_)) => self.client_frames().err(),
        }
    }

    /// Frames what the client sent and routes each frame (or holds it while paused).
    fn client_frames(&mut self) -> Result<(), CloseReason> {
        loop {
            let frame = match self
                .adapter
                .decode(Direction::ClientToBackend, &mut self.client.rbuf)
            {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(CloseReason::Protocol(format!("client sent {e}"))),
            };
            if self.paused || self.backend.is_none() {
                self.held_len += frame.len();
                self.held.push_back(Held {
                    frame,
                    observed: false,
                });
            } else {
                self.route_client_frame(frame);
            }
        }
        self.client.release_idle();
        Ok(())
    }

    /// Applies the adapter's verdict to one client frame; the backend link must exist.
    fn route_client_frame(&mut self, frame: Bytes) {
        let verdict = self.adapter.observe(Direction::ClientToBackend, &frame);
        let Some(link) = self.backend.as_mut() else {
            return;
        };
        match verdict {
            Verdict::Forward => link.push(frame),
            Verdict::Rewrite(bytes) => link.push(bytes),
            Verdict::Reply(bytes) => self.client.push(bytes),
            Verdict::Hide | Verdict::MoveTo(_) => {}
        }
    }

    /// Sends the in-flight queue, in order, to the current backend; returns its size.
    fn release_held(&mut self) -> u64 {
        let bytes = self.held_len as u64;
        self.held_len = 0;
        while let Some(held) = self.held.pop_front() {
            match (held.observed, self.backend.as_mut()) {
                (true, Some(link)) => link.push(held.frame),
                (false, Some(_)) => self.route_client_frame(held.frame),
                (_, None) => {
                    // No backend to send to: keep the rest held.
                    self.held_len =
                        held.frame.len() + self.held.iter().map(|h| h.frame.len()).sum::<usize>();
                    self.held.push_front(held);
                    return 0;
                }
            }
        }
        bytes
    }

    /// The old backend after a cut: its frames through `after_detach` until it closes, errs,
    /// sends something it cannot frame, or its time is up.
    fn on_detached_io(&mut self, ev: Option<std::io::Result<IoEvent>>) {
        let open = match ev {
            None | Some(Err(_)) => false,
            // A detached link's reads are never spliced.
            Some(Ok(IoEvent::Wrote | IoEvent::Readable)) => true,
            Some(Ok(IoEvent::Read(0))) => {
                self.detached_frames();
                false
            }
            Some(Ok(IoEvent::Read(_))) => self.detached_frames(),
        };
        if !open {
            if let Some(old) = self.detached.take() {
                tokio::spawn(old.link.finish(Duration::from_millis(100)));
                self.old_backend_closed();
            }
        }
    }

    /// The session's next deadline: the migration's phase, the settling, or a failover retry.
    fn deadline(&self) -> Option<Instant> {
        self.migration
            .as_ref()
            .and_then(|m| m.deadline())
            .or(self.settling.as_ref().map(|(_, until)| *until))
            // The failover retry waits only while no migration runs: one started meanwhile
            // (an operator's) would not consume it, and a deadline that fires and is not
            // consumed fires on every turn.
            .or(self.retry_at.filter(|_| self.migration.is_none()))
    }

    /// The deadline timer fired: for the session's deadline, the adapter's (its answer goes
    /// to the backend), or both.
    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.adapter.wake_at().is_some_and(|at| at <= now) {
            let frames = self.adapter.on_wake(now);
            self.send_backend(frames);
        }
        if self.deadline().is_some_and(|at| at <= now) {
            self.on_deadline();
        }
    }

    /// Tells the adapter the detached old backend is gone; what it answers goes to B.
    fn old_backend_closed(&mut self) {
        let frames = self.adapter.old_backend_closed();
        self.send_backend(frames);
    }

    /// Queues the adapter's own frames for the current backend (none: they are moot).
    fn send_backend(&mut self, frames: Vec<Bytes>) {
        if let Some(b) = self.backend.as_mut() {
            frames.into_iter().for_each(|f| b.push(f));
        }
    }

    /// Frames what the detached old backend has sent; false when it sent what can't be framed.
    fn detached_frames(&mut self) -> bool {
        let Some(old) = self.detached.as_mut() else {
            return false;
        };
        loop {
            match self
                .adapter
                .decode(Direction::BackendToClient, &mut old.link.rbuf)
            {
                Ok(Some(frame)) => {
                    if let Some(bytes) = self.adapter.after_detach(&frame) {
                        debug!(line = %String::from_utf8_lossy(&bytes).trim_end(), "from the old backend after the cut");
                        self.client.push(bytes);
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    fn on_backend_io(&mut self, ev: std::io::Result<IoEvent>) -> Option<CloseReason> {
        match ev {
            Ok(IoEvent::Wrote) => None,
            Ok(IoEvent::Readable) => {
                let ev = self.splice(Direction::BackendToClient)?;
                self.on_backend_io(ev)
            }
            Ok(IoEvent::Read(0)) => self.backend_lost("closed the connection"),
            Err(e) => self.backend_lost(&e.to_string()),
            Ok(IoEvent::Read(_)) => self.backend_frames().err(),
        }
    }

    /// Frames what the current backend sent and routes each frame.
    fn backend_frames(&mut self) -> Result<(), CloseReason> {
        while let Some(link) = self.backend.as_mut() {
            let frame = match self
                .adapter
                .decode(Direction::BackendToClient, &mut link.rbuf)
            {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    link.release_idle();
                    break;
                }
                Err(e) => return Err(CloseReason::Protocol(format!("backend sent {e}"))),
            };
            if self
                .migration
                .as_mut()
                .is_some_and(|m| m.is_flush_reply(&mut *self.adapter, &frame))
            {
                // A has processed everything the client sent before the pause: cut over now;
                // whatever A says after this, B says too.
                self.cut_over();
                break;
            }
            self.route_backend_frame(frame);
        }
        Ok(())
    }

    /// Applies the adapter's verdict to one frame of the current backend.
    fn route_backend_frame(&mut self, frame: Bytes) {
        let verdict = self.adapter.observe(Direction::BackendToClient, &frame);
        tracing::trace!(
            line = %String::from_utf8_lossy(&frame).trim_end(),
            ?verdict,
            migrating = self.migration.is_some(),
            settling = self.settling.is_some(),
            backend = %self.backend_name,
            "to the client"
        );
        match verdict {
            Verdict::Forward => self.client.push(frame),
            Verdict::Rewrite(bytes) => self.client.push(bytes),
            Verdict::Reply(bytes) => {
                if let Some(link) = self.backend.as_mut() {
                    link.push(bytes);
                }
            }
            Verdict::Hide => {}
            Verdict::MoveTo(addr) => self.backend_asks_to_move(&addr),
        }
    }

    fn backend_asks_to_move(&mut self, addr: &str) {
        let target = self
            .ctx
            .registry
            .backends()
            .into_iter()
            .find(|b| b.config.address == addr || b.config.name == addr)
            .map(|b| b.config.name);
        match target {
            Some(name) => self.start_migration(Some(name), MigrationReason::Backend, None),
            None => info!(
                address = addr,
                "backend asked to move to an address no backend has; ignored"
            ),
        }
    }

    /// The current backend is gone. Fail over unless the client is done anyway.
    fn backend_lost(&mut self, why: &str) -> Option<CloseReason> {
        if self.client_done {
            return Some(CloseReason::Backend);
        }
        if self.adapter.client_quit() {
            return Some(CloseReason::Client);
        }
        if !self.adapter.failover_on_close() {
            return Some(CloseReason::Backend);
        }
        if self.migration.is_none() {
            if let Err(refusal) = self.adapter.can_fail_over() {
                // Nothing could ever take the session: the client sees the close at once, as
                // it would without a proxy, rather than a socket that neither works nor ends.
                info!(backend = %self.backend_name, why, refusal = %refusal, "backend lost; the session cannot fail over");
                return Some(CloseReason::Backend);
            }
        }
        info!(backend = %self.backend_name, why, "backend lost; failing over");
        // A migration still settling is over: its queue goes into the dead link's unsent
        // frames, which come back below.
        self.finish_settling(true);
        if let Some(mut link) = self.backend.take() {
            // Client bytes A never took go first in the held queue: they reach B instead.
            let unsent = link.take_unsent();
            self.held_len += unsent.iter().map(Bytes::len).sum::<usize>();
            let mut held: VecDeque<Held> = unsent
                .into_iter()
                .map(|frame| Held {
                    frame,
                    observed: true,
                })
                .collect();
            held.extend(self.held.drain(..));
            self.held = held;
        }
        self.paused = true;
        self.lost_since.get_or_insert_with(Instant::now);
        if let Some(m) = self.migration.as_mut() {
            m.source_lost();
        } else {
            self.start_migration(None, MigrationReason::Failover, None);
        }
        None
    }

    /// Checks done after every event: identity changes, cut-over readiness, failover retries.
    /// Adds what the client sent and received since the last call to
    /// `handover_bytes_total`: measured on the client link, so it is the client's own
    /// traffic, not handover's registration and replay on new backends.
    fn count_bytes(&mut self) {
        let now = (self.client.read_total, self.client.written_total);
        let (c2b, b2c) = (now.0 - self.counted_bytes.0, now.1 - self.counted_bytes.1);
        if c2b > 0 || b2c > 0 {
            self.ctx.registry.metrics.bytes(c2b, b2c);
            self.counted_bytes = now;
        }
    }

    fn after_event(&mut self) -> Option<CloseReason> {
        self.finish_settling(false);
        self.track_limits();
        if self
            .migration
            .as_ref()
            .is_some_and(|m| m.ready_to_cut(self.backend.as_ref()))
        {
            self.cut_over();
        }
        if self.backend.is_none() && self.migration.is_none() {
            return self.retry_failover();
        }
        if self.client_done
            && self.backend.as_ref().is_some_and(|b| !b.busy())
            && self.migration.is_none()
        {
            return Some(CloseReason::Client);
        }
        if !self.adapter.identity_is(self.identity.as_deref()) {
            let identity = self.adapter.identity();
            self.ctx.registry.set_identity(self.id, identity.clone());
            self.identity = identity;
        }
        None
    }

    async fn finish(mut self, reason: CloseReason) {
        self.cmds.close();
        self.finish_settling(true);
        if let Some(m) = self.migration.take() {
            m.abandon(&self.ctx.registry);
        }
        let grace = Duration::from_secs(2);
        if let Some(old) = self.detached.take() {
            tokio::spawn(old.link.finish(grace));
        }
        if let Some(mut link) = self.backend.take() {
            for held in self.held.drain(..) {
                link.push(held.frame);
            }
            if !link.finish_now() {
                tokio::spawn(link.finish(grace));
            }
        }
        self.ctx.registry.remove_session(self.id);
        self.ctx
            .registry
            .metrics
            .session_closed(&self.ctx.listener, reason.label());
        match &reason {
            CloseReason::Protocol(why) => {
                info!(reason = reason.label(), why = %why, "session closed")
            }
            CloseReason::Io(why) => info!(reason = reason.label(), why = %why, "session closed"),
            CloseReason::BackendLost => info!(
                reason = reason.label(),
                "session closed: no backend could take it"
            ),
            _ => debug!(reason = reason.label(), "session closed"),
        }
        match reason {
            // The client's socket failed (a reset): nothing can be sent on it any more.
            CloseReason::Io(_) => {}
            _ if self.client.finish_now() => {}
            _ => self.client.finish(grace).await,
        }
    }
}

/// The detached old backend's next event, or `None` when its time is up.
async fn detached_io(old: &mut Detached, want_read: bool) -> Option<std::io::Result<IoEvent>> {
    let until = old.until;
    if !old.link.pollable(want_read) {
        tokio::time::sleep_until(until).await;
        return None;
    }
    tokio::time::timeout_at(until, old.link.io(want_read))
        .await
        .ok()
}

/// The future's output, or never.
async fn maybe<F: std::future::Future>(fut: Option<F>) -> F::Output {
    match fut {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

/// An event of the client link or of the current backend link.
enum LinkEvent {
    Client(std::io::Result<IoEvent>),
    Backend(std::io::Result<IoEvent>),
}

/// The peer reset the connection, or it is gone for writing.
fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// The next event of either link (each with whether to read it), polling the client first or
/// second as told. Cancel-safe, as [`Link::io`] is. Each poll makes each link's `io` future
/// afresh and drops it after: only the two references live in the session's future while it
/// waits (holding both futures made it 120 bytes larger).
fn links_io<'a>(
    mut client: Option<(&'a mut Link, bool)>,
    mut backend: Option<(&'a mut Link, bool)>,
    client_first: bool,
) -> impl std::future::Future<Output = LinkEvent> + 'a {
    use std::task::Poll;
    std::future::poll_fn(move |cx| {
        let mut poll_client = |cx: &mut std::task::Context<'_>| match client.as_mut() {
            Some((link, read)) => poll_link(link, *read, cx).map(LinkEvent::Client),
            None => Poll::Pending,
        };
        let mut poll_backend = |cx: &mut std::task::Context<'_>| match backend.as_mut() {
            Some((link, read)) => poll_link(link, *read, cx).map(LinkEvent::Backend),
            None => Poll::Pending,
        };
        if client_first {
            if let Poll::Ready(ev) = poll_client(cx) {
                return Poll::Ready(ev);
            }
            poll_backend(cx)
        } else {
            if let Poll::Ready(ev) = poll_backend(cx) {
                return Poll::Ready(ev);
            }
            poll_client(cx)
        }
    })
}

/// Polls a link's [`Link::io`] once, with a future made for this poll (it is cancel-safe).
fn poll_link(
    link: &mut Link,
    want_read: bool,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<IoEvent>> {
    use std::future::Future;
    std::pin::pin!(link.io(want_read)).poll(cx)
}

/// Writes (or flushes) what `link` has queued if it can go now; `None` if it can't (the link
/// then waits on write readiness, as in the `select!`).
async fn write_now(link: &mut Link) -> Option<std::io::Result<IoEvent>> {
    match std::future::poll_fn(|cx| std::task::Poll::Ready(poll_link(link, false, cx))).await {
        std::task::Poll::Ready(ev) => Some(ev),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason;

    #[test]
    fn every_close_reason_is_preregistered() {
        let labels: Vec<&str> = CloseReason::examples().iter().map(|r| r.label()).collect();
        assert_eq!(labels, crate::metrics::CLOSE_REASONS);
    }
}

#[cfg(test)]
mod footprint {
    use super::*;

    fn size<F>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle session's memory is mostly its task's future, allocated once at its largest:
    /// keep the rarely used parts (migration, close) out of it. Issue 5 measures this.
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let text = "[[listener]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"irc\"\nbackends = [\"b\"]\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n";
        let config = crate::config::parse(text, "t.toml").unwrap();
        let registry = Arc::new(Registry::new(&config, Default::default()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (b, addr) = l.accept().await.unwrap();
        let ctx = Arc::new(SessionCtx {
            registry,
            listener: "m".into(),
            protocol: "irc",
            migration: config.migration.clone(),
            shutdown: CancellationToken::new(),
            failover_limiter: Arc::new(tokio::sync::Semaphore::new(1)),
            registration_timeout: Duration::from_millis(config.listener[0].registration_timeout_ms),
            client_stall_timeout: Duration::from_millis(config.listener[0].client_stall_timeout_ms),
            splice: true,
        });
        let adapter = crate::protocol::lookup("irc", &config.listener[0])
            .unwrap()
            .new_session(&config.listener[0]);
        let fut = run(
            ctx,
            crate::net::Stream::Plain(a),
            addr,
            crate::net::Stream::Plain(b),
            &config.backend[0],
            adapter,
        );
        let bytes = size(&fut);
        assert!(bytes <= 960, "a session's future is {bytes} bytes");
        let irc = std::mem::size_of::<crate::protocol::irc::IrcSession>();
        assert!(irc <= 512, "the IRC adapter is {irc} bytes");
    }
}
