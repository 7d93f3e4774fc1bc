//! FLAP framing: `0x2A`, channel, sequence number, length, payload.
//!
//! The codec is pure. It enforces a hard frame limit (the FLAP length is a u16, but no client
//! or server sends frames near that; a length past the limit is hostile or garbage) and checks
//! the parts handover interprets (SNAC headers, the TLVs it reads) at decode time, so `observe`
//! only ever sees well-formed frames and a malformed one closes just its session.

use bytes::{BufMut, Bytes, BytesMut};

use super::snac;
use crate::protocol::FrameError;

pub const START: u8 = 0x2A;
pub const HEADER: usize = 6;
/// The largest FLAP payload accepted. Rate info (about 1 KiB) and big feedbags (a few KiB) fit.
pub const MAX_PAYLOAD: usize = 8192;
/// Sequence numbers wrap here (libpurple and the AIM clients start anywhere below it).
pub const SEQ_WRAP: u16 = 0x8000;

pub const CH_LOGIN: u8 = 1;
pub const CH_SNAC: u8 = 2;
pub const CH_CLOSE: u8 = 4;
pub const CH_KEEPALIVE: u8 = 5;

/// Splits one whole FLAP frame (header included) off `buf`; `Ok(None)` until it is complete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != START {
        return Err(FrameError(format!(
            "a FLAP frame that starts with {:#04x}, not 0x2a",
            buf[0]
        )));
    }
    if buf.len() < HEADER {
        return Ok(None);
    }
    let channel = buf[1];
    if !(CH_LOGIN..=CH_KEEPALIVE).contains(&channel) {
        return Err(FrameError(format!(
            "a FLAP frame on unknown channel {channel}"
        )));
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError(format!(
            "a FLAP frame of {len} bytes, past the limit of {MAX_PAYLOAD}"
        )));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let frame = buf.split_to(HEADER + len).freeze();
    check(&frame)?;
    Ok(Some(frame))
}

/// Checks the parts of a frame that handover reads.
fn check(frame: &Bytes) -> Result<(), FrameError> {
    let payload = &frame[HEADER..];
    match frame[1] {
        CH_SNAC => snac::check(payload),
        CH_LOGIN if payload.len() > 4 => snac::tlvs(&payload[4..]).map(|_| ()),
        CH_LOGIN if payload.len() < 4 => Err(FrameError(
            "a FLAP sign-on frame shorter than its version".into(),
        )),
        CH_CLOSE if !payload.is_empty() => snac::tlvs(payload).map(|_| ()),
        _ => Ok(()),
    }
}

pub fn channel(frame: &[u8]) -> u8 {
    frame[1]
}

pub fn payload(frame: &[u8]) -> &[u8] {
    &frame[HEADER..]
}

/// Builds a frame.
pub fn build(channel: u8, seq: u16, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_u8(START);
    b.put_u8(channel);
    b.put_u16(seq);
    b.put_u16(payload.len() as u16);
    b.put_slice(payload);
    b.freeze()
}

/// The same frame with another sequence number (no copy when it already has it).
pub fn with_seq(frame: &Bytes, seq: u16) -> Bytes {
    if frame[2..4] == seq.to_be_bytes() {
        return frame.clone();
    }
    let mut b = BytesMut::from(&frame[..]);
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b.freeze()
}

/// One direction's sequence counter: every frame handover writes takes the next number, so
/// the receiver sees an unbroken sequence whichever backend (or handover) produced the frame.
#[derive(Debug, Clone, Copy)]
pub struct Seq(u16);

impl Seq {
    pub fn starting_at(n: u16) -> Self {
        Seq(n % SEQ_WRAP)
    }

    pub fn next(&mut self) -> u16 {
        let n = self.0;
        self.0 = (self.0 + 1) % SEQ_WRAP;
        n
    }

    /// Renumbers a frame with the next number.
    pub fn stamp(&mut self, frame: &Bytes) -> Bytes {
        let n = self.next();
        with_seq(frame, n)
    }

    /// Builds a frame with the next number.
    pub fn frame(&mut self, channel: u8, payload: &[u8]) -> Bytes {
        let n = self.next();
        build(channel, n, payload)
    }
}
