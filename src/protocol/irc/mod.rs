//! IRC: lines, a snapshot learned from the server's confirmations, re-registration under a
//! temporary nick on linked networks, and a seamless cut.
//!
//! Files: `message` (codec and message view), `numerics`, `snapshot` (what is learned),
//! `observe` (how it is learned), `register` + `caps` (re-registration on the new backend),
//! `dedupe` (the overlap of both links), `fixup` (changes made on A during the overlap),
//! `reconcile` (taking the nick back after the cut).
//!
//! The migration, from this adapter's side:
//!
//! 1. `start_register` replays PASS, CAP/SASL, NICK (temporary on a linked network), USER;
//!    `on_register_frame` answers PING, retries a taken nick, rejoins, restores user modes and
//!    away, and reports `Done` behind a PING barrier (see `register`).
//! 2. From B's 001 to the cut, A's forwarded lines are counted for deduplication.
//! 3. `flush_mark` / `is_flush_reply`: `PING :handover-<token>` and its PONG.
//! 4. `detach` quits A; `cutover` sends B what the client changed on A meanwhile (`fixup`),
//!    starts taking the real nick back (`reconcile`) and turns the overlap counts into the
//!    dedupe of B's lines.
//! 5. B's lines go through `observe`: duplicates hidden, the old QUIT hidden, the temporary
//!    nick rewritten, until the real nick is back; `held_lines_done` ends the held part.

mod caps;
mod dedupe;
mod fixup;
pub mod message;
mod numerics;
mod observe;
mod reconcile;
mod register;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use self::dedupe::{Dedupe, Recent};
use self::fixup::{Fix, Fixup};
use self::message::{decode_line, irc_eq, line, untagged, Message};
use self::observe::{bounce_target, Observer};
use self::reconcile::{Reclaim, Step};
use self::register::Register;
use self::snapshot::{Sasl, Snapshot};
use super::{
    ClientInfo, Direction, FrameError, Protocol, RegisterStart, RegisterStep, SessionAdapter,
    Verdict,
};
use crate::config::{BackendConfig, ListenerConfig};

/// The prefix of every token handover puts in a PING; PONGs carrying it never reach a client.
const TOKEN_PREFIX: &[u8] = b"handover-";
/// What other users see when the old link leaves.
const QUIT_MESSAGE: &str = ":Changing servers";

pub struct IrcProtocol {
    linked: bool,
}

impl IrcProtocol {
    pub fn new(listener: &ListenerConfig) -> Self {
        Self {
            linked: listener.irc_linked.unwrap_or(true),
        }
    }
}

impl Protocol for IrcProtocol {
    fn name(&self) -> &'static str {
        "irc"
    }

    fn validate_backend(&self, _backend: &BackendConfig) -> Result<(), String> {
        Ok(())
    }

    fn new_session(&self, _listener: &ListenerConfig) -> Box<dyn SessionAdapter> {
        Box::new(IrcSession::new(self.linked))
    }
}

/// One IRC session's adapter state.
#[derive(Debug)]
pub struct IrcSession {
    linked: bool,
    snap: Snapshot,
    observer: Observer,
    // The migration-time parts are boxed: most sessions never migrate, and an idle session
    // should carry only its snapshot.
    migration: Option<Box<Migration>>,
    fixup: Option<Box<Fixup>>,
    reclaim: Option<Box<Reclaim>>,
    dedupe: Option<Box<Dedupe>>,
    /// The current backend's last shared lines, counted as A's in the next overlap.
    recent: Recent,
    /// The backend sent `ERROR`: the close that follows is deliberate, not a lost server.
    backend_error: bool,
    /// The temporary nick of an aborted migration: the network may still relay its lines
    /// (its QUIT) through the current backend; they are hidden until that QUIT.
    ghost: Option<String>,
}

/// A migration between `start_register` and `cutover`.
#[derive(Debug)]
struct Migration {
    register: Register,
    dedupe: Dedupe,
    /// We sent the old link its QUIT (a drain or move); false in a failover, where the old
    /// server is gone and the network has dropped the nick already (or will, by netsplit).
    detached: bool,
    /// Rejoined channels whose JOIN of the temporary nick on B the old link has relayed.
    joins_on_a: Vec<String>,
    /// The flush mark's token, until A answers it.
    flush_token: Option<String>,
    /// A answered the flush mark; the flush ends once it has relayed every rejoin too.
    pong_seen: bool,
}

impl Migration {
    /// Notes a line the old link relays from the temporary nick: its JOIN of a rejoined
    /// channel. True when it was one.
    fn note_join_on_a(&mut self, msg: &Message) -> bool {
        let temp = self.register.nick();
        let ours = msg.is("JOIN")
            && msg.from_user()
            && msg
                .source_nick()
                .is_some_and(|n| irc_eq(n, temp.as_bytes()));
        if !ours {
            return false;
        }
        let chan = msg.param(0).unwrap_or_default();
        let known = self.joins_on_a.iter().any(|c| irc_eq(c.as_bytes(), chan));
        if !known && self.register.rejoined().any(|c| irc_eq(c.as_bytes(), chan)) {
            self.joins_on_a
                .push(String::from_utf8_lossy(chan).into_owned());
        }
        true
    }

    /// Until the old link has relayed the temporary nick's JOIN on B for a channel, the
    /// network may route that channel's messages to A alone (the JOIN has not reached the
    /// sender's server yet), and A may deliver them after its answer to the flush mark:
    /// cutting at the PONG would lose them. Server links are FIFO and the network a tree, so
    /// once A relays the JOIN, every message routed without B has reached A before it.
    /// Channels the client has left meanwhile don't count; on independent servers (the nick
    /// is used as is) there is nothing to wait for.
    fn a_relayed_every_join(&self, snap: &Snapshot) -> bool {
        let temp = self.register.nick();
        if snap
            .nick
            .as_deref()
            .is_some_and(|n| irc_eq(n.as_bytes(), temp.as_bytes()))
        {
            return true;
        }
        self.register
            .rejoined()
            .filter(|c| snap.channel(c.as_bytes()).is_some())
            .all(|c| {
                self.joins_on_a
                    .iter()
                    .any(|s| irc_eq(s.as_bytes(), c.as_bytes()))
            })
    }
}

impl IrcSession {
    pub fn new(linked: bool) -> Self {
        Self {
            linked,
            snap: Snapshot::default(),
            observer: Observer::default(),
            migration: None,
            fixup: None,
            reclaim: None,
            dedupe: None,
            recent: Recent::default(),
            backend_error: false,
            ghost: None,
        }
    }

    /// What has been learned so far.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    fn observe_client(&mut self, frame: &Bytes) -> Verdict {
        let Some(msg) = Message::parse(frame) else {
            return Verdict::Forward;
        };
        self.observer
            .client_line(&mut self.snap, &msg, untagged(frame));
        match self
            .reclaim
            .as_ref()
            .and_then(|r| r.rewrite_client(&msg, frame))
        {
            Some(bytes) => Verdict::Rewrite(bytes),
            None => Verdict::Forward,
        }
    }

    fn observe_backend(&mut self, frame: &Bytes) -> Verdict {
        let Some(msg) = Message::parse(frame) else {
            return Verdict::Forward;
        };
        if msg.is("ERROR") {
            self.backend_error = true;
        }
        if self.is_about_temporary_self(&msg) {
            return Verdict::Hide;
        }
        if let Some(verdict) = self.reconcile(&msg, frame) {
            return verdict;
        }
        if let Some(verdict) = self.fix(&msg) {
            return verdict;
        }
        if let Some(dedupe) = self.dedupe.as_mut() {
            let duplicate = dedupe.is_duplicate(&msg, untagged(frame));
            if dedupe.finished() {
                self.dedupe = None;
            }
            if duplicate {
                return Verdict::Hide;
            }
        }
        let Some(rewritten) = self.reclaim.as_ref().and_then(|r| r.rewrite(&msg, frame)) else {
            return self.learn(&msg, frame);
        };
        let Some(msg) = Message::parse(&rewritten) else {
            return Verdict::Forward;
        };
        if self.is_rejoin_of_a_joined_channel(&msg) {
            return Verdict::Hide;
        }
        match self.learn(&msg, &rewritten) {
            Verdict::Forward => Verdict::Rewrite(rewritten),
            other => other,
        }
    }

    /// A line whose source is the temporary nick of a migration under way (A relays what the
    /// new connection does on B, such as its JOINs) or of an aborted one (its QUIT): the
    /// client must never see its other self.
    fn is_about_temporary_self(&mut self, msg: &Message) -> bool {
        let Some(source) = msg.source_nick().filter(|_| msg.from_user()) else {
            return false;
        };
        if let Some(m) = self.migration.as_mut() {
            if irc_eq(source, m.register.nick().as_bytes()) {
                m.note_join_on_a(msg);
                return true;
            }
        }
        if let Some(ghost) = &self.ghost {
            if irc_eq(source, ghost.as_bytes()) {
                if msg.is("QUIT") {
                    self.ghost = None;
                }
                return true;
            }
        }
        false
    }

    /// Our own JOIN of a channel the client is already in: an echo of the re-registration
    /// that must not reach the client (it would look like a second join).
    fn is_rejoin_of_a_joined_channel(&self, msg: &Message) -> bool {
        let (Some(source), Some(nick)) = (msg.source_nick(), self.snap.nick.as_deref()) else {
            return false;
        };
        let channel = msg.param(0).unwrap_or_default();
        msg.is("JOIN")
            && irc_eq(source, nick.as_bytes())
            && self
                .snap
                .channels
                .iter()
                .any(|c| irc_eq(c.name.as_bytes(), channel))
    }

    /// The reclaim's say on a B line, if it has one.
    fn reconcile(&mut self, msg: &Message, frame: &Bytes) -> Option<Verdict> {
        let reclaim = self.reclaim.as_mut()?;
        let shared = !self.snap.channels.is_empty();
        let (verdict, finished) = match reclaim.on_line(msg, frame, shared) {
            Step::Pass => return None,
            Step::Hide => (Verdict::Hide, false),
            Step::Reply(bytes) => (Verdict::Reply(bytes), false),
            Step::Reclaimed => (Verdict::Hide, true),
            Step::GaveUp(bytes) => {
                self.snap.nick = Some(reclaim.temp().to_string());
                (Verdict::Rewrite(bytes), true)
            }
            Step::ClientRenamed(bytes) => {
                if let Some(renamed) = Message::parse(&bytes) {
                    self.observer.server_line(&mut self.snap, &renamed);
                }
                (Verdict::Rewrite(bytes), true)
            }
        };
        if finished {
            self.reclaim = None;
        }
        Some(verdict)
    }

    /// The cut-time fixup's say on a B line, if it has one.
    fn fix(&mut self, msg: &Message) -> Option<Verdict> {
        match self.fixup.as_mut()?.on_line(msg) {
            Fix::Pass => None,
            Fix::Hide => Some(Verdict::Hide),
            Fix::Finished => {
                self.fixup = None;
                Some(Verdict::Hide)
            }
            Fix::Replace(bytes) => {
                if let Some(shown) = Message::parse(&bytes) {
                    self.observer.server_line(&mut self.snap, &shown);
                }
                Some(Verdict::Rewrite(bytes))
            }
        }
    }

    /// Whether the snapshot can be re-created elsewhere at all.
    fn replayable(&self) -> Result<(), String> {
        if !self.snap.registered() {
            return Err("not registered yet".into());
        }
        if self.observer.quitting {
            return Err("the client is quitting".into());
        }
        if let Some(Sasl::Unreplayable(mech)) = &self.snap.sasl {
            return Err(format!("SASL {mech} cannot be replayed"));
        }
        if self.snap.user.is_none() {
            return Err("the client's USER line was not seen".into());
        }
        Ok(())
    }

    /// Learns from a line on its way to the client and says what becomes of it.
    fn learn(&mut self, msg: &Message, frame: &[u8]) -> Verdict {
        if msg.is("PONG") && msg.last().is_some_and(|t| t.starts_with(TOKEN_PREFIX)) {
            return Verdict::Hide;
        }
        if self.snap.registered() {
            if let Some(target) = bounce_target(msg) {
                return Verdict::MoveTo(target);
            }
        }
        if let Some(m) = self.migration.as_mut().filter(|m| m.register.welcomed()) {
            m.dedupe.record_a(msg, untagged(frame));
        }
        self.recent.note(msg, untagged(frame));
        self.observer.server_line(&mut self.snap, msg);
        Verdict::Forward
    }
}

impl SessionAdapter for IrcSession {
    /// A server that said `ERROR` (kill, ban, quit reply) or a client that sent `QUIT` closes
    /// on purpose: the client sees the close. Anything else is a lost server: fail over.
    fn failover_on_close(&self) -> bool {
        !(self.backend_error || self.observer.quitting)
    }

    fn client_quit(&self) -> bool {
        self.observer.quitting
    }

    fn decode(&mut self, _dir: Direction, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        decode_line(buf)
    }

    fn observe(&mut self, dir: Direction, frame: &Bytes) -> Verdict {
        match dir {
            Direction::ClientToBackend => self.observe_client(frame),
            Direction::BackendToClient => self.observe_backend(frame),
        }
    }

    fn identity(&self) -> Option<String> {
        self.snap.nick.clone()
    }

    fn identity_is(&self, current: Option<&str>) -> bool {
        self.snap.nick.as_deref() == current
    }

    /// Refuses while the previous migration is still settling on the current backend (a
    /// moment: the fixup barrier, the nick reclaim), so a drain retries later; and for good
    /// when the session can't be re-created at all.
    fn settled(&self) -> bool {
        self.reclaim.is_none() && self.fixup.is_none()
    }

    fn registered(&self) -> bool {
        self.snap.registered()
    }

    /// A failover may leave a backend while the previous migration still settles on it: the
    /// cut replaces a pending reclaim and fixup. Only a session that can't be re-created at
    /// all (not registered, quitting, unreplayable SASL) can't fail over.
    fn can_fail_over(&self) -> Result<(), String> {
        self.replayable()
    }

    fn can_migrate(&self) -> Result<(), String> {
        if self.reclaim.is_some() {
            return Err("the previous migration is still taking the nick back".into());
        }
        if self.fixup.is_some() {
            return Err("the previous migration is still settling".into());
        }
        self.replayable()
    }

    /// `WEBIRC <password> <gateway> <ip> <ip>`: the hostname is the address itself, so the
    /// server does its own lookup. An IPv6 address that starts with `:` gets a leading `0`, or
    /// it would read as a trailing parameter.
    fn backend_prelude(&self, backend: &BackendConfig, client: &ClientInfo) -> Option<Bytes> {
        let webirc = backend.webirc.as_ref()?;
        let mut ip = client.addr.ip().to_canonical().to_string();
        if ip.starts_with(':') {
            ip.insert(0, '0');
        }
        Some(line(&[
            "WEBIRC",
            &webirc.password.0,
            &webirc.gateway,
            &ip,
            &ip,
        ]))
    }

    /// Only the hard refusals apply here, not a pending reclaim or fixup: a failover must be
    /// able to leave a backend that dies while they run (the cut replaces both).
    fn start_register(&mut self) -> Result<RegisterStart, String> {
        self.replayable()?;
        let (register, send) = Register::start(&self.snap, self.linked, random_u64())?;
        self.migration = Some(Box::new(Migration {
            register,
            dedupe: Dedupe::default(),
            detached: false,
            joins_on_a: Vec::new(),
            flush_token: None,
            pong_seen: false,
        }));
        self.dedupe = None;
        Ok(RegisterStart { send, settle: None })
    }

    fn on_register_frame(&mut self, frame: &Bytes) -> RegisterStep {
        let Some(m) = self.migration.as_mut() else {
            return RegisterStep::Failed("no migration in progress".into());
        };
        let Some(msg) = Message::parse(frame) else {
            return RegisterStep::Continue(Vec::new());
        };
        // Channel traffic from others that B delivers once its temporary self is in the
        // channel: held for after the cut, where the dedupe drops it if A delivered it too. It
        // is not enough to count it: A's own copy may come only after A's flush-mark reply.
        let welcomed = m.register.welcomed();
        let hold = welcomed && dedupe::is_overlap_traffic(&msg, frame, m.register.nick());
        let step = m.register.on_line(&self.snap, &msg);
        if !welcomed && m.register.welcomed() {
            // From B's 001 the links overlap; A's lines just before count too.
            self.recent.seed(&mut m.dedupe);
        }
        match step {
            RegisterStep::Continue(send) if hold => RegisterStep::Hold(send),
            step => step,
        }
    }

    fn flush_mark(&mut self) -> Option<Bytes> {
        let m = self.migration.as_mut()?;
        let token = format!("handover-{:016x}", random_u64());
        let ping = line(&["PING", &format!(":{token}")]);
        m.flush_token = Some(token);
        Some(ping)
    }

    /// The flush is over when A has answered the mark *and* relayed the temporary nick's JOIN
    /// on B for every rejoined channel, whichever comes last (see
    /// [`Migration::a_relayed_every_join`]); the session's flush timeout bounds the wait.
    fn is_flush_reply(&mut self, frame: &Bytes) -> bool {
        let (Some(m), Some(msg)) = (self.migration.as_mut(), Message::parse(frame)) else {
            return false;
        };
        let pong = m
            .flush_token
            .as_ref()
            .is_some_and(|t| msg.is("PONG") && msg.last() == Some(t.as_bytes()));
        if pong {
            m.flush_token = None;
            m.pong_seen = true;
        } else if !(m.pong_seen && m.note_join_on_a(&msg)) {
            return false;
        }
        m.a_relayed_every_join(&self.snap)
    }

    fn detach(&mut self) -> Option<Bytes> {
        if let Some(m) = self.migration.as_mut() {
            m.detached = true;
        }
        Some(line(&["QUIT", QUIT_MESSAGE]))
    }

    fn cutover(&mut self) -> Vec<Bytes> {
        let Some(m) = self.migration.take() else {
            return Vec::new();
        };
        let mut m = *m;
        self.fixup = None;
        self.reclaim = None;
        m.dedupe.cutover();
        self.dedupe = (!m.dedupe.finished()).then(|| Box::new(m.dedupe));
        let real = self.snap.nick.clone().unwrap_or_default();
        let mut send = Vec::new();
        if let Some((fixup, fix)) = Fixup::plan(&self.snap, &m.register, &real, random_u64()) {
            self.fixup = Some(Box::new(fixup));
            send = fix;
        }
        let temp = m.register.nick();
        if !irc_eq(temp.as_bytes(), real.as_bytes()) {
            let (mut reclaim, nick) = Reclaim::start(&real, temp, m.register.userhost());
            // With shared channels, B relays the old connection's QUIT once the network has
            // processed it, and the reclaim answers that QUIT with the NICK. Asking earlier
            // races the QUIT: under load a server can accept the NICK while the old server
            // still holds the nick, and the network kills both for a nick collision.
            // Without shared channels, the NICK waits for the old link to close (the old
            // server closes it once it has sent the network the QUIT).
            // In a failover B may have seen that QUIT (a netsplit) before we joined: ask now.
            if !m.detached {
                send.push(nick);
            } else if self.snap.channels.is_empty() {
                reclaim.defer();
            }
            self.reclaim = Some(Box::new(reclaim));
        }
        send
    }

    fn wake_at(&self) -> Option<tokio::time::Instant> {
        self.reclaim.as_ref().and_then(|r| r.wake_at())
    }

    fn on_wake(&mut self, now: tokio::time::Instant) -> Vec<Bytes> {
        self.reclaim
            .as_mut()
            .and_then(|r| r.on_wake(now))
            .into_iter()
            .collect()
    }

    fn old_backend_closed(&mut self) -> Vec<Bytes> {
        self.reclaim
            .as_mut()
            .and_then(|r| r.old_link_closed())
            .into_iter()
            .collect()
    }

    /// Private messages to the client's nick: until the old server has processed the `QUIT`,
    /// the network routes them there and nowhere else, so they are the client's and no one
    /// else will deliver them. Channel traffic the new backend has too (the flush waited for
    /// that); the rest is the old connection's farewell.
    fn after_detach(&mut self, frame: &Bytes) -> Option<Bytes> {
        let msg = Message::parse(frame)?;
        let nick = self.snap.nick.as_deref()?;
        let private = ["PRIVMSG", "NOTICE", "TAGMSG"].iter().any(|c| msg.is(c))
            && msg.from_user()
            && msg.param(0).is_some_and(|t| irc_eq(t, nick.as_bytes()));
        private.then(|| frame.clone())
    }

    fn held_lines_done(&mut self) {
        if let Some(dedupe) = self.dedupe.as_mut() {
            dedupe.held_lines_done();
        }
    }

    fn abort_migration(&mut self) {
        if let Some(m) = self.migration.take() {
            let temp = m.register.nick();
            let real = self.snap.nick.as_deref().unwrap_or_default();
            if !irc_eq(temp.as_bytes(), real.as_bytes()) {
                self.ghost = Some(temp.to_string());
            }
        }
    }

    fn snapshot_size(&self) -> usize {
        self.snap.heap_size()
            + self.observer.heap_size()
            + self
                .migration
                .as_ref()
                .map_or(0, |m| m.dedupe.heap_size() + 256)
            + self.reclaim.as_ref().map_or(0, |r| r.heap_size())
            + self.fixup.as_ref().map_or(0, |_| 256)
            + self.dedupe.as_ref().map_or(0, |d| d.heap_size())
    }
}

/// A random number for tokens and nick suffixes, without a dependency: std's `RandomState`
/// is seeded from the OS once and differs on every construction.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
