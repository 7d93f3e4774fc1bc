//! When the process has no file descriptor left for a pipe, a raw session copies instead of
//! splicing, and splices again once descriptors are free. Its own test binary: it lowers the
//! process's descriptor limit and uses every descriptor up, which other tests must not see.

mod common;

use std::time::Duration;

use common::bulk;
use common::proxy;
use handover::admin::api::ControlApi;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_session_copies_and_then_splices_again() {
    let backend = bulk::echo_backend().await;
    let text = proxy::config(
        "raw",
        &[("a", backend.to_string())],
        "",
        "[health]\ninterval_ms = 60000\n",
    );
    let running = proxy::start(&text).await;
    let spliced = || bulk::spliced(&running.engine.metrics_text());
    let mut sock = TcpStream::connect(running.listener("main")).await.unwrap();
    bulk::round_trip(&mut sock, 0, 1024).await;

    // Every descriptor taken (under a lowered limit, so this stays quick).
    let limit = getrlimit(Resource::Nofile);
    let low = limit.current.map_or(1024, |c| c.min(1024));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(low),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let mut hogs = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hogs.push(f);
    }
    assert!(rustix::pipe::pipe().is_err(), "a pipe could still be made");

    bulk::round_trip(&mut sock, 1024, 16 * MIB).await;
    assert_eq!(spliced(), (0, 0), "no pipe, so nothing spliced");

    drop(hogs);
    setrlimit(Resource::Nofile, limit).unwrap();
    bulk::round_trip(&mut sock, 1024 + 16 * MIB, 16 * MIB).await;
    let (c2b, b2c) = spliced();
    assert!(c2b > 0 && b2c > 0, "splicing again: {c2b} / {b2c}");
    running.shutdown(Duration::from_secs(2)).await;
}
