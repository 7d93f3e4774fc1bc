//! The listener's ticket table: what handover promised a client when it rewrote an address.
//!
//! Real servers answer a login (17,03) and a service request (01,05) with an address and a
//! cookie. handover gives the client its own address (`advertise`) and a token of its own
//! instead, and keeps here, per token, the real address, the real cookie, the backend that
//! issued it and the login the client made. A connection that presents the token is routed
//! to the real address and presents the real cookie there. Tokens are needed because real
//! servers reuse one cookie for BOS and every service (the capture shows it), so a cookie
//! alone cannot say where a connection goes.
//!
//! Also here: service hand-offs. When a BOS session re-registers on a new backend it asks that
//! backend for each service the client had open and leaves the answer (address, cookie) here,
//! where the service connections' own migrations pick it up.
//!
//! Bounded: at most [`MAX_TICKETS`] tickets and hand-offs, each forgotten after [`TTL`]
//! (real cookies expire in about a minute anyway).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub const MAX_TICKETS: usize = 16_384;
pub const TTL: Duration = Duration::from_secs(300);
pub const TOKEN_LEN: usize = 16;

pub type Token = [u8; TOKEN_LEN];

/// What one recorded login is made of (SNAC or channel-1 payloads, without FLAP headers).
#[derive(Debug, Clone, Default)]
pub struct Login {
    /// The FLAP channel-1 payload of a roasted-password login (the oldest clients).
    pub roasted: Option<Bytes>,
    /// BUCP challenge request (17,06) and login request (17,02).
    pub challenge: Option<Bytes>,
    pub request: Option<Bytes>,
    /// The body of the server's challenge (17,07): the user's salt. A new backend must answer
    /// the same, or the recorded MD5 login cannot be valid there.
    pub key: Option<Bytes>,
}

impl Login {
    pub fn is_complete(&self) -> bool {
        self.roasted.is_some() || (self.challenge.is_some() && self.request.is_some())
    }

    pub fn size(&self) -> usize {
        [&self.roasted, &self.challenge, &self.request, &self.key]
            .iter()
            .map(|b| b.as_ref().map_or(0, Bytes::len))
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bos,
    /// A service connection (alert, chat-nav, chat, BART…) of this food group.
    Service(u16),
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub backend: String,
    pub address: String,
    pub cookie: Bytes,
    pub kind: Kind,
    pub screen_name: String,
    pub login: Arc<Login>,
    issued: Instant,
}

/// A service on a new backend, asked for by the migrated BOS session.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The backend the BOS session moved to (where the service should follow).
    pub backend: String,
    pub address: String,
    pub cookie: Bytes,
    issued: Instant,
}

#[derive(Default)]
struct Inner {
    tickets: HashMap<Token, Ticket>,
    handoffs: HashMap<(String, u16), Handoff>,
    /// BOS address → the backend whose login named it, so a backend's MIGRATE_GROUPS (which
    /// names a BOS address) can be mapped to a configured backend.
    bos: HashMap<String, String>,
}

pub struct Tickets {
    inner: Mutex<Inner>,
    keys: RandomState,
    counter: AtomicU64,
}

impl Default for Tickets {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            keys: RandomState::new(),
            counter: AtomicU64::new(1),
        }
    }
}

/// Screen names compare without case or spaces (AIM's rule).
pub fn normalize(screen_name: &str) -> String {
    screen_name
        .chars()
        .filter(|c| *c != ' ')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Tickets {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An unguessable token: two keyed SipHashes of a counter (std's per-process random keys).
    fn token(&self) -> Token {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut t = [0u8; TOKEN_LEN];
        t[..8].copy_from_slice(&self.keys.hash_one((n, 0u8)).to_be_bytes());
        t[8..].copy_from_slice(&self.keys.hash_one((n, 1u8)).to_be_bytes());
        t
    }

    /// Records a ticket and returns the token the client gets instead of the cookie.
    pub fn issue(
        &self,
        backend: &str,
        address: &str,
        cookie: &[u8],
        kind: Kind,
        screen_name: &str,
        login: Arc<Login>,
    ) -> Token {
        let token = self.token();
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tickets.retain(|_, t| now - t.issued < TTL);
        if inner.tickets.len() >= MAX_TICKETS {
            // Full of live tickets: forget the oldest.
            if let Some(oldest) = inner
                .tickets
                .iter()
                .min_by_key(|(_, t)| t.issued)
                .map(|(k, _)| *k)
            {
                inner.tickets.remove(&oldest);
            }
        }
        inner.tickets.insert(
            token,
            Ticket {
                backend: backend.to_string(),
                address: address.to_string(),
                cookie: Bytes::copy_from_slice(cookie),
                kind,
                screen_name: screen_name.to_string(),
                login,
                issued: now,
            },
        );
        token
    }

    /// Takes the ticket for a token a client presented (each is good for one connection).
    pub fn redeem(&self, token: &[u8]) -> Option<Ticket> {
        let token: Token = token.try_into().ok()?;
        let ticket = self.lock().tickets.remove(&token)?;
        (Instant::now() - ticket.issued < TTL).then_some(ticket)
    }

    pub fn leave_handoff(
        &self,
        screen_name: &str,
        family: u16,
        backend: &str,
        address: &str,
        cookie: &[u8],
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.handoffs.retain(|_, h| now - h.issued < TTL);
        if inner.handoffs.len() >= MAX_TICKETS {
            return;
        }
        inner.handoffs.insert(
            (normalize(screen_name), family),
            Handoff {
                backend: backend.to_string(),
                address: address.to_string(),
                cookie: Bytes::copy_from_slice(cookie),
                issued: now,
            },
        );
    }

    /// The hand-off for a service; kept (until it expires) so a failed attempt can retry.
    pub fn handoff(&self, screen_name: &str, family: u16) -> Option<Handoff> {
        let key = (normalize(screen_name), family);
        let h = self.lock().handoffs.get(&key).cloned()?;
        (Instant::now() - h.issued < TTL).then_some(h)
    }

    /// A service session used its hand-off: the next move needs a fresh one.
    pub fn drop_handoff(&self, screen_name: &str, family: u16) {
        self.lock()
            .handoffs
            .remove(&(normalize(screen_name), family));
    }

    pub fn learn_bos(&self, address: &str, backend: &str) {
        let mut inner = self.lock();
        if inner.bos.len() < 1024 || inner.bos.contains_key(address) {
            inner.bos.insert(address.to_string(), backend.to_string());
        }
    }

    pub fn backend_of_bos(&self, address: &str) -> Option<String> {
        self.lock().bos.get(address).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
