//! Connecting to a backend: TCP under a timeout, then an optional PROXY header, then optional
//! TLS. Everything that can go wrong is a [`ConnectError`] with a metric label.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{proxy_protocol, tls, Stream};
use crate::config::{BackendConfig, ProxyProtocol};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {0} failed: {1}")]
    Io(String, std::io::Error),
    #[error("TLS to {0} failed: {1}")]
    Tls(String, String),
}

impl ConnectError {
    pub fn label(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "connect_timeout",
            ConnectError::Io(..) => "connect_refused",
            ConnectError::Tls(..) => "tls",
        }
    }
}

/// Opens a backend link for a client at `client`.
pub async fn connect(
    backend: &BackendConfig,
    client: SocketAddr,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let addr = backend.address.clone();
    tokio::time::timeout(timeout, connect_inner(backend, client))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
}

async fn connect_inner(
    backend: &BackendConfig,
    client: SocketAddr,
) -> Result<Stream, ConnectError> {
    let addr = &backend.address;
    let mut tcp = TcpStream::connect(addr.as_str())
        .await
        .map_err(|e| ConnectError::Io(addr.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    // The local address is asked for only when a PROXY header needs it (a syscall a session).
    if backend.proxy_protocol != ProxyProtocol::None {
        let local = tcp
            .local_addr()
            .map_err(|e| ConnectError::Io(addr.clone(), e))?;
        if let Some(header) = proxy_protocol::header(backend.proxy_protocol, client, local) {
            tcp.write_all(&header)
                .await
                .map_err(|e| ConnectError::Io(addr.clone(), e))?;
        }
    }
    match tls::client_config(&backend.tls, addr).map_err(|e| ConnectError::Tls(addr.clone(), e))? {
        None => Ok(Stream::Plain(tcp)),
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Tls(addr.clone(), e.to_string()))?;
            Ok(Stream::TlsClient(Box::new(stream)))
        }
    }
}
