//! PROXY protocol v1/v2 headers for any pair of addresses: the header must parse back (with a
//! small reference parser written from the haproxy spec) to the client's address, IPv4 when
//! the client is IPv4 or IPv4-mapped, whatever the family of the other side.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use handover::config::ProxyProtocol;
use handover::net::proxy_protocol::header;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
    Mapped([u8; 4]),
}

impl Ip {
    fn addr(&self, port: u16) -> SocketAddr {
        let ip = match self {
            Ip::V4(o) => IpAddr::V4(Ipv4Addr::from(*o)),
            Ip::V6(o) => IpAddr::V6(Ipv6Addr::from(*o)),
            Ip::Mapped(o) => IpAddr::V6(Ipv4Addr::from(*o).to_ipv6_mapped()),
        };
        SocketAddr::new(ip, port)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    client: Ip,
    client_port: u16,
    local: Ip,
    local_port: u16,
    v2: bool,
}

fuzz_target!(|input: Input| {
    let client = input.client.addr(input.client_port);
    let local = input.local.addr(input.local_port);
    let kind = if input.v2 {
        ProxyProtocol::V2
    } else {
        ProxyProtocol::V1
    };
    let bytes = header(kind, client, local).expect("a header is configured");
    let (src, dst) = if input.v2 {
        parse_v2(&bytes)
    } else {
        parse_v1(&bytes)
    };
    let want = SocketAddr::new(client.ip().to_canonical(), client.port());
    assert_eq!(
        src.map(canonical),
        Some(want),
        "the backend sees the client: {bytes:?}"
    );
    let want_local = SocketAddr::new(local.ip().to_canonical(), local.port());
    assert_eq!(dst.map(canonical), Some(want_local));
});

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn parse_v1(h: &[u8]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    assert!(h.len() <= 107, "v1 headers are at most 107 bytes");
    let text = std::str::from_utf8(h).expect("v1 is ASCII");
    let line = text.strip_suffix("\r\n").expect("v1 ends with CRLF");
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[0], "PROXY");
    match parts[1] {
        "UNKNOWN" => (None, None),
        fam @ ("TCP4" | "TCP6") => {
            assert_eq!(parts.len(), 6);
            let src: IpAddr = parts[2].parse().unwrap();
            let dst: IpAddr = parts[3].parse().unwrap();
            assert_eq!(src.is_ipv4(), fam == "TCP4");
            assert_eq!(dst.is_ipv4(), fam == "TCP4");
            let sp: u16 = parts[4].parse().unwrap();
            let dp: u16 = parts[5].parse().unwrap();
            (
                Some(SocketAddr::new(src, sp)),
                Some(SocketAddr::new(dst, dp)),
            )
        }
        other => panic!("bad v1 family {other}"),
    }
}

fn parse_v2(h: &[u8]) -> (Option<SocketAddr>, Option<SocketAddr>) {
    const SIG: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    assert_eq!(&h[..12], &SIG);
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    assert_eq!(h.len(), 16 + len, "the length field covers the rest");
    match (h[12], h[13]) {
        (0x20, _) => (None, None),
        (0x21, 0x11) => {
            assert_eq!(len, 12);
            let src = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            let dst = Ipv4Addr::new(h[20], h[21], h[22], h[23]);
            let sp = u16::from_be_bytes([h[24], h[25]]);
            let dp = u16::from_be_bytes([h[26], h[27]]);
            (Some((src, sp).into()), Some((dst, dp).into()))
        }
        (0x21, 0x21) => {
            assert_eq!(len, 36);
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&h[16..32]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&h[32..48]).unwrap());
            let sp = u16::from_be_bytes([h[48], h[49]]);
            let dp = u16::from_be_bytes([h[50], h[51]]);
            (Some((src, sp).into()), Some((dst, dp).into()))
        }
        other => panic!("bad v2 command/family {other:?}"),
    }
}
