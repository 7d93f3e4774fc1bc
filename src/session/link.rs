//! A link: one stream, its read buffer and its queue of outgoing frames.
//!
//! [`Link::io`] is the only future the session's `select!` polls per link, so reads and
//! writes of one stream never borrow it twice. It is cancel-safe: bytes move only when it
//! returns. A plain link holds no read buffer while idle: it waits on socket readiness first
//! and gives the buffer back once everything read has been framed.
//!
//! A raw session in passthrough splices instead of copying (`net/splice.rs`): while the session
//! sets [`Link::splice_reads`], `io` only reports that the socket is readable, and the session
//! moves the bytes with [`Link::splice_to`] into the other link's pipe and on. Bytes in a
//! link's pipe are its pending output: written before anything queued after them, counted by
//! `out_len` and `busy` like queued frames, so backpressure, the migration's cut and the close
//! treat them alike.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tracing::debug;

use super::OUT_LIMIT;
use crate::net::splice::Pipe;
use crate::net::{poll_read_into, Stream};

/// How much one read asks for.
pub const READ_CHUNK: usize = 32 * 1024;
/// A read at least this large shows a side sending in bulk: worth a pipe (see
/// [`Link::bulk`]).
const BULK_READ: usize = READ_CHUNK / 2;
/// Fill-and-write rounds one [`Link::splice_to`] makes at most (64 KiB each), so one busy
/// session leaves room for its other events: commands, deadlines, the other direction.
const SPLICE_ROUNDS: usize = 16;
/// How many queued frames one vectored write takes.
const MAX_SLICES: usize = 16;

pub enum IoEvent {
    /// Bytes were read into the buffer; 0 is end of stream.
    Read(usize),
    /// Queued bytes were written (or flushed).
    Wrote,
    /// The socket is readable and nothing was read: [`Link::splice_reads`] is set.
    Readable,
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
    /// Bytes spliced from the other side and not yet written here. Held only while not empty,
    /// so an idle link has none.
    pipe: Option<Box<Pipe>>,
    /// Set by the session before each wait: `io` reports readability instead of reading.
    pub splice_reads: bool,
    /// A read was large enough to show bulk traffic from this side, so splicing its reads
    /// pays for the pipe. Cleared when no pipe could be had.
    pub bulk: bool,
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
            pipe: None,
            splice_reads: false,
            bulk: false,
        }
    }

    /// Queues bytes to send.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Bytes queued or in the pipe, and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_len + self.piped()
    }

    fn piped(&self) -> usize {
        self.pipe.as_ref().map_or(0, |p| p.len())
    }

    /// True while there is something to write or flush.
    pub fn busy(&self) -> bool {
        self.out_len() > 0 || self.need_flush
    }

    /// Nothing more should be read for this link yet: its queue is at [`OUT_LIMIT`], or its
    /// pipe is not written out (a pipe is only filled when empty, see [`Link::splice_to`]).
    pub fn full(&self) -> bool {
        self.out_len >= OUT_LIMIT || self.piped() > 0
    }

    /// No frame is queued: spliced bytes written here would not overtake one.
    pub fn nothing_queued(&self) -> bool {
        self.out_len == 0
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
        if self.piped() > 0 {
            // Spliced bytes were read before anything queued after them: they go first.
            if let Poll::Ready(r) = self.poll_write_piped(cx) {
                return Poll::Ready(r.map(|()| IoEvent::Wrote));
            }
        } else if self.out_len > 0 {
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
            if self.splice_reads {
                // The session splices this side's bytes: report readiness, read nothing.
                return match self.stream.poll_read_ready(cx) {
                    Poll::Ready(r) => Poll::Ready(r.map(|()| IoEvent::Readable)),
                    Poll::Pending => {
                        self.release_idle();
                        Poll::Pending
                    }
                };
            }
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
                    self.bulk |= n >= BULK_READ;
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

    fn poll_write_piped(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(tcp) = self.stream.tcp() {
                std::task::ready!(tcp.poll_write_ready(cx))?;
            }
            match self.write_piped() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => {
                    self.give_back_empty_pipe();
                    return Poll::Ready(r);
                }
            }
        }
    }

    /// Writes what the pipe holds, as much as the socket takes without blocking.
    fn write_piped(&mut self) -> io::Result<()> {
        let (Some(pipe), Some(tcp)) = (self.pipe.as_mut(), self.stream.tcp()) else {
            return Ok(());
        };
        let n = pipe.drain(tcp)?;
        self.written_total += n as u64;
        Ok(())
    }

    fn give_back_empty_pipe(&mut self) {
        if self.pipe.as_ref().is_some_and(|p| p.is_empty()) {
            if let Some(pipe) = self.pipe.take() {
                pipe.give();
            }
        }
    }

    /// This link was [`IoEvent::Readable`] with `splice_reads` set: moves what its socket has
    /// into `to`'s pipe and on into `to`'s socket, round by round, as far as each goes without
    /// blocking. What `to` does not take yet stays in its pipe; `to`'s own `io` writes it (or
    /// reports the error). Answers as a read would: `Some(n)` bytes read, `Some(0)` at end of
    /// stream; `None` when there was nothing to read after all, or no pipe could be had (this
    /// side then copies until a read shows bulk again).
    pub fn splice_to(&mut self, to: &mut Link) -> io::Result<Option<usize>> {
        let Some(from) = self.stream.tcp() else {
            return Ok(None);
        };
        if to.pipe.is_none() {
            to.pipe = Pipe::take();
        }
        if to.pipe.is_none() {
            self.bulk = false;
            return Ok(None);
        }
        let (mut moved, mut failed) = (0, None);
        for _ in 0..SPLICE_ROUNDS {
            let pipe = to.pipe.as_mut().expect("taken above");
            if !pipe.is_empty() {
                // `to` took less than the pipe held: it is full for now.
                break;
            }
            match pipe.fill(from) {
                Ok(0) => {
                    // At the end of a call that moved bytes, the next one reports it.
                    self.eof = moved == 0;
                    break;
                }
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if let Err(e) = to.write_piped() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    debug!(error = %e, "splice: writing out failed; the link reports it");
                }
                break;
            }
        }
        self.read_total += moved as u64;
        to.give_back_empty_pipe();
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(match moved {
            0 if !self.eof => None,
            n => Some(n),
        })
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

    /// Takes back what was queued or spliced and never written (the link is dead).
    pub fn take_unsent(&mut self) -> VecDeque<Bytes> {
        self.out_len = 0;
        let mut unsent = std::mem::take(&mut self.out);
        if let Some(mut pipe) = self.pipe.take() {
            // The pipe's bytes were read before anything queued after them.
            match pipe.read_out() {
                Ok(bytes) => unsent.push_front(bytes.into()),
                Err(e) => debug!(error = %e, "the dead link's pipe could not be read out"),
            }
            pipe.give();
        }
        unsent
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
