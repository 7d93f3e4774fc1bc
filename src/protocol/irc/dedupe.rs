//! Deduplication of channel traffic across the overlap of the old (A) and new (B) backend.
//!
//! Both links sit in the same channels of one network from B's 001 until the cut, so a channel
//! message can arrive on both. A signed multiset keyed by the line without its tags settles it:
//!
//! * an A line forwarded to the client counts +1;
//! * a B line seen *during registration* (swallowed) counts −1 when A has not sent it yet, so
//!   that A's later copy cancels out instead of lingering;
//! * after the cut, a B line whose count is positive is a duplicate: hidden, one count spent.
//!
//! Only lines both links can receive are counted: channel-targeted commands and the user
//! broadcasts (QUIT, NICK, AWAY, …); numerics and private messages never are.
//!
//! **When deduping stops** (after the cut, negative counts are dropped first): when no positive
//! count is left, or when [`TAIL`] shared B lines that were *not* duplicates have arrived after
//! the session signalled `held_lines_done` (B may still deliver, late, a line A already
//! delivered: the server links do not order messages of different origins the same way), or
//! after [`MAX_ENTRIES`] + [`TAIL`] B lines in all, as a safety bound. Keys are 64-bit hashes
//! with a per-session random key, so memory is 16 bytes per entry and lines can't be crafted to
//! collide.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use super::message::{is_channel, Message};

/// Distinct lines remembered at most.
pub const MAX_ENTRIES: usize = 4096;
/// Non-duplicate shared B lines after the held lines before deduping stops.
pub const TAIL: u32 = 32;
/// Shared lines of the current backend remembered for the next migration's overlap.
pub const RECENT: usize = 16;

/// The last [`RECENT`] shared lines the current backend forwarded, as keys of the session's
/// hasher. The overlap does not start at B's 001: a message A delivered a moment before can
/// still be on its way to B's server and arrive there after B's JOIN (ngircd relays take tens
/// of milliseconds), so B delivers it too. A migration counts these as A's lines.
#[derive(Debug)]
pub struct Recent {
    keys: RandomState,
    lines: VecDeque<u64>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            keys: RandomState::new(),
            lines: VecDeque::with_capacity(RECENT),
        }
    }
}

impl Recent {
    /// A line the current backend forwarded to the client.
    pub fn note(&mut self, msg: &Message, untagged: &[u8]) {
        if !is_shared(msg) {
            return;
        }
        if self.lines.len() == RECENT {
            self.lines.pop_front();
        }
        self.lines.push_back(self.keys.hash_one(untagged));
    }

    /// A dedupe for a new migration, keyed like these lines.
    pub fn dedupe(&self) -> Dedupe {
        Dedupe {
            keys: self.keys.clone(),
            ..Dedupe::default()
        }
    }

    /// Counts the remembered lines into `dedupe` as if A had forwarded them in the overlap.
    pub fn seed(&self, dedupe: &mut Dedupe) {
        for key in &self.lines {
            dedupe.add_a(*key);
        }
    }

    pub fn heap_size(&self) -> usize {
        self.lines.capacity() * std::mem::size_of::<u64>()
    }
}

#[derive(Debug)]
pub struct Dedupe {
    keys: RandomState,
    counts: HashMap<u64, i32>,
    /// Sum of the positive counts: lines A sent that B has not.
    pending: usize,
    cut: bool,
    held_done: bool,
    tail: u32,
    seen_after_cut: usize,
}

impl Default for Dedupe {
    fn default() -> Self {
        Self {
            keys: RandomState::new(),
            counts: HashMap::new(),
            pending: 0,
            cut: false,
            held_done: false,
            tail: TAIL,
            seen_after_cut: 0,
        }
    }
}

impl Dedupe {
    /// A line A forwarded to the client during the overlap.
    pub fn record_a(&mut self, msg: &Message, untagged: &[u8]) {
        if self.cut || !is_shared(msg) {
            return;
        }
        self.add_a(self.keys.hash_one(untagged));
    }

    fn add_a(&mut self, key: u64) {
        if self.cut {
            return;
        }
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_ENTRIES {
            return;
        }
        let count = self.counts.entry(key).or_insert(0);
        *count += 1;
        if *count > 0 {
            self.pending += 1;
        }
    }

    /// A line B sent during registration (swallowed, never forwarded).
    pub fn record_b_early(&mut self, msg: &Message, untagged: &[u8]) {
        if self.cut || !is_shared(msg) {
            return;
        }
        let key = self.keys.hash_one(untagged);
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_ENTRIES {
            return;
        }
        let count = self.counts.entry(key).or_insert(0);
        if *count > 0 {
            self.pending -= 1;
        }
        *count -= 1;
    }

    /// B is current now: only A's lines not yet seen from B still matter.
    pub fn cutover(&mut self) {
        self.cut = true;
        self.counts.retain(|_, c| *c > 0);
    }

    /// The session has fed every B line it held back during the overlap.
    pub fn held_lines_done(&mut self) {
        self.held_done = true;
    }

    /// A B line after the cut: true when the client already got it from A (hide it).
    pub fn is_duplicate(&mut self, msg: &Message, untagged: &[u8]) -> bool {
        if !self.cut || self.finished() {
            return false;
        }
        self.seen_after_cut += 1;
        if !is_shared(msg) {
            return false;
        }
        let key = self.keys.hash_one(untagged);
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
            self.pending -= 1;
            return true;
        }
        if self.held_done {
            self.tail = self.tail.saturating_sub(1);
        }
        false
    }

    /// Nothing left to dedupe.
    pub fn finished(&self) -> bool {
        self.cut
            && (self.pending == 0
                || self.tail == 0
                || self.seen_after_cut >= MAX_ENTRIES + TAIL as usize)
    }

    /// Roughly the heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.counts.capacity() * (std::mem::size_of::<(u64, i32)>() + 1)
    }
}

/// True for lines that both links of one user can receive from the network.
fn is_shared(msg: &Message) -> bool {
    const TARGETED: &[&str] = &[
        "PRIVMSG", "NOTICE", "TAGMSG", "JOIN", "PART", "KICK", "TOPIC", "MODE",
    ];
    const BROADCAST: &[&str] = &["QUIT", "NICK", "AWAY", "ACCOUNT", "CHGHOST", "SETNAME"];
    if TARGETED.iter().any(|c| msg.is(c)) {
        let target = msg.param(0).unwrap_or_default();
        let start = target
            .iter()
            .position(|b| !b"@+%~".contains(b))
            .unwrap_or(target.len());
        return is_channel(&target[start..]);
    }
    BROADCAST.iter().any(|c| msg.is(c)) && msg.from_user()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::irc::message::untagged;

    fn a(d: &mut Dedupe, line: &[u8]) {
        d.record_a(&Message::parse(line).unwrap(), untagged(line));
    }
    fn b_early(d: &mut Dedupe, line: &[u8]) {
        d.record_b_early(&Message::parse(line).unwrap(), untagged(line));
    }
    fn dup(d: &mut Dedupe, line: &[u8]) -> bool {
        d.is_duplicate(&Message::parse(line).unwrap(), untagged(line))
    }

    const HI: &[u8] = b":bob!~bob@h PRIVMSG #c :hi\r\n";
    const HI_TAGGED: &[u8] = b"@time=2024-05-01T10:00:00.000Z;msgid=x :bob!~bob@h PRIVMSG #c :hi\n";
    const YO: &[u8] = b":carol!~c@h PRIVMSG #c :yo\r\n";

    #[test]
    fn a_line_seen_from_a_is_hidden_once_from_b_ignoring_tags() {
        let mut d = Dedupe::default();
        a(&mut d, HI);
        a(&mut d, HI);
        d.cutover();
        assert!(dup(&mut d, HI_TAGGED));
        assert!(!d.finished());
        assert!(dup(&mut d, HI));
        assert!(d.finished(), "all counts spent");
        assert!(!dup(&mut d, HI), "a third copy is new");
    }

    #[test]
    fn new_lines_pass() {
        let mut d = Dedupe::default();
        a(&mut d, HI);
        d.cutover();
        assert!(!dup(&mut d, YO));
        assert!(dup(&mut d, HI));
    }

    #[test]
    fn nothing_is_deduped_before_the_cut_or_without_a_lines() {
        let mut d = Dedupe::default();
        assert!(!dup(&mut d, HI));
        d.cutover();
        assert!(d.finished());
        assert!(!dup(&mut d, HI));
    }

    #[test]
    fn a_b_line_seen_during_registration_cancels_a_later_a_copy() {
        let mut d = Dedupe::default();
        b_early(&mut d, HI);
        a(&mut d, HI);
        a(&mut d, YO);
        d.cutover();
        assert!(!dup(&mut d, HI), "B's copy was already swallowed");
        assert!(dup(&mut d, YO));
    }

    #[test]
    fn a_b_line_during_registration_consumes_an_earlier_a_copy() {
        let mut d = Dedupe::default();
        a(&mut d, HI);
        b_early(&mut d, HI);
        d.cutover();
        assert!(d.finished());
    }

    #[test]
    fn private_lines_and_numerics_are_not_counted() {
        let mut d = Dedupe::default();
        a(&mut d, b":bob!~bob@h PRIVMSG alice :psst\r\n");
        a(&mut d, b":a.irc.test 372 alice :- motd\r\n");
        d.cutover();
        assert!(d.finished());
        let mut d = Dedupe::default();
        a(&mut d, b":bob!~bob@h QUIT :bye\r\n");
        a(&mut d, b":bob!~bob@h PRIVMSG @#c :ops only\r\n");
        d.cutover();
        assert!(dup(&mut d, b":bob!~bob@h QUIT :bye\r\n"));
        assert!(dup(&mut d, b":bob!~bob@h PRIVMSG @#c :ops only\r\n"));
    }

    #[test]
    fn the_tail_ends_deduping_after_the_held_lines() {
        let mut d = Dedupe::default();
        a(&mut d, HI);
        a(&mut d, b":x!u@h PRIVMSG #c :never on b\r\n");
        d.cutover();
        for _ in 0..TAIL * 2 {
            assert!(
                !dup(&mut d, YO),
                "before held_lines_done the tail is not spent"
            );
        }
        d.held_lines_done();
        for _ in 0..TAIL - 1 {
            assert!(!dup(&mut d, YO));
        }
        assert!(
            dup(&mut d, HI),
            "a late copy within the tail is still caught"
        );
        assert!(!dup(&mut d, YO));
        assert!(d.finished());
    }

    /// Found by the soak: a message A delivered just before B's 001 reached B's server after
    /// B's JOIN, and the client saw it twice.
    #[test]
    fn recent_a_lines_count_in_the_next_overlap() {
        let mut recent = Recent::default();
        let note = |r: &mut Recent, line: &[u8]| {
            r.note(&Message::parse(line).unwrap(), untagged(line));
        };
        note(&mut recent, HI);
        note(&mut recent, b":a.irc.test 372 alice :- not shared\r\n");
        for i in 0..RECENT - 1 {
            note(
                &mut recent,
                format!(":x!u@h PRIVMSG #c :{i}\r\n").as_bytes(),
            );
        }
        assert_eq!(recent.lines.len(), RECENT, "bounded, numerics not kept");
        let mut d = recent.dedupe();
        recent.seed(&mut d);
        a(&mut d, YO);
        d.cutover();
        assert!(
            dup(&mut d, HI_TAGGED),
            "B's late copy of a line A sent before"
        );
        assert!(dup(&mut d, YO));
        assert!(!dup(&mut d, HI), "once only");
        // One more line pushes the oldest out of the window.
        note(&mut recent, YO);
        let mut d = recent.dedupe();
        recent.seed(&mut d);
        d.cutover();
        assert!(!dup(&mut d, HI));
        assert!(recent.heap_size() >= RECENT * 8);
    }

    #[test]
    fn a_recent_line_seen_from_b_during_registration_is_not_hidden_again() {
        let mut recent = Recent::default();
        recent.note(&Message::parse(HI).unwrap(), untagged(HI));
        let mut d = recent.dedupe();
        recent.seed(&mut d);
        b_early(&mut d, HI);
        d.cutover();
        assert!(d.finished());
    }

    #[test]
    fn entries_are_bounded() {
        let mut d = Dedupe::default();
        for i in 0..MAX_ENTRIES + 100 {
            let line = format!(":b!u@h PRIVMSG #c :{i}\r\n");
            a(&mut d, line.as_bytes());
        }
        assert_eq!(d.counts.len(), MAX_ENTRIES);
        assert!(d.heap_size() > 0);
    }
}
