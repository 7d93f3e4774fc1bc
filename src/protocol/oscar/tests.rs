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
