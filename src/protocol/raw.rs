//! Raw byte streams: no message boundaries and no state that can be learned in general.
//!
//! Re-registration replays the first `prelude_bytes` the client sent (its "hello") on the new
//! backend and swallows whatever the backend answers for `prelude_settle_ms`. Client bytes are
//! never lost; backend output in flight at the cut may be (there is no flush mark).

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{
    Direction, FrameError, Protocol, RegisterStart, RegisterStep, SessionAdapter, Verdict,
};
use crate::config::ListenerConfig;

pub struct RawProtocol {
    prelude_bytes: usize,
    settle: Duration,
}

impl RawProtocol {
    pub fn new(listener: &ListenerConfig) -> Self {
        Self {
            prelude_bytes: listener.prelude_bytes,
            settle: Duration::from_millis(listener.prelude_settle_ms),
        }
    }
}

impl Protocol for RawProtocol {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn new_session(&self, _listener: &ListenerConfig) -> Box<dyn SessionAdapter> {
        Box::new(RawSession {
            prelude: BytesMut::new(),
            prelude_bytes: self.prelude_bytes,
            settle: self.settle,
        })
    }
}

pub struct RawSession {
    prelude: BytesMut,
    prelude_bytes: usize,
    settle: Duration,
}

impl SessionAdapter for RawSession {
    fn decode(&mut self, _dir: Direction, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(buf.split().freeze()))
    }

    fn observe(&mut self, dir: Direction, frame: &Bytes) -> Verdict {
        if dir == Direction::ClientToBackend && self.prelude.len() < self.prelude_bytes {
            let take = (self.prelude_bytes - self.prelude.len()).min(frame.len());
            self.prelude.extend_from_slice(&frame[..take]);
        }
        Verdict::Forward
    }

    fn start_register(&mut self) -> Result<RegisterStart, String> {
        let send = if self.prelude.is_empty() {
            Vec::new()
        } else {
            vec![Bytes::copy_from_slice(&self.prelude)]
        };
        Ok(RegisterStart {
            send,
            settle: Some(self.settle),
        })
    }

    fn on_register_frame(&mut self, _frame: &Bytes) -> RegisterStep {
        // Whatever the new backend says before the cut is its answer to the prelude.
        RegisterStep::Continue(Vec::new())
    }

    fn passthrough(&self) -> bool {
        self.prelude.len() >= self.prelude_bytes
    }

    fn snapshot_size(&self) -> usize {
        self.prelude.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(prelude_bytes: usize) -> RawSession {
        RawSession {
            prelude: BytesMut::new(),
            prelude_bytes,
            settle: Duration::from_millis(5),
        }
    }

    #[test]
    fn decode_takes_everything_available() {
        let mut s = session(0);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            s.decode(Direction::ClientToBackend, &mut buf)
                .unwrap()
                .unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(buf.is_empty());
        assert_eq!(
            s.decode(Direction::ClientToBackend, &mut buf).unwrap(),
            None
        );
    }

    #[test]
    fn prelude_records_only_the_first_bytes_sent_by_the_client() {
        let mut s = session(5);
        s.observe(Direction::BackendToClient, &Bytes::from_static(b"banner"));
        s.observe(Direction::ClientToBackend, &Bytes::from_static(b"hel"));
        s.observe(Direction::ClientToBackend, &Bytes::from_static(b"lo world"));
        let start = s.start_register().unwrap();
        assert_eq!(start.send, vec![Bytes::from_static(b"hello")]);
        assert_eq!(start.settle, Some(Duration::from_millis(5)));
    }

    #[test]
    fn passthrough_once_the_prelude_is_kept() {
        let mut s = session(5);
        assert!(!s.passthrough());
        s.observe(Direction::BackendToClient, &Bytes::from_static(b"banner"));
        s.observe(Direction::ClientToBackend, &Bytes::from_static(b"hell"));
        assert!(!s.passthrough(), "one byte of the prelude is missing");
        s.observe(Direction::ClientToBackend, &Bytes::from_static(b"o"));
        assert!(s.passthrough());
        assert!(session(0).passthrough(), "no prelude to keep");
    }

    #[test]
    fn no_prelude_sends_nothing() {
        let mut s = session(0);
        s.observe(Direction::ClientToBackend, &Bytes::from_static(b"data"));
        assert!(s.start_register().unwrap().send.is_empty());
    }
}
