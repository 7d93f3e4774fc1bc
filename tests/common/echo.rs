//! Small checks on a client socket through the proxy to an echo backend.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True when `text` comes back within 5 s.
pub async fn echoes(sock: &mut TcpStream, text: &str) -> bool {
    echoes_within(sock, text, Duration::from_secs(5)).await
}

/// True when `text` comes back within `limit`.
pub async fn echoes_within(sock: &mut TcpStream, text: &str, limit: Duration) -> bool {
    if sock.write_all(text.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; text.len()];
    matches!(
        tokio::time::timeout(limit, sock.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf == text.as_bytes()
    )
}

/// True when the proxy closed the socket (EOF or reset) within a second.
pub async fn is_closed(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), sock.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
