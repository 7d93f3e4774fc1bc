//! What an IRC session must remember to be re-created on another server.
//!
//! Everything here was confirmed by the server (nick, caps, channels, modes, away) or is the
//! client's own registration input (PASS, USER, SASL PLAIN). It is plain data with serde, so it
//! can later be handed to a new proxy process; no sockets, no instants.

use serde::{Deserialize, Serialize};

use super::message::irc_eq;
use super::numerics::SERVER_USER_MODES;
use crate::config::Secret;

/// Channels kept at most; servers allow far fewer (CHANLIMIT), this only bounds a bad one.
const MAX_CHANNELS: usize = 1024;
/// Capabilities kept at most.
const MAX_CAPS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The client's `PASS` line, as sent (without terminator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<Secret>,
    /// Capabilities the server ACKed and has not DELeted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// How the client authenticated, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<Sasl>,
    /// The nick as the server last confirmed it (001, then NICK echoes); set = registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    /// The client's `USER` line, as sent (without terminator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Channels joined, from the server's echoes, with the key the client joined with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<Channel>,
    /// User mode letters the server confirmed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modes: String,
    /// The away text, once the server confirmed it with 306.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away: Option<String>,
    /// NICKLEN from 005, for the temporary nick (absent: 9, the RFC minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nicklen: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sasl {
    /// `AUTHENTICATE PLAIN`: the base64 payload, replayable on any server of the network.
    Plain(Secret),
    /// Another mechanism (EXTERNAL, SCRAM-*): it cannot be replayed, so the session can't move.
    Unreplayable(String),
}

impl Snapshot {
    pub fn registered(&self) -> bool {
        self.nick.is_some()
    }

    pub fn is_me(&self, nick: &[u8]) -> bool {
        self.nick
            .as_deref()
            .is_some_and(|me| irc_eq(me.as_bytes(), nick))
    }

    pub fn channel(&self, name: &[u8]) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| irc_eq(c.name.as_bytes(), name))
    }

    /// Records a joined channel; a rejoin keeps the newer key.
    pub fn join(&mut self, name: &str, key: Option<String>) {
        if let Some(c) = self
            .channels
            .iter_mut()
            .find(|c| irc_eq(c.name.as_bytes(), name.as_bytes()))
        {
            c.key = key.map(Secret).or(c.key.take());
            return;
        }
        if self.channels.len() < MAX_CHANNELS {
            self.channels.push(Channel {
                name: name.to_string(),
                key: key.map(Secret),
            });
        }
    }

    pub fn part(&mut self, name: &[u8]) {
        self.channels.retain(|c| !irc_eq(c.name.as_bytes(), name));
    }

    pub fn set_key(&mut self, name: &[u8], key: Option<String>) {
        if let Some(c) = self
            .channels
            .iter_mut()
            .find(|c| irc_eq(c.name.as_bytes(), name))
        {
            c.key = key.map(Secret);
        }
    }

    /// Applies a user mode string such as `+iw-x`.
    pub fn apply_user_modes(&mut self, change: &[u8]) {
        let mut adding = true;
        for &b in change {
            match b {
                b'+' => adding = true,
                b'-' => adding = false,
                b if b.is_ascii_alphabetic() => {
                    let c = b as char;
                    let has = self.modes.contains(c);
                    if adding && !has {
                        self.modes.push(c);
                    } else if !adding && has {
                        self.modes.retain(|m| m != c);
                    }
                }
                _ => {}
            }
        }
    }

    /// The user modes to ask a new server for: all but those only a server sets.
    pub fn replayable_modes(&self) -> String {
        self.modes
            .chars()
            .filter(|c| !SERVER_USER_MODES.contains(*c))
            .collect()
    }

    /// Adds (`cap`) or removes (`-cap`) one capability.
    pub fn ack_cap(&mut self, cap: &str) {
        if let Some(name) = cap.strip_prefix('-') {
            self.caps.retain(|c| c != name);
        } else if !cap.is_empty()
            && !self.caps.iter().any(|c| c == cap)
            && self.caps.len() < MAX_CAPS
        {
            self.caps.push(cap.to_string());
        }
    }

    /// Roughly the heap bytes held.
    pub fn heap_size(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let secret = |s: &Option<Secret>| s.as_ref().map_or(0, |s| s.0.capacity());
        let sasl = match &self.sasl {
            Some(Sasl::Plain(s)) => s.0.capacity(),
            Some(Sasl::Unreplayable(s)) => s.capacity(),
            None => 0,
        };
        let caps: usize = self.caps.iter().map(String::capacity).sum::<usize>()
            + self.caps.capacity() * std::mem::size_of::<String>();
        let channels: usize = self
            .channels
            .iter()
            .map(|c| c.name.capacity() + c.key.as_ref().map_or(0, |k| k.0.capacity()))
            .sum::<usize>()
            + self.channels.capacity() * std::mem::size_of::<Channel>();
        secret(&self.pass)
            + caps
            + sasl
            + opt(&self.nick)
            + opt(&self.user)
            + channels
            + self.modes.capacity()
            + opt(&self.away)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_modes_add_and_remove() {
        let mut s = Snapshot::default();
        s.apply_user_modes(b"+iw");
        s.apply_user_modes(b"+x-w");
        s.apply_user_modes(b"+i");
        assert_eq!(s.modes, "ix");
        s.apply_user_modes(b"+oz");
        assert_eq!(s.replayable_modes(), "ix");
    }

    #[test]
    fn channels_fold_case_and_keep_keys() {
        let mut s = Snapshot::default();
        s.join("#Chan", Some("k1".into()));
        s.join("#chan", None);
        assert_eq!(s.channels.len(), 1);
        assert_eq!(s.channel(b"#CHAN").unwrap().key, Some(Secret("k1".into())));
        s.set_key(b"#chan", Some("k2".into()));
        assert_eq!(s.channel(b"#chan").unwrap().key, Some(Secret("k2".into())));
        s.part(b"#CHAN");
        assert!(s.channels.is_empty());
    }

    #[test]
    fn caps_ack_and_remove() {
        let mut s = Snapshot::default();
        for c in [
            "multi-prefix",
            "sasl",
            "multi-prefix",
            "-sasl",
            "away-notify",
        ] {
            s.ack_cap(c);
        }
        assert_eq!(s.caps, vec!["multi-prefix", "away-notify"]);
    }

    #[test]
    fn serde_round_trip_is_compact() {
        let mut s = Snapshot {
            nick: Some("alice".into()),
            user: Some("USER alice 0 * :Alice".into()),
            ..Snapshot::default()
        };
        s.join("#a", Some("key".into()));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("away"), "empty fields are left out: {json}");
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(s.heap_size() > 0);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Snapshot {
            pass: Some(Secret("PASS hunter2".into())),
            sasl: Some(Sasl::Plain(Secret("AGFsaWNlAHB3".into()))),
            ..Snapshot::default()
        };
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("AGFs"),
            "{debug}"
        );
    }
}
