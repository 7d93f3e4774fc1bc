//! Bulk raw traffic for the splice tests: a byte stream that is different at every offset (so
//! a lost, doubled or reordered chunk shows), an echo backend that keeps nothing, and a reader
//! of handover's byte counters.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The stream's bytes at `offset..offset + buf.len()`: a 64-bit mix of the 8-byte word index.
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        let mut x = (at / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        *b = (x >> ((at % 8) * 8)) as u8;
    }
}

/// Writes the stream's first `len` bytes, starting at `offset`, in chunks of `chunk`.
pub async fn send(w: &mut (impl AsyncWriteExt + Unpin), offset: u64, len: u64, chunk: usize) {
    let mut buf = vec![0; chunk];
    let mut at = offset;
    while at < offset + len {
        let n = chunk.min((offset + len - at) as usize);
        fill(at, &mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("bulk write");
        at += n as u64;
    }
}

/// Reads `len` bytes and checks each is the stream's at `offset` on; panics at the first
/// difference, naming its offset.
pub async fn expect(r: &mut (impl AsyncReadExt + Unpin), offset: u64, len: u64) {
    let mut got = vec![0; 256 * 1024];
    let mut want = vec![0; got.len()];
    let mut at = offset;
    while at < offset + len {
        let ask = got.len().min((offset + len - at) as usize);
        let n = r.read(&mut got[..ask]).await.expect("bulk read");
        assert!(n > 0, "end of stream at {at}, expected {}", offset + len);
        fill(at, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
            panic!("byte {} differs", at + i as u64);
        }
        at += n as u64;
    }
}

/// An echo backend that keeps nothing: every connection's bytes go straight back.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `len` bytes of the stream through `sock` (to an echo backend) while reading them
/// back, and checks every byte of the echo.
pub async fn round_trip(sock: &mut TcpStream, offset: u64, len: u64) {
    let (mut r, mut w) = sock.split();
    tokio::join!(
        send(&mut w, offset, len, 256 * 1024),
        expect(&mut r, offset, len)
    );
}

/// A counter of the proxy's metrics text, 0 when absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// (client to backend, backend to client) of `handover_spliced_bytes_total`.
pub fn spliced(metrics: &str) -> (u64, u64) {
    (
        counter(
            metrics,
            "handover_spliced_bytes_total{direction=\"client_to_backend\"}",
        ),
        counter(
            metrics,
            "handover_spliced_bytes_total{direction=\"backend_to_client\"}",
        ),
    )
}

/// (client to backend, backend to client) of `handover_bytes_total`.
pub fn forwarded(metrics: &str) -> (u64, u64) {
    (
        counter(
            metrics,
            "handover_bytes_total{direction=\"client_to_backend\"}",
        ),
        counter(
            metrics,
            "handover_bytes_total{direction=\"backend_to_client\"}",
        ),
    )
}

/// An echo backend that also records what each connection sent, for tests that move a
/// session and then check where every byte went.
pub struct RecordingEcho {
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl RecordingEcho {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::<std::sync::Mutex<Vec<Vec<u8>>>>::default();
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let idx = {
                    let mut conns = c.lock().unwrap();
                    conns.push(Vec::new());
                    conns.len() - 1
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = sock.read(&mut buf).await {
                        c.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, conns }
    }

    /// Bytes received over every connection that sent some (health checks send none).
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap().iter().map(Vec::len).sum()
    }

    /// What each connection that sent something received, in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        let conns = self.conns.lock().unwrap();
        conns.iter().filter(|c| !c.is_empty()).cloned().collect()
    }
}
