//! Proves the test harness itself, with no proxy in between: real linked IRC
//! servers (tests/common/ircd.rs) and real clients (tests/clients/irc_chat.py).
//! Needs `scripts/install-test-deps.sh` to have run (servers + ./venv); the
//! tests fail, never skip, when something is missing.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::irc_chat::{check_clean_session, check_received, venv_python, ChatSpec, PRIVATE};
use common::ircd::{try_register, IrcNetwork, IrcdKind, Options, REFUSE_PASSWORD};

const MESSAGES: u32 = 100;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// C on A and D on B exchange numbered messages in three channels (one keyed)
/// and privately; each must get every message of the other exactly once, in
/// order, after exactly one welcome burst.
fn exchange(kind: IrcdKind) -> Result<()> {
    venv_python()?;
    let t0 = Instant::now();
    let net = IrcNetwork::start(kind)?;
    let started = t0.elapsed();
    let start = net.dir.join("start");
    let c = ChatSpec::new(net.a.client_port, "chatC")
        .channels("#alpha,#beta sekrit,#gamma")
        .peer("chatD")
        .count(MESSAGES)
        .rate(80.0)
        .umode("+i")
        .start_file(&start);
    // D lists the channels in another order, so the per-target streams differ.
    let d = ChatSpec::new(net.b.client_port, "chatD")
        .channels("#gamma,#beta sekrit,#alpha")
        .peer("chatC")
        .count(MESSAGES)
        .rate(80.0)
        .away("not here")
        .start_file(&start);
    let mut cc = c.spawn(&net.dir)?;
    let mut dc = d.spawn(&net.dir)?;
    cc.wait_ready(CLIENT_TIMEOUT)?;
    dc.wait_ready(CLIENT_TIMEOUT)?;
    std::fs::write(&start, "go")?;
    let rc = cc.wait(CLIENT_TIMEOUT)?;
    let rd = dc.wait(CLIENT_TIMEOUT)?;
    eprintln!(
        "{kind:?}: network up in {started:?}, whole exchange {:?}",
        t0.elapsed()
    );

    check_received(&rc, &d)?;
    check_received(&rd, &c)?;
    for r in [&rc, &rd] {
        check_clean_session(r, 3)?;
    }
    // D is away: the server answers each private message to D with 301 RPL_AWAY.
    let pms_to_d = c.expected_at_peer(PRIVATE).len() as u64;
    ensure!(
        rc.count("301") == pms_to_d,
        "C: 301 count != {pms_to_d}\n{}",
        rc.describe()
    );
    ensure!(
        rd.count("306") == 1,
        "D: no 306 (now away)\n{}",
        rd.describe()
    );
    ensure!(
        rc.json["server_name"] == net.a.name.as_str(),
        "C not on A\n{}",
        rc.describe()
    );
    ensure!(
        rd.json["server_name"] == net.b.name.as_str(),
        "D not on B\n{}",
        rd.describe()
    );
    Ok(())
}

#[test]
fn ngircd_clients_exchange_exactly_once_in_order() -> Result<()> {
    exchange(IrcdKind::Ngircd)
}

#[test]
fn inspircd_clients_exchange_exactly_once_in_order() -> Result<()> {
    exchange(IrcdKind::Inspircd)
}

/// kill_a is a real SIGKILL (port closed, B unaffected); restart_a reuses the
/// ports and returns only once relinked; restart_b likewise.
fn kill_restart(kind: IrcdKind) -> Result<()> {
    let mut net = IrcNetwork::start(kind)?;
    let pid = net.pid_a().expect("A runs");
    net.kill_a()?;
    ensure!(net.pid_a().is_none());
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    ensure!(
        TcpStream::connect(net.a.client_addr()).is_err(),
        "A's port still accepts"
    );
    try_register(net.b.client_addr(), "alone", None, REGISTER_TIMEOUT)?;
    ensure!(
        net.wait_linked(Duration::from_secs(1)).is_err(),
        "linked without A?"
    );

    let t = Instant::now();
    net.restart_a()?;
    eprintln!("{kind:?}: restart_a relinked in {:?}", t.elapsed());
    ensure!(net.pid_a().is_some_and(|p| p != pid));
    let lines = try_register(net.a.client_addr(), "back", None, REGISTER_TIMEOUT)?;
    ensure!(
        lines
            .last()
            .is_some_and(|l| l.starts_with(&format!(":{} 001", net.a.name))),
        "{lines:?}"
    );

    let t = Instant::now();
    net.restart_b()?;
    eprintln!("{kind:?}: restart_b relinked in {:?}", t.elapsed());
    Ok(())
}

#[test]
fn ngircd_kill_and_restart_relinks() -> Result<()> {
    kill_restart(IrcdKind::Ngircd)
}

#[test]
fn inspircd_kill_and_restart_relinks() -> Result<()> {
    kill_restart(IrcdKind::Inspircd)
}

/// With b_refuses_clients, B closes every registration without the password
/// with an ERROR line (what a migration-abort test observes), while A accepts
/// clients and the A<->B link works (start() verified it with the password).
fn refuse(kind: IrcdKind) -> Result<()> {
    venv_python()?;
    let mut net = IrcNetwork::start_with(
        kind,
        Options {
            b_refuses_clients: true,
        },
    )?;
    ensure!(net.b.refuses_clients && !net.a.refuses_clients);
    ensure!(net.b.client_password.as_deref() == Some(REFUSE_PASSWORD));

    let err = try_register(net.b.client_addr(), "refused", None, REGISTER_TIMEOUT)
        .expect_err("B must refuse a client without the password");
    ensure!(
        format!("{err:#}").contains("ERROR"),
        "no ERROR line: {err:#}"
    );
    try_register(net.a.client_addr(), "welcome", None, REGISTER_TIMEOUT)?;
    try_register(
        net.b.client_addr(),
        "withpass",
        Some(REFUSE_PASSWORD),
        REGISTER_TIMEOUT,
    )?;
    net.wait_linked(Duration::from_secs(10))?;

    // A real client sees the refusal as a disconnect before 001.
    let r = ChatSpec::new(net.b.client_port, "chatR")
        .channels("#x")
        .duration_limit(15.0)
        .spawn(&net.dir)?
        .wait(CLIENT_TIMEOUT)?;
    ensure!(r.exit_code == Some(1), "exit code\n{}", r.describe());
    ensure!(
        !r.flag("registered") && r.flag("disconnected"),
        "{}",
        r.describe()
    );
    ensure!(
        r.count("001") == 0 && r.count("ERROR") == 1,
        "{}",
        r.describe()
    );
    Ok(())
}

#[test]
fn ngircd_b_refuses_clients_while_linked() -> Result<()> {
    refuse(IrcdKind::Ngircd)
}

#[test]
fn inspircd_b_refuses_clients_while_linked() -> Result<()> {
    refuse(IrcdKind::Inspircd)
}

/// The async variants run the probe off the runtime thread: a task on the same
/// current-thread runtime keeps ticking while restart_a_async waits.
#[tokio::test]
async fn async_api_does_not_block_the_runtime() -> Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let mut net = IrcNetwork::start_async(IrcdKind::Ngircd, Options::default()).await?;
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t = Instant::now();
    net.restart_a_async().await?;
    let (elapsed, n) = (t.elapsed(), ticks.load(Ordering::Relaxed));
    ticker.abort();
    // At least half the 10 ms ticks the elapsed time allows must have run.
    let want = (elapsed.as_millis() / 20) as u32;
    ensure!(
        n >= want.max(5),
        "runtime blocked: {n} ticks in {elapsed:?}"
    );
    try_register(net.a.client_addr(), "asyncok", None, REGISTER_TIMEOUT)?;
    Ok(())
}
