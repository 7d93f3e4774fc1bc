//! The IRC line codec and message view: bytes arrive in arbitrary chunks; every frame the
//! codec yields must be one whole line within the limits, and parsing it must not panic.
#![no_main]

use bytes::BytesMut;
use handover::protocol::irc::message::{decode_line, untagged, Message, MAX_BUFFERED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Vec::new();
    'feed: while fed < stream.len() {
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match decode_line(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.ends_with(b"\n"), "a frame is a whole line");
                    assert!(frame.len() <= MAX_BUFFERED, "a frame is within the limits");
                    assert!(!frame.contains(&0), "no NUL gets through");
                    let without_last = &frame[..frame.len() - 1];
                    assert!(!without_last.contains(&b'\n'), "one line per frame");
                    out.extend_from_slice(&frame);
                    if let Some(msg) = Message::parse(&frame) {
                        let _ = (msg.source_nick(), msg.source_userhost(), msg.from_user());
                        let _ = msg.upper_command(&mut [0; 16]);
                        assert!(msg.params().len() <= 15);
                        assert!(!msg.command.is_empty());
                    }
                    let _ = untagged(&frame);
                }
                Ok(None) => {
                    assert!(buf.len() < MAX_BUFFERED, "the buffer stays bounded");
                    break;
                }
                // The session closes here; nothing after an error is read.
                Err(_) => break 'feed,
            }
        }
    }
    // Everything yielded is a prefix of the input, in order, byte for byte.
    assert_eq!(&stream[..out.len()], &out[..]);
});
