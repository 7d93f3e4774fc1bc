//! A minimal, well-behaved IRC client for integration tests: registers, sends lines and waits
//! for an expected one, always under a timeout. Used as the "other session" that must keep
//! working while hostile peers do their worst.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct IrcClient {
    pub nick: String,
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// Every line received so far, without terminators.
    pub seen: Vec<String>,
    pings: u64,
}

impl IrcClient {
    /// Connects and registers as `nick`; returns once the welcome (001) arrived.
    pub async fn register(addr: SocketAddr, nick: &str) -> Self {
        let sock = TcpStream::connect(addr).await.expect("connect to handover");
        let (rd, wr) = sock.into_split();
        let mut c = Self {
            nick: nick.to_string(),
            rd: BufReader::new(rd),
            wr,
            seen: Vec::new(),
            pings: 0,
        };
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :{nick}")).await;
        c.expect(|l| l.split(' ').nth(1) == Some("001")).await;
        c
    }

    pub async fn send(&mut self, line: &str) {
        self.wr
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: write failed: {e}", self.nick));
    }

    /// The next line, or `None` at EOF; panics after [`WAIT`].
    pub async fn next_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("{}: nothing received in {WAIT:?}", self.nick))
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if let Some(token) = line.strip_prefix("PING ") {
            self.send(&format!("PONG {token}")).await;
        }
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads until a line matches; panics at EOF or after [`WAIT`] without one.
    pub async fn expect(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            match self.next_line().await {
                Some(line) if want(&line) => return line,
                Some(_) => {}
                None => panic!("{}: EOF; saw {:?}", self.nick, self.seen),
            }
        }
    }

    /// A PING through handover to the backend and its PONG back: proves the session works.
    pub async fn roundtrip(&mut self) {
        self.pings += 1;
        let token = format!("alive-{}-{}", self.nick, self.pings);
        self.send(&format!("PING :{token}")).await;
        self.expect(|l| l.starts_with(':') && l.contains("PONG") && l.ends_with(&token))
            .await;
    }

    pub async fn join(&mut self, chan: &str) {
        self.send(&format!("JOIN {chan}")).await;
        let end = format!("366 {} {chan}", self.nick);
        self.expect(|l| l.contains(&end)).await;
    }
}

impl IrcClient {
    /// The socket, for a test that takes over from here (whatever was buffered is dropped).
    pub fn take_stream(self) -> TcpStream {
        self.rd
            .into_inner()
            .reunite(self.wr)
            .expect("halves of one stream")
    }
}
