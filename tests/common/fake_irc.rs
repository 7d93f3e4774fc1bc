//! A scripted IRC server for tests that need a backend to misbehave. Real ngircd and inspircd
//! never stall registration, answer garbage or flood on command, so those cases are played
//! here; everything a well-behaved server must do for handover (welcome, PING/PONG, JOIN echo
//! and 366, NICK echo, PRIVMSG relay between its own users, QUIT → ERROR) is in `Normal`.
//!
//! `FLOOD <bytes>` (a test-only command) makes a `Normal` connection send that many bytes of
//! PRIVMSGs to its client; replies to later lines (a PING) queue up behind them.
//!
//! The mode is read when a connection is accepted, so a test can switch a server to a hostile
//! mode and then ask handover to migrate a session onto it. Each server is one process-local
//! network of its own: servers are not linked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a newly accepted connection behaves.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A minimal, correct IRC server.
    Normal,
    /// Registers clients, then ignores every NICK change (a nick reclaim never completes).
    IgnoreNickChange,
    /// Accepts and reads, never writes a byte.
    Silent,
    /// Closes the connection as soon as the client has sent NICK or USER.
    CloseOnRegister,
    /// Answers the first line with binary garbage (NUL bytes), then keeps reading.
    Garbage,
    /// Never reads; writes this line over and over, up to `limit` bytes in all.
    Flood { line: Bytes, limit: usize },
}

#[derive(Default)]
struct Net {
    /// Registered users by lower-case nick: where to send their lines.
    users: HashMap<String, mpsc::Sender<Bytes>>,
    channels: HashMap<String, HashSet<String>>,
}

pub struct FakeIrcd {
    pub addr: SocketAddr,
    pub name: String,
    mode: Arc<Mutex<Mode>>,
    net: Arc<Mutex<Net>>,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FakeIrcd {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let net: Arc<Mutex<Net>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accept = {
            let (mode, net, tasks, accepted) =
                (mode.clone(), net.clone(), tasks.clone(), accepted.clone());
            let name = name.to_string();
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mode = mode.lock().unwrap().clone();
                    let conn = Conn::new(name.clone(), net.clone());
                    let mut tasks = tasks.lock().unwrap();
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(tokio::spawn(conn.run(sock, mode)));
                }
            })
        };
        Self {
            addr,
            name: name.to_string(),
            mode,
            net,
            accepted,
            tasks,
            accept,
        }
    }

    /// The mode of connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Registered users right now.
    pub fn users(&self) -> usize {
        self.net.lock().unwrap().users.len()
    }

    /// Dies like a killed process: the listener and every connection close at once.
    pub fn kill(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let mut net = self.net.lock().unwrap();
        net.users.clear();
        net.channels.clear();
    }
}

impl Drop for FakeIrcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One client connection of the fake server.
struct Conn {
    server: String,
    net: Arc<Mutex<Net>>,
    nick: Option<String>,
    user: bool,
    registered: bool,
    /// This connection's writer queue, for lines other users send it.
    tx: Option<mpsc::Sender<Bytes>>,
}

impl Conn {
    fn new(server: String, net: Arc<Mutex<Net>>) -> Self {
        Self {
            server,
            net,
            nick: None,
            user: false,
            registered: false,
            tx: None,
        }
    }

    async fn run(mut self, sock: TcpStream, mode: Mode) {
        let (rd, mut wr) = sock.into_split();
        match mode {
            Mode::Silent => return drain(rd).await,
            Mode::Flood { line, limit } => return flood(rd, wr, line, limit).await,
            _ => {}
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        self.tx = Some(tx.clone());
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if bytes.is_empty() || wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let mut lines = BufReader::new(rd);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut lines)
                .take(16 * 1024)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf).trim_end().to_string();
            let keep_going = match mode {
                Mode::CloseOnRegister if text.starts_with("NICK") || text.starts_with("USER") => {
                    false
                }
                Mode::Garbage => {
                    let _ = tx
                        .send(Bytes::from_static(b"\x00\xff\xfe garbage \x00\x01\r\n"))
                        .await;
                    true
                }
                _ => {
                    self.line(&text, &tx, matches!(mode, Mode::IgnoreNickChange))
                        .await
                }
            };
            if !keep_going {
                break;
            }
        }
        self.leave(":Connection closed");
        let _ = tx.send(Bytes::new()).await;
        drop(tx);
        self.tx = None;
        let _ = writer.await;
    }

    fn prefix(&self) -> String {
        let nick = self.nick.clone().unwrap_or_default();
        format!("{nick}!u@fake")
    }

    fn reply(&self, numeric: &str, rest: &str) -> Bytes {
        let nick = self.nick.as_deref().unwrap_or("*");
        Bytes::from(format!(":{} {numeric} {nick} {rest}\r\n", self.server))
    }

    /// Handles one line; false closes the connection.
    async fn line(&mut self, text: &str, tx: &mpsc::Sender<Bytes>, ignore_nick: bool) -> bool {
        let mut words = text.splitn(2, ' ');
        let cmd = words.next().unwrap_or_default().to_ascii_uppercase();
        let rest = words.next().unwrap_or_default();
        let arg0 = rest
            .split(' ')
            .next()
            .unwrap_or_default()
            .trim_start_matches(':');
        let trailing = rest.split_once(" :").map(|(_, t)| t).unwrap_or(arg0);
        let mut out: Vec<Bytes> = Vec::new();
        match cmd.as_str() {
            "NICK" if !self.registered => {
                self.nick = Some(arg0.to_string());
                out.extend(self.try_welcome());
            }
            "NICK" if ignore_nick => {}
            "NICK" => out.extend(self.rename(arg0)),
            "USER" if !self.registered => {
                self.user = true;
                out.extend(self.try_welcome());
            }
            "PING" => out.push(Bytes::from(format!(
                ":{s} PONG {s} :{trailing}\r\n",
                s = self.server
            ))),
            "JOIN" if self.registered => {
                for chan in arg0.split(',').filter(|c| !c.is_empty()) {
                    self.join(chan).await;
                    out.push(self.reply("366", &format!("{chan} :End of /NAMES list")));
                }
            }
            "PRIVMSG" | "NOTICE" if self.registered => {
                let line = Bytes::from(format!(":{} {cmd} {rest}\r\n", self.prefix()));
                self.relay(arg0, line);
            }
            // Test-only: queue `n` bytes of PRIVMSGs to this client ahead of anything else.
            "FLOOD" if self.registered => {
                let n: usize = arg0.parse().unwrap_or(0);
                let line = format!(
                    ":flooder!f@fake PRIVMSG {} :{}\r\n",
                    self.nick.as_deref().unwrap_or("*"),
                    "f".repeat(400)
                );
                let chunk: Bytes = line.repeat(8192 / line.len()).into();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut sent = 0;
                    while sent < n && tx.send(chunk.clone()).await.is_ok() {
                        sent += chunk.len();
                    }
                });
            }
            "QUIT" => {
                let _ = tx
                    .send(Bytes::from_static(b"ERROR :Closing link (quit)\r\n"))
                    .await;
                return false;
            }
            _ => {}
        }
        for line in out {
            if tx.send(line).await.is_err() {
                return false;
            }
        }
        true
    }

    fn try_welcome(&mut self) -> Vec<Bytes> {
        let Some(nick) = self.nick.clone() else {
            return Vec::new();
        };
        if !self.user {
            return Vec::new();
        }
        let key = nick.to_ascii_lowercase();
        let mut net = self.net.lock().unwrap();
        if net.users.contains_key(&key) {
            drop(net);
            return vec![self.reply("433", &format!("{nick} :Nickname is already in use"))];
        }
        net.users
            .insert(key, self.tx.clone().expect("writer started"));
        drop(net);
        self.registered = true;
        vec![
            self.reply("001", ":Welcome to the fake network"),
            self.reply("005", "NICKLEN=30 :are supported by this server"),
            self.reply("422", ":MOTD File is missing"),
        ]
    }

    fn rename(&mut self, new: &str) -> Vec<Bytes> {
        let old = self.nick.clone().unwrap_or_default();
        let mut net = self.net.lock().unwrap();
        if net.users.contains_key(&new.to_ascii_lowercase()) {
            drop(net);
            return vec![self.reply("433", &format!("{new} :Nickname is already in use"))];
        }
        if let Some(tx) = net.users.remove(&old.to_ascii_lowercase()) {
            net.users.insert(new.to_ascii_lowercase(), tx);
        }
        for members in net.channels.values_mut() {
            if members.remove(&old.to_ascii_lowercase()) {
                members.insert(new.to_ascii_lowercase());
            }
        }
        drop(net);
        let echo = Bytes::from(format!(":{} NICK :{new}\r\n", self.prefix()));
        self.nick = Some(new.to_string());
        vec![echo]
    }

    async fn join(&mut self, chan: &str) {
        let me = self.nick.clone().unwrap_or_default().to_ascii_lowercase();
        let echo = Bytes::from(format!(":{} JOIN {chan}\r\n", self.prefix()));
        let members: Vec<mpsc::Sender<Bytes>> = {
            let mut net = self.net.lock().unwrap();
            let set = net.channels.entry(chan.to_ascii_lowercase()).or_default();
            set.insert(me);
            let names: Vec<String> = set.iter().cloned().collect();
            names
                .iter()
                .filter_map(|n| net.users.get(n).cloned())
                .collect()
        };
        for tx in members {
            let _ = tx.try_send(echo.clone());
        }
    }

    /// Sends a line to a channel's other members or to one user; a full queue drops it (a
    /// stalled receiver must not stall the sender).
    fn relay(&self, target: &str, line: Bytes) {
        let me = self.nick.clone().unwrap_or_default().to_ascii_lowercase();
        let net = self.net.lock().unwrap();
        let targets: Vec<String> = match net.channels.get(&target.to_ascii_lowercase()) {
            Some(members) => members.iter().filter(|m| **m != me).cloned().collect(),
            None => vec![target.to_ascii_lowercase()],
        };
        for t in targets {
            if let Some(tx) = net.users.get(&t) {
                let _ = tx.try_send(line.clone());
            }
        }
    }

    fn leave(&self, why: &str) {
        let Some(nick) = self.nick.clone() else {
            return;
        };
        if !self.registered {
            return;
        }
        let key = nick.to_ascii_lowercase();
        let quit = Bytes::from(format!(":{} QUIT {why}\r\n", self.prefix()));
        let mut net = self.net.lock().unwrap();
        net.users.remove(&key);
        let mut peers = HashSet::new();
        for members in net.channels.values_mut() {
            if members.remove(&key) {
                peers.extend(members.iter().cloned());
            }
        }
        for p in peers {
            if let Some(tx) = net.users.get(&p) {
                let _ = tx.try_send(quit.clone());
            }
        }
    }
}

async fn drain(mut rd: tokio::net::tcp::OwnedReadHalf) {
    let mut buf = [0u8; 4096];
    while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Writes `line` until `limit` bytes went out or the peer is gone; never reads (the read half
/// is kept open so the peer sees no EOF).
async fn flood(
    _rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    line: Bytes,
    limit: usize,
) {
    // Whole lines in 64 KiB writes: the flood outpaces any reader.
    let lines = (64 * 1024 / line.len()).max(1);
    let chunk: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * lines)
        .collect();
    let mut sent = 0;
    while sent < limit {
        if wr.write_all(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
    // Stay connected, silent, until the peer closes.
    std::future::pending::<()>().await;
}
