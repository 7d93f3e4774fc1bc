//! A link: one stream, its read buffer and its queue of outgoing frames.
//!
//! [`Link::io`] is the only future the session's `select!` polls per link, so reads and
//! writes of one stream never borrow it twice. It is cancel-safe: bytes move only when it
//! returns. A plain link holds no read buffer while idle: it waits on socket readiness first
//! and gives the buffer back once everything read has been framed.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::net::{poll_read_into, Stream};

/// How much one read asks for.
pub const READ_CHUNK: usize = 32 * 1024;
/// How many queued frames one vectored write takes.
const MAX_SLICES: usize = 16;

pub enum IoEvent {
    /// Bytes were read into the buffer; 0 is end of stream.
    Read(usize),
    /// Queued bytes were written (or flushed).
    Wrote,
}

pub struct Link {
    stream: Stream,
    pub rbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_len: usize,
    need_flush: bool,
    /// The peer closed its sending side.
    pub eof: bool,
    /// Bytes read and written over the link's life, for metrics.
    pub read_total: u64,
    pub written_total: u64,
}

impl Link {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_len: 0,
            need_flush: false,
            eof: false,
            read_total: 0,
            written_total: 0,
        }
    }

    /// Queues bytes to send.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Bytes queued and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_len
    }

    /// True while there is something to write or flush.
    pub fn busy(&self) -> bool {
        self.out_len > 0 || self.need_flush
    }

    /// Whether `io(want_read)` could ever complete.
    pub fn pollable(&self, want_read: bool) -> bool {
        self.busy() || (want_read && !self.eof)
    }

    /// Gives the read buffer back while nothing is buffered, so idle links hold no memory.
    pub fn release_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
    }

    /// Waits for the next read or write; writes go first so output drains before more input.
    pub async fn io(&mut self, want_read: bool) -> io::Result<IoEvent> {
        poll_fn(|cx| self.poll_io(cx, want_read)).await
    }

    fn poll_io(&mut self, cx: &mut Context<'_>, want_read: bool) -> Poll<io::Result<IoEvent>> {
        if self.out_len > 0 {
            if let Poll::Ready(r) = self.poll_write_out(cx) {
                return Poll::Ready(r.map(|()| IoEvent::Wrote));
            }
        } else if self.need_flush {
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_flush(cx) {
                self.need_flush = false;
                return Poll::Ready(r.map(|()| IoEvent::Wrote));
            }
        }
        if want_read && !self.eof {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                // Ask for readiness first so an idle plain link never holds a buffer.
                match self.stream.poll_read_ready(cx) {
                    Poll::Pending => {
                        // Idle: give back the emptied write queue too.
                        self.release_idle();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => self.rbuf.reserve(READ_CHUNK),
                }
            }
            match poll_read_into(&mut self.stream, cx, &mut self.rbuf) {
                Poll::Ready(Ok(n)) => {
                    self.eof = n == 0;
                    self.read_total += n as u64;
                    return Poll::Ready(Ok(IoEvent::Read(n)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => self.release_idle(),
            }
        }
        Poll::Pending
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(self.out.iter()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let n = match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count]) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
        };
        self.consume(n);
        self.written_total += n as u64;
        self.need_flush = self.stream.is_tls();
        Poll::Ready(Ok(()))
    }

    fn consume(&mut self, mut n: usize) {
        self.out_len -= n;
        while n > 0 {
            let front = self.out.front_mut().expect("wrote more than was queued");
            if front.len() <= n {
                n -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Takes back what was queued and never written (the link is dead).
    pub fn take_unsent(&mut self) -> VecDeque<Bytes> {
        self.out_len = 0;
        std::mem::take(&mut self.out)
    }

    /// Closes the sending side at once when that cannot wait: a plain socket with nothing
    /// queued (its `shutdown` is one syscall). False when [`Link::finish`] is needed.
    pub fn finish_now(&mut self) -> bool {
        if self.busy() || self.stream.is_tls() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // A plain socket's shutdown never pends; its error (the peer is gone) changes nothing.
        let _ = Pin::new(&mut self.stream).poll_shutdown(&mut cx);
        true
    }

    /// Writes what is queued, then closes the sending side; bounded by `limit`.
    pub async fn finish(mut self, limit: std::time::Duration) {
        let drain = async {
            while self.busy() {
                if self.io(false).await.is_err() {
                    return;
                }
            }
            let _ = poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await;
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }
}
