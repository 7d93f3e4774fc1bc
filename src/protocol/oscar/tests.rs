//! The codec and the adapter fed real frames from the capture (tests/vectors/), no sockets.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::flap;
use super::snac::{self, Snac};
use super::tickets::Tickets;
use super::OscarSession;
use crate::protocol::{Direction, Route, SessionAdapter, Verdict};

const VECTORS: &str = include_str!("../../../tests/vectors/oscar-signon-im.txt");

/// The frames of one connection of the capture, in order: (from the client?, bytes).
fn conn(name: &str) -> Vec<(bool, Bytes)> {
    VECTORS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (n, d, h) = (it.next()?, it.next()?, it.next()?);
            (n == name).then(|| (d == "C", Bytes::from(unhex(h))))
        })
        .collect()
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Bytes>, crate::protocol::FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = flap::decode(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

#[test]
fn every_captured_frame_decodes_whole() {
    let all: Vec<u8> = conn("bobaim-bos")
        .iter()
        .flat_map(|(_, f)| f.to_vec())
        .collect();
    let frames = decode_all(&all).unwrap();
    assert_eq!(frames.len(), conn("bobaim-bos").len());
}

#[test]
fn bad_start_byte_oversize_and_truncation_are_errors() {
    let e = decode_all(b"\x2b\x02\x00\x01\x00\x00").unwrap_err();
    assert!(e.0.contains("0x2b"), "{e}");
    let e = decode_all(b"\x2a\x02\x00\x01\xff\xff").unwrap_err();
    assert!(e.0.contains("past the limit"), "{e}");
    // A channel-2 frame of 4 bytes: shorter than a SNAC header.
    let e = decode_all(b"\x2a\x02\x00\x01\x00\x04\x00\x01\x00\x05").unwrap_err();
    assert!(e.0.contains("truncated SNAC"), "{e}");
    // A login reply (17,03) whose TLV claims more than there is.
    let mut f = snac::build(0x17, 0x03, 0, &[0, 5, 0, 40, b'x']);
    f = flap::build(2, 1, &f).to_vec();
    let e = decode_all(&f).unwrap_err();
    assert!(e.0.contains("TLV"), "{e}");
    // Partial input is not an error.
    assert!(decode_all(b"\x2a\x02\x00").unwrap().is_empty());
}

#[test]
fn sequence_numbers_wrap_at_0x8000() {
    let mut seq = flap::Seq::starting_at(0x7fff);
    assert_eq!(seq.next(), 0x7fff);
    assert_eq!(seq.next(), 0);
}

fn session(tickets: &Arc<Tickets>) -> OscarSession {
    let mut s = OscarSession::new(Some("proxy.test:5190".into()), tickets.clone());
    s.greeting("127.0.0.1:1".parse().unwrap());
    s
}

/// Runs a connection of the capture through an adapter; returns what the client got.
fn replay(s: &mut OscarSession, frames: &[(bool, Bytes)]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(&frames[0].1[..]);
    let route = s.route(&mut buf).unwrap();
    assert!(!matches!(route, Route::Need(_)));
    let mut to_client = Vec::new();
    for (from_client, f) in &frames[1..] {
        let dir = if *from_client {
            Direction::ClientToBackend
        } else {
            Direction::BackendToClient
        };
        match s.observe(dir, f) {
            Verdict::Forward if !from_client => to_client.push(f.clone()),
            Verdict::Rewrite(b) if !from_client => to_client.push(b),
            _ => {}
        }
    }
    to_client
}

#[test]
fn login_reply_points_at_handover_and_the_token_routes_to_the_real_bos() {
    let tickets = Arc::new(Tickets::default());
    let mut login = session(&tickets);
    let out = replay(&mut login, &conn("bobaim-auth"));
    assert_eq!(login.identity().as_deref(), Some("bobaim"));
    let reply = out.last().unwrap();
    let s = Snac::parse(flap::payload(reply)).unwrap();
    assert!(s.is(0x17, 0x03));
    let list = snac::tlvs(s.data()).unwrap();
    assert_eq!(snac::find(&list, 5), Some(&b"proxy.test:5190"[..]));
    let token = snac::find(&list, 6).unwrap().to_vec();
    assert_eq!(token.len(), 16);
    // Sequence numbers to the client: unbroken from handover's greeting (1) on.
    let seqs: Vec<u16> = out
        .iter()
        .map(|f| u16::from_be_bytes([f[2], f[3]]))
        .collect();
    assert_eq!(seqs, vec![2, 3]);

    // The BOS connection presents the token; handover sends the real cookie to the real BOS.
    let mut bos = session(&tickets);
    let mut first = signon_with(&token);
    match bos.route(&mut first).unwrap() {
        Route::To { address, send, .. } => {
            assert_eq!(address, "127.0.0.1:5191");
            let real = &conn("bobaim-bos")[0].1;
            assert_eq!(flap::payload(&send), flap::payload(real));
        }
        other => panic!("{other:?}"),
    }
    // A token is good once.
    assert!(session(&tickets).route(&mut signon_with(&token)).is_err());
}

fn signon_with(token: &[u8]) -> BytesMut {
    let mut p = BytesMut::from(&[0u8, 0, 0, 1][..]);
    snac::put_tlv(&mut p, 6, token);
    BytesMut::from(&flap::build(1, 1, &p)[..])
}

#[test]
fn config_accepts_oscar_and_advertise_only_on_oscar() {
    let text = |protocol: &str, advertise: &str| {
        format!("[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nprotocol='{protocol}'\nbackends=['x']\nadvertise='{advertise}'\n[[backend]]\nname='x'\naddress='127.0.0.1:5190'\n")
    };
    let config = crate::config::parse(&text("oscar", "aim.example:5190"), "t.toml").unwrap();
    assert_eq!(
        config.listener[0].advertise.as_deref(),
        Some("aim.example:5190")
    );
    let err = crate::config::parse(&text("irc", "aim.example:5190"), "t.toml").unwrap_err();
    assert_eq!(
        (err.file.as_str(), err.key.as_str()),
        ("t.toml", "listener[0].advertise")
    );
    assert!(err.problem.contains("only to oscar"), "{err}");
    let err = crate::config::parse(&text("oscar", "nowhere"), "t.toml").unwrap_err();
    assert_eq!(err.key, "listener[0].advertise");
}

/// Re-registration fed B's frames: the recorded login is replayed, B's BOS is reconnected to,
/// the sign-on replayed, and every reply hidden until handover's own barrier comes back.
#[test]
fn registration_replays_the_login_then_the_signon() {
    use crate::protocol::RegisterStep;
    let tickets = Arc::new(Tickets::default());
    let mut login = session(&tickets);
    let out = replay(&mut login, &conn("bobaim-auth"));
    let s = Snac::parse(flap::payload(out.last().unwrap())).unwrap();
    let token = snac::find(&snac::tlvs(s.data()).unwrap(), 6)
        .unwrap()
        .to_vec();
    let mut bos = session(&tickets);
    let mut frames = conn("bobaim-bos");
    frames[0].1 = flap::build(1, 1, &signon_with(&token)[flap::HEADER..]);
    replay(&mut bos, &frames);
    assert!(bos.can_migrate().is_ok(), "{:?}", bos.can_migrate());
    bos.start_register().unwrap();
    let auth = conn("bobaim-auth");
    let hello = &auth.iter().find(|(c, _)| !c).unwrap().1;
    let RegisterStep::Continue(sent) = bos.on_register_frame(hello) else {
        panic!("login begins")
    };
    assert_eq!(
        flap::payload(&sent[1]),
        flap::payload(&auth[1].1),
        "17,06 replayed"
    );
    let key = &auth.iter().filter(|(c, _)| !c).nth(1).unwrap().1;
    let RegisterStep::Continue(sent) = bos.on_register_frame(key) else {
        panic!("17,02 follows")
    };
    assert_eq!(
        flap::payload(&sent[0]),
        flap::payload(&auth[2].1),
        "17,02 replayed"
    );
    let reply = &auth.iter().filter(|(c, _)| !c).nth(2).unwrap().1;
    let RegisterStep::Reconnect { address, .. } = bos.on_register_frame(reply) else {
        panic!("reconnect to BOS")
    };
    assert_eq!(address, "127.0.0.1:5191");
    // A different challenge (another user database) is refused.
    let mut other = session(&tickets);
    other.login = bos.login.clone();
    other.snap.online = true;
    other.role = super::Role::Bos;
    other.start_register().unwrap();
    other.on_register_frame(hello);
    let bad = flap::build(2, 2, &snac::build(0x17, 0x07, 0, b"\x00\x04salt"));
    assert!(matches!(
        other.on_register_frame(&bad),
        RegisterStep::Failed(_)
    ));
}

/// The oldest login (FLAP channel 1 with a roasted password, answered on channel 4) is
/// recorded, its reply rewritten, and replayed on a new backend.
#[test]
fn a_roasted_login_is_rewritten_and_replayed() {
    use crate::protocol::RegisterStep;
    let tickets = Arc::new(Tickets::default());
    let mut login = session(&tickets);
    let mut p = BytesMut::from(&[0u8, 0, 0, 1][..]);
    snac::put_tlv(&mut p, 1, b"oldtimer");
    snac::put_tlv(&mut p, 2, &[0xf3, 0x26, 0x81, 0xc4]);
    let signon = p.freeze();
    let mut buf = BytesMut::from(&flap::build(1, 1, &signon)[..]);
    assert!(matches!(
        login.route(&mut buf).unwrap(),
        Route::Pool(Some(_))
    ));
    assert_eq!(login.identity().as_deref(), Some("oldtimer"));
    let mut reply = BytesMut::new();
    snac::put_tlv(&mut reply, 1, b"oldtimer");
    snac::put_tlv(&mut reply, 5, b"10.0.0.9:5191");
    snac::put_tlv(&mut reply, 6, b"real-cookie");
    let hello = flap::build(1, 7, &[0, 0, 0, 1]);
    assert_eq!(
        login.observe(Direction::BackendToClient, &hello),
        Verdict::Hide
    );
    let close = flap::build(4, 8, &reply);
    let Verdict::Rewrite(out) = login.observe(Direction::BackendToClient, &close) else {
        panic!("the channel-4 reply is rewritten")
    };
    let list = snac::tlvs(flap::payload(&out)).unwrap();
    assert_eq!(snac::find(&list, 5), Some(&b"proxy.test:5190"[..]));
    let token = snac::find(&list, 6).unwrap().to_vec();

    let mut bos = session(&tickets);
    let Route::To { address, .. } = bos.route(&mut signon_with(&token)).unwrap() else {
        panic!("routed by the token")
    };
    assert_eq!(address, "10.0.0.9:5191");
    bos.snap.online = true;
    bos.start_register().unwrap();
    let RegisterStep::Continue(sent) = bos.on_register_frame(&hello) else {
        panic!("the roasted login is replayed")
    };
    assert_eq!(flap::payload(&sent[0]), &signon[..]);
    let refused = flap::build(4, 9, &[0, 8, 0, 2, 0, 5]);
    let RegisterStep::Failed(why) = bos.on_register_frame(&refused) else {
        panic!("a refusal fails the registration")
    };
    assert!(why.contains("0005"), "{why}");
}

/// However much state a client sets after sign-on, the record stays bounded: past the
/// limit the session is refused a move rather than growing.
#[test]
fn the_snapshot_is_bounded() {
    let tickets = Arc::new(Tickets::default());
    let mut s = session(&tickets);
    s.role = super::Role::Bos;
    s.snap.online = true;
    // Repeated status changes replace each other.
    for i in 0..1000u32 {
        let status = snac::build(0x01, 0x1e, i, &[0, 6, 0, 4, 0, 0, 0, (i % 7) as u8]);
        s.observe(Direction::ClientToBackend, &flap::build(2, 1, &status));
    }
    assert!(s.snapshot_size() < 100, "{}", s.snapshot_size());
    // Profiles of many kinds (distinct first TLVs) grow it to the limit, then it is dropped.
    for i in 0..2000u16 {
        let mut body = i.to_be_bytes().to_vec();
        body.extend_from_slice(&[0u8; 200]);
        let info = snac::build(0x02, 0x04, 1, &body);
        s.observe(Direction::ClientToBackend, &flap::build(2, 1, &info));
        assert!(s.snapshot_size() <= super::MAX_SIGNON + 256);
    }
    assert!(s.can_migrate().is_err());
}

/// Peer input never panics: random mutations of real frames go through route, decode,
/// observe (both ways) and the registration machine.
#[test]
fn mutated_frames_never_panic() {
    let frames: Vec<Bytes> = VECTORS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(' ').nth(2).map(|h| Bytes::from(unhex(h))))
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let tickets = Arc::new(Tickets::default());
    let auth = conn("bobaim-auth");
    let login = Arc::new(super::tickets::Login {
        challenge: Some(Bytes::copy_from_slice(flap::payload(&auth[1].1))),
        request: Some(Bytes::copy_from_slice(flap::payload(&auth[2].1))),
        ..Default::default()
    });
    for round in 0..20_000 {
        let mut f = frames[next() as usize % frames.len()].to_vec();
        for _ in 0..(next() % 4) {
            let i = next() as usize % f.len();
            f[i] = next() as u8;
        }
        if next() % 3 == 0 {
            f.truncate(next() as usize % (f.len() + 1));
        }
        let mut s = session(&tickets);
        let _ = s.route(&mut BytesMut::from(&f[..]));
        s.role = [
            super::Role::Login,
            super::Role::Bos,
            super::Role::Service(0x18),
        ][round % 3];
        s.snap.online = round % 2 == 0;
        s.login = login.clone();
        let registering = s.start_register().is_ok();
        let mut buf = BytesMut::from(&f[..]);
        while let Ok(Some(frame)) = flap::decode(&mut buf) {
            s.observe(Direction::BackendToClient, &frame);
            s.observe(Direction::ClientToBackend, &frame);
            if registering {
                // Walk the machine through the real login first, then the mutated frame.
                for (_, real) in conn("bobaim-auth")
                    .iter()
                    .filter(|(c, _)| !c)
                    .take(round % 4)
                {
                    s.on_register_frame(real);
                }
                s.on_register_frame(&frame);
            }
            s.is_flush_reply(&frame);
        }
    }
}
