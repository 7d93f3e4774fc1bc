//! After the cut on a linked network: take the real nick back from the temporary one.
//!
//! The real nick is free once the old link's QUIT has crossed the network. When the new link
//! shares a channel with the old one, B relays the old link's QUIT: that is hidden (the client
//! must never see itself quit) and answered with `NICK`; a 433 (still held) is answered with
//! another `NICK`, up to [`RETRIES`] times, and then the QUIT, certain to come, is waited for.
//! Without shared channels the first `NICK` waits for the old link to close (the old server has
//! then sent the network its QUIT), and a 433 is answered with the `NICK` again after a
//! back-off ([`PACED_FIRST`], doubling up to [`PACED_MAX`]): the QUIT can take a busy server many
//! of its loops, or a distant link many milliseconds, to arrive, and a `NICK` every round trip
//! would only keep B busier and run out of tries first. After [`PACED_RETRIES`] (about 17 s)
//! the reclaim gives up and tells the client of its new nick with a NICK line of its own (the
//! one trace of a migration a client may then see). A failover asks at once and retries
//! [`RETRIES`] times.
//!
//! Until the nick is back, B's lines that name the temporary nick as source or first
//! parameter (numerics are addressed to it) are rewritten to the real nick, and the client's
//! messages to itself the other way, so that the client never sees the temporary nick.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::message::{irc_eq, line, offset_in, splice, Message};
use super::numerics::{one_of, ERR_ERRONEUSNICKNAME, NICK_TAKEN};

/// `NICK` retries answered to 433 before giving up (or waiting for the QUIT).
pub const RETRIES: u8 = 20;
/// `NICK` retries after a back-off, once the old link has closed.
pub const PACED_RETRIES: u8 = 40;
/// The first back-off; each 433 doubles it, up to [`PACED_MAX`].
pub const PACED_FIRST: Duration = Duration::from_millis(5);
pub const PACED_MAX: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Reclaim {
    real: String,
    temp: String,
    /// `user@host` on B, for the NICK line shown when giving up.
    userhost: String,
    tries: u8,
    /// The old link's QUIT was answered: it frees the nick once, so later ones (a hostile B
    /// repeating it) are hidden, not each answered with a `NICK` that B may never read.
    quit_answered: bool,
    /// The `NICK` waits for the old link to close (see [`Reclaim::defer`]).
    deferred: bool,
    /// The old link closed, so the QUIT is on its way: 433s are answered after a back-off.
    paced: bool,
    backoff: Duration,
    /// When the next paced `NICK` goes.
    retry_at: Option<Instant>,
}

/// What a B line means for the reclaim.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not about the reclaim: carry on (with [`Reclaim::rewrite`]).
    Pass,
    /// Swallow the line.
    Hide,
    /// Swallow the line and send this to B.
    Reply(Bytes),
    /// The real nick is back; swallow the echo.
    Reclaimed,
    /// Keep the temporary nick; show the client this line instead.
    GaveUp(Bytes),
    /// The client itself changed nick (a replayed `NICK`): forward this line instead.
    ClientRenamed(Bytes),
}

impl Reclaim {
    /// Starts a reclaim; the frame is the first `NICK` to send B.
    pub fn start(real: &str, temp: &str, userhost: Option<&str>) -> (Self, Bytes) {
        let reclaim = Self {
            real: real.to_string(),
            temp: temp.to_string(),
            userhost: userhost.unwrap_or("handover@handover.invalid").to_string(),
            tries: 1,
            quit_answered: false,
            deferred: false,
            paced: false,
            backoff: PACED_FIRST,
            retry_at: None,
        };
        let nick = reclaim.nick_line();
        (reclaim, nick)
    }

    /// Holds the first `NICK` back until the old link has closed. Without shared channels B
    /// relays no `QUIT`, and a `NICK` sent at the cut reaches B before the old server's `QUIT`
    /// does: B answers 433 to each retry until then, and a drain of thousands keeps both
    /// servers busy with them. The old server closes the link right after it sends the
    /// network its `QUIT`, so from then on the nick is (almost always) free.
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    /// The old link closed: the deferred `NICK`, if one waits.
    pub fn old_link_closed(&mut self) -> Option<Bytes> {
        let deferred = std::mem::replace(&mut self.deferred, false);
        self.paced |= deferred;
        deferred.then(|| self.nick_line())
    }

    /// When the next paced `NICK` is due.
    pub fn wake_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The paced `NICK`, once it is due.
    pub fn on_wake(&mut self, now: Instant) -> Option<Bytes> {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            return Some(self.nick_line());
        }
        None
    }

    pub fn temp(&self) -> &str {
        &self.temp
    }

    fn nick_line(&self) -> Bytes {
        line(&["NICK", &self.real])
    }

    /// Classifies one B line; `shared_channels` says whether B will relay the old QUIT.
    pub fn on_line(&mut self, msg: &Message, frame: &[u8], shared_channels: bool) -> Step {
        let source = msg.source_nick().unwrap_or_default();
        if msg.is("QUIT") && msg.from_user() && irc_eq(source, self.real.as_bytes()) {
            if std::mem::replace(&mut self.quit_answered, true) {
                return Step::Hide;
            }
            return Step::Reply(self.nick_line());
        }
        if msg.is("NICK") && msg.from_user() && irc_eq(source, self.temp.as_bytes()) {
            let new = msg.param(0).unwrap_or_default();
            if irc_eq(new, self.real.as_bytes()) {
                return Step::Reclaimed;
            }
            return Step::ClientRenamed(self.rewrite(msg, frame).unwrap_or_default());
        }
        let about_real = msg
            .param(1)
            .is_some_and(|n| irc_eq(n, self.real.as_bytes()));
        if !about_real {
            return Step::Pass;
        }
        if one_of(msg.command, NICK_TAKEN).is_some() {
            if self.paced && self.tries < PACED_RETRIES {
                self.tries += 1;
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(PACED_MAX);
                return Step::Hide;
            }
            if !self.paced && self.tries < RETRIES {
                self.tries += 1;
                return Step::Reply(self.nick_line());
            }
            if shared_channels {
                return Step::Hide;
            }
            return self.give_up();
        }
        if msg.command == ERR_ERRONEUSNICKNAME.as_bytes() {
            return self.give_up();
        }
        Step::Pass
    }

    fn give_up(&self) -> Step {
        let prefix = format!(":{}!{}", self.real, self.userhost);
        Step::GaveUp(line(&[&prefix, "NICK", &format!(":{}", self.temp)]))
    }

    /// B's line with the temporary nick (source, first parameter) replaced by the real one.
    pub fn rewrite(&self, msg: &Message, frame: &[u8]) -> Option<Bytes> {
        let mut ranges = Vec::with_capacity(2);
        if let Some(source) = msg.source_nick() {
            if irc_eq(source, self.temp.as_bytes()) {
                ranges.push((offset_in(frame, source), source.len()));
            }
        }
        if let Some(target) = msg.param(0) {
            if irc_eq(target, self.temp.as_bytes()) {
                ranges.push((offset_in(frame, target), target.len()));
            }
        }
        (!ranges.is_empty()).then(|| splice(frame, &ranges, self.real.as_bytes()))
    }

    /// The client's message or mode change aimed at itself, readdressed to the temporary nick.
    pub fn rewrite_client(&self, msg: &Message, frame: &[u8]) -> Option<Bytes> {
        const SELF_ADDRESSED: &[&str] = &["MODE", "PRIVMSG", "NOTICE", "TAGMSG"];
        if !SELF_ADDRESSED.iter().any(|c| msg.is(c)) {
            return None;
        }
        let target = msg.param(0)?;
        irc_eq(target, self.real.as_bytes()).then(|| {
            splice(
                frame,
                &[(offset_in(frame, target), target.len())],
                self.temp.as_bytes(),
            )
        })
    }

    #[cfg(test)]
    pub fn tries(&self) -> u8 {
        self.tries
    }

    pub fn heap_size(&self) -> usize {
        self.real.capacity() + self.temp.capacity() + self.userhost.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(r: &mut Reclaim, line: &[u8], shared: bool) -> Step {
        r.on_line(&Message::parse(line).unwrap(), line, shared)
    }

    fn reclaim() -> Reclaim {
        Reclaim::start("alice", "alice_0k3", Some("~alice@localhost")).0
    }

    #[test]
    fn a_deferred_reclaim_asks_once_when_the_old_link_closes() {
        let mut r = reclaim();
        assert_eq!(
            r.old_link_closed(),
            None,
            "not deferred: asked at the start"
        );
        r.defer();
        assert_eq!(
            r.old_link_closed(),
            Some(Bytes::from_static(b"NICK alice\r\n"))
        );
        assert_eq!(r.old_link_closed(), None);
    }

    #[test]
    fn start_asks_for_the_real_nick() {
        let (_, nick) = Reclaim::start("alice", "alice_0k3", None);
        assert_eq!(nick, &b"NICK alice\r\n"[..]);
    }

    #[test]
    fn own_quit_is_hidden_and_answered_with_nick() {
        let mut r = reclaim();
        let s = step(
            &mut r,
            b":alice!~alice@localhost QUIT :Quit: Changing servers\r\n",
            true,
        );
        assert_eq!(s, Step::Reply(Bytes::from_static(b"NICK alice\r\n")));
        let other = step(&mut r, b":bob!~bob@localhost QUIT :bye\r\n", true);
        assert_eq!(other, Step::Pass);
    }

    #[test]
    fn the_old_quit_is_answered_once_however_often_it_comes() {
        let mut r = reclaim();
        let quit = b":alice!~alice@localhost QUIT :Quit: Changing servers\r\n";
        assert!(matches!(step(&mut r, quit, true), Step::Reply(_)));
        // A backend repeating it must not make handover queue a NICK per line.
        for _ in 0..1000 {
            assert_eq!(step(&mut r, quit, true), Step::Hide);
        }
    }

    #[test]
    fn echo_of_the_reclaim_is_recognised() {
        let mut r = reclaim();
        let s = step(&mut r, b":alice_0k3!~alice@localhost NICK :alice\r\n", true);
        assert_eq!(s, Step::Reclaimed);
    }

    #[test]
    fn retries_on_433_then_gives_up_without_channels() {
        let mut r = reclaim();
        let taken = b":b.irc.test 433 alice_0k3 alice :Nickname already in use\r\n";
        for _ in 1..RETRIES {
            assert_eq!(
                step(&mut r, taken, false),
                Step::Reply(Bytes::from_static(b"NICK alice\r\n"))
            );
        }
        assert_eq!(r.tries(), RETRIES);
        assert_eq!(
            step(&mut r, taken, false),
            Step::GaveUp(Bytes::from_static(
                b":alice!~alice@localhost NICK :alice_0k3\r\n"
            ))
        );
    }

    #[test]
    fn with_shared_channels_it_waits_for_the_quit_instead_of_giving_up() {
        let mut r = reclaim();
        let taken = b":b.irc.test 433 alice_0k3 alice :Nickname is already in use.\r\n";
        for _ in 1..RETRIES {
            step(&mut r, taken, true);
        }
        assert_eq!(step(&mut r, taken, true), Step::Hide);
        let s = step(
            &mut r,
            b":alice!~alice@localhost QUIT :Quit: Changing servers\r\n",
            true,
        );
        assert!(matches!(s, Step::Reply(_)));
    }

    #[test]
    fn a_433_about_another_nick_is_the_clients_own() {
        let mut r = reclaim();
        let s = step(
            &mut r,
            b":b.irc.test 433 alice_0k3 bob :Nickname is already in use\r\n",
            false,
        );
        assert_eq!(s, Step::Pass);
    }

    #[test]
    fn a_client_rename_is_shown_from_the_real_nick() {
        let mut r = reclaim();
        let s = step(
            &mut r,
            b":alice_0k3!~alice@localhost NICK :alice2\r\n",
            true,
        );
        assert_eq!(
            s,
            Step::ClientRenamed(Bytes::from_static(
                b":alice!~alice@localhost NICK :alice2\r\n"
            ))
        );
    }

    #[test]
    fn the_temporary_nick_is_rewritten_in_source_and_target() {
        let r = reclaim();
        let frame = b"@time=x :alice_0k3!~alice@localhost MODE alice_0k3 :+x\r\n";
        let m = Message::parse(frame).unwrap();
        assert_eq!(
            r.rewrite(&m, frame).unwrap(),
            &b"@time=x :alice!~alice@localhost MODE alice :+x\r\n"[..]
        );
        let frame = b":b.irc.test 401 alice_0k3 nobody :No such nick/channel\r\n";
        let m = Message::parse(frame).unwrap();
        assert_eq!(
            r.rewrite(&m, frame).unwrap(),
            &b":b.irc.test 401 alice nobody :No such nick/channel\r\n"[..]
        );
        let frame = b":bob!~bob@h PRIVMSG #c :alice_0k3 is alice\r\n";
        assert_eq!(r.rewrite(&Message::parse(frame).unwrap(), frame), None);
    }

    #[test]
    fn the_clients_own_mode_goes_to_the_temporary_nick() {
        let r = reclaim();
        let frame = b"MODE alice +i\r\n";
        let m = Message::parse(frame).unwrap();
        assert_eq!(
            r.rewrite_client(&m, frame).unwrap(),
            &b"MODE alice_0k3 +i\r\n"[..]
        );
        let frame = b"WHOIS alice\r\n";
        assert_eq!(
            r.rewrite_client(&Message::parse(frame).unwrap(), frame),
            None
        );
    }
}
