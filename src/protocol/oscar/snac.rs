//! SNACs (family, subtype, flags, request id, body) and TLVs: parsing that never panics on
//! peer input, and building.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::FrameError;

pub const SNAC_HEADER: usize = 10;

/// OSERVICE (0x0001) and BUCP (0x0017) subtypes handover acts on.
pub mod ids {
    pub const OSERVICE: u16 = 0x0001;
    pub const HOST_ONLINE: u16 = 0x03;
    pub const SERVICE_REQUEST: u16 = 0x04;
    pub const SERVICE_RESPONSE: u16 = 0x05;
    pub const RATE_PARAMS_QUERY: u16 = 0x06;
    pub const RATE_PARAMS_REPLY: u16 = 0x07;
    pub const PAUSE_REQ: u16 = 0x0B;
    pub const PAUSE_ACK: u16 = 0x0C;
    pub const RESUME: u16 = 0x0D;
    pub const USER_INFO_QUERY: u16 = 0x0E;
    pub const USER_INFO_UPDATE: u16 = 0x0F;
    pub const MIGRATE_GROUPS: u16 = 0x12;
    pub const CLIENT_ONLINE: u16 = 0x02;
    pub const BUDDY: u16 = 0x0003;
    pub const BUDDY_ARRIVED: u16 = 0x0B;
    pub const BUDDY_DEPARTED: u16 = 0x0C;
    pub const ICBM: u16 = 0x0004;
    pub const ICBM_CHANNEL_MSG_TOHOST: u16 = 0x06;
    pub const ICBM_CHANNEL_MSG_TOCLIENT: u16 = 0x07;
    pub const BUCP: u16 = 0x0017;
    pub const LOGIN_REQUEST: u16 = 0x02;
    pub const LOGIN_RESPONSE: u16 = 0x03;
    pub const CHALLENGE_REQUEST: u16 = 0x06;
    pub const CHALLENGE_RESPONSE: u16 = 0x07;

    /// TLV tags.
    pub const TLV_SCREEN_NAME: u16 = 0x01;
    pub const TLV_RECONNECT_HERE: u16 = 0x05;
    pub const TLV_COOKIE: u16 = 0x06;
    pub const TLV_ERROR: u16 = 0x08;
    pub const TLV_GROUP_ID: u16 = 0x0D;
}

use ids::*;

/// A view of a SNAC inside a FLAP payload.
#[derive(Debug, Clone, Copy)]
pub struct Snac<'a> {
    pub family: u16,
    pub subtype: u16,
    pub flags: u16,
    pub request_id: u32,
    pub body: &'a [u8],
}

impl<'a> Snac<'a> {
    /// `None` when the payload is shorter than a SNAC header (decode refuses those).
    pub fn parse(payload: &'a [u8]) -> Option<Self> {
        if payload.len() < SNAC_HEADER {
            return None;
        }
        Some(Snac {
            family: u16::from_be_bytes([payload[0], payload[1]]),
            subtype: u16::from_be_bytes([payload[2], payload[3]]),
            flags: u16::from_be_bytes([payload[4], payload[5]]),
            request_id: u32::from_be_bytes([payload[6], payload[7], payload[8], payload[9]]),
            body: &payload[SNAC_HEADER..],
        })
    }

    pub fn is(&self, family: u16, subtype: u16) -> bool {
        self.family == family && self.subtype == subtype
    }

    /// The body after the optional flags-0x8000 preamble (a u16 length and that many bytes).
    pub fn data(&self) -> &'a [u8] {
        if self.flags & 0x8000 != 0 && self.body.len() >= 2 {
            let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
            return self.body.get(2 + n..).unwrap_or(&[]);
        }
        self.body
    }
}

/// Builds a SNAC payload (for a FLAP channel-2 frame).
pub fn build(family: u16, subtype: u16, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(SNAC_HEADER + body.len());
    b.extend_from_slice(&family.to_be_bytes());
    b.extend_from_slice(&subtype.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&request_id.to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// The same SNAC payload with another body.
pub fn with_body(snac: &Snac<'_>, body: &[u8]) -> Vec<u8> {
    let mut b = build(snac.family, snac.subtype, snac.request_id, body);
    b[4..6].copy_from_slice(&(snac.flags & !0x8000).to_be_bytes());
    b
}

/// A TLV list, parsed whole: every length must fit.
pub fn tlvs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, FrameError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(FrameError("a truncated TLV header".into()));
        }
        let tag = u16::from_be_bytes([b[0], b[1]]);
        let len = u16::from_be_bytes([b[2], b[3]]) as usize;
        let Some(value) = b.get(4..4 + len) else {
            return Err(FrameError(format!(
                "a TLV {tag:#06x} of {len} bytes with {} left",
                b.len() - 4
            )));
        };
        out.push((tag, value));
        b = &b[4 + len..];
    }
    Ok(out)
}

pub fn find<'a>(tlvs: &[(u16, &'a [u8])], tag: u16) -> Option<&'a [u8]> {
    tlvs.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
}

/// Writes TLVs.
pub fn put_tlv(out: &mut BytesMut, tag: u16, value: &[u8]) {
    out.put_u16(tag);
    out.put_u16(value.len() as u16);
    out.put_slice(value);
}

/// Replaces (tag → value) in a TLV list, keeping order; the others are copied unchanged.
pub fn replace_tlvs(list: &[(u16, &[u8])], with: &[(u16, &[u8])]) -> Bytes {
    let mut out = BytesMut::new();
    for (tag, value) in list {
        let value = with
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, v)| *v)
            .unwrap_or(value);
        put_tlv(&mut out, *tag, value);
    }
    out.freeze()
}

/// Where a SNAC body is a TLV list that handover reads, it must parse: login request and
/// reply, service redirect, migrate. Other bodies are opaque and forwarded as they are.
pub fn check(payload: &[u8]) -> Result<(), FrameError> {
    let Some(snac) = Snac::parse(payload) else {
        return Err(FrameError(format!(
            "a truncated SNAC ({} bytes, the header alone is {SNAC_HEADER})",
            payload.len()
        )));
    };
    if snac.flags & 0x8000 != 0 {
        let n = snac
            .body
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
        if n.is_none_or(|n| snac.body.len() < 2 + n) {
            return Err(FrameError("a truncated SNAC preamble".into()));
        }
    }
    let data = snac.data();
    match (snac.family, snac.subtype) {
        (BUCP, LOGIN_REQUEST | LOGIN_RESPONSE | CHALLENGE_REQUEST)
        | (OSERVICE, SERVICE_RESPONSE) => tlvs(data).map(|_| ()),
        (OSERVICE, MIGRATE_GROUPS) => migrate_tlvs(data).map(|_| ()),
        (OSERVICE, SERVICE_REQUEST) if data.len() < 2 => {
            Err(FrameError("a truncated service request".into()))
        }
        _ => Ok(()),
    }
}

/// MIGRATE_GROUPS: a u16 count of families, the families, then TLVs (address, cookie).
pub fn migrate_tlvs(data: &[u8]) -> Result<Vec<(u16, &[u8])>, FrameError> {
    let count = data
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| FrameError("a truncated MIGRATE_GROUPS".into()))?;
    let rest = data
        .get(2 + 2 * count..)
        .ok_or_else(|| FrameError("a truncated MIGRATE_GROUPS family list".into()))?;
    tlvs(rest)
}
