//! CAP and SASL negotiation with the new backend, before its welcome.
//!
//! The client's acked caps are asked for again once B has listed what it offers (302 lists can
//! span several `CAP * LS * :...` lines); one that B does not offer fails the migration, since
//! the client relies on it. SASL PLAIN is replayed with the client's own payload.

use bytes::Bytes;

use super::message::{line, text, Message};
use super::numerics::{one_of, RPL_SASLSUCCESS, SASL_ERRORS};
use super::observe::SASL_CHUNK;
use super::snapshot::{Sasl, Snapshot};

/// Cap names of B's LS reply kept at most.
const MAX_OFFERED: usize = 256;
/// `CAP REQ` lines are kept below this many bytes of caps.
const REQ_LINE: usize = 400;

#[derive(Debug)]
pub struct Caps {
    wanted: Vec<String>,
    offered: Vec<String>,
    sasl: Option<String>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Listing,
    Acking(usize),
    SaslPlus,
    SaslResult,
    Ended,
}

/// What the negotiation says after one line of B.
#[derive(Debug)]
pub enum CapStep {
    Send(Vec<Bytes>),
    Failed(String),
}

impl Caps {
    /// `None` when the client negotiated nothing: B is then not asked about caps at all.
    pub fn new(snap: &Snapshot) -> Option<Self> {
        let sasl = match &snap.sasl {
            Some(Sasl::Plain(payload)) => Some(payload.0.clone()),
            _ => None,
        };
        let mut wanted = snap.caps.clone();
        if sasl.is_some() && !wanted.iter().any(|c| c == "sasl") {
            wanted.push("sasl".into());
        }
        (!wanted.is_empty()).then_some(Self {
            wanted,
            offered: Vec::new(),
            sasl,
            phase: Phase::Listing,
        })
    }

    pub fn on_line(&mut self, msg: &Message) -> CapStep {
        let sub = msg.param(1).unwrap_or_default().to_ascii_uppercase();
        match (self.phase, msg.is("CAP"), &sub[..]) {
            (Phase::Listing, true, b"LS") => return self.listed(msg),
            (Phase::Acking(n), true, b"ACK") => return self.acked(n),
            (_, true, b"NAK") => {
                let caps = text(msg.last().unwrap_or_default());
                return CapStep::Failed(format!("backend refused caps: {caps}"));
            }
            _ => {}
        }
        if msg.is("421") && msg.param(1).is_some_and(|c| c.eq_ignore_ascii_case(b"CAP")) {
            return CapStep::Failed("backend does not support CAP".into());
        }
        if let Some(numeric) = one_of(msg.command, SASL_ERRORS) {
            return CapStep::Failed(format!("SASL refused ({numeric})"));
        }
        match self.phase {
            Phase::SaslPlus if msg.is("AUTHENTICATE") && msg.param(0) == Some(b"+") => {
                self.phase = Phase::SaslResult;
                CapStep::Send(payload_lines(self.sasl.as_deref().unwrap_or_default()))
            }
            Phase::SaslResult if msg.command == RPL_SASLSUCCESS.as_bytes() => self.end(),
            _ => CapStep::Send(Vec::new()),
        }
    }

    fn listed(&mut self, msg: &Message) -> CapStep {
        let more = msg.params().len() >= 4 && msg.param(2) == Some(b"*");
        for cap in msg.last().unwrap_or_default().split(|&b| b == b' ') {
            let name = cap.split(|&b| b == b'=').next().unwrap_or_default();
            if !name.is_empty() && self.offered.len() < MAX_OFFERED {
                self.offered.push(text(name));
            }
        }
        if more {
            return CapStep::Send(Vec::new());
        }
        let missing: Vec<&str> = self
            .wanted
            .iter()
            .filter(|w| !self.offered.contains(w))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return CapStep::Failed(format!("backend does not offer cap {}", missing.join(" ")));
        }
        let lines = req_lines(&self.wanted);
        self.phase = Phase::Acking(lines.len());
        CapStep::Send(lines)
    }

    fn acked(&mut self, pending: usize) -> CapStep {
        if pending > 1 {
            self.phase = Phase::Acking(pending - 1);
            return CapStep::Send(Vec::new());
        }
        if self.sasl.is_some() {
            self.phase = Phase::SaslPlus;
            return CapStep::Send(vec![line(&["AUTHENTICATE", "PLAIN"])]);
        }
        self.end()
    }

    fn end(&mut self) -> CapStep {
        self.phase = Phase::Ended;
        CapStep::Send(vec![line(&["CAP", "END"])])
    }
}

fn req_lines(caps: &[String]) -> Vec<Bytes> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for cap in caps {
        if !current.is_empty() && current.len() + cap.len() + 1 > REQ_LINE {
            lines.push(line(&["CAP", "REQ", &format!(":{current}")]));
            current.clear();
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(cap);
    }
    lines.push(line(&["CAP", "REQ", &format!(":{current}")]));
    lines
}

/// The payload in 400-byte chunks; `+` after a last chunk of exactly 400 bytes (or none).
fn payload_lines(payload: &str) -> Vec<Bytes> {
    let mut lines: Vec<Bytes> = payload
        .as_bytes()
        .chunks(SASL_CHUNK)
        .map(|c| line(&["AUTHENTICATE", &String::from_utf8_lossy(c)]))
        .collect();
    if payload.len().is_multiple_of(SASL_CHUNK) {
        lines.push(line(&["AUTHENTICATE", "+"]));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_payloads_are_chunked_with_a_closing_plus() {
        let exact = "a".repeat(800);
        let lines = payload_lines(&exact);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], &b"AUTHENTICATE +\r\n"[..]);
        assert_eq!(payload_lines("abc"), vec![line(&["AUTHENTICATE", "abc"])]);
    }

    #[test]
    fn many_caps_split_into_several_requests() {
        let caps: Vec<String> = (0..60)
            .map(|i| format!("vendor.example/cap-{i:02}"))
            .collect();
        let lines = req_lines(&caps);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() < 512));
    }
}
