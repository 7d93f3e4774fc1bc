//! Real IRC networks for integration tests: two linked servers (A and B) of one
//! implementation, started as child processes on free loopback ports.
//!
//! ```ignore
//! mod common;
//! use common::ircd::{IrcNetwork, IrcdKind, Options};
//!
//! let mut net = IrcNetwork::start(IrcdKind::Ngircd)?; // returns once A and B are linked
//! let a = net.a.client_addr();                         // 127.0.0.1:<port> of server A
//! net.kill_a()?;                                       // SIGKILL, no goodbye
//! net.restart_a()?;                                    // same ports, returns once relinked
//! // dropping `net` kills both servers and removes the temp dir
//! ```
//!
//! * Both kinds lift every per-IP/flood limit (all proxied connections come from
//!   127.0.0.1), accept `WEBIRC` with [`WEBIRC_PASSWORD`] from 127.0.0.1, and send
//!   a full welcome burst (001-005, LUSERS numerics, MOTD 375/372/376).
//! * inspircd also has a PROXY-protocol-v2 client port ([`ServerInfo::proxy_port`]).
//! * "Linked" is checked end to end: a probe client on A and one on B join a
//!   channel and each must receive the other's channel message.
//! * [`Options::b_refuses_clients`]: B requires a connection password
//!   ([`REFUSE_PASSWORD`]) that ordinary clients don't send, so every client
//!   registration on B ends in `ERROR :...` and a closed connection (ngircd right
//!   after NICK/USER, inspircd ~1 s later), while the A<->B server link works.
//! * Sync API for setup; `*_async` variants don't block a tokio runtime thread
//!   (use them while an in-process proxy runs on a current-thread runtime).
//! * Set `HANDOVER_KEEP_TMP=1` to keep the temp dir (configs, logs) after the test.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

/// Password for `WEBIRC <pass> <gateway> <host> <ip>` on both kinds (from 127.0.0.1).
pub const WEBIRC_PASSWORD: &str = "webircpass";
/// Connection password (`PASS`) that lets a client in on a server started with
/// [`Options::b_refuses_clients`]; the harness's own link probe uses it.
pub const REFUSE_PASSWORD: &str = "refuse-bypass";
/// IRC operator credentials (`OPER admin adminpass`) on every server.
pub const OPER_NAME: &str = "admin";
pub const OPER_PASSWORD: &str = "adminpass";
/// ngircd's `MaxConnections`. Not 0 (unlimited): ngircd keeps its connections in one array
/// indexed by socket, starts it at this size (100 when unlimited) and reallocs it when a
/// socket number passes the end; the realloc moves the zlib streams of the compressed server
/// link, zlib then refuses them ("Compression error: code -2") and the A<->B link drops. With
/// room for every socket up front the array never moves.
pub const NGIRCD_MAX_CONNECTIONS: usize = 4096;
/// How long `start`/`restart_*` wait for the servers to accept clients and link.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(20);

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Attempts with fresh ports when a server could not bind its ports.
const START_ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrcdKind {
    /// ngircd 26 (Debian `ngircd`): one port per server for clients and the link.
    Ngircd,
    /// inspircd 3 (Debian `inspircd`): client, PROXY-v2 client and link ports.
    Inspircd,
}

impl IrcdKind {
    pub const ALL: [IrcdKind; 2] = [IrcdKind::Ngircd, IrcdKind::Inspircd];

    fn binary_name(self) -> &'static str {
        match self {
            IrcdKind::Ngircd => "ngircd",
            IrcdKind::Inspircd => "inspircd",
        }
    }

    fn domain(self) -> &'static str {
        match self {
            IrcdKind::Ngircd => "irc.test",
            IrcdKind::Inspircd => "insp.test",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Server B refuses client registrations (see the module docs); A is normal
    /// and the A<->B link is up.
    pub b_refuses_clients: bool,
}

/// One server of the network.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Server name, as the prefix of its numerics: "a.irc.test", "b.insp.test", ...
    pub name: String,
    /// Plain client port on 127.0.0.1.
    pub client_port: u16,
    /// inspircd only: client port expecting a PROXY protocol v2 header first.
    pub proxy_port: Option<u16>,
    /// Port the other server links to (ngircd: the same as `client_port`).
    pub link_port: u16,
    /// Whether this server refuses client registrations ([`Options`]).
    pub refuses_clients: bool,
    /// Password a client must send with `PASS` to get in, if any.
    pub client_password: Option<String>,
    pub config_path: PathBuf,
    /// The server's stdout+stderr (ngircd logs here).
    pub output_path: PathBuf,
    /// inspircd's own log file (absent for ngircd).
    pub log_path: Option<PathBuf>,
}

impl ServerInfo {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((LOCALHOST, self.client_port))
    }

    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_port.map(|p| SocketAddr::from((LOCALHOST, p)))
    }

    /// Last `lines` lines of the server's output and log file.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in std::iter::once(&self.output_path).chain(self.log_path.as_ref()) {
            let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            let _ = writeln!(out, "--- {} ({}) ---", self.name, path.display());
            for l in &all[from..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// Two linked IRC servers, A and B. Dropping it kills both and removes `dir`.
pub struct IrcNetwork {
    pub kind: IrcdKind,
    pub a: ServerInfo,
    pub b: ServerInfo,
    /// Temp dir with configs and logs; free for tests to put their own files in.
    pub dir: PathBuf,
    pub options: Options,
    binary: PathBuf,
    children: [Option<Child>; 2],
}

impl IrcNetwork {
    /// Starts A and B and returns once both accept clients and are linked.
    pub fn start(kind: IrcdKind) -> Result<IrcNetwork> {
        Self::start_with(kind, Options::default())
    }

    pub fn start_with(kind: IrcdKind, options: Options) -> Result<IrcNetwork> {
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut net = Self::spawn_fresh(kind, options.clone())?;
            // inspircd keeps running when only some ports fail to bind.
            let result = net
                .wait_linked(LINK_TIMEOUT)
                .and_then(|()| net.check_bind());
            match result {
                Ok(()) => return Ok(net),
                Err(e) if attempt < START_ATTEMPTS && net.bind_failed() => {
                    eprintln!("ircd harness: port collision, retrying with new ports: {e:#}");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no start attempt made")))
    }

    /// Like [`IrcNetwork::start_with`], without blocking the runtime thread.
    pub async fn start_async(kind: IrcdKind, options: Options) -> Result<IrcNetwork> {
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut net = Self::spawn_fresh(kind, options.clone())?;
            // inspircd keeps running when only some ports fail to bind.
            let result = net
                .wait_linked_async(LINK_TIMEOUT)
                .await
                .and_then(|()| net.check_bind());
            match result {
                Ok(()) => return Ok(net),
                Err(e) if attempt < START_ATTEMPTS && net.bind_failed() => {
                    eprintln!("ircd harness: port collision, retrying with new ports: {e:#}");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no start attempt made")))
    }

    pub fn pid_a(&self) -> Option<u32> {
        self.children[0].as_ref().map(Child::id)
    }

    pub fn pid_b(&self) -> Option<u32> {
        self.children[1].as_ref().map(Child::id)
    }

    /// SIGKILLs server A (no QUIT/SQUIT: B sees the link socket close).
    pub fn kill_a(&mut self) -> Result<()> {
        self.kill(0)
    }

    pub fn kill_b(&mut self) -> Result<()> {
        self.kill(1)
    }

    /// Starts A again on the same ports (killing it first if it runs) and
    /// waits until the network is linked again.
    pub fn restart_a(&mut self) -> Result<()> {
        self.respawn(0)?;
        self.wait_linked(LINK_TIMEOUT)
    }

    /// Note for ngircd: only A initiates the link, with a 5 s retry, so
    /// relinking after a B restart takes up to ~5 s.
    pub fn restart_b(&mut self) -> Result<()> {
        self.respawn(1)?;
        self.wait_linked(LINK_TIMEOUT)
    }

    pub async fn restart_a_async(&mut self) -> Result<()> {
        self.respawn(0)?;
        self.wait_linked_async(LINK_TIMEOUT).await
    }

    pub async fn restart_b_async(&mut self) -> Result<()> {
        self.respawn(1)?;
        self.wait_linked_async(LINK_TIMEOUT).await
    }

    /// Waits until both servers accept clients and a channel message crosses
    /// the link in both directions. The error carries both servers' log tails.
    pub fn wait_linked(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = anyhow!("no probe attempt made");
        loop {
            self.check_running()?;
            match self.link_probe().run(deadline) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                return Err(self.not_linked_error(timeout, last_err));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub async fn wait_linked_async(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = anyhow!("no probe attempt made");
        loop {
            self.check_running()?;
            let probe = self.link_probe();
            match tokio::task::spawn_blocking(move || probe.run(deadline)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_err = e,
                Err(join) => last_err = anyhow!("link probe task failed: {join}"),
            }
            if Instant::now() >= deadline {
                return Err(self.not_linked_error(timeout, last_err));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Both servers' log tails, for assertion messages.
    pub fn logs(&self) -> String {
        format!("{}{}", self.a.log_tail(60), self.b.log_tail(60))
    }

    fn server(&self, idx: usize) -> &ServerInfo {
        if idx == 0 {
            &self.a
        } else {
            &self.b
        }
    }

    fn spawn_fresh(kind: IrcdKind, options: Options) -> Result<IrcNetwork> {
        let binary = find_binary(kind.binary_name())?;
        let dir = make_temp_dir(kind)?;
        let ports_per_server = match kind {
            IrcdKind::Ngircd => 1,
            IrcdKind::Inspircd => 3,
        };
        let ports = free_ports(2 * ports_per_server)?;
        let info = |idx: usize| {
            let letter = ["a", "b"][idx];
            let p = &ports[idx * ports_per_server..(idx + 1) * ports_per_server];
            let refuses = idx == 1 && options.b_refuses_clients;
            ServerInfo {
                name: format!("{letter}.{}", kind.domain()),
                client_port: p[0],
                proxy_port: (kind == IrcdKind::Inspircd).then(|| p[1]),
                link_port: if kind == IrcdKind::Inspircd {
                    p[2]
                } else {
                    p[0]
                },
                refuses_clients: refuses,
                client_password: refuses.then(|| REFUSE_PASSWORD.to_string()),
                config_path: dir.join(format!("{letter}.conf")),
                output_path: dir.join(format!("{letter}.out")),
                log_path: (kind == IrcdKind::Inspircd).then(|| dir.join(format!("{letter}.log"))),
            }
        };
        let mut net = IrcNetwork {
            kind,
            a: info(0),
            b: info(1),
            dir,
            options,
            binary,
            children: [None, None],
        };
        for idx in 0..2 {
            let config = net.render_config(idx);
            let path = &net.server(idx).config_path;
            fs::write(path, config).with_context(|| format!("writing {}", path.display()))?;
            if kind == IrcdKind::Inspircd {
                let motd = net.dir.join(format!("{}.motd", ["a", "b"][idx]));
                fs::write(&motd, format!("hello from {}\n", net.server(idx).name))?;
            }
        }
        net.spawn(0)?;
        net.spawn(1)?;
        Ok(net)
    }

    fn render_config(&self, idx: usize) -> String {
        let me = self.server(idx);
        let peer = self.server(1 - idx);
        let letter = ["a", "b"][idx];
        let dir = self.dir.display();
        match self.kind {
            IrcdKind::Ngircd => {
                let password = match &me.client_password {
                    Some(p) => format!("\tPassword = {p}\n"),
                    None => String::new(),
                };
                // Only A initiates the link (both active would race).
                let passive = if idx == 0 { "no" } else { "yes" };
                format!(
                    "[Global]\n\
                     \tName = {name}\n\
                     \tInfo = handover test ngircd {letter}\n\
                     \tListen = 127.0.0.1\n\
                     \tPorts = {port}\n\
                     \tMotdPhrase = hello from {name}\n\
                     {password}\
                     \tPidFile = {dir}/{letter}.pid\n\
                     \tServerUID = 0\n\
                     \tServerGID = 0\n\
                     [Limits]\n\
                     \tMaxConnections = {max_connections}\n\
                     \tMaxConnectionsIP = 0\n\
                     \tMaxJoins = 0\n\
                     \tMaxPenaltyTime = 0\n\
                     \tConnectRetry = 5\n\
                     \tPingTimeout = 120\n\
                     \tMaxNickLength = 30\n\
                     [Options]\n\
                     \tDNS = no\n\
                     \tIdent = no\n\
                     \tPAM = no\n\
                     \tRequireAuthPing = no\n\
                     \tWebircPassword = {webirc}\n\
                     \tOperCanUseMode = yes\n\
                     [Operator]\n\
                     \tName = {oper}\n\
                     \tPassword = {operpass}\n\
                     [Server]\n\
                     \tName = {peer_name}\n\
                     \tHost = 127.0.0.1\n\
                     \tPort = {peer_port}\n\
                     \tMyPassword = link-{letter}\n\
                     \tPeerPassword = link-{peer_letter}\n\
                     \tPassive = {passive}\n",
                    name = me.name,
                    port = me.client_port,
                    max_connections = NGIRCD_MAX_CONNECTIONS,
                    webirc = WEBIRC_PASSWORD,
                    oper = OPER_NAME,
                    operpass = OPER_PASSWORD,
                    peer_name = peer.name,
                    peer_port = peer.link_port,
                    peer_letter = ["a", "b"][1 - idx],
                )
            }
            IrcdKind::Inspircd => {
                let password = match &me.client_password {
                    Some(p) => format!(" password=\"{p}\""),
                    None => String::new(),
                };
                // Only A autoconnects (both would race); 1 s is the minimum period.
                let autoconnect = if idx == 0 {
                    format!("<autoconnect period=\"1s\" server=\"{}\">\n", peer.name)
                } else {
                    String::new()
                };
                format!(
                    "<server name=\"{name}\" description=\"handover test inspircd {letter}\" network=\"HandoverTest\">\n\
                     <admin name=\"Test\" nick=\"admin\" email=\"admin@localhost\">\n\
                     <bind address=\"127.0.0.1\" port=\"{client}\" type=\"clients\">\n\
                     <bind address=\"127.0.0.1\" port=\"{proxy}\" type=\"clients\" hook=\"haproxy\">\n\
                     <bind address=\"127.0.0.1\" port=\"{link}\" type=\"servers\">\n\
                     <module name=\"spanningtree\">\n\
                     <module name=\"cgiirc\">\n\
                     <module name=\"haproxy\">\n\
                     <cgihost type=\"webirc\" password=\"{webirc}\" mask=\"127.0.0.1\">\n\
                     <power diepass=\"die\" restartpass=\"restart\">\n\
                     <connect name=\"main\" allow=\"*\"{password} timeout=\"60\" pingfreq=\"120\"\n\
                     \x20        hardsendq=\"1M\" softsendq=\"65536\" recvq=\"65536\"\n\
                     \x20        threshold=\"1000000\" commandrate=\"1000000\" fakelag=\"no\"\n\
                     \x20        localmax=\"100000\" globalmax=\"100000\" maxchans=\"1000\" limit=\"100000\"\n\
                     \x20        useident=\"no\" resolvehostnames=\"no\" maxconnwarn=\"no\">\n\
                     <link name=\"{peer_name}\" ipaddr=\"127.0.0.1\" port=\"{peer_link}\" allowmask=\"127.0.0.0/8\"\n\
                     \x20     sendpass=\"link-{letter}\" recvpass=\"link-{peer_letter}\" timeout=\"30s\">\n\
                     {autoconnect}\
                     <class name=\"All\" commands=\"*\">\n\
                     <type name=\"NetAdmin\" classes=\"All\">\n\
                     <oper name=\"{oper}\" password=\"{operpass}\" host=\"*@*\" type=\"NetAdmin\">\n\
                     <files motd=\"{dir}/{letter}.motd\">\n\
                     <pid file=\"{dir}/{letter}.pid\">\n\
                     <log method=\"file\" type=\"* -USERINPUT -USEROUTPUT\" level=\"default\" target=\"{dir}/{letter}.log\">\n\
                     <dns server=\"127.0.0.1\" timeout=\"1\">\n\
                     <options prefixquit=\"Quit: \" syntaxhints=\"no\" announcets=\"yes\">\n\
                     <security hideserver=\"\" userstats=\"Pu\" maxtargets=\"20\">\n\
                     <performance softlimit=\"65535\" somaxconn=\"4096\" netbuffersize=\"65536\" clonesonconnect=\"no\">\n\
                     <channels users=\"100\" opers=\"100\">\n\
                     <limits maxnick=\"30\" maxchan=\"64\" maxmodes=\"20\" maxident=\"10\" maxquit=\"255\" maxtopic=\"307\" maxkick=\"255\" maxreal=\"128\" maxgecos=\"128\" maxaway=\"200\">\n",
                    name = me.name,
                    client = me.client_port,
                    proxy = me.proxy_port.expect("inspircd has a proxy port"),
                    link = me.link_port,
                    webirc = WEBIRC_PASSWORD,
                    peer_name = peer.name,
                    peer_link = peer.link_port,
                    peer_letter = ["a", "b"][1 - idx],
                    oper = OPER_NAME,
                    operpass = OPER_PASSWORD,
                )
            }
        }
    }

    fn spawn(&mut self, idx: usize) -> Result<()> {
        let info = self.server(idx).clone();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&info.output_path)
            .with_context(|| format!("opening {}", info.output_path.display()))?;
        let mut cmd = Command::new(&self.binary);
        match self.kind {
            IrcdKind::Ngircd => cmd.arg("-n").arg("-f").arg(&info.config_path),
            IrcdKind::Inspircd => cmd
                .args(["--runasroot", "--nofork", "--config"])
                .arg(&info.config_path),
        };
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} for {}", self.binary.display(), info.name))?;
        self.children[idx] = Some(child);
        Ok(())
    }

    fn kill(&mut self, idx: usize) -> Result<()> {
        let name = self.server(idx).name.clone();
        let mut child = self.children[idx]
            .take()
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        // Child::kill is SIGKILL; it errors only if the process was already reaped.
        let _ = child.kill();
        child.wait().with_context(|| format!("reaping {name}"))?;
        Ok(())
    }

    fn respawn(&mut self, idx: usize) -> Result<()> {
        if self.children[idx].is_some() {
            self.kill(idx)?;
        }
        self.spawn(idx)
    }

    /// Errors if a server that should run has exited.
    fn check_running(&mut self) -> Result<()> {
        for idx in 0..2 {
            if let Some(child) = self.children[idx].as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.children[idx] = None;
                    bail!(
                        "{} exited during startup ({status})\n{}",
                        self.server(idx).name,
                        self.logs()
                    );
                }
            }
        }
        if self.children.iter().any(Option::is_none) {
            bail!("a server is not running (killed and not restarted?)");
        }
        Ok(())
    }

    /// True if a server's output says a listening port was taken.
    fn bind_failed(&self) -> bool {
        [&self.a, &self.b].iter().any(|s| {
            std::iter::once(&s.output_path)
                .chain(s.log_path.as_ref())
                .filter_map(|p| fs::read_to_string(p).ok())
                .any(|t| {
                    t.contains("Address already in use")
                        || t.contains("Can't bind")
                        || t.contains("failed to bind")
                })
        })
    }

    fn check_bind(&self) -> Result<()> {
        if self.bind_failed() {
            bail!("a server could not bind all its ports\n{}", self.logs());
        }
        Ok(())
    }

    fn link_probe(&self) -> LinkProbe {
        LinkProbe {
            a: (
                self.a.client_addr(),
                self.a.name.clone(),
                self.a.client_password.clone(),
            ),
            b: (
                self.b.client_addr(),
                self.b.name.clone(),
                self.b.client_password.clone(),
            ),
        }
    }

    fn not_linked_error(&self, timeout: Duration, last: anyhow::Error) -> anyhow::Error {
        anyhow!(
            "{:?} network {} <-> {} not up and linked within {timeout:?} (last probe: {last:#}); \
             temp dir {}\n{}",
            self.kind,
            self.a.name,
            self.b.name,
            self.dir.display(),
            self.logs()
        )
    }
}

impl Drop for IrcNetwork {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("ircd harness: test panicked; server logs:\n{}", self.logs());
        }
        if std::env::var_os("HANDOVER_KEEP_TMP").is_some() {
            eprintln!("ircd harness: keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Registers a fresh client (PASS if given, NICK, USER) and quits. Ok: every
/// line up to and including 001, which must come from `server_name` if given.
/// Err: the server's lines (e.g. `ERROR :...`) when it refused or closed.
pub fn try_register(
    addr: SocketAddr,
    nick: &str,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut conn = LineConn::connect(addr, deadline)?;
    conn.send_registration(nick, password)?;
    let lines = conn.wait_welcome(None, deadline)?;
    let _ = conn.send("QUIT :probe done");
    Ok(lines)
}

/// Owned data for one end-to-end link check, so it can run on a blocking thread.
struct LinkProbe {
    a: (SocketAddr, String, Option<String>),
    b: (SocketAddr, String, Option<String>),
}

static PROBE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl LinkProbe {
    /// One attempt: register a probe on each server, join one channel, and
    /// exchange channel messages until each side has seen the other's. If they
    /// don't cross quickly, the A probe opers up and sends `CONNECT <B>` so a
    /// restarted server relinks at once instead of at the next auto-connect
    /// (inspircd checks every 5 s, ngircd retries after `ConnectRetry` = 5 s).
    fn run(&self, deadline: Instant) -> Result<()> {
        let n = PROBE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let (nick_a, nick_b) = (format!("lpa{tag}"), format!("lpb{tag}"));
        let chan = format!("#linkprobe{tag}");
        // Register both in parallel (inspircd takes ~1 s per registration).
        let mut a = LineConn::connect(self.a.0, deadline).context("probe connect A")?;
        let mut b = LineConn::connect(self.b.0, deadline).context("probe connect B")?;
        a.send_registration(&nick_a, self.a.2.as_deref())?;
        b.send_registration(&nick_b, self.b.2.as_deref())?;
        a.wait_welcome(Some(&self.a.1), deadline)
            .context("probe registration on A")?;
        b.wait_welcome(Some(&self.b.1), deadline)
            .context("probe registration on B")?;
        a.send(&format!("JOIN {chan}"))?;
        b.send(&format!("JOIN {chan}"))?;
        let joined = Instant::now();
        let (mut a_saw_b, mut b_saw_a) = (false, false);
        let mut next_send = joined;
        let mut next_connect = joined + Duration::from_millis(300);
        let mut opered = false;
        while !(a_saw_b && b_saw_a) {
            let now = Instant::now();
            if now >= deadline {
                bail!("channel messages did not cross the link (A saw B: {a_saw_b}, B saw A: {b_saw_a})");
            }
            if now >= next_send {
                a.send(&format!("PRIVMSG {chan} :from-a"))?;
                b.send(&format!("PRIVMSG {chan} :from-b"))?;
                next_send = now + Duration::from_millis(100);
            }
            if now >= next_connect {
                if !opered {
                    a.send(&format!("OPER {OPER_NAME} {OPER_PASSWORD}"))?;
                    opered = true;
                }
                a.send(&format!("CONNECT {}", self.b.1))?;
                next_connect = now + Duration::from_secs(2);
            }
            let slice = (now + Duration::from_millis(20)).min(deadline);
            while let Some(line) = a.read_line(slice)? {
                a_saw_b |= line.contains("PRIVMSG") && line.ends_with(":from-b");
            }
            let slice = (Instant::now() + Duration::from_millis(20)).min(deadline);
            while let Some(line) = b.read_line(slice)? {
                b_saw_a |= line.contains("PRIVMSG") && line.ends_with(":from-a");
            }
        }
        let _ = a.send("QUIT :probe done");
        let _ = b.send("QUIT :probe done");
        Ok(())
    }
}

/// Minimal blocking IRC line connection; answers PING itself.
struct LineConn {
    stream: TcpStream,
    buf: Vec<u8>,
    peer: SocketAddr,
}

impl LineConn {
    fn connect(addr: SocketAddr, deadline: Instant) -> Result<LineConn> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        let stream = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2)))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(LineConn {
            stream,
            buf: Vec::new(),
            peer: addr,
        })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .with_context(|| format!("writing to {}", self.peer))
    }

    fn send_registration(&mut self, nick: &str, password: Option<&str>) -> Result<()> {
        if let Some(p) = password {
            self.send(&format!("PASS {p}"))?;
        }
        self.send(&format!("NICK {nick}"))?;
        self.send(&format!("USER {nick} 0 * :handover harness probe"))
    }

    /// Reads until 001. Errors on ERROR, EOF, nick errors, or the deadline.
    fn wait_welcome(
        &mut self,
        server_name: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = match self.read_line(deadline) {
                Ok(Some(l)) => l,
                Ok(None) => bail!(
                    "no 001 from {} before the deadline; got {lines:?}",
                    self.peer
                ),
                Err(e) => bail!("{e:#}; got {lines:?}"),
            };
            let mut words = line.split(' ');
            let prefix = words
                .next()
                .unwrap_or_default()
                .trim_start_matches(':')
                .to_string();
            let command = words.next().unwrap_or_default().to_string();
            lines.push(line.clone());
            match command.as_str() {
                "001" => {
                    if let Some(name) = server_name {
                        if prefix != name {
                            bail!(
                                "001 from {prefix:?}, expected {name:?}: another process holds {}",
                                self.peer
                            );
                        }
                    }
                    return Ok(lines);
                }
                "432" | "433" | "436" | "464" | "465" => bail!("registration refused: {lines:?}"),
                _ if line.starts_with("ERROR") => bail!("server closed registration: {lines:?}"),
                _ => {}
            }
        }
    }

    /// Next line (without CR/LF), `None` once `until` passes. PINGs are answered
    /// and still returned. EOF is an error.
    fn read_line(&mut self, until: Instant) -> Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if let Some(token) = line.strip_prefix("PING ") {
                    self.send(&format!("PONG {token}"))?;
                }
                return Ok(Some(line));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("{} closed the connection", self.peer),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("reading from {}", self.peer)),
            }
        }
    }
}

/// `count` distinct free loopback ports (all held open while picking).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to pick free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn make_temp_dir(kind: IrcdKind) -> Result<PathBuf> {
    static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "handover-{}-{}-{}-{nanos}",
            kind.binary_name(),
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a temp dir under {}", base.display())
}

/// Finds a server binary in PATH or the sbin dirs (not always in a test's PATH).
fn find_binary(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow!("{name} not found in PATH or /usr/sbin: run scripts/install-test-deps.sh")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
