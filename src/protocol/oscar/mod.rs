//! OSCAR (AIM/ICQ): FLAP framing, the login and redirect rewriting that keeps every connection
//! of a client on handover, and re-registration on a new backend by replaying the login.
//!
//! One OSCAR session is several TCP connections, and handover runs each as a session of its
//! own, in one of three roles decided by the first frame the client sends ([`route`]):
//!
//! - **login**: FLAP channel 1 without a cookie. Proxied to the pool's authorization server.
//!   handover records the login (BUCP 17,06 + 17,02, or a roasted channel-1 login) and
//!   rewrites the reply's BOS address (TLV 5) and cookie (TLV 6) into its own `advertise`
//!   address and a token ([`tickets`]). Never migrated: it ends with the sign-on.
//! - **BOS**: channel 1 with a token. Routed to the real BOS address with the real cookie.
//!   Service redirects (01,05) are rewritten the same way. Migrates by replaying the login to
//!   the new backend's authorization server (`register.rs`).
//! - **service** (alert, chat-nav, chat, BART…): channel 1 with a token from a redirect.
//!   Migrates with the service cookie the migrated BOS session asked the new backend for.
//!
//! handover speaks FLAP channel 1 to the client itself (the greeting) and hides each backend's,
//! and renumbers every frame per direction, so the client's sequence numbers never break.
//!
//! [`route`]: OscarSession::route

mod flap;
mod register;
pub mod snac;
#[cfg(test)]
mod tests;
pub mod tickets;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    Direction, FrameError, Protocol, RegisterStart, RegisterStep, Route, SessionAdapter, Verdict,
};
use crate::config::{BackendConfig, ListenerConfig};
use flap::{Seq, CH_CLOSE, CH_LOGIN, CH_SNAC};
use snac::ids::*;
use snac::Snac;
use tickets::{Kind, Login, Tickets};

pub use flap::MAX_PAYLOAD;

/// Most bytes of sign-on SNACs kept per session; past it the session is not migrated (a
/// clean refusal) rather than growing without bound.
const MAX_SIGNON: usize = 16 * 1024;
/// How many incoming IM cookies are remembered to drop an IM the new backend repeats.
const ICBM_MEMORY: usize = 64;
/// The FLAP version every channel-1 frame starts with.
const FLAP_VERSION: [u8; 4] = [0, 0, 0, 1];

pub struct OscarProtocol {
    advertise: Option<String>,
    tickets: Arc<Tickets>,
}

impl OscarProtocol {
    pub fn new(listener: &ListenerConfig) -> Self {
        Self {
            advertise: listener.advertise.clone(),
            tickets: Arc::default(),
        }
    }
}

impl Protocol for OscarProtocol {
    fn name(&self) -> &'static str {
        "oscar"
    }

    fn new_session(&self, _listener: &ListenerConfig) -> Box<dyn SessionAdapter> {
        Box::new(OscarSession::new(
            self.advertise.clone(),
            self.tickets.clone(),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Unrouted,
    Login,
    Bos,
    Service(u16),
}

/// What a session learned that a new backend must be told again.
#[derive(Default)]
struct Snapshot {
    /// The client's SNACs up to and including CLIENT_ONLINE (01,02), in order.
    signon: Vec<Bytes>,
    /// State the client set after it was online (status, profile, idle), latest per kind.
    later: Vec<Bytes>,
    bytes: usize,
    online: bool,
    /// The record outgrew [`MAX_SIGNON`]: the session cannot be moved.
    overflow: bool,
    /// Service families the client was sent to (01,05), to ask the new backend for again.
    services: Vec<u16>,
    /// The families HOST_ONLINE listed, for PAUSE_ACK.
    families: Bytes,
}

pub struct OscarSession {
    advertise: Option<String>,
    tickets: Arc<Tickets>,
    role: Role,
    backend: String,
    to_client: Seq,
    to_backend: Seq,
    /// The next channel-1 frame of the backend is its hello; the client had handover's.
    hide_hello: bool,
    /// The backend sent channel 4 (signed the client off): a close, not a failure.
    backend_closed: bool,
    screen_name: Option<String>,
    login: Arc<Login>,
    snap: Snapshot,
    icbm_seen: VecDeque<[u8; 8]>,
    /// Request ids of handover's own SNACs: high bit set, which clients never use.
    next_rid: u32,
    flush_rid: Option<u32>,
    /// Address and cookie from the backend's MIGRATE_GROUPS.
    moving_to: Option<(String, Bytes)>,
    reg: Option<register::Register>,
}

impl OscarSession {
    pub fn new(advertise: Option<String>, tickets: Arc<Tickets>) -> Self {
        Self {
            advertise,
            tickets,
            role: Role::Unrouted,
            backend: String::new(),
            to_client: Seq::starting_at(1),
            to_backend: Seq::starting_at(1),
            hide_hello: true,
            backend_closed: false,
            screen_name: None,
            login: Arc::default(),
            snap: Snapshot::default(),
            icbm_seen: VecDeque::new(),
            next_rid: 0x8000_0001,
            flush_rid: None,
            moving_to: None,
            reg: None,
        }
    }

    fn own_rid(&mut self) -> u32 {
        let rid = self.next_rid;
        self.next_rid = 0x8000_0000 | (self.next_rid.wrapping_add(1) & 0x7FFF_FFFF);
        rid
    }

    fn advertise(&self) -> &str {
        self.advertise.as_deref().unwrap_or("127.0.0.1:5190")
    }

    /// Forwards a frame with the next sequence number of its direction.
    fn stamp(&mut self, dir: Direction, frame: &Bytes) -> Verdict {
        let seq = match dir {
            Direction::ClientToBackend => &mut self.to_backend,
            Direction::BackendToClient => &mut self.to_client,
        };
        let out = seq.stamp(frame);
        if out.as_ptr() == frame.as_ptr() {
            Verdict::Forward
        } else {
            Verdict::Rewrite(out)
        }
    }

    fn rewritten(&mut self, dir: Direction, channel: u8, payload: &[u8]) -> Verdict {
        let seq = match dir {
            Direction::ClientToBackend => &mut self.to_backend,
            Direction::BackendToClient => &mut self.to_client,
        };
        Verdict::Rewrite(seq.frame(channel, payload))
    }

    /// A login reply's or redirect's TLVs with the address and cookie replaced by handover's
    /// own, the real ones kept as a ticket. `None` when there is no address and cookie.
    fn issue(&mut self, list: &[(u16, &[u8])], kind: Kind) -> Option<Bytes> {
        let address = std::str::from_utf8(snac::find(list, TLV_RECONNECT_HERE)?).ok()?;
        let cookie = snac::find(list, TLV_COOKIE)?;
        if let Some(name) = snac::find(list, TLV_SCREEN_NAME) {
            self.screen_name = Some(String::from_utf8_lossy(name).into_owned());
        }
        let screen_name = self.screen_name.clone().unwrap_or_default();
        if kind == Kind::Bos {
            self.tickets.learn_bos(address, &self.backend);
        }
        let token = self.tickets.issue(
            &self.backend,
            address,
            cookie,
            kind,
            &screen_name,
            self.login.clone(),
        );
        let advertise = self.advertise().to_string();
        Some(snac::replace_tlvs(
            list,
            &[
                (TLV_RECONNECT_HERE, advertise.as_bytes()),
                (TLV_COOKIE, &token),
            ],
        ))
    }

    fn observe_client(&mut self, frame: &Bytes) -> Verdict {
        if flap::channel(frame) == CH_SNAC {
            let payload = flap::payload(frame);
            if let Some(s) = Snac::parse(payload) {
                match self.role {
                    Role::Login => self.record_login(&s, payload),
                    Role::Bos | Role::Service(_) => self.record_signon(&s, payload),
                    Role::Unrouted => {}
                }
            }
        }
        self.stamp(Direction::ClientToBackend, frame)
    }

    /// Kept payloads are copies: a slice of the frame would pin the whole read buffer.
    fn record_login(&mut self, s: &Snac<'_>, payload: &[u8]) {
        let login = Arc::make_mut(&mut self.login);
        match (s.family, s.subtype) {
            (BUCP, CHALLENGE_REQUEST) => {
                if let Ok(list) = snac::tlvs(s.data()) {
                    if let Some(name) = snac::find(&list, TLV_SCREEN_NAME) {
                        self.screen_name = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
                login.challenge = Some(Bytes::copy_from_slice(payload));
            }
            (BUCP, LOGIN_REQUEST) => login.request = Some(Bytes::copy_from_slice(payload)),
            _ => {}
        }
    }

    fn record_signon(&mut self, s: &Snac<'_>, payload: &[u8]) {
        let snap = &mut self.snap;
        if !snap.online {
            let skip = s.is(OSERVICE, SERVICE_REQUEST)
                || s.is(ICBM, ICBM_CHANNEL_MSG_TOHOST)
                || s.family == BUCP;
            if !skip {
                snap.bytes += payload.len();
                snap.signon.push(Bytes::copy_from_slice(payload));
            }
            snap.online = s.is(OSERVICE, CLIENT_ONLINE);
        } else if self.role == Role::Bos && is_lasting_state(s) {
            // Latest per (family, subtype, first two data bytes): a status replaces a status.
            let key = |p: &[u8]| (p[..4].to_vec(), p.get(10..12).map(<[u8]>::to_vec));
            let k = key(payload);
            if let Some(i) = snap.later.iter().position(|p| key(p) == k) {
                let old = snap.later.remove(i);
                snap.bytes -= old.len();
            }
            snap.bytes += payload.len();
            snap.later.push(Bytes::copy_from_slice(payload));
        }
        if snap.bytes > MAX_SIGNON {
            snap.overflow = true;
            snap.signon.clear();
            snap.later.clear();
            snap.bytes = 0;
        }
    }

    fn observe_backend(&mut self, frame: &Bytes) -> Verdict {
        let dir = Direction::BackendToClient;
        let payload = flap::payload(frame);
        match flap::channel(frame) {
            CH_LOGIN if self.hide_hello => {
                self.hide_hello = false;
                return Verdict::Hide;
            }
            CH_CLOSE => {
                self.backend_closed = true;
                if self.role == Role::Login {
                    // A roasted login's reply comes on channel 4: address and cookie as TLVs.
                    let list = snac::tlvs(payload).unwrap_or_default();
                    if let Some(body) = self.issue(&list, Kind::Bos) {
                        return self.rewritten(dir, CH_CLOSE, &body);
                    }
                }
            }
            CH_SNAC => {
                if let Some(v) = self.observe_backend_snac(frame) {
                    return v;
                }
            }
            _ => {}
        }
        self.stamp(dir, frame)
    }

    /// The SNACs from a backend that handover acts on; `None` forwards the frame.
    fn observe_backend_snac(&mut self, frame: &Bytes) -> Option<Verdict> {
        let dir = Direction::BackendToClient;
        let s = Snac::parse(flap::payload(frame))?;
        match (s.family, s.subtype) {
            (BUCP, CHALLENGE_RESPONSE) if self.role == Role::Login => {
                Arc::make_mut(&mut self.login).key = Some(Bytes::copy_from_slice(s.data()));
                None
            }
            (BUCP, LOGIN_RESPONSE) if self.role == Role::Login => {
                let list = snac::tlvs(s.data()).ok()?;
                let body = self.issue(&list, Kind::Bos)?;
                Some(self.rewritten(dir, CH_SNAC, &snac::with_body(&s, &body)))
            }
            (OSERVICE, SERVICE_RESPONSE) => {
                let list = snac::tlvs(s.data()).ok()?;
                let family = snac::find(&list, TLV_GROUP_ID)
                    .and_then(|f| f.get(..2))
                    .map(|f| u16::from_be_bytes([f[0], f[1]]))?;
                let body = self.issue(&list, Kind::Service(family))?;
                if !self.snap.services.contains(&family) && self.snap.services.len() < 32 {
                    self.snap.services.push(family);
                }
                Some(self.rewritten(dir, CH_SNAC, &snac::with_body(&s, &body)))
            }
            (OSERVICE, HOST_ONLINE) if self.snap.families.is_empty() => {
                self.snap.families = Bytes::copy_from_slice(s.data());
                None
            }
            (OSERVICE, PAUSE_REQ) => {
                let ack = snac::build(OSERVICE, PAUSE_ACK, self.own_rid(), &self.snap.families);
                Some(Verdict::Reply(self.to_backend.frame(CH_SNAC, &ack)))
            }
            (OSERVICE, RESUME) => {
                self.moving_to = None;
                Some(Verdict::Hide)
            }
            (OSERVICE, MIGRATE_GROUPS) => Some(self.backend_asks_to_move(&s)),
            (ICBM, ICBM_CHANNEL_MSG_TOCLIENT) => {
                let cookie: [u8; 8] = s.data().get(..8)?.try_into().ok()?;
                if self.icbm_seen.contains(&cookie) {
                    // The new backend repeats an IM the old one delivered.
                    return Some(Verdict::Hide);
                }
                if self.icbm_seen.len() == ICBM_MEMORY {
                    self.icbm_seen.pop_front();
                }
                self.icbm_seen.push_back(cookie);
                None
            }
            _ => None,
        }
    }

    fn backend_asks_to_move(&mut self, s: &Snac<'_>) -> Verdict {
        let Ok(list) = snac::migrate_tlvs(s.data()) else {
            return Verdict::Hide;
        };
        let address = snac::find(&list, TLV_RECONNECT_HERE)
            .and_then(|a| std::str::from_utf8(a).ok())
            .map(str::to_string);
        let cookie = snac::find(&list, TLV_COOKIE);
        let (Some(address), Some(cookie)) = (address, cookie) else {
            return Verdict::Hide;
        };
        // The engine moves to a configured backend: name the one whose BOS this is.
        let target = self
            .tickets
            .backend_of_bos(&address)
            .unwrap_or_else(|| address.clone());
        self.moving_to = Some((address, Bytes::copy_from_slice(cookie)));
        Verdict::MoveTo(target)
    }
}

/// Client SNACs after sign-on that set state a new backend must be told again.
fn is_lasting_state(s: &Snac<'_>) -> bool {
    matches!(
        (s.family, s.subtype),
        (0x0001, 0x11) | (0x0001, 0x1E) | (0x0002, 0x04) | (0x0004, 0x02)
    )
}

/// A FLAP channel-1 payload: version, then TLVs.
fn signon_payload(tlvs: &[(u16, &[u8])]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(&FLAP_VERSION);
    for (tag, value) in tlvs {
        snac::put_tlv(&mut out, *tag, value);
    }
    out
}

impl SessionAdapter for OscarSession {
    fn greeting(&mut self, accepted_on: std::net::SocketAddr) -> Option<Bytes> {
        self.advertise
            .get_or_insert_with(|| accepted_on.to_string());
        Some(self.to_client.frame(CH_LOGIN, &FLAP_VERSION))
    }

    fn route(&mut self, buf: &mut BytesMut) -> Result<Route, FrameError> {
        if buf.len() >= flap::HEADER && buf[0] == flap::START {
            let need = flap::HEADER + u16::from_be_bytes([buf[4], buf[5]]) as usize;
            if buf.len() < need && need <= flap::HEADER + MAX_PAYLOAD {
                return Ok(Route::Need(need));
            }
        }
        let Some(frame) = flap::decode(buf)? else {
            return Ok(Route::Need(flap::HEADER));
        };
        if flap::channel(&frame) != CH_LOGIN {
            return Err(FrameError(format!(
                "a first frame on FLAP channel {}, not 1 (sign-on)",
                flap::channel(&frame)
            )));
        }
        let payload = flap::payload(&frame);
        let list = snac::tlvs(&payload[4..])?;
        let Some(token) = snac::find(&list, TLV_COOKIE) else {
            // A login: to the pool's authorization server.
            self.role = Role::Login;
            if snac::find(&list, TLV_SCREEN_NAME).is_some() {
                let name = snac::find(&list, TLV_SCREEN_NAME).unwrap_or_default();
                self.screen_name = Some(String::from_utf8_lossy(name).into_owned());
                Arc::make_mut(&mut self.login).roasted = Some(Bytes::copy_from_slice(payload));
            }
            return Ok(Route::Pool(Some(self.to_backend.stamp(&frame))));
        };
        let ticket = self.tickets.redeem(token).ok_or_else(|| {
            FrameError("a sign-on with a cookie handover did not issue (or one expired)".into())
        })?;
        self.role = match ticket.kind {
            Kind::Bos => Role::Bos,
            Kind::Service(family) => Role::Service(family),
        };
        self.screen_name = Some(ticket.screen_name.clone());
        self.login = ticket.login.clone();
        let real = signon_payload(&replace(&list, TLV_COOKIE, &ticket.cookie));
        Ok(Route::To {
            backend: ticket.backend,
            address: ticket.address,
            send: self.to_backend.frame(CH_LOGIN, &real),
        })
    }

    fn on_backend(&mut self, backend: &BackendConfig) {
        self.backend = backend.name.clone();
    }

    fn decode(&mut self, _dir: Direction, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        flap::decode(buf)
    }

    fn observe(&mut self, dir: Direction, frame: &Bytes) -> Verdict {
        match dir {
            Direction::ClientToBackend => self.observe_client(frame),
            Direction::BackendToClient => self.observe_backend(frame),
        }
    }

    /// A login connection is registered once the client sent its whole login; BOS and service
    /// connections once the client said CLIENT_ONLINE (01,02).
    fn registered(&self) -> bool {
        match self.role {
            Role::Unrouted => false,
            Role::Login => self.login.is_complete(),
            Role::Bos | Role::Service(_) => self.snap.online,
        }
    }

    fn identity(&self) -> Option<String> {
        self.screen_name.clone()
    }

    fn identity_is(&self, current: Option<&str>) -> bool {
        self.screen_name.as_deref() == current
    }

    fn can_migrate(&self) -> Result<(), String> {
        self.can_fail_over()?;
        match self.role {
            Role::Service(family) if self.moving_to.is_none() => {
                let name = self.screen_name.as_deref().unwrap_or_default();
                match self.tickets.handoff(name, family) {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "service {family:#06x} moves after its BOS session has (no cookie for it yet)"
                    )),
                }
            }
            _ => Ok(()),
        }
    }

    /// What a failover needs: a signed-on session with a login to replay. A service
    /// connection's hand-off is not required here: it is waited for by retrying.
    fn can_fail_over(&self) -> Result<(), String> {
        match self.role {
            Role::Unrouted | Role::Login => {
                Err("an OSCAR login connection ends with the sign-on; it is not moved".into())
            }
            _ if self.snap.overflow => Err(format!(
                "the session's sign-on record outgrew {MAX_SIGNON} bytes"
            )),
            _ if !self.snap.online => Err("the client has not finished signing on".into()),
            Role::Bos if !self.login.is_complete() && self.moving_to.is_none() => {
                Err("no recorded login to replay".into())
            }
            _ => Ok(()),
        }
    }

    /// A service connection follows its BOS session to the backend it moved to.
    fn preferred_backend(&self) -> Option<String> {
        let Role::Service(family) = self.role else {
            return None;
        };
        let name = self.screen_name.as_deref()?;
        self.tickets.handoff(name, family).map(|h| h.backend)
    }

    fn start_register(&mut self) -> Result<RegisterStart, String> {
        self.can_fail_over()?;
        self.reg = Some(register::Register::new());
        Ok(RegisterStart::default())
    }

    fn on_register_frame(&mut self, frame: &Bytes) -> RegisterStep {
        self.register_frame(frame)
    }

    fn flush_mark(&mut self) -> Option<Bytes> {
        let rid = self.own_rid();
        self.flush_rid = Some(rid);
        let query = snac::build(OSERVICE, USER_INFO_QUERY, rid, &[]);
        Some(self.to_backend.frame(CH_SNAC, &query))
    }

    fn is_flush_reply(&mut self, frame: &Bytes) -> bool {
        let Some(rid) = self.flush_rid else {
            return false;
        };
        let hit = flap::channel(frame) == CH_SNAC
            && Snac::parse(flap::payload(frame))
                .is_some_and(|s| s.is(OSERVICE, USER_INFO_UPDATE) && s.request_id == rid);
        if hit {
            self.flush_rid = None;
        }
        hit
    }

    fn detach(&mut self) -> Option<Bytes> {
        Some(self.to_backend.frame(CH_CLOSE, &[]))
    }

    fn cutover(&mut self) -> Vec<Bytes> {
        let name = self.screen_name.clone().unwrap_or_default();
        if let Some(reg) = self.reg.take() {
            self.to_backend = reg.seq;
            // Only now, with the BOS session on the new backend, may its services follow.
            for (family, address, cookie) in reg.handoffs {
                let backend = self.backend.clone();
                self.tickets
                    .leave_handoff(&name, family, &backend, &address, &cookie);
            }
        }
        if let Role::Service(family) = self.role {
            self.tickets.drop_handoff(&name, family);
        }
        self.moving_to = None;
        self.flush_rid = None;
        self.hide_hello = false;
        self.backend_closed = false;
        Vec::new()
    }

    fn failover_on_close(&self) -> bool {
        matches!(self.role, Role::Bos | Role::Service(_)) && !self.backend_closed
    }

    fn abort_migration(&mut self) {
        self.reg = None;
        self.flush_rid = None;
        self.moving_to = None;
    }

    fn snapshot_size(&self) -> usize {
        self.login.size() + self.snap.bytes
    }
}

/// A TLV list with one value replaced.
fn replace<'a>(list: &[(u16, &'a [u8])], tag: u16, value: &'a [u8]) -> Vec<(u16, &'a [u8])> {
    list.iter()
        .map(|(t, v)| if *t == tag { (*t, value) } else { (*t, *v) })
        .collect()
}
