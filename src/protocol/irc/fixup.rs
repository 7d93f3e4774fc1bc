//! At the cut: bring B in line with what the client did on A while B was registering.
//!
//! The client is paused only once B's registration is done, and A's echoes keep coming until
//! the flush mark, so the snapshot at the cut may differ from what B was given at its 001: a
//! channel joined or left, the away status or a user mode changed. `cutover` sends B the
//! difference (JOIN, PART, AWAY, MODE) followed by a PING barrier, and B's replies to it are
//! hidden, since the client already saw A's: our JOIN echo and its topic/NAMES numerics, our
//! PART echo and any traffic of a channel being left, one 305/306, one MODE echo. A channel B
//! refuses is shown to the client as a PART with the server's reason, so that its view stays
//! true. The barrier's PONG ends it all.

use bytes::Bytes;

use super::message::{irc_eq, is_channel, line, text, Message};
use super::numerics::{one_of, JOIN_ERRORS, RPL_NOWAWAY, RPL_UNAWAY};
use super::register::Register;
use super::snapshot::Snapshot;

/// Numerics that answer a JOIN, with the index of their channel parameter.
const JOIN_REPLIES: &[(&str, usize)] = &[
    ("324", 1),
    ("329", 1),
    ("332", 1),
    ("333", 1),
    ("353", 2),
    ("366", 1),
];

#[derive(Debug)]
pub struct Fixup {
    /// Our nicks on B: the temporary one and the real one.
    nicks: [String; 2],
    userhost: String,
    joining: Vec<String>,
    parting: Vec<String>,
    away: bool,
    mode: bool,
    barrier: String,
}

/// What a B line means for the fixup.
#[derive(Debug, PartialEq, Eq)]
pub enum Fix {
    Pass,
    Hide,
    /// Show the client this line instead (and learn from it).
    Replace(Bytes),
    /// The barrier is back: hide it, the fixup is over.
    Finished,
}

impl Fixup {
    /// The commands that bring B in line, or `None` when it already is.
    pub fn plan(
        snap: &Snapshot,
        reg: &Register,
        real: &str,
        seed: u64,
    ) -> Option<(Self, Vec<Bytes>)> {
        let given = reg.given();
        let joining: Vec<_> = snap
            .channels
            .iter()
            .filter(|c| {
                !given
                    .channels
                    .iter()
                    .any(|g| irc_eq(g.as_bytes(), c.name.as_bytes()))
            })
            .collect();
        let parting: Vec<String> = given
            .channels
            .iter()
            .filter(|g| snap.channel(g.as_bytes()).is_none())
            .cloned()
            .collect();
        let mode_change = mode_diff(&given.modes, &snap.replayable_modes());
        let away = given.away != snap.away;
        if joining.is_empty() && parting.is_empty() && mode_change.is_empty() && !away {
            return None;
        }
        let mut send = Vec::new();
        for c in &joining {
            match &c.key {
                Some(key) => send.push(line(&["JOIN", &c.name, &key.0])),
                None => send.push(line(&["JOIN", &c.name])),
            }
        }
        if !parting.is_empty() {
            send.push(line(&["PART", &parting.join(",")]));
        }
        if !mode_change.is_empty() {
            send.push(line(&["MODE", reg.nick(), &mode_change]));
        }
        if away {
            send.push(match &snap.away {
                Some(text) => line(&["AWAY", &format!(":{text}")]),
                None => line(&["AWAY"]),
            });
        }
        let barrier = format!("handover-fix-{seed:x}");
        send.push(line(&["PING", &format!(":{barrier}")]));
        let fixup = Self {
            nicks: [reg.nick().to_string(), real.to_string()],
            userhost: reg
                .userhost()
                .unwrap_or("handover@handover.invalid")
                .to_string(),
            joining: joining.iter().map(|c| c.name.clone()).collect(),
            parting,
            away,
            mode: !mode_change.is_empty(),
            barrier,
        };
        Some((fixup, send))
    }

    fn is_us(&self, nick: &[u8]) -> bool {
        self.nicks.iter().any(|n| irc_eq(n.as_bytes(), nick))
    }

    /// Classifies one B line after the cut.
    pub fn on_line(&mut self, msg: &Message) -> Fix {
        if msg.is("PONG") && msg.last() == Some(self.barrier.as_bytes()) {
            return Fix::Finished;
        }
        let from_us = msg.source_nick().is_some_and(|n| self.is_us(n));
        let target = msg.param(0).unwrap_or_default();
        if from_us && msg.is("JOIN") && find(&self.joining, target).is_some() {
            return Fix::Hide;
        }
        if from_us && msg.is("PART") && take(&mut self.parting, target) {
            return Fix::Hide;
        }
        if is_channel(target) && find(&self.parting, target).is_some() {
            return Fix::Hide;
        }
        match self.numeric(msg) {
            Some(fix) => fix,
            None => self.echo(msg, target),
        }
    }

    fn numeric(&mut self, msg: &Message) -> Option<Fix> {
        let cmd = msg.command;
        if let Some((numeric, at)) = JOIN_REPLIES.iter().find(|(n, _)| n.as_bytes() == cmd) {
            let chan = msg.param(*at).unwrap_or_default();
            find(&self.joining, chan)?;
            if *numeric == "366" {
                take(&mut self.joining, chan);
            }
            return Some(Fix::Hide);
        }
        one_of(cmd, JOIN_ERRORS)?;
        let chan = msg.param(1).unwrap_or_default();
        take(&mut self.joining, chan).then(|| {
            let prefix = format!(":{}!{}", self.nicks[1], self.userhost);
            let reason = format!(":{}", text(msg.last().unwrap_or_default()));
            Fix::Replace(line(&[&prefix, "PART", &text(chan), &reason]))
        })
    }

    fn echo(&mut self, msg: &Message, target: &[u8]) -> Fix {
        let away_reply =
            msg.command == RPL_NOWAWAY.as_bytes() || msg.command == RPL_UNAWAY.as_bytes();
        if self.away && away_reply {
            self.away = false;
            return Fix::Hide;
        }
        if self.mode && msg.is("MODE") && self.is_us(target) {
            self.mode = false;
            return Fix::Hide;
        }
        Fix::Pass
    }
}

fn find(list: &[String], name: &[u8]) -> Option<usize> {
    list.iter().position(|c| irc_eq(c.as_bytes(), name))
}

fn take(list: &mut Vec<String>, name: &[u8]) -> bool {
    find(list, name).map(|i| list.remove(i)).is_some()
}

/// `+new-gone` from mode letters `before` to `after`; empty when equal.
fn mode_diff(before: &str, after: &str) -> String {
    let added: String = after.chars().filter(|c| !before.contains(*c)).collect();
    let removed: String = before.chars().filter(|c| !after.contains(*c)).collect();
    let mut out = String::new();
    if !added.is_empty() {
        out.push('+');
        out.push_str(&added);
    }
    if !removed.is_empty() {
        out.push('-');
        out.push_str(&removed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_differences() {
        assert_eq!(mode_diff("iw", "iw"), "");
        assert_eq!(mode_diff("iw", "ix"), "+x-w");
        assert_eq!(mode_diff("", "i"), "+i");
        assert_eq!(mode_diff("i", ""), "-i");
    }
}
