//! The soak's IRC clients: each registers through handover, joins its channel, and then sends
//! numbered channel messages (`soak <sender> <seq> <ms>`) at a steady rate while recording
//! every numbered message it receives, every welcome, and whether its socket ever closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Phases every client follows, driven by the soak's main task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Registered and joined; wait.
    Ready,
    /// Send numbered messages.
    Send,
    /// Stop sending, keep reading.
    Quiet,
    /// Quit and report.
    Quit,
}

pub struct Shared {
    pub started: Instant,
    pub phase: watch::Receiver<Phase>,
    pub joined: AtomicUsize,
    /// Set when any client's socket closes before the end.
    pub disconnected: AtomicBool,
}

/// What one client saw and did.
#[derive(Debug, Default)]
pub struct Report {
    pub index: usize,
    pub channel: usize,
    /// The client's own port, as handover's log names it (`client.addr`).
    pub port: u16,
    /// Sequence numbers sent, with the send time (ms since the start).
    pub sent: Vec<(u64, u64)>,
    /// Per sender: the sequence numbers received, in arrival order.
    pub received: HashMap<usize, Vec<u64>>,
    pub welcomes: usize,
    /// Why the socket closed early, if it did.
    pub disconnect: Option<String>,
    /// Lines that were not PRIVMSG noise we expect (ERROR, KILL, ...), for the report.
    pub odd: Vec<String>,
}

pub fn nick(i: usize) -> String {
    format!("soak{i}")
}

pub fn channel(c: usize) -> String {
    format!("#soak{c}")
}

/// Runs one client to the end.
pub async fn run(
    addr: SocketAddr,
    index: usize,
    channels: usize,
    interval: Duration,
    shared: Arc<Shared>,
) -> Report {
    let mut report = Report {
        index,
        channel: index % channels,
        ..Report::default()
    };
    if let Err(e) = drive(addr, &mut report, interval, &shared).await {
        shared.disconnected.store(true, Ordering::Relaxed);
        report.disconnect = Some(format!("{e:#}"));
    }
    report
}

async fn drive(
    addr: SocketAddr,
    report: &mut Report,
    interval: Duration,
    shared: &Shared,
) -> Result<()> {
    let sock = TcpStream::connect(addr).await.context("connect")?;
    report.port = sock.local_addr()?.port();
    let (rd, mut wr) = sock.into_split();
    let mut lines = BufReader::new(rd).lines();
    let me = nick(report.index);
    let chan = channel(report.channel);
    wr.write_all(format!("NICK {me}\r\nUSER {me} 0 * :soak client\r\n").as_bytes())
        .await?;
    // Registration and join, before the clock starts.
    let mut joined = false;
    while !joined {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("registration timed out")??
            .context("closed during registration")?;
        if let Some(reply) = ping_reply(&line) {
            wr.write_all(reply.as_bytes()).await?;
        }
        if numeric(&line) == Some("001") {
            report.welcomes += 1;
            wr.write_all(format!("JOIN {chan}\r\n").as_bytes()).await?;
        }
        if numeric(&line) == Some("366") {
            joined = true;
        }
    }
    shared.joined.fetch_add(1, Ordering::Relaxed);
    let mut phase = shared.phase.clone();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(interval);
    // Spread the senders over the interval.
    tick.reset_after(interval.mul_f64((report.index % 97) as f64 / 97.0));
    loop {
        let now_phase = *phase.borrow();
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { bail!("the server closed the connection") };
                if let Some(reply) = ping_reply(&line) {
                    wr.write_all(reply.as_bytes()).await?;
                }
                record(report, &line);
            }
            _ = tick.tick(), if now_phase == Phase::Send => {
                seq += 1;
                let ms = shared.started.elapsed().as_millis() as u64;
                report.sent.push((seq, ms));
                let text = format!("PRIVMSG {chan} :soak {} {seq} {ms}\r\n", report.index);
                wr.write_all(text.as_bytes()).await?;
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Quit {
                    break;
                }
            }
        }
    }
    let _ = wr.write_all(b"QUIT :soak over\r\n").await;
    Ok(())
}

fn ping_reply(line: &str) -> Option<String> {
    line.strip_prefix("PING ")
        .map(|token| format!("PONG {token}\r\n"))
}

fn numeric(line: &str) -> Option<&str> {
    let mut words = line.split(' ');
    if line.starts_with(':') {
        words.next();
    }
    words.next()
}

fn record(report: &mut Report, line: &str) {
    match numeric(line) {
        Some("PRIVMSG") => {
            let Some((_, text)) = line.split_once(" :") else {
                return;
            };
            let mut words = text.split(' ');
            if words.next() != Some("soak") {
                return;
            }
            let sender = words.next().and_then(|w| w.parse().ok());
            let seq = words.next().and_then(|w| w.parse().ok());
            if let (Some(sender), Some(seq)) = (sender, seq) {
                report.received.entry(sender).or_default().push(seq);
            }
        }
        Some("001") => report.welcomes += 1,
        Some("ERROR" | "KILL" | "433" | "401") if report.odd.len() < 20 => {
            report.odd.push(line.to_string());
        }
        _ => {}
    }
}
