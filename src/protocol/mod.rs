//! Protocol adapters: framing, observation and re-registration, all sans-I/O.
//!
//! The session task (`session/`) owns the sockets and timers; an adapter only ever sees bytes
//! and frames. Adding a protocol is one new module here and one line in [`PROTOCOLS`].

pub mod irc;
pub mod oscar;
pub mod raw;

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::{BackendConfig, ListenerConfig};

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

/// A framing error: the peer sent something this protocol cannot carry. The session that got
/// it is closed with this message in the log; nothing half-parsed is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(pub String);

/// What the session does with a frame the adapter has observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the frame on unchanged.
    Forward,
    /// Pass these bytes on instead.
    Rewrite(Bytes),
    /// Drop the frame.
    Hide,
    /// Drop the frame and send these bytes back to the side it came from (e.g. answer a PING).
    Reply(Bytes),
    /// The backend asks the client to move to this address (or configured backend name): hide
    /// the frame and migrate there.
    MoveTo(String),
}

/// The outcome of feeding one frame of the new backend to the re-registration machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterStep {
    /// Keep going; send these frames to the new backend first.
    Continue(Vec<Bytes>),
    /// Keep going, send these; and hold the frame itself: it is traffic the client may not
    /// get from the old backend (IRC channel lines), so after the cut it goes through
    /// `observe` (and its deduplication) with what the new backend said after registration.
    Hold(Vec<Bytes>),
    /// Registration is complete; send these frames to the new backend, then proceed.
    Done(Vec<Bytes>),
    /// The new backend refused the session; the reason is logged and counted.
    Failed(String),
    /// Close this registration link, connect to `address` (a host:port the backend named, e.g.
    /// OSCAR's BOS server after a login on the authorization server) and send these frames
    /// there; registration goes on with that link's frames, under the same deadline.
    Reconnect { address: String, send: Vec<Bytes> },
}

/// Where a client connection goes, decided before any backend is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Read from the client until the buffer holds this many bytes, then ask again.
    Need(usize),
    /// Place the session in the listener's pool; write `send` to the backend first.
    Pool(Option<Bytes>),
    /// The connection belongs to a session the backend `backend` already knows (OSCAR: the
    /// cookie it presents), at `address` rather than the backend's configured one, even if
    /// that backend is draining (the drain then moves it); write `send` there first.
    To {
        backend: String,
        address: String,
        send: Bytes,
    },
}

/// How re-registration on the new backend begins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterStart {
    /// Frames to send to the new backend right after the connection (and any prelude).
    pub send: Vec<Bytes>,
    /// When set, registration completes by itself after this long, with everything the backend
    /// said meanwhile swallowed (raw mode: there is no reply to recognise).
    pub settle: Option<Duration>,
}

/// Facts about the client that a backend prelude (WEBIRC) may need.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
}

/// One protocol: a name and a factory for per-session adapters.
pub trait Protocol: Send + Sync + 'static {
    /// The config/CLI value and the `protocol` metric label.
    fn name(&self) -> &'static str;

    /// Rejects backend keys that do not apply to this protocol. The message names the key.
    fn validate_backend(&self, backend: &BackendConfig) -> Result<(), String> {
        if backend.webirc.is_some() {
            return Err(format!(
                "`webirc` applies only to irc pools, not {}",
                self.name()
            ));
        }
        Ok(())
    }

    /// A fresh adapter for one session accepted on `listener`.
    fn new_session(&self, listener: &ListenerConfig) -> Box<dyn SessionAdapter>;
}

/// The per-session half of an adapter; its snapshot lives inside.
///
/// Migration calls, in order: `can_migrate`, `backend_prelude`, `start_register`,
/// `on_register_frame`… until `Done`, `flush_mark` (then `is_flush_reply` on A's frames),
/// `detach`, `cutover`; after that the new backend's frames go through `observe` again, the
/// held ones first, then `held_lines_done`. A failed migration calls `abort_migration` and the
/// adapter must behave as if it never began.
pub trait SessionAdapter: Send + 'static {
    /// Bytes written to the client as soon as it is accepted, before anything is read from it
    /// (OSCAR: the server speaks first, and handover answers for every backend).
    /// `accepted_on` is the local address the client reached, which OSCAR advertises back to
    /// it when no `advertise` address is configured.
    fn greeting(&mut self, _accepted_on: std::net::SocketAddr) -> Option<Bytes> {
        None
    }

    /// Called with what the client sent so far, before any backend is chosen; consumes what
    /// it routes by. The default places every session by the pool without reading anything.
    fn route(&mut self, _buf: &mut BytesMut) -> Result<Route, FrameError> {
        Ok(Route::Pool(None))
    }

    /// The session is on this backend now: at the start and after every cut-over.
    fn on_backend(&mut self, _backend: &BackendConfig) {}

    /// Splits one frame off the front of `buf`. `Ok(None)` means more bytes are needed;
    /// `Err` closes this session. Must enforce the protocol's hard size limits itself.
    fn decode(&mut self, dir: Direction, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError>;

    /// Sees every frame in both directions while forwarding; keeps the snapshot current.
    fn observe(&mut self, dir: Direction, frame: &Bytes) -> Verdict;

    /// False until the client has completed its registration (IRC: the server's welcome);
    /// a session that stays unregistered past `registration_timeout_ms` is closed. Protocols
    /// without a registration keep the default.
    fn registered(&self) -> bool {
        true
    }

    /// The IRC nick or OSCAR screen name, for `GET /sessions`.
    fn identity(&self) -> Option<String> {
        None
    }

    /// Whether [`SessionAdapter::identity`] is `current`; asked after every event, so an
    /// adapter with an identity answers without allocating.
    fn identity_is(&self, current: Option<&str>) -> bool {
        self.identity().as_deref() == current
    }

    /// The backend a move should go to when nobody named one (OSCAR: a service connection
    /// follows its BOS session). `None`: the least-loaded, as for any session.
    fn preferred_backend(&self) -> Option<String> {
        None
    }

    /// A clean refusal when this session cannot be moved now (counted, never attempted).
    fn can_migrate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether the session could be re-created on another backend at all, once its backend is
    /// gone. Unlike [`SessionAdapter::can_migrate`] it ignores what only makes a move wait (a
    /// failover cannot wait for the old backend); a refusal closes the client, since nothing
    /// else could ever take the session.
    fn can_fail_over(&self) -> Result<(), String> {
        self.can_migrate()
    }

    /// Bytes written to a fresh backend link before anything else, e.g. IRC `WEBIRC`.
    fn backend_prelude(&self, _backend: &BackendConfig, _client: &ClientInfo) -> Option<Bytes> {
        None
    }

    /// Begins re-registration on the new backend.
    fn start_register(&mut self) -> Result<RegisterStart, String>;

    /// Feeds one frame of the new backend during registration.
    fn on_register_frame(&mut self, frame: &Bytes) -> RegisterStep;

    /// A frame to send to the old backend whose reply proves it processed everything before.
    fn flush_mark(&mut self) -> Option<Bytes> {
        None
    }

    /// True for the reply to [`SessionAdapter::flush_mark`]; that frame is swallowed.
    fn is_flush_reply(&mut self, _frame: &Bytes) -> bool {
        false
    }

    /// A last frame to send to the old backend before it is closed (IRC `QUIT`).
    fn detach(&mut self) -> Option<Bytes> {
        None
    }

    /// A frame the old backend sent after the cut (it is read until it closes, a few seconds
    /// at most): what of it reaches the client, if anything. IRC: private messages to the
    /// client's nick, which only the old server could receive until it processed the `QUIT`;
    /// everything else the new backend delivers too.
    fn after_detach(&mut self, _frame: &Bytes) -> Option<Bytes> {
        None
    }

    /// The old backend's link is gone after a cut (it closed, failed, or its few seconds were
    /// up): frames for the new backend. IRC: the old server has processed the `QUIT`, so the
    /// real nick is free, and a reclaim that had nothing else to wait for asks for it now.
    fn old_backend_closed(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    /// When the adapter wants [`SessionAdapter::on_wake`] called (IRC: the next `NICK` of a
    /// reclaim, after a back-off).
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// `wake_at` has passed: frames for the current backend.
    fn on_wake(&mut self, _now: tokio::time::Instant) -> Vec<Bytes> {
        Vec::new()
    }

    /// The new backend is current now: frames to send it at once (IRC: take the nick back).
    fn cutover(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    /// The backend closed the link: true to fail over to another backend, false when the
    /// close was deliberate (IRC `ERROR` after a `QUIT` or a kill) and the client should see it.
    fn failover_on_close(&self) -> bool {
        true
    }

    /// The client asked to leave (IRC `QUIT`): a backend close that follows is the client's
    /// doing, and counted as such (`reason="client"`), whichever side's close comes first.
    fn client_quit(&self) -> bool {
        false
    }

    /// After [`SessionAdapter::cutover`], the session has passed every frame of the new backend
    /// that it held back during the overlap (read before the cut) through `observe`; frames
    /// observed from now on were read after the cut. Adapters that deduplicate the overlap
    /// (IRC) use it to bound how long they keep doing so. Call it once per migration, also when
    /// nothing was held.
    fn held_lines_done(&mut self) {}

    /// False while the new backend is still being settled after the cut (IRC: the nick is
    /// being taken back). The session keeps the client's input held until this is true, so
    /// nothing the client sent reaches the new backend under a temporary identity.
    fn settled(&self) -> bool {
        true
    }

    /// The migration failed; forget what it started.
    fn abort_migration(&mut self) {}

    /// True when the session may forward both directions without framing or observing them
    /// (splice(2) on plain sockets): the adapter has learnt all it will need. Raw: once its
    /// prelude is kept. Protocols that read their frames keep the default.
    fn passthrough(&self) -> bool {
        false
    }

    /// Bytes the adapter holds for this session, for the memory bound.
    fn snapshot_size(&self) -> usize {
        0
    }
}

type Constructor = fn(&ListenerConfig) -> Box<dyn Protocol>;

/// THE protocol table: one line per protocol. Config, CLI, metrics and admin all resolve
/// protocols by name through it.
pub const PROTOCOLS: &[(&str, Constructor)] = &[
    ("irc", |l| Box::new(irc::IrcProtocol::new(l))),
    ("oscar", |l| Box::new(oscar::OscarProtocol::new(l))),
    ("raw", |l| Box::new(raw::RawProtocol::new(l))),
];

/// Looks a protocol up by its config name.
pub fn lookup(name: &str, listener: &ListenerConfig) -> Option<Box<dyn Protocol>> {
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make(listener))
}

/// The names in [`PROTOCOLS`], for error messages.
pub fn names() -> Vec<&'static str> {
    PROTOCOLS.iter().map(|(n, _)| *n).collect()
}
