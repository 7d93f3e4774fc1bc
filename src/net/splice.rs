//! splice(2) pipes for raw passthrough: bytes go socket → pipe → socket inside the kernel,
//! without the two copies through user space that a read and a write make.
//!
//! A link holds a pipe only while the pipe holds bytes (its pending output): an emptied pipe
//! goes back to a small process-wide pool at once, so an idle session has no pipe and no file
//! descriptor beyond its sockets, and a busy one does not pay `pipe2` and two `close`s per
//! chunk. Only empty pipes are pooled. When no pipe can be had (EMFILE, ENFILE) the caller
//! copies instead; nothing fails.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

/// Most bytes one splice into a pipe asks for: a pipe's default capacity (16 pages). A socket's
/// data may sit in partly filled pages, so a pipe can be full with less.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Most empty pipes kept for reuse (two file descriptors each).
const POOL_MAX: usize = 64;

/// Boxed pipes: links keep them boxed, and they move between a link and the pool without an
/// allocation.
#[allow(clippy::vec_box)]
static POOL: Mutex<Vec<Box<Pipe>>> = Mutex::new(Vec::new());

const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// A pipe and how many bytes it holds. Boxed where it is kept, so a link without one pays a
/// pointer.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
}

#[allow(clippy::vec_box)] // see POOL
fn pool() -> std::sync::MutexGuard<'static, Vec<Box<Pipe>>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipe {
    /// An empty pipe from the pool, or a new one; `None` when none can be made.
    pub fn take() -> Option<Box<Pipe>> {
        if let Some(pipe) = pool().pop() {
            return Some(pipe);
        }
        match pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC) {
            Ok((read, write)) => Some(Box::new(Pipe {
                read,
                write,
                len: 0,
            })),
            Err(e) => {
                debug!(error = %e, "no pipe for splice; copying instead");
                None
            }
        }
    }

    /// Gives a pipe back: into the pool if it is empty and the pool has room, else closed.
    pub fn give(self: Box<Self>) {
        if self.len == 0 {
            let mut pool = pool();
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        }
    }

    /// Bytes in the pipe, not yet written on.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves what `from` has into the pipe; `Ok(0)` is end of stream. Call it on an empty
    /// pipe only: then `WouldBlock` means the socket has nothing (and its read readiness is
    /// cleared), never that the pipe is full.
    pub fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        let room = PIPE_CAPACITY - self.len;
        let n = from.try_io(Interest::READABLE, || {
            Ok(splice(from, None, &self.write, None, room, FLAGS)?)
        })?;
        self.len += n;
        Ok(n)
    }

    /// Moves what the pipe holds into `to`, as much as it takes. `WouldBlock` clears `to`'s
    /// write readiness.
    pub fn drain(&mut self, to: &TcpStream) -> io::Result<usize> {
        let len = self.len;
        let n = to.try_io(Interest::WRITABLE, || {
            Ok(splice(&self.read, None, to, None, len, FLAGS)?)
        })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.len -= n;
        Ok(n)
    }

    /// Reads out what the pipe holds, leaving it empty: its destination is gone and the bytes
    /// go elsewhere (a failover sends a dead backend's unsent client bytes to the next one).
    pub fn read_out(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; self.len];
        let mut at = 0;
        while at < bytes.len() {
            match rustix::io::read(&self.read, &mut bytes[at..])? {
                0 => break,
                n => at += n,
            }
        }
        bytes.truncate(at);
        self.len = 0;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn bytes_go_through_the_pipe_in_order() {
        let (mut client, from) = pair().await;
        let (to, mut peer) = pair().await;
        let mut pipe = Pipe::take().expect("a pipe");
        client.write_all(b"hello, pipe").await.unwrap();
        from.readable().await.unwrap();
        assert_eq!(pipe.fill(&from).unwrap(), 11);
        assert_eq!(pipe.len(), 11);
        to.writable().await.unwrap();
        assert_eq!(pipe.drain(&to).unwrap(), 11);
        assert!(pipe.is_empty());
        let mut got = [0; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, pipe");
        // Nothing more to read: WouldBlock, not end of stream.
        let e = pipe.fill(&from).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(client);
        from.readable().await.unwrap();
        assert_eq!(pipe.fill(&from).unwrap(), 0, "end of stream");
        pipe.give();
    }

    #[tokio::test]
    async fn read_out_empties_the_pipe() {
        let (mut client, from) = pair().await;
        let mut pipe = Pipe::take().expect("a pipe");
        client.write_all(b"unsent").await.unwrap();
        from.readable().await.unwrap();
        pipe.fill(&from).unwrap();
        assert_eq!(pipe.read_out().unwrap(), b"unsent");
        assert!(pipe.is_empty());
    }
}
