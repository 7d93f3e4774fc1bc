//! IRC at scale and the client's identity, on real linked servers:
//! - 500 sessions drained off a real ngircd, paced for its listen backlog of 10, none closed;
//! - the backend sees the client's real address through WEBIRC (ngircd) and PROXY v2
//!   (inspircd), before and after a migration.
//!
//! The clients here are small raw IRC clients: the claims are about the proxy (pacing, no
//! session closed, what the server sees), not about client behaviour.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::ircd::{IrcNetwork, IrcdKind, WEBIRC_PASSWORD};
use common::proxy;
use handover::admin::api::ControlApi;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// A minimal IRC client: registers, answers PING, reads lines.
struct Raw {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    nick: String,
    /// What the client read while registering and joining, for failure messages.
    history: Vec<String>,
}

impl Raw {
    /// Connects from `from` (any 127.x address: all of 127/8 is loopback) and registers.
    async fn connect(to: SocketAddr, from: Option<IpAddr>, nick: &str) -> Result<Raw> {
        let stream = match from {
            None => TcpStream::connect(to).await?,
            Some(ip) => {
                let s = TcpSocket::new_v4()?;
                s.bind(SocketAddr::new(ip, 0))?;
                s.connect(to).await?
            }
        };
        let (r, w) = stream.into_split();
        let mut c = Raw {
            lines: BufReader::new(r).lines(),
            w,
            nick: nick.to_string(),
            history: Vec::new(),
        };
        c.send(&format!(
            "NICK {nick}\r\nUSER {nick} 0 * :raw test client\r\n"
        ))
        .await?;
        c.history = c
            .until(
                |l| l.split(' ').nth(1) == Some("001"),
                Duration::from_secs(20),
            )
            .await?;
        Ok(c)
    }

    async fn send(&mut self, text: &str) -> Result<()> {
        self.w.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// Reads lines (answering PING) until one matches; returns every line read.
    async fn until(&mut self, done: impl Fn(&str) -> bool, limit: Duration) -> Result<Vec<String>> {
        let mut seen = Vec::new();
        let end = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(end, self.lines.next_line())
                .await
                .with_context(|| format!("{}: timed out; saw {seen:?}", self.nick))??
                .with_context(|| format!("{}: connection closed; saw {seen:?}", self.nick))?;
            if let Some(rest) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {rest}\r\n")).await?;
            }
            let hit = done(&line);
            seen.push(line);
            if hit {
                return Ok(seen);
            }
        }
    }

    /// The host part of `nick`'s WHOIS reply (311) as this server sees it.
    /// The host the network shows for `nick`; asked again (up to 3 s) while the other server
    /// does not know the nick yet (401: it has not crossed the server link).
    async fn whois_host(&mut self, nick: &str) -> Result<String> {
        let mut lines = Vec::new();
        for _ in 0..30 {
            self.send(&format!("WHOIS {nick}\r\n")).await?;
            lines = self
                .until(
                    |l| l.split(' ').nth(1) == Some("318"),
                    Duration::from_secs(10),
                )
                .await?;
            if let Some(line) = lines.iter().find(|l| l.split(' ').nth(1) == Some("311")) {
                // :server 311 me nick user host * :real
                return Ok(line.split(' ').nth(5).unwrap_or_default().to_string());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("no 311 for {nick}: {lines:?}")
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

#[test]
fn five_hundred_sessions_drain_off_ngircd_paced_and_none_closed() -> Result<()> {
    const N: usize = 500;
    let net = IrcNetwork::start(IrcdKind::Ngircd)?;
    let rt = runtime()?;
    rt.block_on(async {
        // ngircd's listen backlog is 10: at most 8 registrations in flight.
        let text = proxy::config(
            "irc",
            &[("a", net.a.client_addr().to_string()), ("b", net.b.client_addr().to_string())],
            "",
            "[migration]\nmax_concurrent = 8\nmax_per_second = 1000\n[health]\ninterval_ms = 60000\n",
        );
        let running = proxy::start(&text).await;
        let engine = running.engine.clone();
        let addr = running.listener("main");
        engine.drain("b").unwrap();
        // Connect paced as well (8 at a time); 50 channels of 8, as on a real network (one
        // channel of 500 makes every move a 1500-line broadcast, and ngircd 26.1's compressed
        // server link breaks under that load: a netsplit, not a test of handover). Every fifth
        // client joins no channel: b relays it no QUIT, so its nick comes back another way.
        let slots = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for i in 0..N {
            let permit = slots.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let mut c = Raw::connect(addr, None, &format!("m{i}")).await?;
                if i % 5 != 0 {
                    c.send(&format!("JOIN #mass{}\r\n", i % 50)).await?;
                    let joined =
                        c.until(|l| l.split(' ').nth(1) == Some("366"), Duration::from_secs(20)).await?;
                    c.history.extend(joined);
                }
                drop(permit);
                anyhow::Ok(c)
            }));
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await??);
        }
        ensure!(engine.sessions().iter().all(|s| s.backend == "a"), "all start on a");
        engine.undrain("b").unwrap();

        // Like real clients, every one keeps reading (and answering PING) during the drain: a
        // client that never reads is rightly disconnected by the server when its sendq fills.
        let stop = tokio_util::sync::CancellationToken::new();
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return anyhow::Ok((c, seen)),
                            line = c.lines.next_line() => {
                                let line = line?.with_context(|| format!("{} was disconnected", c.nick))?;
                                if let Some(rest) = line.strip_prefix("PING ") {
                                    c.send(&format!("PONG {rest}\r\n")).await?;
                                }
                                seen.push(line);
                            }
                        }
                    }
                })
            })
            .collect();

        let t = Instant::now();
        let done = engine.drain_wait("a").await.map_err(anyhow::Error::msg)?;
        let took = t.elapsed();
        eprintln!("drained {N} IRC sessions off ngircd in {took:?} (max_concurrent 8): {done:?}");
        ensure!(done.state == "drained" && done.migrated == N as u64 && done.failed == 0, "{done:?}");
        let sessions = engine.sessions();
        ensure!(
            sessions.len() == N && sessions.iter().all(|s| s.backend == "b"),
            "{} sessions, not on b: {:?}",
            sessions.len(),
            sessions.iter().filter(|s| s.backend != "b").collect::<Vec<_>>()
        );

        stop.cancel();
        // Every client is still connected, on b, and saw nothing: each asks b a question; what
        // it read during the drain and up to the answer holds no second welcome or own JOIN.
        let mut checks = Vec::new();
        for (i, reader) in readers.into_iter().enumerate() {
            let (mut c, mut lines) = reader.await??;
            checks.push(tokio::spawn(async move {
                c.send(&format!("PING :check{i}\r\n")).await?;
                lines.extend(c.until(|l| l.ends_with(&format!("check{i}")), Duration::from_secs(30)).await?);
                // Others' temporary nicks joining are the visible trace for other users;
                // the client's own JOIN, a second 001 or its temporary nick (a NICK line
                // when the reclaim gave up) would be a glitch.
                let own_join = format!(":m{i}!");
                let temp = format!("m{i}_");
                let glitches: Vec<&String> = lines
                    .iter()
                    .filter(|l| {
                        l.split(' ').nth(1) == Some("001")
                            || (l.starts_with(&own_join) && l.contains(" JOIN "))
                            || l.contains(&temp)
                    })
                    .collect();
                ensure!(glitches.is_empty(), "m{i} saw {glitches:?}; while joining it read {:?}", c.history);
                ensure!(lines.last().unwrap().starts_with(":b.irc.test PONG"), "{lines:?}");
                anyhow::Ok(())
            }));
        }
        for c in checks {
            c.await??;
        }
        running.shutdown(Duration::from_secs(5)).await;
        Ok(())
    })
}

/// C connects from 127.0.0.77; D, on B, asks the server who C is, before and after a drain.
async fn identity_scenario(
    net: &IrcNetwork,
    backend_a: SocketAddr,
    backend_b: SocketAddr,
    backend_extra: &str,
) -> Result<()> {
    let mut text = proxy::config(
        "irc",
        &[("a", backend_a.to_string()), ("b", backend_b.to_string())],
        "",
        "[migration]\nregister_timeout_ms = 15000\n[health]\ninterval_ms = 60000\n",
    );
    for name in ["a", "b"] {
        text = text.replace(
            &format!("name = \"{name}\"\n"),
            &format!("name = \"{name}\"\n{backend_extra}\n"),
        );
    }
    let running = proxy::start(&text).await;
    let engine = running.engine.clone();
    engine.drain("b").unwrap();
    let client_ip: IpAddr = "127.0.0.77".parse()?;
    let mut c = Raw::connect(running.listener("main"), Some(client_ip), "idc").await?;
    engine.undrain("b").unwrap();
    let mut d = Raw::connect(net.b.client_addr(), None, "idd").await?;
    let before = d.whois_host("idc").await?;
    ensure!(
        before.contains("127.0.0.77"),
        "before the move the network sees {before}, not the client's address"
    );
    let done = engine.drain_wait("a").await.map_err(anyhow::Error::msg)?;
    ensure!(done.migrated == 1, "{done:?}");
    // After the move C is a local user of B: B itself saw the address through the prelude.
    let after = d.whois_host("idc").await?;
    ensure!(
        after.contains("127.0.0.77"),
        "after the move the network sees {after}"
    );
    c.send("PING :still-here\r\n").await?;
    c.until(|l| l.ends_with("still-here"), Duration::from_secs(10))
        .await?;
    running.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

#[test]
fn ngircd_sees_the_client_address_through_webirc() -> Result<()> {
    let net = IrcNetwork::start(IrcdKind::Ngircd)?;
    let extra = format!("webirc = {{ password = \"{WEBIRC_PASSWORD}\", gateway = \"handover\" }}");
    runtime()?.block_on(identity_scenario(
        &net,
        net.a.client_addr(),
        net.b.client_addr(),
        &extra,
    ))
}

#[test]
fn inspircd_sees_the_client_address_through_proxy_v2() -> Result<()> {
    let net = IrcNetwork::start(IrcdKind::Inspircd)?;
    let (Some(a), Some(b)) = (net.a.proxy_addr(), net.b.proxy_addr()) else {
        bail!("the inspircd harness has no PROXY ports");
    };
    runtime()?.block_on(identity_scenario(&net, a, b, "proxy_protocol = \"v2\""))
}

/// CAP negotiation is replayed: a client that negotiated `multi-prefix` keeps it on the new
/// server. It shows in NAMES: a peer with op and voice is listed `@+nick` only with the cap.
/// PING/PONG between client and server still works after the move.
#[test]
fn negotiated_caps_are_kept_across_a_move() -> Result<()> {
    let net = IrcNetwork::start(IrcdKind::Ngircd)?;
    runtime()?.block_on(async {
        let text = proxy::config(
            "irc",
            &[
                ("a", net.a.client_addr().to_string()),
                ("b", net.b.client_addr().to_string()),
            ],
            "",
            "[health]\ninterval_ms = 60000\n",
        );
        let running = proxy::start(&text).await;
        let engine = running.engine.clone();
        // D, straight on B, opens #caps (op) and voices itself.
        let mut d = Raw::connect(net.b.client_addr(), None, "capd").await?;
        d.send("JOIN #caps\r\n").await?;
        d.until(
            |l| l.split(' ').nth(1) == Some("366"),
            Duration::from_secs(10),
        )
        .await?;
        d.send("MODE #caps +v capd\r\n").await?;
        d.until(|l| l.contains("MODE #caps +v"), Duration::from_secs(10))
            .await?;

        engine.drain("b").unwrap();
        let stream = TcpStream::connect(running.listener("main")).await?;
        let (r, w) = stream.into_split();
        let mut c = Raw {
            lines: BufReader::new(r).lines(),
            w,
            nick: "capc".into(),
            history: Vec::new(),
        };
        c.send("CAP LS 302\r\nNICK capc\r\nUSER capc 0 * :caps\r\n")
            .await?;
        c.until(
            |l| l.contains(" CAP ") && l.contains(" LS "),
            Duration::from_secs(10),
        )
        .await?;
        c.send("CAP REQ :multi-prefix\r\n").await?;
        c.until(
            |l| l.contains(" CAP ") && l.contains(" ACK "),
            Duration::from_secs(10),
        )
        .await?;
        c.send("CAP END\r\n").await?;
        c.until(
            |l| l.split(' ').nth(1) == Some("001"),
            Duration::from_secs(10),
        )
        .await?;
        // D's channel and voice must have crossed the server link before C joins, or C
        // would found a #caps of its own on A.
        for _ in 0..30 {
            c.send("NAMES #caps\r\n").await?;
            let seen = c
                .until(
                    |l| l.split(' ').nth(1) == Some("366"),
                    Duration::from_secs(10),
                )
                .await?;
            if seen.iter().any(|l| l.contains("@+capd")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.send("JOIN #caps\r\n").await?;
        let names = |lines: Vec<String>| {
            lines
                .into_iter()
                .find(|l| l.split(' ').nth(1) == Some("353"))
        };
        let before = names(
            c.until(
                |l| l.split(' ').nth(1) == Some("366"),
                Duration::from_secs(10),
            )
            .await?,
        );
        ensure!(
            before.as_deref().is_some_and(|l| l.contains("@+capd")),
            "multi-prefix before the move: {before:?}"
        );

        engine.undrain("b").unwrap();
        let done = engine.drain_wait("a").await.map_err(anyhow::Error::msg)?;
        ensure!(done.migrated == 1, "{done:?}");
        c.send("PING :after-move\r\n").await?;
        let pong = c
            .until(|l| l.ends_with("after-move"), Duration::from_secs(10))
            .await?;
        ensure!(
            pong.last().unwrap().starts_with(":b.irc.test PONG"),
            "{pong:?}"
        );
        c.send("NAMES #caps\r\n").await?;
        let after = names(
            c.until(
                |l| l.split(' ').nth(1) == Some("366"),
                Duration::from_secs(10),
            )
            .await?,
        );
        ensure!(
            after.as_deref().is_some_and(|l| l.contains("@+capd")),
            "multi-prefix after the move: {after:?}"
        );
        running.shutdown(Duration::from_secs(2)).await;
        Ok(())
    })
}

/// Bad input from one client (a line over 512 bytes, a NUL, binary garbage) closes that
/// session only; nothing of it reaches the channel half-parsed, and another client on the
/// same server keeps working.
#[test]
fn bad_input_closes_only_that_session_and_reaches_no_backend() -> Result<()> {
    let net = IrcNetwork::start(IrcdKind::Ngircd)?;
    runtime()?.block_on(async {
        let text = proxy::config(
            "irc",
            &[("a", net.a.client_addr().to_string())],
            "",
            "[health]\ninterval_ms = 60000\n",
        );
        let running = proxy::start(&text).await;
        let addr = running.listener("main");
        let mut good = Raw::connect(addr, None, "good").await?;
        good.send("JOIN #bad\r\n").await?;
        good.until(
            |l| l.split(' ').nth(1) == Some("366"),
            Duration::from_secs(10),
        )
        .await?;
        let attacks: [Vec<u8>; 3] = [
            format!("PRIVMSG #bad :{}\r\n", "x".repeat(600)).into_bytes(),
            b"PRIVMSG #bad :nul\0here\r\n".to_vec(),
            (0u8..=255).cycle().take(10_000).collect(),
        ];
        for (i, attack) in attacks.iter().enumerate() {
            let mut bad = Raw::connect(addr, None, &format!("bad{i}")).await?;
            bad.send("JOIN #bad\r\n").await?;
            bad.until(
                |l| l.split(' ').nth(1) == Some("366"),
                Duration::from_secs(10),
            )
            .await?;
            bad.w.write_all(attack).await?;
            // The proxy closes this client: its reader sees the end of the stream.
            let end = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match bad.lines.next_line().await {
                        Ok(Some(_)) => continue,
                        _ => return,
                    }
                }
            })
            .await;
            ensure!(end.is_ok(), "attack {i}: the bad client was not closed");
        }
        // The good client still works and saw no PRIVMSG from any bad client.
        good.send("PING :still-good\r\n").await?;
        let lines = good
            .until(|l| l.ends_with("still-good"), Duration::from_secs(10))
            .await?;
        ensure!(
            !lines.iter().any(|l| l.contains("PRIVMSG")),
            "something reached the channel: {lines:?}"
        );
        let metrics = running.engine.metrics_text();
        ensure!(
            metrics.contains(
                "handover_sessions_closed_total{listener=\"main\",reason=\"protocol_error\"} 3"
            ),
            "{metrics}"
        );
        running.shutdown(Duration::from_secs(2)).await;
        Ok(())
    })
}
