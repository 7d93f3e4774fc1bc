//! What the client changed on A while B registered reaches B at the cut, invisibly.

use super::*;

/// Registers on B, then has the client join #new, leave #test, come back from away and drop
/// a user mode on A before the flush mark comes back; returns the temporary nick.
fn changed_during_overlap(s: &mut IrcSession) -> String {
    let temp = register_on_inspircd(s);
    client(s, "JOIN #new");
    server(s, ":alice!~alice@localhost JOIN :#new");
    server(s, ":a.irc.test 353 alice = #new :@alice");
    server(s, ":a.irc.test 366 alice #new :End of NAMES list");
    client(s, "PART #test");
    server(s, ":alice!~alice@localhost PART #test :");
    client(s, "AWAY");
    server(
        s,
        ":a.irc.test 305 alice :You are no longer marked as being away",
    );
    server(s, ":alice!~alice@localhost MODE alice :-w");
    let token = text(&s.flush_mark().unwrap())["PING :".len()..].to_string();
    // #test was left on A meanwhile: only #priv's rejoin must be relayed.
    flush_on_a(s, &token, &temp, &["#priv"]);
    s.detach();
    temp
}

#[test]
fn the_difference_is_sent_at_the_cut_and_its_replies_hidden() {
    let mut s = registered_on_ngircd();
    let temp = changed_during_overlap(&mut s);
    let sent = texts(&s.cutover());
    let barrier = ping_sent(&sent);
    assert!(barrier.starts_with("handover-"), "{barrier}");
    assert_eq!(
        sent,
        vec![
            "JOIN #new".to_string(),
            "PART #test".to_string(),
            format!("MODE {temp} -w"),
            "AWAY".to_string(),
            format!("PING :{barrier}"),
        ]
    );
    assert!(s.can_migrate().is_err());
    // Held B traffic of the channel being left does not reach the client.
    assert_eq!(
        server(
            &mut s,
            ":bob!~bob@localhost PRIVMSG #test :for those inside"
        ),
        Verdict::Hide
    );
    let hidden = [
        format!(":{temp}!~alice@127.0.0.1 JOIN :#new"),
        format!(":b.irc.test 353 {temp} = #new :{temp} @alice"),
        format!(":b.irc.test 366 {temp} #new :End of /NAMES list."),
        format!(":{temp}!~alice@127.0.0.1 PART :#test"),
        format!(":{temp}!~alice@127.0.0.1 MODE {temp} :-w"),
        format!(":b.irc.test 305 {temp} :You are no longer marked as being away"),
    ];
    for line in &hidden {
        assert_eq!(server(&mut s, line), Verdict::Hide, "{line}");
    }
    assert_eq!(
        server(&mut s, &format!(":b.irc.test PONG b.irc.test :{barrier}")),
        Verdict::Hide
    );
    // Settled: the rest flows, rewritten for the temporary nick until the nick is back.
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #new :hey"),
        Verdict::Forward
    );
    assert_eq!(
        server(
            &mut s,
            &format!(":b.irc.test 305 {temp} :You are no longer marked as being away")
        ),
        Verdict::Rewrite(frame(
            ":b.irc.test 305 alice :You are no longer marked as being away"
        ))
    );
    assert_eq!(
        server(&mut s, &format!(":{temp}!~alice@127.0.0.1 NICK :alice")),
        Verdict::Hide
    );
    assert_eq!(s.can_migrate(), Ok(()));
    let snap = s.snapshot();
    assert!(snap.channel(b"#new").is_some() && snap.channel(b"#test").is_none());
    assert_eq!((snap.away.clone(), snap.modes.as_str()), (None, "i"));
}

#[test]
fn a_channel_b_refuses_at_the_cut_is_shown_as_a_part() {
    let mut s = registered_on_ngircd();
    let temp = changed_during_overlap(&mut s);
    s.cutover();
    let refused = format!(":b.irc.test 474 {temp} #new :Cannot join channel (you're banned)");
    assert_eq!(
        server(&mut s, &refused),
        Verdict::Rewrite(frame(
            ":alice!~alice@127.0.0.1 PART #new :Cannot join channel (you're banned)"
        ))
    );
    assert!(s.snapshot().channel(b"#new").is_none());
}

#[test]
fn nothing_changed_means_nothing_to_fix() {
    let mut s = registered_on_ngircd();
    register_on_inspircd(&mut s);
    server(&mut s, ":bob!~bob@localhost PRIVMSG #test :just talk");
    s.detach();
    // Shared channels: the NICK waits for B to relay the old connection's QUIT.
    assert!(texts(&s.cutover()).is_empty());
}
