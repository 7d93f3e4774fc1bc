//! The OSCAR adapter (FLAP codec, SNAC and TLV parsing, login and redirect rewriting,
//! re-registration by login replay, flush mark, backend-initiated moves) driven through
//! whole connections by arbitrary bytes from the client, the current backend and the
//! migration target, in the order the listener and the session task call it. A panic here is
//! a panic a hostile peer could cause in the proxy.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use handover::protocol::{Direction, RegisterStep, Route, SessionAdapter};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Client(Vec<u8>),
    Backend(Vec<u8>),
    Target(Vec<u8>),
    Migrate,
    Flush,
    Cut,
    Abort,
}

const CONFIG: &str = "[[listener]]\nname = \"aim\"\nlisten = \"127.0.0.1:5190\"\nprotocol = \"oscar\"\nadvertise = \"127.0.0.1:5190\"\nbackends = [\"a\", \"b\"]\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:5191\"\n[[backend]]\nname = \"b\"\naddress = \"127.0.0.1:6191\"\n";

#[derive(PartialEq)]
enum Phase {
    Idle,
    Registering,
    Flushing,
}

/// Feeds bytes through the adapter's codec; false when it refused them (the session closes).
fn frames(
    s: &mut dyn SessionAdapter,
    dir: Direction,
    buf: &mut BytesMut,
    bytes: &[u8],
    mut each: impl FnMut(&mut dyn SessionAdapter, Bytes),
) -> bool {
    buf.extend_from_slice(bytes);
    loop {
        match s.decode(dir, buf) {
            Ok(Some(frame)) => each(s, frame),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<Op>)| {
    let (first, ops) = input;
    let config = handover::config::parse(CONFIG, "fuzz.toml").expect("fuzz config is valid");
    let listener = &config.listener[0];
    let protocol = handover::protocol::lookup("oscar", listener).expect("oscar is a protocol");
    let mut s = protocol.new_session(listener);
    let _ = s.greeting("127.0.0.1:5190".parse().unwrap());
    // Routing reads the client's first frame, asking for more as the listener does.
    let mut first_buf = BytesMut::from(&first[..]);
    match s.route(&mut first_buf) {
        Ok(Route::Need(n)) => assert!(n <= 64 * 1024, "route asks for {n} bytes"),
        Ok(_) => {}
        Err(_) => return,
    }
    s.on_backend(&config.backend[0]);
    let (mut cbuf, mut bbuf, mut tbuf) = (first_buf, BytesMut::new(), BytesMut::new());
    let mut phase = Phase::Idle;
    let mut mark_pending = false;
    for op in ops.into_iter().take(128) {
        let ok = match op {
            Op::Client(b) => frames(&mut *s, Direction::ClientToBackend, &mut cbuf, &b, |s, f| {
                let _ = s.observe(Direction::ClientToBackend, &f);
            }),
            Op::Backend(b) => {
                let mut cut = false;
                let ok = frames(&mut *s, Direction::BackendToClient, &mut bbuf, &b, |s, f| {
                    if phase == Phase::Flushing && mark_pending && s.is_flush_reply(&f) {
                        cut = true;
                    } else {
                        let _ = s.observe(Direction::BackendToClient, &f);
                    }
                });
                if cut {
                    mark_pending = false;
                    let _ = s.detach();
                    let _ = s.cutover();
                    s.held_lines_done();
                    phase = Phase::Idle;
                }
                ok
            }
            Op::Target(b) => {
                let mut outcome = None;
                let ok = frames(&mut *s, Direction::BackendToClient, &mut tbuf, &b, |s, f| {
                    if phase == Phase::Registering && outcome.is_none() {
                        match s.on_register_frame(&f) {
                            RegisterStep::Continue(_) | RegisterStep::Hold(_) => {}
                            RegisterStep::Reconnect { .. } => {}
                            RegisterStep::Done(_) => outcome = Some(true),
                            RegisterStep::Failed(_) => outcome = Some(false),
                        }
                    }
                });
                match outcome {
                    Some(true) => phase = Phase::Flushing,
                    Some(false) => {
                        s.abort_migration();
                        phase = Phase::Idle;
                    }
                    None => {}
                }
                ok
            }
            Op::Migrate => {
                if phase == Phase::Idle && s.can_migrate().is_ok() && s.start_register().is_ok() {
                    phase = Phase::Registering;
                    tbuf.clear();
                }
                true
            }
            Op::Flush => {
                if phase == Phase::Flushing && !mark_pending {
                    mark_pending = s.flush_mark().is_some();
                }
                true
            }
            Op::Cut => {
                if phase == Phase::Flushing {
                    let _ = s.detach();
                    let _ = s.cutover();
                    s.held_lines_done();
                    phase = Phase::Idle;
                    mark_pending = false;
                }
                true
            }
            Op::Abort => {
                if phase != Phase::Idle {
                    s.abort_migration();
                    phase = Phase::Idle;
                    mark_pending = false;
                }
                true
            }
        };
        if !ok {
            return;
        }
        let _ = s.identity();
        assert!(
            s.snapshot_size() < 4 << 20,
            "adapter state {} bytes",
            s.snapshot_size()
        );
    }
});
