//! Re-registration on a new backend, sans-I/O.
//!
//! The engine connects to the target's configured address: its authorization server. When it
//! says hello, handover replays the client's recorded login there (17,06, then 17,02 once the
//! challenge came back the same; or the roasted channel-1 login) and takes the new cookie and
//! BOS address from the reply. It then asks the engine to reconnect to that BOS, signs on with
//! the cookie, replays the client's sign-on SNACs, and ends with its own 01,0E whose 01,0F
//! proves every reply has come: all of them are hidden. A BOS session then asks for each
//! service the client had open and leaves the answers for the service connections.
//!
//! Shortcuts: after a backend's MIGRATE_GROUPS the given address and cookie are used instead
//! of a login; a service connection uses the hand-off its BOS session left.
//!
//! IMs and buddy arrivals that the new backend sends meanwhile are held, not hidden: the client
//! gets them after the cut (IMs it already had from the old backend are dropped by cookie).

use bytes::Bytes;

use super::flap::{self, Seq, CH_CLOSE, CH_LOGIN, CH_SNAC};
use super::snac::{self, ids::*, Snac};
use super::{signon_payload, OscarSession, Role, FLAP_VERSION};
use crate::protocol::RegisterStep;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    AuthHello,
    Challenge,
    LoginReply,
    BosHello,
    HostOnline,
    Barrier(u32),
    Services(Vec<u32>),
}

pub(super) struct Register {
    step: Step,
    /// Service cookies the new backend gave: (family, address, cookie), left for the service
    /// sessions at the cut.
    pub(super) handoffs: Vec<(u16, String, Bytes)>,
    /// Sequence numbers on the registration link; the session's after the cut.
    pub(super) seq: Seq,
}

impl Register {
    pub(super) fn new() -> Self {
        Self {
            step: Step::AuthHello,
            handoffs: Vec::new(),
            seq: Seq::starting_at(1),
        }
    }
}

impl OscarSession {
    pub(super) fn register_frame(&mut self, frame: &Bytes) -> RegisterStep {
        let Some(step) = self.reg.as_ref().map(|r| r.step.clone()) else {
            return RegisterStep::Failed("no registration under way".into());
        };
        let channel = flap::channel(frame);
        let payload = flap::payload(frame);
        let s = (channel == CH_SNAC).then(|| Snac::parse(payload)).flatten();
        match (&step, channel) {
            (Step::AuthHello, CH_LOGIN) => self.begin_login(),
            (Step::LoginReply, CH_CLOSE) => self.login_reply(payload),
            (_, CH_CLOSE) => RegisterStep::Failed(format!(
                "the new backend closed the sign-on{}",
                error_code(payload)
            )),
            (Step::BosHello, CH_LOGIN) => {
                self.set_step(Step::HostOnline);
                RegisterStep::Continue(Vec::new())
            }
            _ => match s {
                Some(s) => self.register_snac(&step, &s),
                None => RegisterStep::Continue(Vec::new()),
            },
        }
    }

    fn register_snac(&mut self, step: &Step, s: &Snac<'_>) -> RegisterStep {
        match (step, s.family, s.subtype) {
            (Step::Challenge, BUCP, CHALLENGE_RESPONSE) => {
                if self.login.key.as_deref().is_some_and(|k| k != s.data()) {
                    return RegisterStep::Failed(
                        "the new backend's login challenge differs (another user database)".into(),
                    );
                }
                let Some(request) = self.login.request.clone() else {
                    return RegisterStep::Failed("no recorded login request".into());
                };
                self.set_step(Step::LoginReply);
                RegisterStep::Continue(vec![self.reg_frame(CH_SNAC, &request)])
            }
            (Step::LoginReply, BUCP, LOGIN_RESPONSE) => self.login_reply(s.data()),
            (Step::HostOnline, OSERVICE, HOST_ONLINE) => self.replay_signon(),
            (Step::Barrier(rid), OSERVICE, USER_INFO_UPDATE) if s.request_id == *rid => {
                self.request_services()
            }
            (Step::Services(waiting), OSERVICE, SERVICE_RESPONSE | 0x01)
                if waiting.contains(&s.request_id) =>
            {
                if s.subtype == SERVICE_RESPONSE {
                    self.leave_handoff(s);
                }
                let rest: Vec<u32> = waiting
                    .iter()
                    .copied()
                    .filter(|r| *r != s.request_id)
                    .collect();
                if rest.is_empty() {
                    return RegisterStep::Done(Vec::new());
                }
                self.set_step(Step::Services(rest));
                RegisterStep::Continue(Vec::new())
            }
            (Step::HostOnline | Step::Barrier(_) | Step::Services(_), _, _)
                if reaches_client(s) =>
            {
                RegisterStep::Hold(Vec::new())
            }
            _ => RegisterStep::Continue(Vec::new()),
        }
    }

    fn set_step(&mut self, step: Step) {
        if let Some(reg) = self.reg.as_mut() {
            reg.step = step;
        }
    }

    fn reg_frame(&mut self, channel: u8, payload: &[u8]) -> Bytes {
        let reg = self.reg.as_mut().expect("registering");
        reg.seq.frame(channel, payload)
    }

    /// The authorization server said hello: log in, or go straight to a given BOS.
    fn begin_login(&mut self) -> RegisterStep {
        if let Some((address, cookie)) = self.moving_to.clone() {
            return self.reconnect(address, &cookie);
        }
        if let Role::Service(family) = self.role {
            let name = self.screen_name.clone().unwrap_or_default();
            return match self.tickets.handoff(&name, family) {
                Some(h) => self.reconnect(h.address, &h.cookie),
                None => RegisterStep::Failed(format!(
                    "no service {family:#06x} on the new backend yet (its BOS session moves first)"
                )),
            };
        }
        let login = self.login.clone();
        if let Some(roasted) = &login.roasted {
            self.set_step(Step::LoginReply);
            return RegisterStep::Continue(vec![self.reg_frame(CH_LOGIN, roasted)]);
        }
        let Some(challenge) = &login.challenge else {
            return RegisterStep::Failed("no recorded login to replay".into());
        };
        self.set_step(Step::Challenge);
        let hello = self.reg_frame(CH_LOGIN, &FLAP_VERSION);
        RegisterStep::Continue(vec![hello, self.reg_frame(CH_SNAC, challenge)])
    }

    /// 17,03 (or channel 4 for a roasted login): a BOS address and cookie, or a refusal.
    fn login_reply(&mut self, tlv_bytes: &[u8]) -> RegisterStep {
        let list = snac::tlvs(tlv_bytes).unwrap_or_default();
        let address =
            snac::find(&list, TLV_RECONNECT_HERE).and_then(|a| std::str::from_utf8(a).ok());
        match (address, snac::find(&list, TLV_COOKIE)) {
            (Some(address), Some(cookie)) => self.reconnect(address.to_string(), cookie),
            _ => RegisterStep::Failed(format!(
                "the new backend refused the login{}",
                error_code(tlv_bytes)
            )),
        }
    }

    fn reconnect(&mut self, address: String, cookie: &[u8]) -> RegisterStep {
        let reg = self.reg.as_mut().expect("registering");
        reg.seq = Seq::starting_at(1);
        reg.step = Step::BosHello;
        let signon = signon_payload(&[(TLV_COOKIE, cookie)]);
        let send = vec![reg.seq.frame(CH_LOGIN, &signon)];
        RegisterStep::Reconnect { address, send }
    }

    /// HOST_ONLINE from the new BOS: replay the client's sign-on, then the barrier.
    fn replay_signon(&mut self) -> RegisterStep {
        let snacs: Vec<Bytes> = self
            .snap
            .signon
            .iter()
            .chain(self.snap.later.iter())
            .cloned()
            .collect();
        let mut send: Vec<Bytes> = snacs.iter().map(|p| self.reg_frame(CH_SNAC, p)).collect();
        let rid = self.own_rid();
        let barrier = snac::build(OSERVICE, USER_INFO_QUERY, rid, &[]);
        send.push(self.reg_frame(CH_SNAC, &barrier));
        self.set_step(Step::Barrier(rid));
        RegisterStep::Continue(send)
    }

    /// A BOS session asks the new backend for the services the client had open.
    fn request_services(&mut self) -> RegisterStep {
        if self.role != Role::Bos || self.snap.services.is_empty() {
            return RegisterStep::Done(Vec::new());
        }
        let mut send = Vec::new();
        let mut rids = Vec::new();
        for family in self.snap.services.clone() {
            let rid = self.own_rid();
            let req = snac::build(OSERVICE, SERVICE_REQUEST, rid, &family.to_be_bytes());
            send.push(self.reg_frame(CH_SNAC, &req));
            rids.push(rid);
        }
        self.set_step(Step::Services(rids));
        RegisterStep::Continue(send)
    }

    fn leave_handoff(&mut self, s: &Snac<'_>) {
        let Ok(list) = snac::tlvs(s.data()) else {
            return;
        };
        let family = snac::find(&list, TLV_GROUP_ID)
            .and_then(|f| f.get(..2))
            .map(|f| u16::from_be_bytes([f[0], f[1]]));
        let address =
            snac::find(&list, TLV_RECONNECT_HERE).and_then(|a| std::str::from_utf8(a).ok());
        if let (Some(family), Some(address), Some(cookie), Some(reg)) = (
            family,
            address,
            snac::find(&list, TLV_COOKIE),
            self.reg.as_mut(),
        ) {
            reg.handoffs
                .push((family, address.to_string(), Bytes::copy_from_slice(cookie)));
        }
    }
}

/// What a new backend says during registration that the client must still get after the cut:
/// IMs to it and buddies coming and going.
fn reaches_client(s: &Snac<'_>) -> bool {
    s.is(ICBM, ICBM_CHANNEL_MSG_TOCLIENT)
        || s.is(BUDDY, BUDDY_ARRIVED)
        || s.is(BUDDY, BUDDY_DEPARTED)
}

/// ", error 0x0005" from a TLV 8 (error code), if there is one.
fn error_code(tlv_bytes: &[u8]) -> String {
    snac::tlvs(tlv_bytes)
        .ok()
        .and_then(|l| snac::find(&l, TLV_ERROR).map(|v| format!(" (error {})", hex(v))))
        .unwrap_or_default()
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}
