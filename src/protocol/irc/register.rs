//! Sans-I/O re-registration on the new backend (B): replay the snapshot, consume every reply.
//!
//! Order on the wire: `PASS`, `CAP LS 302`, `NICK`, `USER` at once (as clients do, so a taken
//! nick is known early); then `CAP REQ` for the acked caps once B listed them, SASL PLAIN if the
//! client used it, `CAP END`. At 001 the rejoins, user modes and away status are sent, followed
//! by a `PING` barrier: B answers commands in order, so its PONG proves the welcome burst (MOTD,
//! LUSERS, the auto user MODE) and every reply to the rejoins are behind us. Registration is
//! done when the barrier PONG, every rejoined channel's JOIN echo and 366, and the 306 for AWAY
//! have arrived; after that nothing of the burst can follow and reach the client.

use bytes::Bytes;

use super::caps::{CapStep, Caps};
use super::message::{irc_eq, is_channel, line, text, Message};
use super::numerics::{
    one_of, ERR_ERRONEUSNICKNAME, ERR_PASSWDMISMATCH, ERR_YOUREBANNEDCREEP, JOIN_ERRORS,
    NICK_TAKEN, RPL_ENDOFNAMES, RPL_NOWAWAY, RPL_WELCOME,
};
use super::observe::bounce_target;
use super::snapshot::Snapshot;
use crate::protocol::RegisterStep;

/// Temporary nicks tried before giving up.
const NICK_TRIES: u8 = 5;
/// JOIN lines are kept below this many bytes.
const JOIN_LINE: usize = 400;

#[derive(Debug)]
pub struct Register {
    linked: bool,
    seed: u64,
    /// The nick B knows us by (the temporary one on a linked network).
    nick: String,
    nick_tries: u8,
    caps: Option<Caps>,
    welcomed: bool,
    /// Rejoined channels: name, JOIN echo seen, 366 seen.
    channels: Vec<(String, bool, bool)>,
    away_pending: bool,
    /// The user modes and away text sent at 001, for the fixup at the cut.
    given_modes: String,
    given_away: Option<String>,
    barrier: String,
    barrier_seen: bool,
    /// `user@host` of our user on B, from its own echoes.
    userhost: Option<String>,
}

impl Register {
    /// The first frames for B, and the machine that consumes B's replies.
    pub fn start(snap: &Snapshot, linked: bool, seed: u64) -> Result<(Self, Vec<Bytes>), String> {
        let real = snap.nick.as_deref().ok_or("not registered yet")?;
        let user = snap
            .user
            .as_deref()
            .ok_or("the client's USER line is unknown")?;
        let nick = if linked {
            temp_nick(real, snap.nicklen, seed, 0)
        } else {
            real.to_string()
        };
        let mut send = Vec::new();
        if let Some(pass) = &snap.pass {
            send.push(line(&[&pass.0]));
        }
        let caps = Caps::new(snap);
        if caps.is_some() {
            send.push(line(&["CAP", "LS", "302"]));
        }
        send.push(line(&["NICK", &nick]));
        send.push(line(&[user]));
        let register = Self {
            linked,
            seed,
            nick,
            nick_tries: 1,
            caps,
            welcomed: false,
            channels: Vec::new(),
            away_pending: false,
            given_modes: String::new(),
            given_away: None,
            barrier: format!("handover-reg-{seed:x}"),
            barrier_seen: false,
            userhost: None,
        };
        Ok((register, send))
    }

    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The channels rejoined on B (known from B's 001).
    pub fn rejoined(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(|c| c.0.as_str())
    }

    /// What B was given at its 001.
    pub fn given(&self) -> Given {
        Given {
            channels: self.channels.iter().map(|c| c.0.clone()).collect(),
            modes: self.given_modes.clone(),
            away: self.given_away.clone(),
        }
    }

    /// B's 001 arrived: from now on B sits in the channels too.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    pub fn userhost(&self) -> Option<&str> {
        self.userhost.as_deref()
    }

    /// Feeds one line of B.
    pub fn on_line(&mut self, snap: &Snapshot, msg: &Message) -> RegisterStep {
        if let Some(reason) = self.refusal(msg) {
            return RegisterStep::Failed(reason);
        }
        let cmd = msg.command;
        if msg.is("PING") {
            let token = text(msg.last().unwrap_or_default());
            return RegisterStep::Continue(vec![line(&["PONG", &format!(":{token}")])]);
        }
        if !self.welcomed && one_of(cmd, NICK_TAKEN).is_some() && !param_is_channel(msg) {
            return self.next_nick(snap);
        }
        if cmd == RPL_WELCOME.as_bytes() {
            return self.welcome(snap, msg);
        }
        if !self.welcomed {
            return self.negotiate(msg);
        }
        self.settle(msg)
    }

    /// A reply that ends the attempt, with the reason.
    fn refusal(&self, msg: &Message) -> Option<String> {
        let cmd = msg.command;
        let said = || text(msg.last().unwrap_or_default());
        if msg.is("ERROR") {
            return Some(format!("ERROR: {}", said()));
        }
        if msg.is("KILL")
            && msg
                .param(0)
                .is_some_and(|n| irc_eq(n, self.nick.as_bytes()))
        {
            return Some(format!("killed: {}", said()));
        }
        if cmd == ERR_ERRONEUSNICKNAME.as_bytes() && !self.welcomed {
            return Some(format!("erroneous nickname {}", self.nick));
        }
        if cmd == ERR_PASSWDMISMATCH.as_bytes() {
            return Some("password refused (464)".into());
        }
        if cmd == ERR_YOUREBANNEDCREEP.as_bytes() {
            return Some(format!("banned (465): {}", said()));
        }
        if let Some(target) = bounce_target(msg) {
            return Some(format!("backend redirects to {target}"));
        }
        if let Some(numeric) = one_of(cmd, JOIN_ERRORS) {
            let chan = msg.param(1).unwrap_or_default();
            if self
                .channels
                .iter()
                .any(|(c, ..)| irc_eq(c.as_bytes(), chan))
            {
                return Some(format!("cannot rejoin {}: {numeric}", text(chan)));
            }
        }
        None
    }

    fn next_nick(&mut self, snap: &Snapshot) -> RegisterStep {
        if !self.linked || self.nick_tries >= NICK_TRIES {
            return RegisterStep::Failed("nick unavailable".into());
        }
        let real = snap.nick.as_deref().unwrap_or_default();
        self.nick = temp_nick(real, snap.nicklen, self.seed, self.nick_tries);
        self.nick_tries += 1;
        RegisterStep::Continue(vec![line(&["NICK", &self.nick])])
    }

    /// CAP and SASL before the welcome.
    fn negotiate(&mut self, msg: &Message) -> RegisterStep {
        let Some(caps) = self.caps.as_mut() else {
            return RegisterStep::Continue(Vec::new());
        };
        match caps.on_line(msg) {
            CapStep::Send(frames) => RegisterStep::Continue(frames),
            CapStep::Failed(reason) => RegisterStep::Failed(reason),
        }
    }

    fn welcome(&mut self, snap: &Snapshot, msg: &Message) -> RegisterStep {
        self.welcomed = true;
        if let Some(nick) = msg.param(0) {
            self.nick = text(nick);
        }
        let mut send = join_lines(snap);
        self.channels = snap
            .channels
            .iter()
            .map(|c| (c.name.clone(), false, false))
            .collect();
        self.given_modes = snap.replayable_modes();
        if !self.given_modes.is_empty() {
            send.push(line(&[
                "MODE",
                &self.nick,
                &format!("+{}", self.given_modes),
            ]));
        }
        if let Some(away) = &snap.away {
            send.push(line(&["AWAY", &format!(":{away}")]));
            self.away_pending = true;
        }
        self.given_away = snap.away.clone();
        send.push(line(&["PING", &format!(":{}", self.barrier)]));
        RegisterStep::Continue(send)
    }

    /// After the welcome: wait for the rejoins, the away reply and the barrier.
    fn settle(&mut self, msg: &Message) -> RegisterStep {
        let cmd = msg.command;
        let from_me = msg
            .source_nick()
            .is_some_and(|n| irc_eq(n, self.nick.as_bytes()));
        if from_me && self.userhost.is_none() {
            self.userhost = msg.source_userhost().map(text);
        }
        if msg.is("JOIN") && from_me {
            self.mark(msg.param(0), |c| c.1 = true);
        } else if cmd == RPL_ENDOFNAMES.as_bytes() {
            self.mark(msg.param(1), |c| c.2 = true);
        } else if cmd == RPL_NOWAWAY.as_bytes() {
            self.away_pending = false;
        } else if msg.is("PONG") && msg.last() == Some(self.barrier.as_bytes()) {
            self.barrier_seen = true;
        }
        if self.barrier_seen && !self.away_pending && self.channels.iter().all(|c| c.1 && c.2) {
            RegisterStep::Done(Vec::new())
        } else {
            RegisterStep::Continue(Vec::new())
        }
    }

    fn mark(&mut self, chan: Option<&[u8]>, f: impl FnOnce(&mut (String, bool, bool))) {
        let chan = chan.unwrap_or_default();
        if let Some(c) = self
            .channels
            .iter_mut()
            .find(|c| irc_eq(c.0.as_bytes(), chan))
        {
            f(c);
        }
    }
}

/// The state B was given at its 001: channels, user modes, away text.
#[derive(Debug)]
pub struct Given {
    pub channels: Vec<String>,
    pub modes: String,
    pub away: Option<String>,
}

fn param_is_channel(msg: &Message) -> bool {
    msg.param(1).is_some_and(is_channel)
}

/// `JOIN #a,#b key1,key2` lines: keyed channels first so the keys line up.
fn join_lines(snap: &Snapshot) -> Vec<Bytes> {
    let mut ordered: Vec<_> = snap.channels.iter().filter(|c| c.key.is_some()).collect();
    ordered.extend(snap.channels.iter().filter(|c| c.key.is_none()));
    let mut lines = Vec::new();
    let (mut names, mut keys) = (String::new(), String::new());
    for c in ordered {
        let key = c.key.as_ref().map(|k| k.0.as_str());
        let grow = c.name.len() + key.map_or(0, str::len) + 2;
        if !names.is_empty() && names.len() + keys.len() + grow > JOIN_LINE {
            lines.push(join_line(&names, &keys));
            names.clear();
            keys.clear();
        }
        for (list, item) in [(&mut names, Some(c.name.as_str())), (&mut keys, key)] {
            if let Some(item) = item {
                if !list.is_empty() {
                    list.push(',');
                }
                list.push_str(item);
            }
        }
    }
    if !names.is_empty() {
        lines.push(join_line(&names, &keys));
    }
    lines
}

fn join_line(names: &str, keys: &str) -> Bytes {
    if keys.is_empty() {
        line(&["JOIN", names])
    } else {
        line(&["JOIN", names, keys])
    }
}

/// `<start of nick>_<attempt><2 random chars>`, within NICKLEN (at least 9, at most 30).
pub fn temp_nick(nick: &str, nicklen: Option<u16>, seed: u64, attempt: u8) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let max = usize::from(nicklen.unwrap_or(9).clamp(9, 30));
    let mixed = seed.rotate_left(u32::from(attempt) * 13) ^ u64::from(attempt);
    let suffix: String = [0u32, 6]
        .iter()
        .map(|shift| ALPHABET[((mixed >> shift) % 36) as usize] as char)
        .collect();
    let suffix = format!("_{}{suffix}", attempt % 10);
    let mut keep = max - suffix.len();
    while !nick.is_char_boundary(keep.min(nick.len())) {
        keep -= 1;
    }
    format!("{}{suffix}", &nick[..keep.min(nick.len())])
}
