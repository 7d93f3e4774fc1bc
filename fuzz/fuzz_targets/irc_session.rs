//! The IRC adapter (observer, re-registration, flush mark, cut-over, reconcile, dedupe) driven
//! through whole sessions and migrations by arbitrary lines from the client, the current
//! backend and the migration target. The calls follow the order the session task makes them
//! (see `SessionAdapter`), so a panic here is a panic a hostile peer could cause in the proxy.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use handover::protocol::irc::message::decode_line;
use handover::protocol::irc::IrcSession;
use handover::protocol::{Direction, RegisterStep, SessionAdapter, Verdict};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Lines from the client (held while paused, as the session does).
    Client(Vec<u8>),
    /// Lines from the current backend (A).
    Backend(Vec<u8>),
    /// Lines from the migration target (B).
    Target(Vec<u8>),
    /// A well-formed line from a small vocabulary, to reach deep states quickly.
    Script {
        from: u8,
        line: u8,
        nick: u8,
        chan: u8,
    },
    /// Begin a migration (drain or admin) or a failover.
    Migrate {
        failover: bool,
    },
    /// The flush mark's reply arrives from A (or the flush timeout); while settling after a
    /// cut, the settle timeout.
    Cut,
    Abort,
}

#[derive(Debug, PartialEq)]
enum Phase {
    Idle,
    Registering,
    Flushing,
    /// After the cut, until the adapter is `settled` (the nick is back) or the timeout.
    Settling,
}

const NICKS: [&str; 4] = ["alice", "bob", "alice_1ab", "Alice"];
const CHANS: [&str; 3] = ["#a", "#b", "&c"];

fn script(line: u8, nick: &str, chan: &str) -> String {
    match line % 16 {
        0 => format!(":srv 001 {nick} :Welcome"),
        1 => format!("NICK {nick}"),
        2 => format!("USER {nick} 0 * :{nick}"),
        3 => format!(":{nick}!u@h JOIN {chan}"),
        4 => format!(":srv 366 {nick} {chan} :End"),
        5 => format!("PING :handover-reg-{nick}"),
        6 => format!(":srv PONG srv :{nick}"),
        7 => format!(":srv 433 * {nick} :in use"),
        8 => format!(":{nick}!u@h NICK :alice"),
        9 => format!(":{nick}!u@h QUIT :bye"),
        10 => format!(":srv 005 {nick} NICKLEN=12 CHANMODES=b,k,l,imnt PREFIX=(ov)@+ :ok"),
        11 => format!(":{nick}!u@h MODE {nick} +iw"),
        12 => format!(":srv CAP {nick} ACK :multi-prefix away-notify"),
        13 => format!(":{nick}!u@h PRIVMSG {chan} :hello"),
        14 => format!(":srv 010 {nick} 127.0.0.1 6667 :go"),
        _ => format!(":{nick}!u@h PART {chan}"),
    }
}

/// Splits bytes into the frames the codec would yield (a trailing partial line is completed).
fn frames(bytes: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(bytes);
    if !buf.ends_with(b"\n") {
        buf.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::new();
    while let Ok(Some(frame)) = decode_line(&mut buf) {
        out.push(frame);
    }
    out
}

struct Model {
    s: IrcSession,
    phase: Phase,
    held: Vec<Bytes>,
    held_b: Vec<Bytes>,
    mark_pending: bool,
}

impl Model {
    fn client(&mut self, frame: Bytes) {
        if matches!(self.phase, Phase::Flushing | Phase::Settling) {
            self.held.push(frame);
        } else {
            let _ = self.s.observe(Direction::ClientToBackend, &frame);
        }
    }

    fn backend(&mut self, frame: Bytes) {
        if self.phase == Phase::Flushing && self.mark_pending && self.s.is_flush_reply(&frame) {
            self.mark_pending = false;
            return self.cut();
        }
        if let Verdict::MoveTo(_) = self.s.observe(Direction::BackendToClient, &frame) {
            self.migrate(false);
        }
    }

    fn target(&mut self, frame: Bytes) {
        match self.phase {
            Phase::Registering => match self.s.on_register_frame(&frame) {
                RegisterStep::Continue(_) | RegisterStep::Reconnect { .. } => {}
                RegisterStep::Hold(_) => self.held_b.push(frame),
                RegisterStep::Done(_) => {
                    self.phase = Phase::Flushing;
                    self.mark_pending = self.s.flush_mark().is_some();
                }
                RegisterStep::Failed(_) => self.abort(),
            },
            Phase::Flushing => self.held_b.push(frame),
            Phase::Idle | Phase::Settling => {}
        }
    }

    fn migrate(&mut self, failover: bool) {
        if self.phase != Phase::Idle {
            return;
        }
        let allowed = if failover {
            self.s.can_fail_over()
        } else {
            self.s.can_migrate()
        };
        if allowed.is_ok() && self.s.start_register().is_ok() {
            self.phase = Phase::Registering;
        }
    }

    fn cut(&mut self) {
        if self.phase == Phase::Settling {
            return self.resume();
        }
        if self.phase != Phase::Flushing {
            return;
        }
        let _ = self.s.detach();
        let _ = self.s.cutover();
        self.phase = Phase::Settling;
        for frame in std::mem::take(&mut self.held_b) {
            let _ = self.s.observe(Direction::BackendToClient, &frame);
        }
        self.s.held_lines_done();
        self.settle();
    }

    /// Ends the pause once the adapter has settled the new backend.
    fn settle(&mut self) {
        if self.phase == Phase::Settling && self.s.settled() {
            self.resume();
        }
    }

    fn resume(&mut self) {
        self.phase = Phase::Idle;
        for frame in std::mem::take(&mut self.held) {
            let _ = self.s.observe(Direction::ClientToBackend, &frame);
        }
    }

    fn abort(&mut self) {
        if matches!(self.phase, Phase::Idle | Phase::Settling) {
            return;
        }
        self.s.abort_migration();
        self.phase = Phase::Idle;
        self.held_b.clear();
        for frame in std::mem::take(&mut self.held) {
            let _ = self.s.observe(Direction::ClientToBackend, &frame);
        }
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (linked, ops) = input;
    let mut m = Model {
        s: IrcSession::new(linked),
        phase: Phase::Idle,
        held: Vec::new(),
        held_b: Vec::new(),
        mark_pending: false,
    };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Client(b) => frames(&b).into_iter().for_each(|f| m.client(f)),
            Op::Backend(b) => frames(&b).into_iter().for_each(|f| m.backend(f)),
            Op::Target(b) => frames(&b).into_iter().for_each(|f| m.target(f)),
            Op::Script {
                from,
                line,
                nick,
                chan,
            } => {
                let text = script(
                    line,
                    NICKS[usize::from(nick) % 4],
                    CHANS[usize::from(chan) % 3],
                );
                let frame = Bytes::from(format!("{text}\r\n"));
                match from % 3 {
                    0 => m.client(frame),
                    1 => m.backend(frame),
                    _ => m.target(frame),
                }
            }
            Op::Migrate { failover } => m.migrate(failover),
            Op::Cut => m.cut(),
            Op::Abort => m.abort(),
        }
        m.settle();
        let _ = m.s.identity();
        let _ = m.s.registered();
        // The adapter's state stays bounded whatever the peers say.
        assert!(
            m.s.snapshot_size() < 4 << 20,
            "adapter state {} bytes",
            m.s.snapshot_size()
        );
    }
});
