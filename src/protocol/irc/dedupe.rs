//! Deduplication of channel traffic across the overlap of the old (A) and new (B) backend.
//!
//! Both links sit in the same channels of one network from B's 001 until the cut, so a channel
//! message can arrive on both. A signed multiset keyed by the line without its tags settles it:
//!
//! * an A line forwarded to the client counts +1;
//! * B's channel traffic during registration is held by the session, like everything B says
//!   between registration and the cut (see [`is_overlap_traffic`]);
//! * after the cut, a held or later B line whose count is positive is a duplicate: hidden, one
//!   count spent; otherwise it is forwarded (A's copy came too late, or never).
//!
//! Only lines both links can receive are counted: channel-targeted commands and the user
//! broadcasts (QUIT, NICK, AWAY, …); numerics and private messages never are.
//!
//! **When deduping stops** (after the cut, negative counts are dropped first): when no positive
//! count is left, or when [`TAIL`] shared B lines that were *not* duplicates have arrived after
//! the session signalled `held_lines_done` (B may still deliver, late, a line A already
//! delivered: the server links do not order messages of different origins the same way), or
//! after [`MAX_ENTRIES`] + [`TAIL`] B lines in all, as a safety bound. Keys are 64-bit hashes
//! with a random key (drawn once per process, secret), so memory is 16 bytes per entry and
//! lines can't be crafted to collide.
//!
//! **The overlap starts before B's 001**: a message A delivered a moment before the migration
//! can still be on its way to B's server and reach it after B's JOIN (ngircd buffers its
//! compressed server links for tens of milliseconds), so B delivers it too. [`Recent`] keeps the
//! last [`RECENT`] shared lines of the current backend, inline and without a heap allocation
//! (an idle session must stay small), and they count as A's lines from B's 001.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use super::message::{is_channel, Message};

/// Distinct lines remembered at most.
pub const MAX_ENTRIES: usize = 4096;
/// Non-duplicate shared B lines after the held lines before deduping stops.
pub const TAIL: u32 = 32;
/// Shared lines of the current backend remembered for the next migration's overlap.
pub const RECENT: usize = 8;

/// The process's secret hash key for line keys.
fn key_of(untagged: &[u8]) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(untagged)
}

/// The last [`RECENT`] shared lines the current backend forwarded, as keys: a ring in place.
#[derive(Debug, Default)]
pub struct Recent {
    keys: [u64; RECENT],
    /// The slot the next line takes.
    next: u8,
    /// Slots in use.
    len: u8,
}

impl Recent {
    /// A line the current backend forwarded to the client.
    pub fn note(&mut self, msg: &Message, untagged: &[u8]) {
        if !is_shared(msg) {
            return;
        }
        self.keys[usize::from(self.next)] = key_of(untagged);
        self.next = (self.next + 1) % RECENT as u8;
        self.len = (self.len + 1).min(RECENT as u8);
    }

    fn filled(&self) -> &[u64] {
        &self.keys[..usize::from(self.len)]
    }

    /// Counts the remembered lines into `dedupe` as if A had forwarded them in the overlap.
    pub fn seed(&self, dedupe: &mut Dedupe) {
        for key in self.filled() {
            dedupe.add_a(*key);
        }
    }
}

#[derive(Debug)]
pub struct Dedupe {
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
        if !is_shared(msg) {
            return;
        }
        self.add_a(key_of(untagged));
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
        let key = key_of(untagged);
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
/// A line B sent during registration that is traffic of the shared channels from someone
/// else: to be held for after the cut. Lines from or naming the temporary nick belong to the
/// registration (its own JOIN echoes, the server's modes for it) and are not.
pub fn is_overlap_traffic(msg: &Message, frame: &[u8], temp_nick: &str) -> bool {
    const TRAFFIC: &[&str] = &[
        "PRIVMSG", "NOTICE", "TAGMSG", "JOIN", "PART", "KICK", "TOPIC", "QUIT", "NICK",
    ];
    let temp = temp_nick.as_bytes();
    let mentions_temp = !temp.is_empty()
        && frame
            .windows(temp.len())
            .any(|w| w.eq_ignore_ascii_case(temp));
    msg.from_user() && TRAFFIC.iter().any(|c| msg.is(c)) && is_shared(msg) && !mentions_temp
}

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
    fn registration_traffic_from_others_is_held_but_not_the_temporary_nicks_own() {
        let t = |line: &[u8]| is_overlap_traffic(&Message::parse(line).unwrap(), line, "alice_1");
        assert!(t(b":bob!~bob@h PRIVMSG #c :hello\r\n"));
        assert!(t(b":bob!~bob@h JOIN #c\r\n"));
        assert!(t(b":bob!~bob@h QUIT :bye\r\n"));
        assert!(!t(b":alice_1!~alice@h JOIN #c\r\n"), "our own JOIN echo");
        assert!(
            !t(b":bob!~bob@h MODE #c +o alice_1\r\n"),
            "names the temporary nick"
        );
        assert!(!t(b":bob!~bob@h PRIVMSG alice_1 :psst\r\n"), "private");
        assert!(
            !t(b":b.irc.test 353 alice_1 = #c :alice_1 bob\r\n"),
            "numeric"
        );
        assert!(!t(b":b.irc.test MODE #c +nt\r\n"), "from the server");
    }

    #[test]
    fn a_held_line_that_a_also_delivered_is_hidden_once() {
        let mut d = Dedupe::default();
        a(&mut d, HI);
        d.cutover();
        assert!(dup(&mut d, HI), "B's held copy: A delivered it");
        assert!(
            !dup(&mut d, HI),
            "a second, real message with the same text"
        );
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

    /// Found by the soak: a message A delivered just before the migration reached B's server
    /// after B's JOIN, and the client saw it twice.
    #[test]
    fn recent_a_lines_count_in_the_next_overlap() {
        let note =
            |r: &mut Recent, line: &[u8]| r.note(&Message::parse(line).unwrap(), untagged(line));
        let mut recent = Recent::default();
        note(&mut recent, HI);
        note(&mut recent, b":a.irc.test 372 alice :- not shared\r\n");
        assert_eq!(recent.filled().len(), 1, "numerics are not kept");
        for i in 0..RECENT - 1 {
            note(
                &mut recent,
                format!(":x!u@h PRIVMSG #c :{i}\r\n").as_bytes(),
            );
        }
        assert_eq!(recent.filled().len(), RECENT);
        let mut d = Dedupe::default();
        recent.seed(&mut d);
        a(&mut d, YO);
        d.cutover();
        assert!(
            dup(&mut d, HI_TAGGED),
            "B's late copy of a line A sent before"
        );
        assert!(dup(&mut d, YO));
        assert!(!dup(&mut d, HI), "once only");
        // One more line pushes the oldest out of the ring, however long it runs.
        for round in 0..3 * RECENT {
            note(
                &mut recent,
                format!(":y!u@h PRIVMSG #c :{round}\r\n").as_bytes(),
            );
            assert_eq!(recent.filled().len(), RECENT);
        }
        let mut d = Dedupe::default();
        recent.seed(&mut d);
        d.cutover();
        assert!(!dup(&mut d, HI));
        assert!(dup(
            &mut d,
            format!(":y!u@h PRIVMSG #c :{}\r\n", 3 * RECENT - 1).as_bytes()
        ));
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
