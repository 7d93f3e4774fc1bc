//! The soak's processes: three linked ngircd servers (b is the hub, a and c are leaves, so
//! killing a leaf never splits the rest of the network) and the handover binary in front of
//! them. All of them listen on 127.0.0.1 only.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const SERVERS: [&str; 3] = ["a", "b", "c"];
const HUB: usize = 1;

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Ircd {
    pub name: String,
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Ircd {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(ngircd()?)
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting ngircd {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no QUITs, no goodbye to the network.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ircd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ngircd() -> Result<PathBuf> {
    for p in ["/usr/sbin/ngircd", "/usr/bin/ngircd"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!("ngircd is not installed (bash scripts/install-test-deps.sh)")
}

/// Writes the three configs; nothing is started yet.
pub fn ircds(dir: &Path) -> Result<Vec<Ircd>> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (i, letter) in SERVERS.iter().enumerate() {
        let name = format!("{letter}.soak.test");
        let mut conf = format!(
            "[Global]\n\tName = {name}\n\tInfo = soak {letter}\n\tListen = 127.0.0.1\n\tPorts = {}\n\
             \tMotdPhrase = soak\n\tServerUID = 0\n\tServerGID = 0\n\
             [Limits]\n\tMaxConnections = 4096\n\tMaxConnectionsIP = 0\n\tMaxJoins = 0\n\
             \tMaxPenaltyTime = 0\n\tConnectRetry = 5\n\tPingTimeout = 120\n\tMaxNickLength = 30\n\
             [Options]\n\tDNS = no\n\tIdent = no\n\tPAM = no\n\tRequireAuthPing = no\n",
            ports[i]
        );
        // Leaves link to the hub; the hub waits for them.
        let peers: Vec<usize> = if i == HUB { vec![0, 2] } else { vec![HUB] };
        for p in peers {
            let _ = write!(
                conf,
                "[Server]\n\tName = {}.soak.test\n\tHost = 127.0.0.1\n\tPort = {}\n\
                 \tMyPassword = link-{letter}\n\tPeerPassword = link-{}\n\tPassive = {}\n",
                SERVERS[p],
                ports[p],
                SERVERS[p],
                if i == HUB { "yes" } else { "no" }
            );
        }
        let conf_path = dir.join(format!("{letter}.conf"));
        std::fs::write(&conf_path, conf)?;
        out.push(Ircd {
            name,
            port: ports[i],
            conf: conf_path,
            log: dir.join(format!("{letter}.log")),
            child: None,
        });
    }
    Ok(out)
}

/// True when a client on `addr` sees all three servers in LINKS.
pub async fn linked(addr: SocketAddr, probe: &str) -> bool {
    let attempt = async {
        let sock = TcpStream::connect(addr).await.ok()?;
        let (rd, mut wr) = sock.into_split();
        let mut lines = BufReader::new(rd).lines();
        let hello = format!("NICK {probe}\r\nUSER {probe} 0 * :probe\r\nLINKS\r\n");
        wr.write_all(hello.as_bytes()).await.ok()?;
        let mut seen = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(" 364 ") {
                seen += 1;
            }
            if line.contains(" 365 ") {
                break;
            }
            if let Some(t) = line.strip_prefix("PING ") {
                wr.write_all(format!("PONG {t}\r\n").as_bytes())
                    .await
                    .ok()?;
            }
        }
        let _ = wr.write_all(b"QUIT\r\n").await;
        Some(seen >= 3)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(true))
    )
}

pub async fn wait_linked(addr: SocketAddr, probe: &str, limit: Duration) -> Result<()> {
    let start = tokio::time::Instant::now();
    while !linked(addr, probe).await {
        if start.elapsed() > limit {
            bail!("{addr} did not see all three servers linked within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

pub struct Handover {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
}

impl Handover {
    pub fn start(dir: &Path, ircds: &[Ircd]) -> Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut conf = format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"irc\"\nlisten = \"{listen}\"\n\
             protocol = \"irc\"\nbackends = [\"a\", \"b\", \"c\"]\n\n"
        );
        for (letter, ircd) in SERVERS.iter().zip(ircds) {
            let _ = writeln!(
                conf,
                "[[backend]]\nname = \"{letter}\"\naddress = \"{}\"\n",
                ircd.addr()
            );
        }
        // ngircd's listen backlog is 10: keep drains at 8 connections in flight.
        conf.push_str(
            "[migration]\nmax_concurrent = 8\nmax_per_second = 100\nregister_timeout_ms = 10000\n\
             failover_timeout_ms = 30000\n\n[health]\ninterval_ms = 500\ntimeout_ms = 500\nrise = 2\nfall = 2\n",
        );
        let path = dir.join("handover.toml");
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(dir.join("handover.log"))?;
        let child = Command::new(handover_binary()?)
            .args(["serve", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting handover")?;
        Ok(Self {
            listen,
            admin,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the handover process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// The Prometheus text from the admin API.
    pub async fn metrics(&self) -> Result<String> {
        let mut sock = TcpStream::connect(self.admin).await?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        sock.write_all(req.as_bytes()).await?;
        let mut body = String::new();
        sock.read_to_string(&mut body).await?;
        Ok(body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The handover binary next to this example (target/<profile>/handover), or HANDOVER_BIN.
fn handover_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HANDOVER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("handover"))
        .context("no target directory")?;
    if !bin.exists() {
        bail!("{} is missing: cargo build --release first", bin.display());
    }
    Ok(bin)
}

/// A counter or gauge from Prometheus text, summed over the series matching every filter.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
