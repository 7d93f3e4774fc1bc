//! Re-registration on the new backend, fed inspircd 3 lines.

use std::net::SocketAddr;

use super::*;
use crate::config::{BackendConfig, BackendTls, ProxyProtocol, Secret, WebircConfig};
use crate::protocol::ClientInfo;

/// A registered session without caps, channels, modes or away.
fn plain_session(linked: bool) -> IrcSession {
    let mut s = IrcSession::new(linked);
    client(&mut s, "NICK alice");
    client(&mut s, "USER alice 0 * :Alice");
    server(
        &mut s,
        ":a.irc.test 001 alice :Welcome to the Internet Relay Network alice!~alice@localhost",
    );
    s
}

fn valid_nick(n: &str) -> bool {
    let special = |c: char| "[]\\`_^{|}".contains(c);
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || special(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
}

#[test]
fn the_full_re_registration_ends_in_done() {
    let mut s = registered_on_ngircd();
    let temp = register_on_inspircd(&mut s);
    assert_ne!(temp, "alice");
    assert!(temp.starts_with("alice_"), "{temp}");
    assert!(temp.len() <= 9 && valid_nick(&temp), "{temp}");
}

#[test]
fn linked_registration_sends_a_temporary_nick_after_pass_and_before_user() {
    let mut s = plain_session(true);
    let sent = start(&mut s);
    assert_eq!(sent.len(), 2, "no caps negotiated: no CAP LS: {sent:?}");
    let temp = nick_sent(&sent);
    assert_eq!(
        sent,
        vec![format!("NICK {temp}"), "USER alice 0 * :Alice".to_string()]
    );
    assert!(temp.len() <= 9 && valid_nick(&temp), "{temp}");
}

#[test]
fn a_long_nick_is_cut_to_fit_nicklen() {
    let mut s = IrcSession::new(true);
    client(&mut s, "USER x 0 * :X");
    server(&mut s, ":a.irc.test 001 averyveryverylongnickname :Welcome");
    server(
        &mut s,
        ":a.irc.test 005 averyveryverylongnickname NICKLEN=12 :are supported by this server",
    );
    let temp = nick_sent(&start(&mut s));
    assert_eq!(temp.len(), 12, "{temp}");
    assert!(temp.starts_with("averyver_") && valid_nick(&temp), "{temp}");
}

#[test]
fn pass_goes_first() {
    let mut s = IrcSession::new(true);
    client(&mut s, "PASS secret");
    client(&mut s, "NICK alice");
    client(&mut s, "USER alice 0 * :Alice");
    server(&mut s, ":a.irc.test 001 alice :Welcome");
    let sent = start(&mut s);
    assert_eq!(sent[0], "PASS secret");
}

#[test]
fn a_taken_temporary_nick_is_replaced_five_times_then_fails() {
    let mut s = plain_session(true);
    let mut nicks = vec![nick_sent(&start(&mut s))];
    for _ in 0..4 {
        let sent = b_continue(
            &mut s,
            &[&format!(
                ":b.irc.test 433 * {} :Nickname is already in use.",
                nicks.last().unwrap()
            )],
        );
        nicks.push(nick_sent(&sent));
    }
    let mut unique = nicks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "{nicks:?}");
    assert!(
        nicks.iter().all(|n| n.len() <= 9 && valid_nick(n)),
        "{nicks:?}"
    );
    assert_eq!(
        b(&mut s, ":b.irc.test 433 * x :Nickname is already in use."),
        RegisterStep::Failed("nick unavailable".into())
    );
}

#[test]
fn unlinked_backends_get_the_real_nick_and_a_taken_nick_fails() {
    let mut s = plain_session(false);
    let sent = start(&mut s);
    assert_eq!(nick_sent(&sent), "alice");
    assert_eq!(
        b(
            &mut s,
            ":b.irc.test 433 * alice :Nickname is already in use."
        ),
        RegisterStep::Failed("nick unavailable".into())
    );
}

#[test]
fn ping_is_answered_during_registration() {
    let mut s = plain_session(true);
    start(&mut s);
    assert_eq!(
        b_continue(&mut s, &["PING :1234567890"]),
        vec!["PONG :1234567890"]
    );
    assert_eq!(
        b_continue(&mut s, &[":b.irc.test PING b.irc.test :b.irc.test"]),
        vec!["PONG :b.irc.test"]
    );
}

#[test]
fn nothing_to_restore_is_done_at_the_barrier() {
    let mut s = plain_session(true);
    let temp = nick_sent(&start(&mut s));
    let mut sent = Vec::new();
    for line in burst(&temp) {
        sent.extend(b_continue(&mut s, &[line.as_str()]));
    }
    assert_eq!(sent.len(), 1, "only the barrier: {sent:?}");
    let token = ping_sent(&sent);
    assert!(token.starts_with("handover-"));
    b_continue(&mut s, &[":b.irc.test PONG b.irc.test :handover-other"]);
    assert_eq!(
        b(&mut s, &format!(":b.irc.test PONG b.irc.test :{token}")),
        RegisterStep::Done(Vec::new())
    );
}

#[test]
fn done_waits_for_every_366_and_the_306() {
    let mut s = registered_on_ngircd();
    let sent = start(&mut s);
    b_continue(
        &mut s,
        &[
            ":b.irc.test CAP * LS :multi-prefix",
            ":b.irc.test CAP * ACK :multi-prefix",
        ],
    );
    let temp = nick_sent(&sent);
    let welcome = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    let token = ping_sent(&welcome);
    // Out of the usual order on purpose: each missing piece alone must hold Done back.
    b_continue(
        &mut s,
        &[
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#priv"),
            &format!(":b.irc.test 366 {temp} #priv :End of /NAMES list."),
            &format!(":b.irc.test PONG b.irc.test :{token}"),
            &format!(":b.irc.test 306 {temp} :You have been marked as being away"),
            &format!(":{temp}!~alice@127.0.0.1 JOIN #test * :Alice Liddell"),
        ],
    );
    assert_eq!(
        b(
            &mut s,
            &format!(":b.irc.test 366 {temp} #TEST :End of /NAMES list.")
        ),
        RegisterStep::Done(Vec::new())
    );
}

#[test]
fn a_366_without_a_join_echo_is_not_a_rejoin() {
    let mut s = plain_session(true);
    server(&mut s, ":alice!~alice@localhost JOIN :#test");
    let temp = nick_sent(&start(&mut s));
    let welcome = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    let token = ping_sent(&welcome);
    b_continue(
        &mut s,
        &[
            &format!(":b.irc.test 366 {temp} #test :End of /NAMES list."),
            &format!(":b.irc.test PONG b.irc.test :{token}"),
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#other"),
        ],
    );
}

#[test]
fn done_waits_for_the_306() {
    let mut s = registered_on_ngircd();
    let temp = nick_sent(&start(&mut s));
    b_continue(
        &mut s,
        &[
            ":b.irc.test CAP * LS :multi-prefix",
            ":b.irc.test CAP * ACK :multi-prefix",
        ],
    );
    let welcome = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    let token = ping_sent(&welcome);
    b_continue(
        &mut s,
        &[
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#priv"),
            &format!(":b.irc.test 366 {temp} #priv :End of /NAMES list."),
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#test"),
            &format!(":b.irc.test 366 {temp} #test :End of /NAMES list."),
            &format!(":b.irc.test PONG b.irc.test :{token}"),
        ],
    );
    assert_eq!(
        b(
            &mut s,
            &format!(":b.irc.test 306 {temp} :You have been marked as being away")
        ),
        RegisterStep::Done(Vec::new())
    );
}

#[test]
fn caps_and_sasl_plain_are_replayed() {
    let mut s = plain_session(true);
    client(&mut s, "AUTHENTICATE PLAIN");
    client(&mut s, "AUTHENTICATE AGFsaWNlAGh1bnRlcjI=");
    server(
        &mut s,
        ":a.irc.test 903 alice :SASL authentication successful",
    );
    server(&mut s, ":a.irc.test CAP alice ACK :sasl multi-prefix");
    let sent = start(&mut s);
    assert_eq!(sent[0], "CAP LS 302");
    let temp = nick_sent(&sent);
    let ls = b_continue(
        &mut s,
        &[
            ":b.irc.test CAP * LS * :account-notify away-notify cap-notify",
            ":b.irc.test CAP * LS :multi-prefix sasl=PLAIN,EXTERNAL",
        ],
    );
    assert_eq!(ls, vec!["CAP REQ :sasl multi-prefix"]);
    let auth = b_continue(&mut s, &[":b.irc.test CAP * ACK :sasl multi-prefix"]);
    assert_eq!(auth, vec!["AUTHENTICATE PLAIN"]);
    let payload = b_continue(&mut s, &["AUTHENTICATE +"]);
    assert_eq!(payload, vec!["AUTHENTICATE AGFsaWNlAGh1bnRlcjI="]);
    let end = b_continue(
        &mut s,
        &[
            &format!(":b.irc.test 900 {temp} {temp}!~alice@127.0.0.1 alice :You are now logged in as alice"),
            &format!(":b.irc.test 903 {temp} :SASL authentication successful"),
        ],
    );
    assert_eq!(end, vec!["CAP END"]);
}

#[test]
fn refused_sasl_fails() {
    let mut s = plain_session(true);
    client(&mut s, "AUTHENTICATE PLAIN");
    client(&mut s, "AUTHENTICATE AGFsaWNlAGh1bnRlcjI=");
    server(
        &mut s,
        ":a.irc.test 903 alice :SASL authentication successful",
    );
    start(&mut s);
    b_continue(
        &mut s,
        &[
            ":b.irc.test CAP * LS :sasl",
            ":b.irc.test CAP * ACK :sasl",
            "AUTHENTICATE +",
        ],
    );
    assert_eq!(
        b(&mut s, ":b.irc.test 904 * :SASL authentication failed"),
        RegisterStep::Failed("SASL refused (904)".into())
    );
}

#[test]
fn a_cap_the_new_backend_lacks_fails() {
    let mut s = registered_on_ngircd();
    start(&mut s);
    assert_eq!(
        b(&mut s, ":b.irc.test CAP * LS :away-notify sasl"),
        RegisterStep::Failed("backend does not offer cap multi-prefix".into())
    );
    let mut s = registered_on_ngircd();
    start(&mut s);
    b_continue(&mut s, &[":b.irc.test CAP * LS :multi-prefix"]);
    assert_eq!(
        b(&mut s, ":b.irc.test CAP * NAK :multi-prefix"),
        RegisterStep::Failed("backend refused caps: multi-prefix".into())
    );
}

#[test]
fn a_refused_rejoin_fails() {
    for (numeric, text) in [
        ("474", "Cannot join channel (you're banned)"),
        ("475", "Cannot join channel (incorrect channel key)"),
        ("471", "Cannot join channel (channel is full)"),
        ("473", "Cannot join channel (invite only)"),
        ("477", "You need a registered nick to join that channel."),
        ("403", "No such channel"),
        ("405", "You are on too many channels"),
    ] {
        let mut s = registered_on_ngircd();
        let temp = nick_sent(&start(&mut s));
        b_continue(
            &mut s,
            &[
                ":b.irc.test CAP * LS :multi-prefix",
                ":b.irc.test CAP * ACK :multi-prefix",
            ],
        );
        b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
        assert_eq!(
            b(
                &mut s,
                &format!(":b.irc.test {numeric} {temp} #priv :{text}")
            ),
            RegisterStep::Failed(format!("cannot rejoin #priv: {numeric}"))
        );
    }
}

#[test]
fn a_join_error_for_another_channel_is_ignored() {
    let mut s = plain_session(true);
    let temp = nick_sent(&start(&mut s));
    b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    b_continue(
        &mut s,
        &[&format!(
            ":b.irc.test 474 {temp} #other :Cannot join channel"
        )],
    );
}

#[test]
fn refusals_fail_with_their_reason() {
    let cases = [
        (
            ":b.irc.test 432 * alice_0ab :Erroneous Nickname",
            "erroneous nickname",
        ),
        (
            ":b.irc.test 464 * :Password incorrect",
            "password refused (464)",
        ),
        (
            ":b.irc.test 465 * :You are banned from this server",
            "banned (465): You are banned from this server",
        ),
        (
            "ERROR :Closing link: (alice@127.0.0.1) [Too many connections from your IP]",
            "ERROR: Closing link",
        ),
    ];
    for (line, reason) in cases {
        let mut s = plain_session(true);
        start(&mut s);
        match b(&mut s, line) {
            RegisterStep::Failed(r) => assert!(r.starts_with(reason), "{r}"),
            other => panic!("{line}: {other:?}"),
        }
    }
    let mut s = plain_session(true);
    let temp = nick_sent(&start(&mut s));
    b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    assert_eq!(
        b(&mut s, &format!(":oper!o@h KILL {temp} :spam")),
        RegisterStep::Failed("killed: spam".into())
    );
}

#[test]
fn only_user_settable_modes_are_restored() {
    let mut s = plain_session(true);
    server(&mut s, ":a.irc.test MODE alice :+ioz");
    let temp = nick_sent(&start(&mut s));
    let sent = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    assert_eq!(sent[0], format!("MODE {temp} +i"));
    let mut s = plain_session(true);
    server(&mut s, ":a.irc.test MODE alice :+o");
    let temp = nick_sent(&start(&mut s));
    let sent = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    assert_eq!(sent.len(), 1, "only the barrier: {sent:?}");
}

#[test]
fn many_channels_are_joined_in_few_lines() {
    let mut s = plain_session(true);
    for i in 0..100 {
        server(
            &mut s,
            &format!(":alice!~alice@localhost JOIN :#channel-number-{i}"),
        );
    }
    let temp = nick_sent(&start(&mut s));
    let sent = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    let joins: Vec<_> = sent.iter().filter(|l| l.starts_with("JOIN ")).collect();
    assert!(joins.len() > 1 && joins.len() < 10, "{}", joins.len());
    assert!(joins.iter().all(|l| l.len() < 510));
    let named: usize = joins.iter().map(|l| l.matches('#').count()).sum();
    assert_eq!(named, 100);
}

#[test]
fn webirc_prelude_carries_the_client_address() {
    let s = plain_session(true);
    let mut backend = BackendConfig {
        name: "b".into(),
        address: "127.0.0.1:6667".into(),
        tls: BackendTls::default(),
        proxy_protocol: ProxyProtocol::None,
        webirc: None,
    };
    let info = |addr: &str| ClientInfo {
        addr: addr.parse::<SocketAddr>().unwrap(),
        tls: false,
    };
    assert_eq!(s.backend_prelude(&backend, &info("192.0.2.7:5000")), None);
    backend.webirc = Some(WebircConfig {
        password: Secret("pw".into()),
        gateway: "handover".into(),
    });
    let prelude = |a| text(&s.backend_prelude(&backend, &info(a)).unwrap());
    assert_eq!(
        prelude("192.0.2.7:5000"),
        "WEBIRC pw handover 192.0.2.7 192.0.2.7"
    );
    assert_eq!(prelude("[::1]:5000"), "WEBIRC pw handover 0::1 0::1");
    assert_eq!(
        prelude("[::ffff:192.0.2.7]:5000"),
        "WEBIRC pw handover 192.0.2.7 192.0.2.7"
    );
    assert_eq!(
        prelude("[2001:db8::2]:5000"),
        "WEBIRC pw handover 2001:db8::2 2001:db8::2"
    );
}

#[test]
fn a_frame_without_a_migration_fails() {
    let mut s = plain_session(true);
    assert!(matches!(b(&mut s, "PING :x"), RegisterStep::Failed(_)));
}
