//! The whole migration as the session task drives it: register, flush mark, detach, cut over,
//! then B's held and later lines through `observe`; and the abort path.

use super::*;
use crate::protocol::irc::reconcile;
use std::time::Duration;

const NICK_ALICE: &str = "NICK alice";

/// Registers on B, then flush mark and detach; returns the temporary nick.
fn migrate_up_to_cut(s: &mut IrcSession) -> String {
    assert_eq!(s.can_migrate(), Ok(()));
    let temp = register_on_inspircd(s);
    let ping = text(&s.flush_mark().unwrap());
    let token = ping.strip_prefix("PING :").unwrap().to_string();
    assert!(token.starts_with("handover-"), "{token}");
    // A keeps forwarding until the PONG.
    assert_eq!(
        server(s, ":bob!~bob@localhost PRIVMSG #test :one"),
        Verdict::Forward
    );
    assert_eq!(
        server(s, ":carol!~carol@localhost JOIN :#test"),
        Verdict::Forward
    );
    let other = frame(":a.irc.test PONG a.irc.test :handover-not-ours");
    assert!(!s.is_flush_reply(&other));
    // The PONG alone is not enough: A must also relay our JOIN on B in every channel.
    flush_on_a(s, &token, &temp, &["#priv", "#test"]);
    assert_eq!(text(&s.detach().unwrap()), "QUIT :Changing servers");
    temp
}

#[test]
fn a_linked_migration_is_invisible_to_the_client() {
    let mut s = registered_on_ngircd();
    let before = s.snapshot().clone();
    let temp = migrate_up_to_cut(&mut s);
    // Shared channels: the NICK waits for B to relay the old connection's QUIT.
    assert!(texts(&s.cutover()).is_empty());
    assert!(s.can_migrate().is_err(), "the nick is not back yet");

    // B's held lines: what A already delivered is hidden, what is new passes.
    let held_dup = ":bob!~bob@localhost PRIVMSG #test :one";
    assert_eq!(
        server(
            &mut s,
            &format!("@time=2024-01-01T10:00:01.000Z {held_dup}")
        ),
        Verdict::Hide
    );
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :two"),
        Verdict::Forward
    );
    s.held_lines_done();

    // Lines addressed to the temporary nick are shown addressed to the real one.
    let notice = format!(":b.irc.test NOTICE {temp} :*** You are connected to b.irc.test");
    assert_eq!(
        server(&mut s, &notice),
        Verdict::Rewrite(frame(
            ":b.irc.test NOTICE alice :*** You are connected to b.irc.test"
        ))
    );
    // A late copy of a line A delivered is still caught.
    assert_eq!(
        server(&mut s, ":carol!~carol@localhost JOIN :#test"),
        Verdict::Hide
    );

    // The old link's QUIT is hidden and answered; a 433 is retried; the echo is hidden.
    let quit = ":alice!~alice@localhost QUIT :Quit: Changing servers";
    assert_eq!(server(&mut s, quit), Verdict::Reply(frame(NICK_ALICE)));
    let taken = format!(":b.irc.test 433 {temp} alice :Nickname is already in use.");
    assert_eq!(server(&mut s, &taken), Verdict::Reply(frame(NICK_ALICE)));
    let echo = format!(":{temp}!~alice@127.0.0.1 NICK :alice");
    assert_eq!(server(&mut s, &echo), Verdict::Hide);

    // Back to normal: the client's nick never changed, the snapshot is intact.
    assert_eq!(s.identity().as_deref(), Some("alice"));
    assert_eq!(s.snapshot(), &before);
    assert_eq!(s.can_migrate(), Ok(()));
    let to_me = ":bob!~bob@localhost PRIVMSG alice :welcome back";
    assert_eq!(server(&mut s, to_me), Verdict::Forward);
    assert_eq!(
        server(&mut s, quit),
        Verdict::Forward,
        "no longer ours to hide"
    );
}

#[test]
fn lines_from_the_temporary_nick_are_learned_as_ours() {
    let mut s = registered_on_ngircd();
    let temp = migrate_up_to_cut(&mut s);
    s.cutover();
    s.held_lines_done();
    let join = format!(":{temp}!~alice@127.0.0.1 JOIN :#new");
    assert_eq!(
        server(&mut s, &join),
        Verdict::Rewrite(frame(":alice!~alice@127.0.0.1 JOIN :#new"))
    );
    assert!(s.snapshot().channel(b"#new").is_some());
    let mode = format!(":{temp}!~alice@127.0.0.1 MODE {temp} :-w");
    assert_eq!(
        server(&mut s, &mode),
        Verdict::Rewrite(frame(":alice!~alice@127.0.0.1 MODE alice :-w"))
    );
    assert_eq!(s.snapshot().modes, "i");
    assert_eq!(
        client(&mut s, "MODE alice +w"),
        Verdict::Rewrite(frame(&format!("MODE {temp} +w")))
    );
    assert_eq!(
        client(&mut s, "PRIVMSG #test :still here"),
        Verdict::Forward
    );
}

#[test]
fn without_shared_channels_the_reclaim_gives_up_visibly() {
    let mut s = IrcSession::new(true);
    client(&mut s, "NICK alice");
    client(&mut s, "USER alice 0 * :Alice");
    server(
        &mut s,
        ":a.irc.test 001 alice :Welcome to the Internet Relay Network alice!~alice@localhost",
    );
    let temp = nick_sent(&start(&mut s));
    let mut sent = Vec::new();
    for line in burst(&temp) {
        sent.extend(b_continue(&mut s, &[line.as_str()]));
    }
    let token = ping_sent(&sent);
    assert_eq!(
        b(&mut s, &format!(":b.irc.test PONG b.irc.test :{token}")),
        RegisterStep::Done(Vec::new())
    );
    s.flush_mark();
    s.detach();
    // No shared channels: B will relay no QUIT, so the NICK goes once the old link has
    // closed (and is retried).
    assert!(s.cutover().is_empty(), "nothing before the old link closes");
    assert_eq!(texts(&s.old_backend_closed()), vec![NICK_ALICE]);
    assert!(s.old_backend_closed().is_empty(), "asked once");
    // Each 433 is hidden and answered with the NICK again after a growing back-off.
    let taken = format!(":b.irc.test 433 {temp} alice :Nickname is already in use.");
    let mut last_wait = Duration::ZERO;
    for _ in 1..reconcile::PACED_RETRIES {
        let before = tokio::time::Instant::now();
        assert_eq!(server(&mut s, &taken), Verdict::Hide);
        let at = s.wake_at().expect("a retry is due later");
        let wait = at - before;
        assert!(
            wait.as_millis() >= last_wait.as_millis(),
            "the back-off grows: {wait:?}"
        );
        assert!(
            wait <= reconcile::PACED_MAX + Duration::from_millis(100),
            "{wait:?}"
        );
        last_wait = wait;
        assert!(s.on_wake(before).is_empty(), "not before it is due");
        assert_eq!(texts(&s.on_wake(at)), vec![NICK_ALICE]);
        assert!(s.on_wake(at).is_empty(), "once");
        assert_eq!(s.wake_at(), None);
    }
    assert!(last_wait >= reconcile::PACED_MAX, "{last_wait:?}");
    assert_eq!(
        server(&mut s, &taken),
        Verdict::Rewrite(frame(&format!(":alice!~alice@127.0.0.1 NICK :{temp}")))
    );
    assert_eq!(s.identity(), Some(temp.clone()));
    assert_eq!(s.can_migrate(), Ok(()));
    let numeric = format!(":b.irc.test 401 {temp} bob :No such nick/channel");
    assert_eq!(
        server(&mut s, &numeric),
        Verdict::Forward,
        "the client knows the nick now"
    );
}

#[test]
fn with_shared_channels_an_exhausted_reclaim_waits_for_the_quit() {
    let mut s = registered_on_ngircd();
    let temp = migrate_up_to_cut(&mut s);
    s.cutover();
    let taken = format!(":b.irc.test 433 {temp} alice :Nickname is already in use.");
    for _ in 1..20 {
        assert_eq!(server(&mut s, &taken), Verdict::Reply(frame(NICK_ALICE)));
    }
    assert_eq!(server(&mut s, &taken), Verdict::Hide);
    assert_eq!(s.identity().as_deref(), Some("alice"));
    let quit = ":alice!~alice@localhost QUIT :*.net *.split";
    assert_eq!(server(&mut s, quit), Verdict::Reply(frame(NICK_ALICE)));
    assert_eq!(
        server(&mut s, &format!(":{temp}!~alice@127.0.0.1 NICK :alice")),
        Verdict::Hide
    );
    assert_eq!(s.can_migrate(), Ok(()));
}

#[test]
fn a_client_nick_change_during_the_reclaim_is_shown_from_the_real_nick() {
    let mut s = registered_on_ngircd();
    let temp = migrate_up_to_cut(&mut s);
    s.cutover();
    let renamed = format!(":{temp}!~alice@127.0.0.1 NICK :alice2");
    assert_eq!(
        server(&mut s, &renamed),
        Verdict::Rewrite(frame(":alice!~alice@127.0.0.1 NICK :alice2"))
    );
    assert_eq!(s.identity().as_deref(), Some("alice2"));
    assert_eq!(s.can_migrate(), Ok(()));
}

#[test]
fn an_unlinked_migration_has_nothing_to_reconcile() {
    let mut s = IrcSession::new(false);
    client(&mut s, "NICK alice");
    client(&mut s, "USER alice 0 * :Alice");
    server(&mut s, ":a.irc.test 001 alice :Welcome");
    assert_eq!(nick_sent(&start(&mut s)), "alice");
    let mut sent = Vec::new();
    for line in burst("alice") {
        sent.extend(b_continue(&mut s, &[line.as_str()]));
    }
    let token = ping_sent(&sent);
    assert!(matches!(
        b(&mut s, &format!(":b.irc.test PONG b.irc.test :{token}")),
        RegisterStep::Done(_)
    ));
    s.detach();
    assert!(s.cutover().is_empty());
    assert_eq!(s.can_migrate(), Ok(()));
    let quit = ":alice!~alice@other QUIT :bye";
    assert_eq!(server(&mut s, quit), Verdict::Forward);
}

#[test]
fn abort_leaves_the_session_as_it_was() {
    let mut s = registered_on_ngircd();
    let before = s.snapshot().clone();
    register_on_inspircd(&mut s);
    let ping = text(&s.flush_mark().unwrap());
    let token = ping.strip_prefix("PING :").unwrap().to_string();
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :during"),
        Verdict::Forward
    );
    s.abort_migration();

    assert_eq!(s.snapshot(), &before);
    assert_eq!(s.can_migrate(), Ok(()));
    assert!(!s.is_flush_reply(&frame(&format!(":a.irc.test PONG a.irc.test :{token}"))));
    assert!(s.cutover().is_empty(), "nothing to cut over to");
    assert!(matches!(b(&mut s, "PING :x"), RegisterStep::Failed(_)));
    // A's lines are plain forwarding again: nothing is counted or hidden.
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :during"),
        Verdict::Forward
    );
    assert_eq!(
        server(&mut s, ":a.irc.test 433 alice alice :in use"),
        Verdict::Forward
    );
    // And a new migration can start from scratch.
    register_on_inspircd(&mut s);
}

#[test]
fn a_second_migration_after_a_finished_one_works() {
    let mut s = registered_on_ngircd();
    let temp = migrate_up_to_cut(&mut s);
    s.cutover();
    s.held_lines_done();
    server(&mut s, &format!(":{temp}!~alice@127.0.0.1 NICK :alice"));
    let temp2 = migrate_up_to_cut(&mut s);
    // Shared channels: the NICK waits for B to relay the old connection's QUIT.
    assert!(texts(&s.cutover()).is_empty());
    assert_eq!(
        server(&mut s, &format!(":{temp2}!~alice@127.0.0.1 NICK :alice")),
        Verdict::Hide
    );
}

#[test]
/// B's channel traffic during registration is held (the session replays it through `observe`
/// after the cut): hidden when A delivered it too, forwarded once when A's copy came too late.
fn b_traffic_during_registration_is_held_and_deduped_at_the_cut() {
    let mut s = registered_on_ngircd();
    let sent = start(&mut s);
    let temp = nick_sent(&sent);
    b_continue(
        &mut s,
        &[
            ":b.irc.test CAP * LS :multi-prefix",
            ":b.irc.test CAP * ACK :multi-prefix",
        ],
    );
    let welcome = b_continue(&mut s, &[&format!(":b.irc.test 001 {temp} :Welcome")]);
    let token = ping_sent(&welcome);
    // B relays bob's lines before A does; A delivers "early" before its flush-mark reply,
    // "late" only after it (that copy is dropped with A).
    for text in ["early", "late"] {
        let line = format!(":bob!~bob@localhost PRIVMSG #test :{text}");
        assert!(
            matches!(b(&mut s, &line), RegisterStep::Hold(_)),
            "{text} is held"
        );
    }
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :early"),
        Verdict::Forward
    );
    b_continue(
        &mut s,
        &[
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#priv"),
            &format!(":b.irc.test 366 {temp} #priv :End of /NAMES list."),
            &format!(":{temp}!~alice@127.0.0.1 JOIN :#test"),
            &format!(":b.irc.test 366 {temp} #test :End of /NAMES list."),
            &format!(":b.irc.test 306 {temp} :You have been marked as being away"),
        ],
    );
    assert!(matches!(
        b(&mut s, &format!(":b.irc.test PONG b.irc.test :{token}")),
        RegisterStep::Done(_)
    ));
    s.detach();
    s.cutover();
    // The session replays the held lines: "early" was delivered by A, "late" was not.
    assert_eq!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :early"),
        Verdict::Hide
    );
    let late = ":bob!~bob@localhost PRIVMSG #test :late";
    assert!(matches!(
        server(&mut s, late),
        Verdict::Forward | Verdict::Rewrite(_)
    ));
    s.held_lines_done();
    // bob says the same again after the cut: that is a new line, not a duplicate.
    assert!(matches!(
        server(&mut s, ":bob!~bob@localhost PRIVMSG #test :early"),
        Verdict::Forward | Verdict::Rewrite(_)
    ));
}

#[test]
fn a_failover_during_the_reclaim_can_still_leave_and_reclaims_anew() {
    let mut s = registered_on_ngircd();
    let temp = migrate_up_to_cut(&mut s);
    s.cutover();
    s.held_lines_done();
    assert!(s.can_migrate().is_err(), "a drain waits for the reclaim");
    // B dies: the session fails over to C without asking can_migrate.
    let temp2 = register_on_inspircd(&mut s);
    // B's lines during the overlap still get the temporary nick rewritten.
    let notice = format!(":b.irc.test NOTICE {temp} :hi");
    assert_eq!(
        server(&mut s, &notice),
        Verdict::Rewrite(frame(":b.irc.test NOTICE alice :hi"))
    );
    s.detach();
    // Shared channels: the NICK waits for B to relay the old connection's QUIT.
    assert!(texts(&s.cutover()).is_empty());
    let notice2 = format!(":c.irc.test NOTICE {temp2} :hi");
    assert_eq!(
        server(&mut s, &notice2),
        Verdict::Rewrite(frame(":c.irc.test NOTICE alice :hi"))
    );
    assert_eq!(
        server(&mut s, &format!(":{temp}!~alice@127.0.0.1 NICK :alice")),
        Verdict::Forward
    );
    assert_eq!(
        server(&mut s, &format!(":{temp2}!~alice@127.0.0.1 NICK :alice")),
        Verdict::Hide
    );
    assert_eq!(s.can_migrate(), Ok(()));
}

#[test]
fn in_a_failover_the_nick_is_asked_for_at_once() {
    // The old server died: there is no detach, and B may have processed the netsplit QUIT
    // before the temporary connection joined anything, so no QUIT will come to wait for.
    let mut s = registered_on_ngircd();
    register_on_inspircd(&mut s);
    assert_eq!(texts(&s.cutover()), vec![NICK_ALICE]);
}

/// Found by the soak: cutting at A's PONG lost messages the network had routed to A alone,
/// because B's JOIN had not reached the sender's server yet. The flush ends only once A has
/// relayed B's JOIN in every rejoined channel, in whichever order the two come.
#[test]
fn the_flush_waits_for_a_to_relay_every_rejoin_before_or_after_the_pong() {
    let mut s = registered_on_ngircd();
    let temp = register_on_inspircd(&mut s);
    let token = text(&s.flush_mark().unwrap())["PING :".len()..].to_string();
    // One rejoin is relayed before the PONG (observed and hidden), the other after it.
    let early = format!(":{temp}!~alice@b.irc.test JOIN :#test");
    assert_eq!(server(&mut s, &early), Verdict::Hide);
    let routed_to_a_alone = ":bob!~bob@localhost PRIVMSG #priv :only on a";
    let pong = frame(&format!(":a.irc.test PONG a.irc.test :{token}"));
    assert!(!s.is_flush_reply(&pong), "#priv's rejoin not relayed yet");
    assert!(!s.is_flush_reply(&frame(routed_to_a_alone)));
    assert_eq!(server(&mut s, routed_to_a_alone), Verdict::Forward);
    let late = frame(&format!(":{temp}!~alice@b.irc.test JOIN :#priv"));
    assert!(s.is_flush_reply(&late));
}

/// Found by the TLS drain test: a private message the network routed to A after the cut
/// (A had not processed the QUIT yet) was lost silently. After the cut A is still read until
/// it closes, and such messages reach the client; nothing else A says then does.
#[test]
fn after_the_cut_only_private_messages_from_a_reach_the_client() {
    let mut s = registered_on_ngircd();
    migrate_up_to_cut(&mut s);
    s.cutover();
    let pm = frame(":bob!~bob@localhost PRIVMSG alice :still there?");
    assert_eq!(s.after_detach(&pm), Some(pm.clone()));
    let notice = frame(":bob!~bob@localhost NOTICE Alice :case-insensitive");
    assert_eq!(s.after_detach(&notice), Some(notice.clone()));
    for other in [
        ":bob!~bob@localhost PRIVMSG #test :B has this too",
        ":bob!~bob@localhost PRIVMSG carol :not ours",
        ":a.irc.test NOTICE alice :server notice",
        "ERROR :Closing connection",
    ] {
        assert_eq!(s.after_detach(&frame(other)), None, "{other}");
    }
}

/// Found by the soak: after a client's QUIT the server's close sometimes came first and was
/// counted as the backend's doing (`reason="backend"`); it is the client's.
#[test]
fn a_close_after_the_clients_quit_is_the_clients() {
    let mut s = registered_on_ngircd();
    assert!(!s.client_quit());
    client(&mut s, "QUIT :bye");
    assert!(s.client_quit());
    assert!(!s.failover_on_close(), "and never a failover");
}
