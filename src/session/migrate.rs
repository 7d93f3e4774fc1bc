//! A migration as named phases: Connecting → Registering → Flushing → cut over.
//!
//! Make-before-break (DESIGN.md): the client keeps talking to A while B registers; the pause
//! begins only when B is ready, lasts until A answers the flush mark, and ends with the cut.
//! Any failure before the cut aborts: B is dropped, the adapter forgets the attempt, held
//! client frames go to A in order, and the session carries on as if nothing happened.
//! Failover is the same with A already gone: the pause starts when A is lost.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::{info, warn};

use super::link::{IoEvent, Link};
use super::{CloseReason, Detached, MigrationResult, Session, DETACHED_GRACE, OUT_LIMIT};
use crate::config::BackendConfig;
use crate::metrics::{MigrationReason, Outcome};
use crate::net::connect::{connect, ConnectError};
use crate::net::Stream;
use crate::protocol::{Direction, RegisterStep, SessionAdapter};

/// How long a session with no backend waits before trying another.
const FAILOVER_RETRY: Duration = Duration::from_millis(500);

type Connecting = Pin<
    Box<dyn Future<Output = (Result<Stream, ConnectError>, Option<OwnedSemaphorePermit>)> + Send>,
>;

enum Phase {
    /// Connecting to the target; with `Some(frames)` this is a registration's reconnect
    /// (`RegisterStep::Reconnect`): registration goes on there after sending them.
    Connecting(Connecting, Option<Vec<Bytes>>),
    Registering {
        link: Link,
        deadline: Instant,
        settle: bool,
    },
    Flushing {
        link: Link,
        deadline: Instant,
    },
    Done,
}

pub(super) struct Migration {
    reason: MigrationReason,
    target: BackendConfig,
    from: String,
    started: Instant,
    paused_at: Option<Instant>,
    /// When each phase ended, for `handover_migration_phase_seconds`.
    connected_at: Option<Instant>,
    registered_at: Option<Instant>,
    cut_at: Option<Instant>,
    phase: Phase,
    reply: Option<oneshot::Sender<MigrationResult>>,
    /// The flush mark was sent to A and its reply has not come yet.
    mark_pending: bool,
    /// The flush wait timed out: cut over whatever A is doing.
    flush_expired: bool,
    /// A is gone (failover, or lost during the migration).
    source_lost: bool,
    /// What B said between registration and the cut, in order.
    held_b: VecDeque<Bytes>,
    held_b_len: usize,
    /// Held for failovers, so a dead backend's sessions reach the next one paced.
    _permit: Option<OwnedSemaphorePermit>,
    /// When registration times out; a reconnect during registration keeps it.
    register_deadline: Instant,
}

pub(super) enum MigrationEvent {
    Connected(Result<Stream, ConnectError>, Option<OwnedSemaphorePermit>),
    Io(io::Result<IoEvent>),
}

/// The migration's next event; pending forever when there is none.
pub(super) async fn poll(m: &mut Option<Box<Migration>>) -> MigrationEvent {
    let Some(m) = m else {
        return std::future::pending().await;
    };
    let read_ok = m.held_b_len < OUT_LIMIT;
    match &mut m.phase {
        Phase::Connecting(fut, _) => {
            let (result, permit) = fut.await;
            MigrationEvent::Connected(result, permit)
        }
        Phase::Registering { link, .. } if link.pollable(link.out_len() < OUT_LIMIT) => {
            // B's replies (PONGs to its PINGs) queue up for B: stop reading B while it does not
            // take them, or a B that floods PINGs and never reads grows the queue unbounded.
            let read = link.out_len() < OUT_LIMIT;
            MigrationEvent::Io(link.io(read).await)
        }
        Phase::Flushing { link, .. } if link.pollable(read_ok) => {
            MigrationEvent::Io(link.io(read_ok).await)
        }
        _ => std::future::pending().await,
    }
}

impl Migration {
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Registering { deadline, .. } => Some(*deadline),
            Phase::Flushing { deadline, .. } if !self.flush_expired => Some(*deadline),
            _ => None,
        }
    }

    pub(super) fn source_lost(&mut self) {
        self.source_lost = true;
        self.mark_pending = false;
        self.paused_at.get_or_insert_with(Instant::now);
    }

    /// True when the flush-mark reply from A is this frame (it is then swallowed).
    pub(super) fn is_flush_reply(
        &mut self,
        adapter: &mut dyn SessionAdapter,
        frame: &Bytes,
    ) -> bool {
        if self.mark_pending
            && matches!(self.phase, Phase::Flushing { .. })
            && adapter.is_flush_reply(frame)
        {
            self.mark_pending = false;
            return true;
        }
        false
    }

    /// B is registered and A has nothing more to prove.
    pub(super) fn ready_to_cut(&self, source: Option<&Link>) -> bool {
        if !matches!(self.phase, Phase::Flushing { .. }) {
            return false;
        }
        match source {
            None => true,
            Some(_) if self.source_lost || self.flush_expired => true,
            Some(a) => !self.mark_pending && !a.busy(),
        }
    }

    /// Time spent connecting, registering, flushing and settling, ending at `now`; a phase
    /// that never ran (a cut forced before B registered) counts as nothing.
    fn phases(&self, now: Instant) -> [Duration; 4] {
        let connected = self.connected_at.unwrap_or(self.started);
        let registered = self.registered_at.unwrap_or(connected);
        let cut = self.cut_at.unwrap_or(now);
        [
            connected.saturating_duration_since(self.started),
            registered.saturating_duration_since(connected),
            cut.saturating_duration_since(registered),
            now.saturating_duration_since(cut),
        ]
    }

    /// The session is ending mid-migration.
    pub(super) fn abandon(self, registry: &crate::registry::Registry) {
        registry.release(&self.target.name);
    }
}

impl Session {
    /// Begins a migration to `to` (or the least-loaded backend). Refusals are counted as
    /// aborted and answered at once.
    pub(super) fn start_migration(
        &mut self,
        to: Option<String>,
        reason: MigrationReason,
        reply: Option<oneshot::Sender<MigrationResult>>,
    ) {
        let refuse = |s: &mut Session,
                      why: String,
                      reply: Option<oneshot::Sender<MigrationResult>>| {
            s.ctx
                .registry
                .metrics
                .migration(s.ctx.protocol, reason, Outcome::Aborted);
            info!(reason = reason.label(), outcome = "aborted", why = %why, "migration refused");
            if let Some(reply) = reply {
                let _ = reply.send(MigrationResult {
                    from: s.backend_name.clone(),
                    to: to.clone().unwrap_or_default(),
                    outcome: Outcome::Aborted,
                    reason: Some(why),
                    attempted: false,
                });
            }
        };
        if self.migration.is_some() {
            return refuse(
                self,
                "a migration of this session is already under way".into(),
                reply,
            );
        }
        if self.client_done {
            return refuse(self, "the client is closing".into(), reply);
        }
        let failing_over = self.backend.is_none();
        let allowed = if failing_over {
            self.adapter.can_fail_over()
        } else {
            self.adapter.can_migrate()
        };
        if let Err(why) = allowed {
            if failing_over {
                // Still bounded: `retry_failover` closes the client after failover_timeout_ms.
                self.retry_at = Some(Instant::now() + FAILOVER_RETRY);
            }
            return refuse(self, why, reply);
        }
        let exclude = [self.backend_name.as_str()];
        // Where the adapter would rather go (when nobody named a backend), if it can.
        let preferred = to
            .is_none()
            .then(|| self.adapter.preferred_backend())
            .flatten()
            .and_then(|p| {
                self.ctx
                    .registry
                    .reserve(&self.ctx.listener, &exclude, Some(&p))
                    .ok()
            });
        let reserved = match preferred {
            Some(target) => Ok(target),
            None => self
                .ctx
                .registry
                .reserve(&self.ctx.listener, &exclude, to.as_deref()),
        };
        let target = match reserved {
            Ok(target) => target,
            Err(why) if self.backend.is_none() => {
                // Failover with nowhere to go yet: try again shortly.
                info!(why = %why, "no backend for failover yet");
                self.retry_at = Some(Instant::now() + FAILOVER_RETRY);
                return;
            }
            Err(why) => return refuse(self, why, reply),
        };
        let connect_fut = {
            let target = target.clone();
            let client = self.client_info.addr;
            let timeout = Duration::from_millis(self.ctx.migration.connect_timeout_ms);
            let limiter = (self.backend.is_none()).then(|| self.ctx.failover_limiter.clone());
            Box::pin(async move {
                let permit = match limiter {
                    Some(sem) => sem.acquire_owned().await.ok(),
                    None => None,
                };
                (connect(&target, client, timeout).await, permit)
            })
        };
        let lost = self.backend.is_none();
        self.migration = Some(Box::new(Migration {
            reason,
            from: self.backend_name.clone(),
            target,
            started: Instant::now(),
            paused_at: if lost { self.lost_since } else { None },
            connected_at: None,
            registered_at: None,
            cut_at: None,
            phase: Phase::Connecting(connect_fut, None),
            reply,
            mark_pending: false,
            flush_expired: false,
            source_lost: lost,
            held_b: VecDeque::new(),
            held_b_len: 0,
            _permit: None,
            register_deadline: Instant::now(),
        }));
    }

    pub(super) fn on_migration_event(&mut self, ev: MigrationEvent) -> Option<CloseReason> {
        match ev {
            MigrationEvent::Connected(Ok(stream), permit) => self.begin_register(stream, permit),
            MigrationEvent::Connected(Err(e), _) => self.abort_migration(&e.to_string()),
            // A new backend's reads are never spliced before it is current.
            MigrationEvent::Io(Ok(IoEvent::Wrote | IoEvent::Readable)) => {}
            MigrationEvent::Io(Ok(IoEvent::Read(0))) => {
                self.abort_migration("the new backend closed the connection")
            }
            MigrationEvent::Io(Err(e)) => self.abort_migration(&format!("the new backend: {e}")),
            MigrationEvent::Io(Ok(IoEvent::Read(_))) => self.target_frames(),
        }
        None
    }

    fn begin_register(&mut self, stream: Stream, permit: Option<OwnedSemaphorePermit>) {
        let m = self.migration.as_mut().expect("connecting");
        if permit.is_some() {
            m._permit = permit;
        }
        m.connected_at.get_or_insert_with(Instant::now);
        let mut link = Link::new(stream);
        if let Phase::Connecting(_, Some(send)) = &mut m.phase {
            // A registration's reconnect: same deadline, registration goes on.
            std::mem::take(send).into_iter().for_each(|f| link.push(f));
            let deadline = m.register_deadline;
            m.phase = Phase::Registering {
                link,
                deadline,
                settle: false,
            };
            return;
        }
        if let Some(prelude) = self.adapter.backend_prelude(&m.target, &self.client_info) {
            link.push(prelude);
        }
        match self.adapter.start_register() {
            Ok(start) => {
                for frame in start.send {
                    link.push(frame);
                }
                let timeout = Duration::from_millis(self.ctx.migration.register_timeout_ms);
                let (deadline, settle) = match start.settle {
                    Some(settle) => (Instant::now() + settle.min(timeout), true),
                    None => (Instant::now() + timeout, false),
                };
                m.register_deadline = deadline;
                m.phase = Phase::Registering {
                    link,
                    deadline,
                    settle,
                };
            }
            Err(why) => self.abort_migration(&why),
        }
    }

    /// Frames from B: fed to the registration machine, or held until the cut.
    fn target_frames(&mut self) {
        loop {
            let Some(m) = self.migration.as_mut() else {
                return;
            };
            let (link, registering) = match &mut m.phase {
                Phase::Registering { link, .. } => (link, true),
                Phase::Flushing { link, .. } => (link, false),
                _ => return,
            };
            let frame = match self
                .adapter
                .decode(Direction::BackendToClient, &mut link.rbuf)
            {
                Ok(Some(frame)) => frame,
                Ok(None) => return link.release_idle(),
                Err(e) => return self.abort_migration(&format!("the new backend sent {e}")),
            };
            if !registering {
                tracing::trace!(line = %String::from_utf8_lossy(&frame).trim_end(), "held from the new backend");
                m.held_b_len += frame.len();
                m.held_b.push_back(frame);
                continue;
            }
            match self.adapter.on_register_frame(&frame) {
                RegisterStep::Continue(send) => send.into_iter().for_each(|f| link.push(f)),
                RegisterStep::Hold(send) => {
                    tracing::trace!(line = %String::from_utf8_lossy(&frame).trim_end(), "held from the new backend (registering)");
                    send.into_iter().for_each(|f| link.push(f));
                    m.held_b_len += frame.len();
                    m.held_b.push_back(frame);
                }
                RegisterStep::Done(send) => {
                    send.into_iter().for_each(|f| link.push(f));
                    self.registered();
                }
                RegisterStep::Failed(why) => {
                    return self.abort_migration(&format!("the new backend refused: {why}"))
                }
                RegisterStep::Reconnect { address, send } => return self.reconnect(address, send),
            }
        }
    }

    /// Registration continues on another address the new backend named (OSCAR: its BOS after
    /// the login): the current registration link is dropped.
    fn reconnect(&mut self, address: String, send: Vec<Bytes>) {
        let m = self.migration.as_mut().expect("registering");
        let mut target = m.target.clone();
        target.address = address;
        let client = self.client_info.addr;
        let timeout = Duration::from_millis(self.ctx.migration.connect_timeout_ms);
        let fut: Connecting =
            Box::pin(async move { (connect(&target, client, timeout).await, None) });
        m.phase = Phase::Connecting(fut, Some(send));
    }

    /// B is ready: pause the client and send A the flush mark.
    fn registered(&mut self) {
        let m = self.migration.as_mut().expect("registering");
        let phase = std::mem::replace(&mut m.phase, Phase::Done);
        let Phase::Registering { link, .. } = phase else {
            m.phase = phase;
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(self.ctx.migration.flush_timeout_ms);
        m.phase = Phase::Flushing { link, deadline };
        let now = Instant::now();
        m.registered_at = Some(now);
        m.paused_at.get_or_insert(now);
        self.paused = true;
        if let Some(a) = self.backend.as_mut() {
            if let Some(mark) = self.adapter.flush_mark() {
                a.push(mark);
                m.mark_pending = true;
            }
        }
    }

    pub(super) fn on_deadline(&mut self) {
        let Some(m) = self.migration.as_mut() else {
            self.retry_at = None;
            return;
        };
        match &m.phase {
            Phase::Registering { settle: true, .. } => self.registered(),
            Phase::Registering { settle: false, .. } => {
                self.abort_migration("registration timed out")
            }
            Phase::Flushing { .. } => {
                warn!(backend = %self.backend_name, "no answer to the flush mark in time; cutting over");
                m.flush_expired = true;
                m.mark_pending = false;
            }
            _ => {}
        }
    }

    /// Makes B current: detach A, settle B, forward what B held, replay the client's queue.
    pub(super) fn cut_over(&mut self) {
        let Some(mut m) = self.migration.take() else {
            return;
        };
        let Phase::Flushing { mut link, .. } = std::mem::replace(&mut m.phase, Phase::Done) else {
            return;
        };
        m.cut_at = Some(Instant::now());
        if let Some(mut a) = self.backend.take() {
            if let Some(bye) = self.adapter.detach() {
                a.push(bye);
            }
            // Still read until it closes: it may have taken messages for the client that the
            // new backend can't have (see `SessionAdapter::after_detach`).
            if let Some(old) = self.detached.take() {
                tokio::spawn(old.link.finish(Duration::from_millis(100)));
            }
            self.detached = Some(Box::new(Detached {
                link: a,
                until: Instant::now() + DETACHED_GRACE,
            }));
        }
        self.adapter.on_backend(&m.target);
        for frame in self.adapter.cutover() {
            tracing::debug!(line = %String::from_utf8_lossy(&frame).trim_end(), "cut over: to the new backend");
            link.push(frame);
        }
        self.backend = Some(link);
        self.ctx.registry.session_moved(self.id, &m.target.name);
        self.backend_name = m.target.name.clone();
        for frame in m.held_b.drain(..) {
            self.route_backend_frame(frame);
        }
        self.adapter.held_lines_done();
        // What A sent after the mark's reply, already read, is the detached link's now.
        self.detached_frames();
        let deadline = Instant::now() + Duration::from_millis(self.ctx.migration.flush_timeout_ms);
        self.settling = Some((m, deadline));
        self.finish_settling(false);
    }

    /// Ends the pause once the adapter has settled B (or `force`, or the deadline passed):
    /// replays the in-flight queue, resumes the client, records the migration.
    pub(super) fn finish_settling(&mut self, force: bool) {
        let Some((_, deadline)) = &self.settling else {
            return;
        };
        let now = Instant::now();
        if !(force || self.adapter.settled() || now >= *deadline) {
            return;
        }
        if !self.adapter.settled() {
            warn!(backend = %self.backend_name, "the new backend did not settle in time; resuming anyway");
        }
        let (mut m, _) = self.settling.take().expect("checked");
        let replayed = self.release_held();
        self.paused = false;
        self.lost_since = None;
        self.retry_at = None;
        let pause = m.paused_at.map(|p| now - p).unwrap_or_default();
        let took = now - m.started;
        self.record(&mut m, Outcome::Ok, None, took, pause, replayed);
    }

    /// Gives up the migration; the session stays on A (or, in failover, tries again).
    pub(super) fn abort_migration(&mut self, why: &str) {
        let Some(mut m) = self.migration.take() else {
            return;
        };
        self.ctx.registry.release(&m.target.name);
        self.adapter.abort_migration();
        let now = Instant::now();
        match self.backend.as_mut() {
            Some(_) => {
                self.release_held();
                self.paused = false;
                let pause = m.paused_at.map(|p| now - p).unwrap_or_default();
                let took = now - m.started;
                self.record(&mut m, Outcome::Aborted, Some(why), took, pause, 0);
            }
            None => {
                info!(to = %m.target.name, why, "failover attempt failed; trying again");
                self.retry_at = Some(now + FAILOVER_RETRY);
                // The reply (if any) waits for the final outcome.
                self.pending_reply = m.reply;
            }
        }
    }

    /// No backend and no migration: try again, or give up after `failover_timeout_ms`.
    pub(super) fn retry_failover(&mut self) -> Option<CloseReason> {
        let lost = *self.lost_since.get_or_insert_with(Instant::now);
        let now = Instant::now();
        if now - lost > Duration::from_millis(self.ctx.migration.failover_timeout_ms) {
            self.ctx.registry.metrics.migration(
                self.ctx.protocol,
                MigrationReason::Failover,
                Outcome::Failed,
            );
            warn!(
                reason = "failover",
                outcome = "failed",
                held_bytes = self.held_len,
                "no backend took the session in time; closing it"
            );
            if let Some(reply) = self.pending_reply.take() {
                let _ = reply.send(MigrationResult {
                    from: self.backend_name.clone(),
                    to: String::new(),
                    outcome: Outcome::Failed,
                    reason: Some("no backend took the session".into()),
                    attempted: true,
                });
            }
            return Some(CloseReason::BackendLost);
        }
        if self.retry_at.is_some_and(|at| at > now) {
            return None;
        }
        self.retry_at = None;
        let reply = self.pending_reply.take();
        self.start_migration(None, MigrationReason::Failover, reply);
        None
    }

    fn record(
        &mut self,
        m: &mut Migration,
        outcome: Outcome,
        why: Option<&str>,
        took: Duration,
        pause: Duration,
        replayed: u64,
    ) {
        let reason = if m.source_lost {
            MigrationReason::Failover
        } else {
            m.reason
        };
        let metrics = &self.ctx.registry.metrics;
        metrics.migration(self.ctx.protocol, reason, outcome);
        if outcome == Outcome::Ok {
            metrics.migration_timing(self.ctx.protocol, took, pause, replayed);
            metrics.migration_phases(self.ctx.protocol, m.phases(Instant::now()));
        }
        info!(
            reason = reason.label(),
            outcome = outcome.label(),
            from = %m.from,
            to = %m.target.name,
            duration_ms = took.as_secs_f64() * 1000.0,
            pause_ms = pause.as_secs_f64() * 1000.0,
            replayed_bytes = replayed,
            why = why.unwrap_or(""),
            "migration"
        );
        if let Some(reply) = m.reply.take() {
            let _ = reply.send(MigrationResult {
                from: m.from.clone(),
                to: m.target.name.clone(),
                outcome,
                reason: why.map(str::to_string),
                attempted: true,
            });
        }
    }
}
