//! PROXY protocol v1 (text) and v2 (binary) headers, so a backend sees the client's address.
//! Pure functions, unit-tested against the byte layouts of the haproxy spec.

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header to write first on a backend link, or `None` when none is configured.
pub fn header(kind: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    let (client, local) = same_family(client, local);
    match kind {
        ProxyProtocol::None => None,
        ProxyProtocol::V1 => Some(v1(client, local)),
        ProxyProtocol::V2 => Some(v2(client, local)),
    }
}

/// Both addresses in one family, so the header can always carry the client's address: IPv4
/// when both are IPv4 or IPv4-mapped (a dual-stack listener sees IPv4 clients as
/// `::ffff:a.b.c.d`), else IPv6 with an IPv4 side mapped. A header of mixed families cannot be
/// written, and `UNKNOWN` would hide the client's address from the backend.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (client, local) = (canonical(client), canonical(local));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        )
        .into_bytes(),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        )
        .into_bytes(),
        // Mixed families cannot be expressed; the spec says UNKNOWN.
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, command PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            out[12] = 0x20; // LOCAL: no address
            out.push(0x00);
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_ipv4() {
        let h = header(
            ProxyProtocol::V1,
            "203.0.113.7:5555".parse().unwrap(),
            "127.0.0.1:6667".parse().unwrap(),
        );
        assert_eq!(
            h.unwrap(),
            b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 6667\r\n"
        );
    }

    #[test]
    fn v1_ipv6_and_mixed() {
        let h = v1(
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
    }

    /// Found by `fuzz/fuzz_targets/proxy_header.rs` (crash-8430fbf1): an IPv4 client with an
    /// IPv4-mapped local address got `PROXY UNKNOWN`, hiding the client from the backend.
    #[test]
    fn mixed_families_still_carry_the_client() {
        let v1h = |c: &str, l: &str| {
            header(ProxyProtocol::V1, c.parse().unwrap(), l.parse().unwrap()).unwrap()
        };
        assert_eq!(
            v1h("13.13.13.13:8", "[::ffff:21.8.0.0]:0"),
            b"PROXY TCP4 13.13.13.13 21.8.0.0 8 0\r\n"
        );
        // A dual-stack listener: IPv4 clients arrive mapped, the backend link is IPv4.
        assert_eq!(
            v1h("[::ffff:203.0.113.7]:5555", "127.0.0.1:6667"),
            b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 6667\r\n"
        );
        // Really mixed: the IPv4 side is mapped into IPv6.
        assert_eq!(
            v1h("1.2.3.4:1", "[::1]:2"),
            b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n"
        );
        let v2h = header(
            ProxyProtocol::V2,
            "[::ffff:198.51.100.23]:40000".parse().unwrap(),
            "127.0.0.1:6681".parse().unwrap(),
        )
        .unwrap();
        assert_eq!((v2h[13], v2h.len()), (0x11, 28));
        assert_eq!(&v2h[16..20], &[198, 51, 100, 23]);
    }

    #[test]
    fn v2_ipv4_layout() {
        let h = v2(
            "198.51.100.23:40000".parse().unwrap(),
            "127.0.0.1:6681".parse().unwrap(),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[198, 51, 100, 23]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 6681);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn v2_ipv6_length() {
        let h = v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), 16 + 36);
    }

    #[test]
    fn none_is_none() {
        assert!(header(
            ProxyProtocol::None,
            "1.2.3.4:1".parse().unwrap(),
            "1.2.3.4:2".parse().unwrap()
        )
        .is_none());
    }
}
