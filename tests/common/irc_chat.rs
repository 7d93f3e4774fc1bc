//! Runs `tests/clients/irc_chat.py` (a real jaraco-`irc` client) as a child
//! process and reads its JSON result. See the script's docstring for the
//! protocol; typical use with two clients C and D:
//!
//! ```ignore
//! let start = net.dir.join("start");
//! let c = ChatSpec::new(net.a.client_port, "C").channels("#a,#b key,#c").peer("D").count(100).start_file(&start);
//! let d = ChatSpec::new(net.b.client_port, "D").channels("#c,#b key,#a").peer("C").count(100).start_file(&start);
//! let (mut cc, mut dc) = (c.spawn(&net.dir)?, d.spawn(&net.dir)?);
//! cc.wait_ready(T)?; dc.wait_ready(T)?;
//! std::fs::write(&start, "")?;
//! let (rc, rd) = (cc.wait(T)?, dc.wait(T)?);
//! assert_eq!(rc.received("#a"), d.expected_at_peer("#a"));
//! ```
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

/// Key of private messages in the result's `received` / `sent_per_target`.
pub const PRIVATE: &str = "private";

/// `<repo>/venv/bin/python`; an error telling how to create it if missing.
pub fn venv_python() -> Result<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("venv/bin/python");
    if !py.exists() {
        bail!(
            "{} is missing: run scripts/install-test-deps.sh (creates the venv with the real IRC client libraries)",
            py.display()
        );
    }
    Ok(py)
}

pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/irc_chat.py")
}

/// Command line of one irc_chat.py run (builder).
#[derive(Clone, Debug)]
pub struct ChatSpec {
    pub host: String,
    pub port: u16,
    pub nick: String,
    /// `'#a,#b key,#c'`
    pub channels: String,
    pub peer: Option<String>,
    pub count: u32,
    pub rate: f64,
    pub expect: Option<u32>,
    pub password: Option<String>,
    pub away: Option<String>,
    pub umode: Option<String>,
    pub start_file: Option<PathBuf>,
    pub stop_file: Option<PathBuf>,
    pub linger: f64,
    pub duration_limit: f64,
    pub extra_args: Vec<String>,
}

impl ChatSpec {
    pub fn new(port: u16, nick: &str) -> ChatSpec {
        ChatSpec {
            host: "127.0.0.1".into(),
            port,
            nick: nick.into(),
            channels: String::new(),
            peer: None,
            count: 0,
            rate: 50.0,
            expect: None,
            password: None,
            away: None,
            umode: None,
            start_file: None,
            stop_file: None,
            linger: 1.0,
            duration_limit: 60.0,
            extra_args: Vec::new(),
        }
    }
    pub fn channels(mut self, c: &str) -> Self {
        self.channels = c.into();
        self
    }
    pub fn peer(mut self, p: &str) -> Self {
        self.peer = Some(p.into());
        self
    }
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
    pub fn rate(mut self, r: f64) -> Self {
        self.rate = r;
        self
    }
    pub fn expect(mut self, n: u32) -> Self {
        self.expect = Some(n);
        self
    }
    pub fn password(mut self, p: &str) -> Self {
        self.password = Some(p.into());
        self
    }
    pub fn away(mut self, text: &str) -> Self {
        self.away = Some(text.into());
        self
    }
    pub fn umode(mut self, m: &str) -> Self {
        self.umode = Some(m.into());
        self
    }
    pub fn start_file(mut self, p: &Path) -> Self {
        self.start_file = Some(p.into());
        self
    }
    pub fn stop_file(mut self, p: &Path) -> Self {
        self.stop_file = Some(p.into());
        self
    }
    pub fn linger(mut self, secs: f64) -> Self {
        self.linger = secs;
        self
    }
    pub fn duration_limit(mut self, secs: f64) -> Self {
        self.duration_limit = secs;
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.into());
        self
    }

    /// Send targets in the script's order, as result keys: channels in lower
    /// case, then [`PRIVATE`] for the peer.
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .channels
            .split(',')
            .filter_map(|c| c.split_whitespace().next())
            .map(str::to_lowercase)
            .collect();
        if self.peer.is_some() {
            t.push(PRIVATE.into());
        }
        t
    }

    /// The numbers this client sends to `target` (a result key), in order:
    /// what its peer must receive there exactly once, in this order.
    pub fn expected_at_peer(&self, target: &str) -> Vec<u64> {
        let targets = self.targets();
        (1..=u64::from(self.count))
            .filter(|n| targets[((n - 1) as usize) % targets.len()] == target.to_lowercase())
            .collect()
    }

    /// Starts the client; its files go to `dir` as `<nick>.json|.ready|.log`.
    pub fn spawn(&self, dir: &Path) -> Result<ChatClient> {
        let python = venv_python()?;
        let out = dir.join(format!("{}.json", self.nick));
        let ready = dir.join(format!("{}.ready", self.nick));
        let log = dir.join(format!("{}.log", self.nick));
        for p in [&out, &ready] {
            let _ = fs::remove_file(p);
        }
        let mut cmd = Command::new(python);
        cmd.arg(script_path())
            .args([
                "--host",
                &self.host,
                "--port",
                &self.port.to_string(),
                "--nick",
                &self.nick,
            ])
            .args(["--channels", &self.channels])
            .args([
                "--count",
                &self.count.to_string(),
                "--rate",
                &self.rate.to_string(),
            ])
            .args(["--linger", &self.linger.to_string()])
            .args(["--duration-limit", &self.duration_limit.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--out")
            .arg(&out);
        let opt = [
            ("--peer", self.peer.clone()),
            ("--expect", self.expect.map(|n| n.to_string())),
            ("--password", self.password.clone()),
            ("--away", self.away.clone()),
            ("--umode", self.umode.clone()),
        ];
        for (flag, value) in opt {
            if let Some(v) = value {
                cmd.arg(format!("{flag}={v}"));
            }
        }
        if let Some(p) = &self.start_file {
            cmd.arg("--start-file").arg(p);
        }
        if let Some(p) = &self.stop_file {
            cmd.arg("--stop-file").arg(p);
        }
        cmd.args(&self.extra_args);
        let logf = fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd.spawn().context("spawning irc_chat.py")?;
        Ok(ChatClient {
            nick: self.nick.clone(),
            child: Some(child),
            out,
            ready,
            log,
        })
    }
}

/// A running irc_chat.py; killed on drop if still running.
pub struct ChatClient {
    pub nick: String,
    child: Option<Child>,
    pub out: PathBuf,
    pub ready: PathBuf,
    pub log: PathBuf,
}

impl ChatClient {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.exists()
    }

    /// Waits for the ready file (registered, joined, peer in every channel).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                bail!(
                    "irc_chat {} exited before ready ({}):\n{}",
                    self.nick,
                    status?,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "irc_chat {} not ready within {timeout:?}:\n{}",
                    self.nick,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits for the process to end (killing it after `timeout`) and reads its JSON.
    pub fn wait(&mut self, timeout: Duration) -> Result<ChatResult> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("already waited"))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "irc_chat {} still running after {timeout:?}, killed:\n{}",
                    self.nick,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = fs::read_to_string(&self.out).with_context(|| {
            format!(
                "irc_chat {} ({status}) wrote no {}:\n{}",
                self.nick,
                self.out.display(),
                self.log_text()
            )
        })?;
        let json: Value = serde_json::from_str(&text).context("parsing irc_chat JSON")?;
        Ok(ChatResult {
            exit_code: status.code(),
            json,
            log: self.log_text(),
        })
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChatClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The parsed JSON of one run plus the exit code and the script's output.
#[derive(Debug)]
pub struct ChatResult {
    pub exit_code: Option<i32>,
    pub json: Value,
    pub log: String,
}

impl ChatResult {
    /// Peer message numbers received at `target` (a channel, or [`PRIVATE`]).
    pub fn received(&self, target: &str) -> Vec<u64> {
        self.json["received"][target.to_lowercase()]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }
    /// Times `key` (a command, numeric or JOIN_SELF/PART_SELF/NICK_SELF) was received.
    pub fn count(&self, key: &str) -> u64 {
        self.json["counts"][key].as_u64().unwrap_or(0)
    }
    pub fn count_after_welcome(&self, key: &str) -> u64 {
        self.json["counts_after_welcome"][key].as_u64().unwrap_or(0)
    }
    pub fn flag(&self, key: &str) -> bool {
        self.json[key].as_bool().unwrap_or(false)
    }
    /// `{numeric: count}` of every 4xx/5xx reply received.
    pub fn errors(&self) -> &serde_json::Map<String, Value> {
        static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> =
            std::sync::OnceLock::new();
        self.json["errors"]
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }
    /// Pretty JSON plus the script output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n{}\n{}",
            self.exit_code,
            serde_json::to_string_pretty(&self.json).unwrap_or_default(),
            self.log
        )
    }
}

/// `got` received every message of `sender`, per target, exactly once, in order.
pub fn check_received(got: &ChatResult, sender: &ChatSpec) -> Result<()> {
    for target in sender.targets() {
        let want = sender.expected_at_peer(&target);
        ensure!(!want.is_empty(), "test sends nothing to {target}");
        ensure!(
            got.received(&target) == want,
            "{target}: received {:?}, want {want:?}\n{}",
            got.received(&target),
            got.describe()
        );
    }
    ensure!(got.flag("complete"), "not complete\n{}", got.describe());
    Ok(())
}

/// One welcome burst, `channels` own JOINs, no disconnect, no error numerics.
pub fn check_clean_session(r: &ChatResult, channels: u64) -> Result<()> {
    ensure!(r.exit_code == Some(0), "exit code\n{}", r.describe());
    ensure!(!r.flag("disconnected"), "disconnected\n{}", r.describe());
    for key in ["001", "002", "003", "004", "375", "376", "251"] {
        ensure!(r.count(key) == 1, "{key} count != 1\n{}", r.describe());
        ensure!(
            r.count_after_welcome(key) == 0,
            "{key} after welcome\n{}",
            r.describe()
        );
    }
    ensure!(r.count("005") >= 1, "no 005\n{}", r.describe());
    ensure!(r.count("372") >= 1, "no MOTD text\n{}", r.describe());
    ensure!(
        r.count("JOIN_SELF") == channels,
        "JOIN_SELF\n{}",
        r.describe()
    );
    ensure!(r.count("366") == channels, "366\n{}", r.describe());
    ensure!(r.count("NICK") == 0, "NICK lines\n{}", r.describe());
    ensure!(
        r.errors().is_empty(),
        "error numerics {:?}\n{}",
        r.errors(),
        r.describe()
    );
    ensure!(
        r.json["error_lines"].as_array().is_some_and(Vec::is_empty),
        "ERROR lines\n{}",
        r.describe()
    );
    Ok(())
}
