//! Session-level tests: the adapter fed realistic ngircd 26 / inspircd 3 lines, no sockets.

mod fixup;
mod learning;
mod migration;
mod register;

use bytes::Bytes;

use super::IrcSession;
use crate::protocol::{Direction, RegisterStart, RegisterStep, SessionAdapter, Verdict};

pub fn client(s: &mut IrcSession, line: &str) -> Verdict {
    s.observe(Direction::ClientToBackend, &frame(line))
}

pub fn server(s: &mut IrcSession, line: &str) -> Verdict {
    s.observe(Direction::BackendToClient, &frame(line))
}

/// Feeds B's registration lines; every one must be `Continue`, their sends are collected.
pub fn b_continue(s: &mut IrcSession, lines: &[&str]) -> Vec<String> {
    let mut sent = Vec::new();
    for line in lines {
        match s.on_register_frame(&frame(line)) {
            RegisterStep::Continue(send) => sent.extend(send.iter().map(text)),
            other => panic!("{line}: expected Continue, got {other:?}"),
        }
    }
    sent
}

pub fn b(s: &mut IrcSession, line: &str) -> RegisterStep {
    s.on_register_frame(&frame(line))
}

pub fn frame(line: &str) -> Bytes {
    Bytes::from(format!("{line}\r\n"))
}

pub fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

pub fn texts(frames: &[Bytes]) -> Vec<String> {
    frames.iter().map(text).collect()
}

pub fn start(s: &mut IrcSession) -> Vec<String> {
    let RegisterStart { send, settle } = s.start_register().expect("start_register");
    assert_eq!(settle, None);
    texts(&send)
}

/// The nick in a `NICK x` line among `sent`.
pub fn nick_sent(sent: &[String]) -> String {
    let line = sent
        .iter()
        .rev()
        .find(|l| l.starts_with("NICK "))
        .expect("a NICK line");
    line["NICK ".len()..].to_string()
}

/// The token of the `PING :x` line among `sent`.
pub fn ping_sent(sent: &[String]) -> String {
    let line = sent
        .iter()
        .find(|l| l.starts_with("PING :"))
        .expect("a PING line");
    line["PING :".len()..].to_string()
}

/// The client's side of an ngircd 26 registration with caps, two channels (one keyed), user
/// modes and away; returns the session on server A.
pub fn registered_on_ngircd() -> IrcSession {
    let mut s = IrcSession::new(true);
    for line in NGIRCD_SESSION {
        let (dir, line) = line.split_at(2);
        let verdict = match dir {
            "C " => client(&mut s, line),
            "S " => server(&mut s, line),
            _ => unreachable!("{dir}"),
        };
        assert_eq!(verdict, Verdict::Forward, "{line}");
    }
    s
}

/// `C ` lines are the client's, `S ` lines server A's (ngircd 26.1).
pub const NGIRCD_SESSION: &[&str] = &[
    "C CAP LS 302",
    "C NICK alice",
    "C USER alice 0 * :Alice Liddell",
    "S :a.irc.test CAP * LS :multi-prefix",
    "C CAP REQ :multi-prefix",
    "S :a.irc.test CAP alice ACK :multi-prefix",
    "C CAP END",
    "S :a.irc.test 001 alice :Welcome to the Internet Relay Network alice!~alice@localhost",
    "S :a.irc.test 002 alice :Your host is a.irc.test, running version ngircd-26.1 (x86_64/pc/linux-gnu)",
    "S :a.irc.test 003 alice :This server has been started Mon Jan 01 2024 at 10:00:00 (UTC)",
    "S :a.irc.test 004 alice a.irc.test ngircd-26.1 abBcCFiIoqrRswx abehiIklmMnoOPqQrRstvVz",
    "S :a.irc.test 005 alice RFC2812 IRCD=ngIRCd CHARSET=UTF-8 CASEMAPPING=ascii PREFIX=(qaohv)~&@%+ CHANTYPES=#&+ CHANMODES=beI,k,l,imMnOPQRstVz CHANLIMIT=#&+:10 :are supported on this server",
    "S :a.irc.test 005 alice CHANNELLEN=50 NICKLEN=9 TOPICLEN=490 AWAYLEN=127 KICKLEN=400 MODES=5 MAXLIST=beI:50 EXCEPTS=e INVEX=I PENALTY FNC :are supported on this server",
    "S :a.irc.test 251 alice :There are 1 users and 0 services on 2 servers",
    "S :a.irc.test 252 alice 1 :operator(s) online",
    "S :a.irc.test 253 alice 0 :unknown connection(s)",
    "S :a.irc.test 254 alice 1 :channels formed",
    "S :a.irc.test 255 alice :I have 1 users, 0 services and 1 servers",
    "S :a.irc.test 265 alice 1 1 :Current local users: 1, Max: 1",
    "S :a.irc.test 266 alice 2 2 :Current global users: 2, Max: 2",
    "S :a.irc.test 250 alice :Highest connection count: 1 (3 connections received)",
    "S :a.irc.test 375 alice :- a.irc.test message of the day",
    "S :a.irc.test 372 alice :- Welcome to the test network!",
    "S :a.irc.test 376 alice :End of MOTD command",
    "S :alice!~alice@localhost MODE alice :+iw",
    "C JOIN #priv,#test s3cret",
    "S :alice!~alice@localhost JOIN :#priv",
    "S :a.irc.test 332 alice #priv :secret things",
    "S :a.irc.test 333 alice #priv bob 1704103200",
    "S :a.irc.test 353 alice = #priv :alice @bob",
    "S :a.irc.test 366 alice #priv :End of NAMES list",
    "S :alice!~alice@localhost JOIN :#test",
    "S :a.irc.test 353 alice = #test :alice @bob",
    "S :a.irc.test 366 alice #test :End of NAMES list",
    "C AWAY :gone fishing",
    "S :a.irc.test 306 alice :You have been marked as being away",
    "C PRIVMSG #test :hello",
    "S :bob!~bob@localhost PRIVMSG #test :hi alice",
];

/// inspircd 3's welcome burst for the temporary nick `{n}` (replace before use).
pub const INSPIRCD_BURST: &[&str] = &[
    ":b.irc.test 001 {n} :Welcome to the Test IRC Network {n}!~alice@127.0.0.1",
    ":b.irc.test 002 {n} :Your host is b.irc.test, running version InspIRCd-3",
    ":b.irc.test 003 {n} :This server was created 10:00:00 Jan 01 2024",
    ":b.irc.test 004 {n} b.irc.test InspIRCd-3 BIRSiorswx CDIRSTbiklmnopstv :Ibklov",
    ":b.irc.test 005 {n} AWAYLEN=200 CASEMAPPING=rfc1459 CHANLIMIT=#:20 CHANMODES=Ib,k,l,CDRSTimnpst CHANNELLEN=64 CHANTYPES=# ELIST=CMNTU HOSTLEN=64 KEYLEN=32 KICKLEN=255 LINELEN=512 :are supported by this server",
    ":b.irc.test 005 {n} MAXTARGETS=20 MODES=20 NAMELEN=128 NETWORK=Test NICKLEN=30 PREFIX=(ov)@+ SAFELIST STATUSMSG=@+ TOPICLEN=307 USERLEN=10 WHOX :are supported by this server",
    ":b.irc.test 251 {n} :There are 2 users and 0 invisible on 2 servers",
    ":b.irc.test 253 {n} 1 :unknown connections",
    ":b.irc.test 254 {n} 1 :channels formed",
    ":b.irc.test 255 {n} :I have 1 clients and 1 servers",
    ":b.irc.test 265 {n} :Current local users: 1  Max: 1",
    ":b.irc.test 266 {n} :Current global users: 2  Max: 2",
    ":b.irc.test 375 {n} :b.irc.test message of the day",
    ":b.irc.test 372 {n} :- This is a test server.",
    ":b.irc.test 376 {n} :End of message of the day.",
    ":{n}!~alice@127.0.0.1 MODE {n} :+ix",
];

/// [`INSPIRCD_BURST`] for nick `n`.
pub fn burst(n: &str) -> Vec<String> {
    INSPIRCD_BURST.iter().map(|l| l.replace("{n}", n)).collect()
}

/// Runs B's side of a successful re-registration of [`registered_on_ngircd`] up to `Done`.
/// Returns the temporary nick.
pub fn register_on_inspircd(s: &mut IrcSession) -> String {
    let sent = start(s);
    assert!(sent.contains(&"CAP LS 302".to_string()), "{sent:?}");
    let mut sent = sent;
    sent.extend(b_continue(
        s,
        &[
            ":b.irc.test NOTICE * :*** Looking up your hostname...",
            ":b.irc.test CAP * LS :cap-notify away-notify extended-join multi-prefix sasl=PLAIN",
            ":b.irc.test CAP * ACK :multi-prefix",
        ],
    ));
    let temp = nick_sent(&sent);
    let burst = burst(&temp);
    let mut welcome = Vec::new();
    for line in &burst {
        welcome.extend(b_continue(s, &[line.as_str()]));
    }
    assert_eq!(
        welcome,
        vec![
            "JOIN #priv,#test s3cret".to_string(),
            format!("MODE {temp} +iw"),
            "AWAY :gone fishing".to_string(),
            welcome[3].clone(),
        ]
    );
    let token = ping_sent(&welcome);
    let replies = b_continue(
        s,
        &[
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#priv"),
            &format!(":b.irc.test 353 {temp} = #priv :{temp} @bob"),
            &format!(":b.irc.test 366 {temp} #priv :End of /NAMES list."),
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#test"),
            &format!(":b.irc.test 353 {temp} = #test :{temp} @bob"),
            &format!(":b.irc.test 366 {temp} #test :End of /NAMES list."),
            &format!(":{temp}!~alice@127.0.0.1 MODE {temp} :+w"),
            &format!(":b.irc.test 306 {temp} :You have been marked as being away"),
        ],
    );
    assert!(replies.is_empty(), "{replies:?}");
    assert_eq!(
        b(s, &format!(":b.irc.test PONG b.irc.test :{token}")),
        RegisterStep::Done(Vec::new())
    );
    temp
}

#[test]
fn a_lost_server_fails_over_but_a_deliberate_close_does_not() {
    let mut s = IrcSession::new(true);
    server(
        &mut s,
        ":a.irc.test 001 alice :Welcome to the Internet Relay Network alice!~alice@localhost",
    );
    assert!(
        s.failover_on_close(),
        "a server that just goes away is lost: fail over"
    );
    server(
        &mut s,
        "ERROR :Closing connection: alice[~alice@localhost] (Killed by admin)",
    );
    assert!(!s.failover_on_close(), "a kill is shown to the client");

    let mut s = IrcSession::new(true);
    server(&mut s, ":a.irc.test 001 alice :Welcome");
    client(&mut s, "QUIT :bye");
    assert!(!s.failover_on_close(), "the client asked to leave");
}

#[test]
fn the_temporary_self_is_never_shown_even_when_the_old_server_relays_it() {
    use super::super::SessionAdapter as _;
    let mut s = registered_on_ngircd();
    let sent = start(&mut s);
    let temp = nick_sent(&sent);
    // While B registers, A relays the new connection's JOIN to the old one: hidden.
    let relayed = format!(":{temp}!~alice@127.0.0.1 JOIN :#test");
    assert_eq!(server(&mut s, &relayed), Verdict::Hide);
    assert_eq!(
        server(&mut s, ":bob!~bob@h PRIVMSG #test :hi"),
        Verdict::Forward
    );
    // The migration aborts: the temporary connection's QUIT, relayed by A, is hidden too.
    s.abort_migration();
    assert_eq!(
        server(
            &mut s,
            &format!(":{temp}!~alice@127.0.0.1 QUIT :Connection closed")
        ),
        Verdict::Hide
    );
    assert_eq!(
        server(
            &mut s,
            &format!(":{temp}!~alice@127.0.0.1 PRIVMSG #test :x")
        ),
        Verdict::Forward,
        "only until its QUIT"
    );
}

/// A answers the flush mark, then relays the temporary nick's JOIN on B for each of
/// `relayed`: only the last of these ends the flush (the PONG alone when there are none).
pub fn flush_on_a(s: &mut IrcSession, token: &str, temp: &str, relayed: &[&str]) {
    let pong = frame(&format!(":a.irc.test PONG a.irc.test :{token}"));
    assert_eq!(s.is_flush_reply(&pong), relayed.is_empty(), "the PONG");
    for (i, chan) in relayed.iter().enumerate() {
        let join = frame(&format!(":{temp}!~alice@b.irc.test JOIN :{chan}"));
        assert_eq!(s.is_flush_reply(&join), i + 1 == relayed.len(), "{chan}");
    }
}
