//! The snapshot is learned from the live traffic, and only from the server's confirmations.

use bytes::BytesMut;

use super::*;
use crate::config::Secret;
use crate::protocol::irc::snapshot::{Channel, Sasl, Snapshot};

#[test]
fn an_ngircd_session_is_learned_from_its_transcript() {
    let s = registered_on_ngircd();
    let expected = Snapshot {
        pass: None,
        caps: vec!["multi-prefix".into()],
        sasl: None,
        nick: Some("alice".into()),
        user: Some("USER alice 0 * :Alice Liddell".into()),
        channels: vec![
            Channel {
                name: "#priv".into(),
                key: Some(Secret("s3cret".into())),
            },
            Channel {
                name: "#test".into(),
                key: None,
            },
        ],
        modes: "iw".into(),
        away: Some("gone fishing".into()),
        nicklen: Some(9),
    };
    assert_eq!(s.snapshot(), &expected);
    assert_eq!(s.identity().as_deref(), Some("alice"));
    assert_eq!(s.can_migrate(), Ok(()));
}

#[test]
fn the_snapshot_stays_small() {
    let s = registered_on_ngircd();
    let size = s.snapshot_size();
    assert!(size > 50 && size < 1024, "{size}");
}

#[test]
fn nothing_moves_before_001() {
    let mut s = IrcSession::new(true);
    client(&mut s, "NICK alice");
    client(&mut s, "USER alice 0 * :Alice");
    assert_eq!(s.can_migrate(), Err("not registered yet".into()));
    assert!(s.start_register().is_err());
    assert_eq!(s.identity(), None);
    server(
        &mut s,
        ":a.irc.test 001 alice :Welcome to the Internet Relay Network alice!~alice@localhost",
    );
    assert_eq!(s.can_migrate(), Ok(()));
}

#[test]
fn the_nick_changes_only_when_the_server_echoes_it() {
    let mut s = registered_on_ngircd();
    client(&mut s, "NICK alice2");
    assert_eq!(s.identity().as_deref(), Some("alice"));
    server(
        &mut s,
        ":a.irc.test 433 alice alice2 :Nickname already in use",
    );
    assert_eq!(s.identity().as_deref(), Some("alice"));
    server(&mut s, ":bob!~bob@localhost NICK :bobby");
    assert_eq!(s.identity().as_deref(), Some("alice"));
    server(&mut s, ":ALICE!~alice@localhost NICK :alice3");
    assert_eq!(s.identity().as_deref(), Some("alice3"));
    server(&mut s, ":alice3!~alice@localhost JOIN :#new");
    assert!(
        s.snapshot().channel(b"#new").is_some(),
        "JOINs follow the new nick"
    );
}

#[test]
fn part_and_kick_of_us_remove_channels_others_do_not() {
    let mut s = registered_on_ngircd();
    server(&mut s, ":bob!~bob@localhost JOIN :#elsewhere");
    assert!(
        s.snapshot().channel(b"#elsewhere").is_none(),
        "bob's JOIN is not ours"
    );
    server(&mut s, ":bob!~bob@localhost PART #test :bye");
    server(&mut s, ":bob!~bob@localhost KICK #priv carol :out");
    assert_eq!(s.snapshot().channels.len(), 2);
    server(&mut s, ":alice!~alice@localhost PART #Test :bye");
    assert!(s.snapshot().channel(b"#test").is_none());
    server(&mut s, ":bob!~bob@localhost KICK #priv alice :out");
    assert!(s.snapshot().channels.is_empty());
}

#[test]
fn a_join_without_echo_is_not_a_channel() {
    let mut s = registered_on_ngircd();
    client(&mut s, "JOIN #banned");
    server(
        &mut s,
        ":a.irc.test 474 alice #banned :Cannot join channel (+b)",
    );
    assert!(s.snapshot().channel(b"#banned").is_none());
}

#[test]
fn channel_key_changes_are_followed() {
    let mut s = registered_on_ngircd();
    server(&mut s, ":bob!~bob@localhost MODE #test +ok carol newkey");
    let key = |s: &IrcSession, c: &[u8]| s.snapshot().channel(c).unwrap().key.clone();
    assert_eq!(key(&s, b"#test"), Some(Secret("newkey".into())));
    server(&mut s, ":bob!~bob@localhost MODE #test +l-k 10 *");
    assert_eq!(key(&s, b"#test"), None);
    server(&mut s, ":bob!~bob@localhost MODE #priv +b-l *!*@spam");
    assert_eq!(
        key(&s, b"#priv"),
        Some(Secret("s3cret".into())),
        "other modes leave it"
    );
}

#[test]
fn user_modes_follow_server_mode_lines_for_our_nick_only() {
    let mut s = registered_on_ngircd();
    server(&mut s, ":a.irc.test MODE alice -w+x");
    server(&mut s, ":bob!~bob@localhost MODE bob :+B");
    assert_eq!(s.snapshot().modes, "ix");
}

#[test]
fn away_needs_306_and_305_clears_it() {
    let mut s = registered_on_ngircd();
    client(&mut s, "AWAY :lunch");
    assert_eq!(s.snapshot().away.as_deref(), Some("gone fishing"));
    server(
        &mut s,
        ":a.irc.test 306 alice :You have been marked as being away",
    );
    assert_eq!(s.snapshot().away.as_deref(), Some("lunch"));
    client(&mut s, "AWAY");
    server(
        &mut s,
        ":a.irc.test 305 alice :You are no longer marked as being away",
    );
    assert_eq!(s.snapshot().away, None);
}

#[test]
fn pass_and_sasl_plain_are_learned_on_903() {
    let mut s = IrcSession::new(true);
    for line in [
        "PASS :hunter2",
        "CAP LS 302",
        "NICK alice",
        "USER alice 0 * :Alice",
        "CAP REQ :sasl",
    ] {
        client(&mut s, line);
    }
    server(&mut s, ":b.irc.test CAP * ACK :sasl");
    client(&mut s, "AUTHENTICATE PLAIN");
    server(&mut s, "AUTHENTICATE +");
    client(&mut s, "AUTHENTICATE AGFsaWNlAGh1bnRlcjI=");
    assert_eq!(s.snapshot().sasl, None, "not before the server says yes");
    server(
        &mut s,
        ":b.irc.test 900 * * alice :You are now logged in as alice",
    );
    server(&mut s, ":b.irc.test 903 * :SASL authentication successful");
    client(&mut s, "CAP END");
    server(
        &mut s,
        ":b.irc.test 001 alice :Welcome to the Test IRC Network alice!~alice@127.0.0.1",
    );
    client(&mut s, "PASS ignored-after-registration");
    let snap = s.snapshot();
    assert_eq!(snap.pass, Some(Secret("PASS :hunter2".into())));
    assert_eq!(
        snap.sasl,
        Some(Sasl::Plain(Secret("AGFsaWNlAGh1bnRlcjI=".into())))
    );
    assert_eq!(snap.caps, vec!["sasl"]);
}

#[test]
fn failed_or_aborted_sasl_is_not_kept_and_other_mechanisms_block_migration() {
    let mut s = IrcSession::new(true);
    client(&mut s, "AUTHENTICATE PLAIN");
    client(&mut s, "AUTHENTICATE AGJhZABwYXNz");
    server(&mut s, ":b.irc.test 904 * :SASL authentication failed");
    server(&mut s, ":b.irc.test 903 * :SASL authentication successful");
    assert_eq!(s.snapshot().sasl, None);
    client(&mut s, "AUTHENTICATE PLAIN");
    client(&mut s, "AUTHENTICATE *");
    server(&mut s, ":b.irc.test 903 * :SASL authentication successful");
    assert_eq!(s.snapshot().sasl, None);
    client(&mut s, "USER alice 0 * :Alice");
    client(&mut s, "AUTHENTICATE EXTERNAL");
    client(&mut s, "AUTHENTICATE +");
    server(&mut s, ":b.irc.test 903 * :SASL authentication successful");
    server(&mut s, ":b.irc.test 001 alice :Welcome");
    assert_eq!(
        s.can_migrate(),
        Err("SASL EXTERNAL cannot be replayed".into())
    );
}

#[test]
fn a_long_sasl_payload_is_joined_from_chunks() {
    let mut s = IrcSession::new(true);
    client(&mut s, "AUTHENTICATE PLAIN");
    let chunk = "A".repeat(400);
    client(&mut s, &format!("AUTHENTICATE {chunk}"));
    client(&mut s, "AUTHENTICATE +");
    server(&mut s, ":b.irc.test 903 * :SASL authentication successful");
    assert_eq!(s.snapshot().sasl, Some(Sasl::Plain(Secret(chunk))));
}

#[test]
fn cap_del_drops_a_cap() {
    let mut s = registered_on_ngircd();
    server(&mut s, ":a.irc.test CAP alice ACK :away-notify");
    assert_eq!(s.snapshot().caps, vec!["multi-prefix", "away-notify"]);
    server(&mut s, ":a.irc.test CAP alice DEL :multi-prefix");
    server(&mut s, ":a.irc.test CAP alice ACK :-away-notify");
    assert!(s.snapshot().caps.is_empty());
}

#[test]
fn a_quitting_client_is_not_moved() {
    let mut s = registered_on_ngircd();
    client(&mut s, "QUIT :bye");
    assert!(s.can_migrate().is_err());
}

#[test]
fn rpl_bounce_after_registration_is_a_move() {
    let mut s = IrcSession::new(true);
    let bounce = ":a.irc.test 010 * irc2.test 6667 :Server full, try this one";
    assert_eq!(
        server(&mut s, bounce),
        Verdict::Forward,
        "not registered: the client's"
    );
    let mut s = registered_on_ngircd();
    let bounce = ":a.irc.test 010 alice irc2.test 6697 :Please use this server";
    assert_eq!(
        server(&mut s, bounce),
        Verdict::MoveTo("irc2.test:6697".into())
    );
    let v6 = ":a.irc.test 010 alice 2001:db8::1 6667 :moving";
    assert_eq!(
        server(&mut s, v6),
        Verdict::MoveTo("[2001:db8::1]:6667".into())
    );
    let bad = ":a.irc.test 010 alice irc2.test notaport :moving";
    assert_eq!(server(&mut s, bad), Verdict::Forward);
}

#[test]
fn handover_pongs_never_reach_the_client() {
    let mut s = registered_on_ngircd();
    let late = ":a.irc.test PONG a.irc.test :handover-00ff00ff00ff00ff";
    assert_eq!(server(&mut s, late), Verdict::Hide);
    let own = ":a.irc.test PONG a.irc.test :1704103200";
    assert_eq!(server(&mut s, own), Verdict::Forward);
}

#[test]
fn decode_splits_lines_and_enforces_limits() {
    let mut s = IrcSession::new(true);
    let mut buf = BytesMut::from(&b"PING :a\r\nPING :b\nPI"[..]);
    let dir = Direction::BackendToClient;
    assert_eq!(
        s.decode(dir, &mut buf).unwrap().unwrap(),
        &b"PING :a\r\n"[..]
    );
    assert_eq!(s.decode(dir, &mut buf).unwrap().unwrap(), &b"PING :b\n"[..]);
    assert_eq!(s.decode(dir, &mut buf).unwrap(), None);
    let mut bad = BytesMut::from(&b"PRIVMSG #a :\0\r\n"[..]);
    assert!(s.decode(Direction::ClientToBackend, &mut bad).is_err());
}

#[test]
fn non_utf8_lines_are_forwarded_and_learned() {
    let mut s = registered_on_ngircd();
    let latin1 = Bytes::from_static(b":bob!~bob@localhost PRIVMSG #test :caf\xe9\r\n");
    assert_eq!(
        s.observe(Direction::BackendToClient, &latin1),
        Verdict::Forward
    );
    let part = Bytes::from_static(b":alice!~alice@localhost PART #test :adi\xf3s\r\n");
    s.observe(Direction::BackendToClient, &part);
    assert!(s.snapshot().channel(b"#test").is_none());
}
