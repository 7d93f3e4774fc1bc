//! The chaos driver: drains backends back and forth, moves single sessions, and kills a leaf
//! server with SIGKILL and restarts it, in a loop until the deadline. It records what it did
//! and what handover answered, so the report can check the metrics against it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use handover::admin::client::{AdminClient, DrainReply};
use tokio::time::Instant;

use crate::procs::{self, Ircd, SERVERS};

#[derive(Debug, Default)]
pub struct Record {
    /// (ms since start, what, outcome)
    pub events: Vec<(u64, String, String)>,
    pub drain_migrated: u64,
    pub drain_failed: u64,
    pub admin: HashMap<String, u64>,
    /// Sessions on a server when it was killed (each must fail over once).
    pub failovers_expected: u64,
    pub kills: Vec<Kill>,
}

/// One SIGKILL: who was on the server, and when each of them was seen elsewhere.
#[derive(Debug)]
pub struct Kill {
    pub server: String,
    pub at_ms: u64,
    /// nick → ms when its session was first seen on another backend.
    pub moved: HashMap<String, u64>,
}

pub struct Chaos<'a> {
    pub admin: AdminClient,
    pub ircds: &'a mut [Ircd],
    pub started: Instant,
    pub record: Record,
    rng: u64,
}

impl<'a> Chaos<'a> {
    pub fn new(admin: AdminClient, ircds: &'a mut [Ircd], started: Instant) -> Self {
        Self {
            admin,
            ircds,
            started,
            record: Record::default(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn note(&mut self, what: String, outcome: String) {
        let at = self.ms();
        eprintln!("soak: [{:>7.1}s] {what}: {outcome}", at as f64 / 1000.0);
        self.record.events.push((at, what, outcome));
    }

    fn random(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    /// Runs the cycle until `deadline`, pausing `pause` between actions.
    pub async fn run(&mut self, deadline: Instant, pause: Duration) -> Result<()> {
        let mut step = 0usize;
        while Instant::now() + pause < deadline {
            tokio::time::sleep(pause).await;
            match step % 5 {
                0 => self.drain_and_back("a").await?,
                1 => self.move_some(10).await?,
                2 => self.drain_and_back("c").await?,
                3 => {
                    // Only leaves: killing the hub would split the network itself. The leaf
                    // with more sessions, so the kill always hits someone.
                    let leaf = self.busier_leaf().await?;
                    self.kill_and_restart(leaf).await?
                }
                _ => self.drain_and_back("b").await?,
            }
            step += 1;
        }
        Ok(())
    }

    async fn busier_leaf(&self) -> Result<usize> {
        let backends = self.admin.backends().await?;
        let count = |name: &str| {
            backends
                .iter()
                .find(|b| b.name == name)
                .map_or(0, |b| b.sessions)
        };
        Ok(if count("a") >= count("c") { 0 } else { 2 })
    }

    async fn drain_and_back(&mut self, name: &str) -> Result<()> {
        let outcome = match self.admin.drain(name, true).await {
            Ok(DrainReply::Finished(f)) => {
                self.record.drain_migrated += f.migrated;
                self.record.drain_failed += f.failed;
                format!("{} migrated, {} failed", f.migrated, f.failed)
            }
            Ok(DrainReply::Started(_)) => "started".into(),
            Err(e) => format!("error: {e}"),
        };
        self.note(format!("drain {name} --wait"), outcome);
        let undrain = self.admin.undrain(name).await;
        self.note(
            format!("undrain {name}"),
            format!("{:?}", undrain.map(|b| b.state)),
        );
        Ok(())
    }

    async fn move_some(&mut self, count: usize) -> Result<()> {
        let sessions = self.admin.sessions().await?;
        for _ in 0..count.min(sessions.len()) {
            let s = &sessions[self.random(sessions.len())];
            let others: Vec<&str> = SERVERS
                .iter()
                .copied()
                .filter(|b| *b != s.backend)
                .collect();
            let to = others[self.random(others.len())];
            let outcome = match self.admin.migrate(&s.id, Some(to)).await {
                Ok(reply) => reply.outcome,
                Err(e) => format!("refused: {e}"),
            };
            *self.record.admin.entry(outcome.clone()).or_default() += 1;
            self.note(
                format!(
                    "migrate {} {} -> {to}",
                    s.identity.as_deref().unwrap_or("?"),
                    s.backend
                ),
                outcome,
            );
        }
        Ok(())
    }

    async fn kill_and_restart(&mut self, idx: usize) -> Result<()> {
        let name = SERVERS[idx];
        let on_it: Vec<String> = self
            .admin
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.backend == name)
            .filter_map(|s| s.identity)
            .collect();
        let at_ms = self.ms();
        self.ircds[idx].kill();
        self.note(
            format!("SIGKILL {name}"),
            format!("{} sessions on it", on_it.len()),
        );
        self.record.failovers_expected += on_it.len() as u64;
        let mut moved = HashMap::new();
        let limit = Instant::now() + Duration::from_secs(40);
        while moved.len() < on_it.len() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.ms();
            for s in self.admin.sessions().await? {
                if let Some(nick) = s.identity.filter(|n| on_it.contains(n)) {
                    if s.backend != name {
                        moved.entry(nick).or_insert(now);
                    }
                }
            }
        }
        let last = moved.values().max().copied().unwrap_or(at_ms);
        self.note(
            format!("failover from {name}"),
            format!(
                "{}/{} sessions moved within {} ms",
                moved.len(),
                on_it.len(),
                last - at_ms
            ),
        );
        self.record.kills.push(Kill {
            server: name.to_string(),
            at_ms,
            moved,
        });
        // Keep new sessions off the restarted server until it has linked to the network.
        let _ = self.admin.drain(name, false).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.ircds[idx].start()?;
        let linked = procs::wait_linked(
            self.ircds[idx].addr(),
            &format!("probe{}", self.ms()),
            Duration::from_secs(60),
        )
        .await;
        self.note(format!("restart {name}"), format!("{linked:?}"));
        // Health needs `rise` checks before the backend is up again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let undrain = self.admin.undrain(name).await;
        self.note(
            format!("undrain {name}"),
            format!("{:?}", undrain.map(|b| b.state)),
        );
        Ok(())
    }
}
