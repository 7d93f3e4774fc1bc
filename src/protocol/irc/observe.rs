//! Learning the snapshot from the live traffic, one small observer per family of messages.
//!
//! The rule is that the server confirms: a nick, a channel, a cap or an away status enters the
//! snapshot only when the server echoes or acknowledges it. What the client said is kept
//! meanwhile (its JOIN keys, its AWAY text, its SASL payload) and attached on confirmation.

use std::collections::VecDeque;

use super::message::{irc_eq, is_channel, text, Message};
use super::numerics::{
    one_of, RPL_BOUNCE, RPL_ISUPPORT, RPL_NOWAWAY, RPL_SASLSUCCESS, RPL_UNAWAY, RPL_WELCOME,
    SASL_ERRORS,
};
use super::snapshot::{Sasl, Snapshot};
use crate::config::Secret;

/// Keys of JOINs not yet echoed, at most this many.
const MAX_PENDING_KEYS: usize = 32;
/// Longest SASL payload kept (PLAIN credentials are far shorter).
const MAX_SASL: usize = 4096;
/// SASL payloads come in chunks of this many bytes; a shorter chunk (or `+`) ends one.
pub const SASL_CHUNK: usize = 400;

/// What the client said that the server has not confirmed yet, and 005 facts.
#[derive(Debug)]
pub struct Observer {
    join_keys: VecDeque<(String, String)>,
    away_text: Option<String>,
    sasl: SaslWatch,
    /// The client sent QUIT: the session is ending, don't start a migration.
    pub quitting: bool,
    /// Channel modes that always take a parameter: CHANMODES types A and B...
    chanmodes_param: String,
    /// ...and the PREFIX modes (`qaohv`).
    prefix_modes: String,
    /// Channel modes that take a parameter only when set (CHANMODES type C).
    chanmodes_on_set: String,
}

#[derive(Debug, Default)]
enum SaslWatch {
    #[default]
    Idle,
    Plain {
        payload: String,
        complete: bool,
    },
    Other(String),
}

impl Default for Observer {
    fn default() -> Self {
        Self {
            join_keys: VecDeque::new(),
            away_text: None,
            sasl: SaslWatch::Idle,
            quitting: false,
            chanmodes_param: "beIk".into(),
            prefix_modes: "qaohv".into(),
            chanmodes_on_set: "l".into(),
        }
    }
}

impl Observer {
    /// Roughly the heap bytes held.
    pub fn heap_size(&self) -> usize {
        let keys: usize = self
            .join_keys
            .iter()
            .map(|(c, k)| c.capacity() + k.capacity())
            .sum();
        let sasl = match &self.sasl {
            SaslWatch::Plain { payload, .. } => payload.capacity(),
            SaslWatch::Other(mech) => mech.capacity(),
            SaslWatch::Idle => 0,
        };
        keys + self.away_text.as_ref().map_or(0, String::capacity)
            + sasl
            + self.chanmodes_param.capacity()
            + self.prefix_modes.capacity()
            + self.chanmodes_on_set.capacity()
    }

    /// A line the client sent.
    pub fn client_line(&mut self, snap: &mut Snapshot, msg: &Message, untagged: &[u8]) {
        match msg.upper_command(&mut [0; 16]) {
            b"PASS" if !snap.registered() => snap.pass = Some(Secret(text(untagged))),
            b"USER" if !snap.registered() => snap.user = Some(text(untagged)),
            b"JOIN" => self.client_join(msg),
            b"AWAY" => self.away_text = msg.param(0).filter(|t| !t.is_empty()).map(text),
            b"AUTHENTICATE" => self.client_authenticate(msg),
            b"QUIT" => self.quitting = true,
            _ => {}
        }
    }

    fn client_join(&mut self, msg: &Message) {
        let (Some(chans), Some(keys)) = (msg.param(0), msg.param(1)) else {
            return;
        };
        let pairs = chans.split(|&b| b == b',').zip(keys.split(|&b| b == b','));
        for (chan, key) in pairs.filter(|(_, k)| !k.is_empty()) {
            if self.join_keys.len() == MAX_PENDING_KEYS {
                self.join_keys.pop_front();
            }
            self.join_keys.push_back((text(chan), text(key)));
        }
    }

    /// The first AUTHENTICATE names the mechanism, the following ones carry its payload.
    fn client_authenticate(&mut self, msg: &Message) {
        let Some(arg) = msg.param(0) else { return };
        self.sasl = match std::mem::take(&mut self.sasl) {
            _ if arg == b"*" => SaslWatch::Idle,
            SaslWatch::Plain {
                mut payload,
                complete: false,
            } => {
                if arg != b"+" {
                    payload.push_str(&text(arg));
                }
                if payload.len() > MAX_SASL {
                    SaslWatch::Other("PLAIN (oversized)".into())
                } else {
                    let complete = arg.len() < SASL_CHUNK;
                    SaslWatch::Plain { payload, complete }
                }
            }
            SaslWatch::Other(mech) => SaslWatch::Other(mech),
            _ if arg.eq_ignore_ascii_case(b"PLAIN") => SaslWatch::Plain {
                payload: String::new(),
                complete: false,
            },
            _ => SaslWatch::Other(text(arg)),
        };
    }

    /// A line the server sent to the client.
    pub fn server_line(&mut self, snap: &mut Snapshot, msg: &Message) {
        match msg.upper_command(&mut [0; 16]) {
            b"NICK" => server_nick(snap, msg),
            b"JOIN" => self.server_join(snap, msg),
            b"PART" => server_part(snap, msg),
            b"KICK" => server_kick(snap, msg),
            b"MODE" => self.server_mode(snap, msg),
            b"CAP" => server_cap(snap, msg),
            c if c == RPL_WELCOME.as_bytes() => {
                snap.nick = msg.param(0).map(text);
            }
            c if c == RPL_ISUPPORT.as_bytes() => self.isupport(snap, msg),
            c if c == RPL_NOWAWAY.as_bytes() => {
                let away = self.away_text.clone().unwrap_or_else(|| "away".into());
                snap.away = Some(away);
            }
            c if c == RPL_UNAWAY.as_bytes() => snap.away = None,
            c if c == RPL_SASLSUCCESS.as_bytes() => self.sasl_success(snap),
            c if one_of(c, SASL_ERRORS).is_some() => self.sasl = SaslWatch::Idle,
            _ => {}
        }
    }

    fn server_join(&mut self, snap: &mut Snapshot, msg: &Message) {
        if !msg.source_nick().is_some_and(|n| snap.is_me(n)) {
            return;
        }
        let Some(chan) = msg.param(0) else { return };
        let key = self
            .join_keys
            .iter()
            .position(|(c, _)| irc_eq(c.as_bytes(), chan))
            .and_then(|i| self.join_keys.remove(i))
            .map(|(_, k)| k);
        snap.join(&text(chan), key);
    }

    fn server_mode(&mut self, snap: &mut Snapshot, msg: &Message) {
        let (Some(target), Some(change)) = (msg.param(0), msg.param(1)) else {
            return;
        };
        if snap.is_me(target) {
            snap.apply_user_modes(change);
        } else if is_channel(target) && snap.channel(target).is_some() {
            self.channel_key_change(snap, target, change, &msg.params()[2..]);
        }
    }

    /// Follows `+k`/`-k` so that a rejoin uses the key the channel has now.
    fn channel_key_change(&self, snap: &mut Snapshot, chan: &[u8], change: &[u8], args: &[&[u8]]) {
        let mut adding = true;
        let mut args = args.iter();
        for &m in change {
            let c = m as char;
            match m {
                b'+' => adding = true,
                b'-' => adding = false,
                b'k' => {
                    let arg = args.next();
                    if !adding {
                        snap.set_key(chan, None);
                    } else if let Some(key) = arg.filter(|k| **k != b"*") {
                        snap.set_key(chan, Some(text(key)));
                    }
                }
                _ if self.chanmodes_param.contains(c)
                    || self.prefix_modes.contains(c)
                    || (adding && self.chanmodes_on_set.contains(c)) =>
                {
                    args.next();
                }
                _ => {}
            }
        }
    }

    fn isupport(&mut self, snap: &mut Snapshot, msg: &Message) {
        let params = msg.params();
        let tokens = params.get(1..params.len().saturating_sub(1)).unwrap_or(&[]);
        for token in tokens.iter().map(|t| text(t)) {
            let (key, value) = token.split_once('=').unwrap_or((&token, ""));
            match key {
                "NICKLEN" | "MAXNICKLEN" => {
                    if let Ok(n) = value.parse::<u16>() {
                        snap.nicklen = Some(snap.nicklen.map_or(n, |old| old.min(n)));
                    }
                }
                "CHANMODES" => {
                    let types: Vec<&str> = value.split(',').collect();
                    if types.len() >= 3 {
                        self.chanmodes_param = format!("{}{}", types[0], types[1]);
                        self.chanmodes_on_set = types[2].to_string();
                    }
                }
                "PREFIX" => {
                    let modes = value.strip_prefix('(').and_then(|v| v.split(')').next());
                    if let Some(modes) = modes {
                        self.prefix_modes = modes.to_string();
                    }
                }
                _ => {}
            }
        }
    }

    fn sasl_success(&mut self, snap: &mut Snapshot) {
        match std::mem::take(&mut self.sasl) {
            SaslWatch::Plain { payload, .. } => snap.sasl = Some(Sasl::Plain(Secret(payload))),
            SaslWatch::Other(mech) => snap.sasl = Some(Sasl::Unreplayable(mech)),
            SaslWatch::Idle => {}
        }
    }
}

fn server_nick(snap: &mut Snapshot, msg: &Message) {
    if let (Some(old), Some(new)) = (msg.source_nick(), msg.param(0)) {
        if snap.is_me(old) {
            snap.nick = Some(text(new));
        }
    }
}

fn server_part(snap: &mut Snapshot, msg: &Message) {
    if !msg.source_nick().is_some_and(|n| snap.is_me(n)) {
        return;
    }
    for chan in msg.param(0).unwrap_or_default().split(|&b| b == b',') {
        snap.part(chan);
    }
}

fn server_kick(snap: &mut Snapshot, msg: &Message) {
    if let (Some(chan), Some(victim)) = (msg.param(0), msg.param(1)) {
        if snap.is_me(victim) {
            snap.part(chan);
        }
    }
}

fn server_cap(snap: &mut Snapshot, msg: &Message) {
    let (Some(sub), Some(caps)) = (msg.param(1), msg.last()) else {
        return;
    };
    let remove = if sub.eq_ignore_ascii_case(b"ACK") {
        false
    } else if sub.eq_ignore_ascii_case(b"DEL") {
        true
    } else {
        return;
    };
    for cap in caps.split(|&b| b == b' ').filter(|c| !c.is_empty()) {
        let cap = text(cap);
        let name = cap.trim_start_matches(['~', '=']);
        if remove {
            snap.ack_cap(&format!("-{name}"));
        } else {
            snap.ack_cap(name);
        }
    }
}

/// `:srv 010 nick host port :info` (RPL_BOUNCE) as a `host:port` to move to.
pub fn bounce_target(msg: &Message) -> Option<String> {
    if msg.command != RPL_BOUNCE.as_bytes() {
        return None;
    }
    let host = text(msg.param(1)?);
    let port: u16 = text(msg.param(2)?).parse().ok()?;
    if host.is_empty() || port == 0 {
        return None;
    }
    if host.contains(':') {
        Some(format!("[{host}]:{port}"))
    } else {
        Some(format!("{host}:{port}"))
    }
}
