//! The native load programs of `scripts/bench.sh` (no Python in any timed path).
//!
//! ```text
//! bench echo-server  --listen ADDR                      echo every byte back
//! bench idle-backend --listen ADDR --mode raw|irc       hold sessions; irc: minimal registration
//! bench latency      --connect ADDR [--count N]         ~100-byte line request/echo round trips
//! bench accept-rate  --connect ADDR [--secs S]          new sessions per second (connect, echo, close)
//! bench hold         --connect ADDR --count N --mode raw|irc
//!                                                       open N idle sessions, then obey stdin:
//!                                                       `check` (irc: PING each, count PONGs), `quit`,
//!                                                       `move ADDR N` (irc: each session does by
//!                                                       itself what a migration asks of the
//!                                                       servers, N at once: the floor a drain
//!                                                       is compared with)
//! ```
//!
//! Every program prints one JSON object per result on stdout, listens on or connects to the
//! address it is given only, and stops by itself (counts and times are bounded).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

#[derive(Parser)]
#[command(about = "handover's benchmark load programs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Raw,
    Irc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server: writes back every byte it reads (one thread, tokio current-thread).
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// An idle backend. raw: sends an 8-byte banner and discards input; irc: answers
    /// NICK+USER with 001..376 and PING with PONG.
    IdleBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, value_enum)]
        mode: Mode,
    },
    /// Round-trip latency of IRC-sized lines over one connection (blocking I/O, nodelay).
    Latency {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long, default_value_t = 1_000)]
        warmup: usize,
        /// Line length in bytes, CRLF included.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Also write every sample (microseconds, one a line) here.
        #[arg(long)]
        samples: Option<std::path::PathBuf>,
    },
    /// New sessions per second: each connects, sends 4 bytes, waits for their echo, closes.
    AcceptRate {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Hard cap on sessions opened.
        #[arg(long, default_value_t = 200_000)]
        max: u64,
    },
    /// Opens `count` idle sessions, prints `{"ready":..}`, then reads commands on stdin.
    Hold {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Sessions being set up at once (ngircd's listen backlog is 10).
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Nick prefix (irc).
        #[arg(long, default_value = "b")]
        prefix: String,
        /// At most this many new sessions a second (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Gives up and exits after this long whatever happens.
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Latency {
            connect,
            count,
            warmup,
            size,
            samples,
        } => latency(connect, count, warmup, size, samples),
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match cmd {
                    Cmd::EchoServer { listen } => echo_server(listen).await,
                    Cmd::IdleBackend { listen, mode } => idle_backend(listen, mode).await,
                    Cmd::AcceptRate {
                        connect,
                        secs,
                        concurrency,
                        max,
                    } => accept_rate(connect, secs, concurrency, max).await,
                    Cmd::Hold {
                        connect,
                        count,
                        mode,
                        concurrency,
                        prefix,
                        rate,
                        max_secs,
                    } => hold(connect, count, mode, concurrency, prefix, rate, max_secs).await,
                    Cmd::Latency { .. } => unreachable!(),
                }
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// servers

async fn echo_server(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

async fn idle_backend(listen: SocketAddr, mode: Mode) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = match mode {
                Mode::Raw => idle_raw(tcp).await,
                Mode::Irc => idle_irc(tcp).await,
            };
        });
    }
}

async fn idle_raw(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.write_all(b"banner\r\n").await?;
    let mut buf = [0u8; 256];
    while tcp.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Just enough IRC for a proxy (and handover's IRC adapter) to see a registered session.
async fn idle_irc(tcp: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::with_capacity(512, r);
    let mut line = String::new();
    let (mut nick, mut user) = (None::<String>, false);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("NICK") => nick = words.next().map(str::to_string),
            Some("USER") => user = true,
            Some("PING") => {
                let token = line.trim_end()[4..].trim_start();
                w.write_all(format!(":idle.bench PONG idle.bench {token}\r\n").as_bytes())
                    .await?;
                continue;
            }
            _ => continue,
        }
        if let (Some(n), true) = (&nick, user) {
            let burst = format!(
                ":idle.bench 001 {n} :Welcome {n}\r\n:idle.bench 002 {n} :Your host is idle.bench\r\n\
                 :idle.bench 003 {n} :This server was created today\r\n\
                 :idle.bench 004 {n} idle.bench bench-1 io ov\r\n\
                 :idle.bench 005 {n} CASEMAPPING=ascii CHANTYPES=# :are supported\r\n\
                 :idle.bench 422 {n} :MOTD File is missing\r\n"
            );
            w.write_all(burst.as_bytes()).await?;
            user = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// latency

fn latency(
    addr: SocketAddr,
    count: usize,
    warmup: usize,
    size: usize,
    samples_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut s = StdTcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // An IRC-shaped line: "PRIVMSG #bench :xxxx…\r\n", `size` bytes in all.
    let head = b"PRIVMSG #bench :";
    let size = size.max(head.len() + 3);
    let mut line = Vec::with_capacity(size);
    line.extend_from_slice(head);
    while line.len() < size - 2 {
        line.push(b'a' + (line.len() % 26) as u8);
    }
    line.extend_from_slice(b"\r\n");
    let mut buf = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        s.write_all(&line)?;
        s.read_exact(&mut buf)?;
        let dt = t0.elapsed();
        if buf != line {
            anyhow::bail!("echo differs from what was sent");
        }
        if i >= warmup {
            samples.push(dt.as_nanos() as u64);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    if let Some(path) = samples_path {
        let text: String = samples
            .iter()
            .map(|ns| format!("{:.3}\n", *ns as f64 / 1000.0))
            .collect();
        std::fs::write(path, text)?;
    }
    samples.sort_unstable();
    let q = |f: f64| {
        let i = ((samples.len() as f64 * f) as usize).min(samples.len() - 1);
        samples[i] as f64 / 1000.0
    };
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
    println!(
        "{{\"count\":{},\"p50_us\":{:.2},\"p90_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2},\"mean_us\":{:.2}}}",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(0.0),
        q(1.0),
        mean
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// accept rate

/// Closes with RST (SO_LINGER 0) so the client side leaves no TIME_WAIT behind.
fn close_rst(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn accept_rate(
    addr: SocketAddr,
    secs: f64,
    concurrency: usize,
    max: u64,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, failed, started, stop) =
            (done.clone(), failed.clone(), started.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end
                && !stop.load(Ordering::Relaxed)
                && started.fetch_add(1, Ordering::Relaxed) < max
            {
                let t = Instant::now();
                let one = async {
                    let mut tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    tcp.write_all(b"hi\r\n").await?;
                    let mut b = [0u8; 4];
                    tcp.read_exact(&mut b).await?;
                    close_rst(tcp);
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => {
                        if failed.fetch_add(1, Ordering::Relaxed) > 1000 {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"sessions\":{n},\"failed\":{},\"secs\":{elapsed:.3},\"per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / elapsed,
        q(0.5),
        q(0.99)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hold: many idle sessions

#[derive(Default)]
struct HoldStats {
    ready: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    welcomes_after_ready: AtomicU64,
    pongs: AtomicU64,
    moved: AtomicU64,
    move_failed: AtomicU64,
    /// NICK lines a client saw: a migration's visible trace (the bench never renames).
    nick_changes: AtomicU64,
}

/// A `move` order: where to, and how many sessions move at once.
struct MoveOrder {
    to: SocketAddr,
    slots: Arc<Semaphore>,
}

/// The `cmd` value that orders a move (check rounds count up from 1).
const MOVE: u64 = u64::MAX - 1;

async fn hold(
    addr: SocketAddr,
    count: usize,
    mode: Mode,
    concurrency: usize,
    prefix: String,
    rate: f64,
    max_secs: u64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let start = tokio::time::Instant::now();
    let hard_end = tokio::time::sleep(Duration::from_secs(max_secs));
    let stats = Arc::new(HoldStats::default());
    let setup = Arc::new(Semaphore::new(concurrency.max(1)));
    // 0: hold; n > 0: check round n (PING with that token); u64::MAX: quit.
    let (cmd_tx, cmd_rx) = watch::channel(0u64);
    let order: Arc<std::sync::OnceLock<MoveOrder>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (stats, setup, cmd_rx) = (stats.clone(), setup.clone(), cmd_rx.clone());
        let order = order.clone();
        let nick = format!("{prefix}{i}");
        tasks.spawn(async move {
            if rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
            }
            let permit = setup.acquire_owned().await.expect("never closed");
            match tokio::time::timeout(Duration::from_secs(60), open(addr, mode, &nick)).await {
                Ok(Ok(conn)) => {
                    stats.ready.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    idle(conn, mode, &nick, stats, cmd_rx, order).await;
                }
                _ => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::pin!(hard_end);
    // Wait for every session to be set up (or to fail).
    loop {
        let r = stats.ready.load(Ordering::Relaxed);
        let f = stats.failed.load(Ordering::Relaxed);
        if r + f >= count as u64 {
            break;
        }
        tokio::select! {
            _ = &mut hard_end => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    println!(
        "{{\"ready\":{},\"failed\":{},\"secs\":{:.3}}}",
        stats.ready.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut round = 0u64;
    loop {
        let line = tokio::select! {
            _ = &mut hard_end => None,
            l = stdin.next_line() => l.ok().flatten(),
        };
        match line.as_deref().map(str::trim) {
            Some("check") => {
                round += 1;
                stats.pongs.store(0, Ordering::Relaxed);
                let _ = cmd_tx.send(round);
                let t = Instant::now();
                let want = stats.ready.load(Ordering::Relaxed);
                while stats.pongs.load(Ordering::Relaxed) + stats.closed.load(Ordering::Relaxed)
                    < want
                    && t.elapsed() < Duration::from_secs(30)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                println!(
                    "{{\"check\":{round},\"pongs\":{},\"closed\":{},\"welcomes_after_ready\":{},\"nick_changes\":{},\"secs\":{:.3}}}",
                    stats.pongs.load(Ordering::Relaxed),
                    stats.closed.load(Ordering::Relaxed),
                    stats.welcomes_after_ready.load(Ordering::Relaxed),
                    stats.nick_changes.load(Ordering::Relaxed),
                    t.elapsed().as_secs_f64()
                );
            }
            Some(l) if l.starts_with("move ") && mode == Mode::Irc => {
                let mut words = l.split_whitespace().skip(1);
                let to = words.next().and_then(|a| a.parse().ok());
                let at_once = words.next().and_then(|n| n.parse().ok()).unwrap_or(10);
                let Some(to) = to else { break };
                let slots = Arc::new(Semaphore::new(at_once));
                if order.set(MoveOrder { to, slots }).is_err() {
                    break; // one move per run
                }
                let t = Instant::now();
                let _ = cmd_tx.send(MOVE);
                let want = stats.ready.load(Ordering::Relaxed);
                let done = || {
                    stats.moved.load(Ordering::Relaxed) + stats.move_failed.load(Ordering::Relaxed)
                };
                while done() < want && t.elapsed() < Duration::from_secs(300) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                println!(
                    "{{\"moved\":{},\"failed\":{},\"secs\":{:.3}}}",
                    stats.moved.load(Ordering::Relaxed),
                    stats.move_failed.load(Ordering::Relaxed),
                    t.elapsed().as_secs_f64()
                );
            }
            Some("") => continue,
            _ => break,
        }
    }
    let _ = cmd_tx.send(u64::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

type Conn = BufReader<TcpStream>;

/// Connects and sets a session up: raw reads the backend's banner after saying hello; irc
/// registers and waits for 001.
async fn open(addr: SocketAddr, mode: Mode, nick: &str) -> std::io::Result<Conn> {
    let tcp = TcpSocket::new_v4()?.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut conn = BufReader::with_capacity(1024, tcp);
    match mode {
        Mode::Raw => {
            conn.get_mut().write_all(b"hello\r\n").await?;
            let mut banner = [0u8; 8];
            conn.read_exact(&mut banner).await?;
        }
        Mode::Irc => {
            conn.get_mut()
                .write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :bench\r\n").as_bytes())
                .await?;
            let mut line = String::new();
            loop {
                line.clear();
                if conn.read_line(&mut line).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if let Some(rest) = line.strip_prefix("PING") {
                    conn.get_mut()
                        .write_all(format!("PONG{rest}").as_bytes())
                        .await?;
                }
                if line.split_whitespace().nth(1) == Some("001") {
                    break;
                }
            }
        }
    }
    Ok(conn)
}

/// Holds a session: answers the server's PINGs, counts welcomes and closes, and on a check
/// round sends `PING :chk<round>` and counts the PONG.
async fn idle(
    mut conn: Conn,
    mode: Mode,
    nick: &str,
    stats: Arc<HoldStats>,
    mut cmd: watch::Receiver<u64>,
    order: Arc<std::sync::OnceLock<MoveOrder>>,
) {
    // read_until (unlike read_line) is cancel-safe: a partial line stays in `raw`.
    let mut raw = Vec::new();
    loop {
        tokio::select! {
            changed = cmd.changed() => {
                let round = *cmd.borrow_and_update();
                if changed.is_err() || round == u64::MAX {
                    close_rst(conn.into_inner());
                    return;
                }
                if round == MOVE {
                    let Some(order) = order.get() else { continue };
                    let slot = order.slots.acquire().await;
                    let moved = tokio::time::timeout(
                        Duration::from_secs(60),
                        move_by_hand(&mut conn, order.to, nick),
                    );
                    let moved = moved.await;
                    drop(slot);
                    match moved {
                        Ok(Ok(new)) => {
                            conn = new;
                            raw.clear();
                            stats.moved.fetch_add(1, Ordering::Relaxed);
                        }
                        failed => {
                            let why = match failed {
                                Err(_) => "timed out".to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Ok(Ok(_)) => unreachable!(),
                            };
                            eprintln!("bench hold: {nick} did not move: {why}");
                            stats.move_failed.fetch_add(1, Ordering::Relaxed);
                            let _ = cmd.wait_for(|r| *r == u64::MAX).await;
                            return;
                        }
                    }
                    continue;
                }
                if mode == Mode::Irc
                    && conn.get_mut().write_all(format!("PING :chk{round}\r\n").as_bytes()).await.is_err()
                {
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if mode == Mode::Raw {
                    stats.pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
            r = conn.read_until(b'\n', &mut raw) => {
                match r {
                    Ok(0) | Err(_) => {
                        stats.closed.fetch_add(1, Ordering::Relaxed);
                        // Keep the socket until told to quit so the count stays honest.
                        let _ = cmd.wait_for(|r| *r == u64::MAX).await;
                        return;
                    }
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw);
                if mode == Mode::Irc {
                    let mut words = line.split_whitespace();
                    let first = words.next();
                    if first == Some("PING") {
                        let reply = format!("PONG{}", &line[4..]);
                        let _ = conn.get_mut().write_all(reply.as_bytes()).await;
                    } else {
                        match words.next() {
                            Some("001") => {
                                stats.welcomes_after_ready.fetch_add(1, Ordering::Relaxed);
                            }
                            Some("PONG") if line.contains(":chk") => {
                                stats.pongs.fetch_add(1, Ordering::Relaxed);
                            }
                            Some("NICK") => {
                                stats.nick_changes.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
                raw.clear();
            }
        }
    }
}

/// What a migration asks of the servers, done by the client itself with no proxy: register a
/// temporary nick on `to` and wait for the end of its burst (a PING barrier), a PING round
/// trip on the old server (the flush mark), QUIT there and wait for it to close, then take the
/// real nick on `to` (again after a back-off on 433, as handover does). The drain's floor:
/// the backends' work.
async fn move_by_hand(old: &mut Conn, to: SocketAddr, nick: &str) -> std::io::Result<Conn> {
    let temp = format!("{nick}_m");
    let mut new = open(to, Mode::Irc, &temp).await?;
    new.get_mut().write_all(b"PING :reg\r\n").await?;
    wait_for(&mut new, |l| {
        l.contains("PONG") && l.trim_end().ends_with(":reg")
    })
    .await?;
    old.get_mut().write_all(b"PING :flush\r\n").await?;
    wait_for(old, |l| {
        l.contains("PONG") && l.trim_end().ends_with(":flush")
    })
    .await?;
    old.get_mut().write_all(b"QUIT :moving\r\n").await?;
    let mut sink = Vec::new();
    while old.read_until(b'\n', &mut sink).await? > 0 {
        sink.clear();
    }
    let mut backoff = Duration::from_millis(5);
    for _ in 0..40 {
        new.get_mut()
            .write_all(format!("NICK {nick}\r\n").as_bytes())
            .await?;
        let echo = " NICK ";
        let line = wait_for(&mut new, |l| {
            l.contains(echo) || l.split_whitespace().nth(1) == Some("433")
        })
        .await?;
        if line.contains(echo) {
            return Ok(new);
        }
        // Still taken: b has not read a's QUIT yet. Ask again after a back-off.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
    Err(std::io::ErrorKind::AddrInUse.into())
}

/// Reads lines (answering PINGs) until one matches; returns it.
async fn wait_for(conn: &mut Conn, want: impl Fn(&str) -> bool) -> std::io::Result<String> {
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if conn.read_until(b'\n', &mut raw).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&raw).into_owned();
        if let Some(rest) = line.strip_prefix("PING") {
            conn.get_mut()
                .write_all(format!("PONG{rest}").as_bytes())
                .await?;
            continue;
        }
        if want(&line) {
            return Ok(line);
        }
    }
}
