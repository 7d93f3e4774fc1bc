//! Sockets: client and backend streams (plain or TLS behind one type), backend connects,
//! PROXY protocol headers and splice(2) pipes.

pub mod connect;
pub mod proxy_protocol;
pub mod splice;
pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A client or backend connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    TlsServer(Box<server::TlsStream<TcpStream>>),
    TlsClient(Box<client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Waits until a read may make progress without holding a buffer. Plain sockets wait on
    /// the socket's readiness, so an idle session needs no read buffer; TLS may hold decrypted
    /// bytes, so it is always "ready" and reads into a buffer.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(tcp) => tcp.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The socket itself, when nothing (TLS) stands between it and the bytes.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            _ => None,
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// Reads into `buf`'s spare capacity; `Ok(0)` is end of stream. Cancel-safe: bytes are only
/// consumed from the socket when this returns `Ready`. No readiness check of its own: a plain
/// socket's `poll_read` waits on readiness itself (a check here was a second one per read, a
/// third with the link's).
pub fn poll_read_into(
    stream: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut bytes::BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}
