//! A raw client that streams numbered lines and watches its socket, for tests that move its
//! session and then check every byte arrived once, in order, with the socket never closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What every [`Streamer`] sends first (raw listeners replay it as the prelude).
pub const PRELUDE: &[u8] = b"HELLO\n";

/// A client that streams numbered lines and watches its socket.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Vec<u8>>,
    reader: JoinHandle<(usize, Option<String>)>,
}

impl Streamer {
    pub async fn start(addr: std::net::SocketAddr) -> Self {
        Self::tagged(addr, "").await
    }

    /// A streamer whose lines start with `tag`, to tell several clients' bytes apart.
    pub async fn tagged(addr: std::net::SocketAddr, tag: &'static str) -> Self {
        let sock = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = sock.into_split();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer = tokio::spawn(async move {
            let mut sent = PRELUDE.to_vec();
            wr.write_all(PRELUDE).await.unwrap();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let line = format!("{tag}line {n}\n");
                wr.write_all(line.as_bytes())
                    .await
                    .expect("client write never fails");
                sent.extend_from_slice(line.as_bytes());
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Keep the socket open: the test checks it stays up.
            std::mem::forget(wr);
            sent
        });
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut total = 0;
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return (total, Some("EOF".to_string())),
                    Ok(n) => total += n,
                    Err(e) => return (total, Some(e.to_string())),
                }
            }
        });
        Self {
            stop,
            writer,
            reader,
        }
    }

    /// Stops sending; returns what was sent and asserts the socket is still open.
    pub async fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.writer.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !self.reader.is_finished(),
            "the client socket closed: {:?}",
            self.reader.await.unwrap()
        );
        self.reader.abort();
        sent
    }
}

/// Polls `cond` every 25 ms for at most 5 s.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Asserts a stream that moved from `first` to `second` arrived whole: `first` got the start,
/// `second` the prelude again and then the rest, nothing lost or doubled, in order.
pub fn assert_moved_byte_for_byte(sent: &[u8], first: &[u8], second: &[u8]) {
    assert!(
        second.starts_with(PRELUDE),
        "the new backend got the prelude first"
    );
    let mut joined = first.to_vec();
    joined.extend_from_slice(&second[PRELUDE.len()..]);
    assert_eq!(joined.len(), sent.len(), "no byte lost or duplicated");
    assert!(joined == sent, "bytes arrive in order, byte for byte");
}
