//! IRC: lines, a snapshot learned from the server's confirmations, re-registration under a
//! temporary nick on linked networks, and a seamless cut.
//!
//! Files: `message` (codec and message view), `numerics`, `snapshot` (what is learned),
//! `observe` (how it is learned), `register` + `caps` (re-registration on the new backend).

mod caps;
pub mod message;
mod numerics;
mod observe;
mod register;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use self::message::{decode_line, line, untagged, Message};
use self::observe::{bounce_target, Observer};
use self::register::Register;
use self::snapshot::{Sasl, Snapshot};
use super::{
    ClientInfo, Direction, FrameError, RegisterStart, RegisterStep, SessionAdapter, Verdict,
};
use crate::config::BackendConfig;

/// The prefix of every token handover puts in a PING; PONGs carrying it never reach a client.
const TOKEN_PREFIX: &[u8] = b"handover-";
/// What other users see when the old link leaves.
const QUIT_MESSAGE: &str = ":Changing servers";

/// One IRC session's adapter state.
#[derive(Debug)]
pub struct IrcSession {
    linked: bool,
    snap: Snapshot,
    observer: Observer,
    migration: Option<Register>,
    flush_token: Option<String>,
}

impl IrcSession {
    pub fn new(linked: bool) -> Self {
        Self {
            linked,
            snap: Snapshot::default(),
            observer: Observer::default(),
            migration: None,
            flush_token: None,
        }
    }

    /// What has been learned so far.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Learns from a line on its way to the client and says what becomes of it.
    fn learn(&mut self, msg: &Message) -> Verdict {
        if msg.is("PONG") && msg.last().is_some_and(|t| t.starts_with(TOKEN_PREFIX)) {
            return Verdict::Hide;
        }
        if self.snap.registered() {
            if let Some(target) = bounce_target(msg) {
                return Verdict::MoveTo(target);
            }
        }
        self.observer.server_line(&mut self.snap, msg);
        Verdict::Forward
    }
}

impl SessionAdapter for IrcSession {
    fn decode(&mut self, _dir: Direction, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        decode_line(buf)
    }

    fn observe(&mut self, dir: Direction, frame: &Bytes) -> Verdict {
        let Some(msg) = Message::parse(frame) else {
            return Verdict::Forward;
        };
        match dir {
            Direction::ClientToBackend => {
                self.observer
                    .client_line(&mut self.snap, &msg, untagged(frame));
                Verdict::Forward
            }
            Direction::BackendToClient => self.learn(&msg),
        }
    }

    fn identity(&self) -> Option<String> {
        self.snap.nick.clone()
    }

    fn can_migrate(&self) -> Result<(), String> {
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

    fn start_register(&mut self) -> Result<RegisterStart, String> {
        self.can_migrate()?;
        let (register, send) = Register::start(&self.snap, self.linked, random_u64())?;
        self.migration = Some(register);
        self.flush_token = None;
        Ok(RegisterStart { send, settle: None })
    }

    fn on_register_frame(&mut self, frame: &Bytes) -> RegisterStep {
        let Some(register) = self.migration.as_mut() else {
            return RegisterStep::Failed("no migration in progress".into());
        };
        match Message::parse(frame) {
            Some(msg) => register.on_line(&self.snap, &msg),
            None => RegisterStep::Continue(Vec::new()),
        }
    }

    fn flush_mark(&mut self) -> Option<Bytes> {
        let token = format!("handover-{:016x}", random_u64());
        let ping = line(&["PING", &format!(":{token}")]);
        self.flush_token = Some(token);
        Some(ping)
    }

    fn is_flush_reply(&mut self, frame: &Bytes) -> bool {
        let Some(token) = &self.flush_token else {
            return false;
        };
        let matches = Message::parse(frame)
            .is_some_and(|m| m.is("PONG") && m.last() == Some(token.as_bytes()));
        if matches {
            self.flush_token = None;
        }
        matches
    }

    fn detach(&mut self) -> Option<Bytes> {
        Some(line(&["QUIT", QUIT_MESSAGE]))
    }

    fn abort_migration(&mut self) {
        self.migration = None;
        self.flush_token = None;
    }

    fn snapshot_size(&self) -> usize {
        self.snap.heap_size()
            + self.observer.heap_size()
            + self.migration.as_ref().map_or(0, |_| 256)
            + self.flush_token.as_ref().map_or(0, String::capacity)
    }
}

/// A random number for tokens and nick suffixes, without a dependency: std's `RandomState`
/// is seeded from the OS once and differs on every construction.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
