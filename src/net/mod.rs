//! Sockets: client and backend streams (plain or TLS), backend connects, PROXY headers.
pub mod tls;
