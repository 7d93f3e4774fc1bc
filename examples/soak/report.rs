//! The soak's figures: message accounting per sender and receiver, RSS over time, and the
//! metrics checked against what the driver did; rendered as Markdown.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::chaos::Record;
use crate::clients::Report;
use crate::procs::metric_sum;
use crate::Args;

/// Messages a receiver could not get because of a SIGKILL are "explained": the receiver's
/// server was dead from the kill until its session was seen on another backend (plus the
/// poll's granularity), or the sender's server died with the message in its buffers.
const RECEIVER_MARGIN_MS: u64 = 3000;
const SENDER_BEFORE_MS: u64 = 1000;
const SENDER_AFTER_MS: u64 = 1000;

pub struct Check {
    pub what: String,
    pub expected: f64,
    pub actual: f64,
}

impl Check {
    fn ok(&self) -> bool {
        (self.expected - self.actual).abs() < 0.5
    }
}

pub struct Summary {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost_explained: u64,
    pub lost_unexplained: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub pairs: u64,
    pub pairs_with_loss: u64,
    pub disconnects: Vec<String>,
    pub bad_welcomes: usize,
    pub odd_lines: Vec<String>,
    pub rss: Vec<(u64, u64)>,
    pub checks: Vec<Check>,
    pub info: Vec<(String, f64)>,
    /// Unexplained losses and duplicates: (receiver, its port, sender, seq, sent ms, copies).
    pub anomalies: Vec<(usize, u16, usize, u64, u64, u64)>,
}

impl Summary {
    pub fn compute(
        args: &Args,
        reports: &[Report],
        record: &Record,
        rss: &[(u64, u64)],
        sessions_open: usize,
        before_quit: &str,
        after_quit: &str,
    ) -> Self {
        let mut s = Summary {
            sent: 0,
            expected: 0,
            delivered: 0,
            lost_explained: 0,
            lost_unexplained: 0,
            duplicates: 0,
            reordered: 0,
            pairs: 0,
            pairs_with_loss: 0,
            disconnects: Vec::new(),
            bad_welcomes: 0,
            odd_lines: Vec::new(),
            rss: rss.to_vec(),
            checks: Vec::new(),
            info: Vec::new(),
            anomalies: Vec::new(),
        };
        for r in reports {
            s.sent += r.sent.len() as u64;
            if let Some(why) = &r.disconnect {
                s.disconnects.push(format!("soak{}: {why}", r.index));
            }
            if r.welcomes != 1 {
                s.bad_welcomes += 1;
            }
            s.odd_lines
                .extend(r.odd.iter().map(|l| format!("soak{}: {l}", r.index)));
        }
        for receiver in reports {
            for sender in reports {
                if sender.index == receiver.index || sender.channel != receiver.channel {
                    continue;
                }
                s.account(receiver, sender, record);
            }
        }
        s.check_metrics(args, record, sessions_open, before_quit, after_quit);
        s
    }

    fn account(&mut self, receiver: &Report, sender: &Report, record: &Record) {
        self.pairs += 1;
        let got = receiver
            .received
            .get(&sender.index)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut count: HashMap<u64, u64> = HashMap::new();
        for seq in got {
            *count.entry(*seq).or_default() += 1;
        }
        self.reordered += got.windows(2).filter(|w| w[1] < w[0]).count() as u64;
        let mut lost_here = 0;
        for &(seq, ms) in &sender.sent {
            self.expected += 1;
            let copies = count.get(&seq).copied().unwrap_or(0);
            match copies {
                0 => {
                    lost_here += 1;
                    if explained(record, receiver.index, sender.index, ms) {
                        self.lost_explained += 1;
                    } else {
                        self.lost_unexplained += 1;
                    }
                }
                n => {
                    self.delivered += 1;
                    self.duplicates += n - 1;
                }
            }
            let unexplained = copies == 0 && !explained(record, receiver.index, sender.index, ms);
            if (unexplained || copies > 1) && self.anomalies.len() < 200 {
                let r = receiver.index;
                self.anomalies
                    .push((r, receiver.port, sender.index, seq, ms, copies));
            }
        }
        if lost_here > 0 {
            self.pairs_with_loss += 1;
        }
    }

    fn check_metrics(
        &mut self,
        args: &Args,
        record: &Record,
        sessions_open: usize,
        before: &str,
        after: &str,
    ) {
        let m = "handover_migrations_total";
        let admin = |k: &str| record.admin.get(k).copied().unwrap_or(0) as f64;
        let refused: u64 = record
            .admin
            .iter()
            .filter(|(k, _)| k.starts_with("refused"))
            .map(|(_, v)| v)
            .sum();
        let clients = args.clients as f64;
        let mut check = |what: &str, expected: f64, actual: f64| {
            self.checks.push(Check {
                what: what.to_string(),
                expected,
                actual,
            })
        };
        check(
            "drain migrations ok = sum of drains' `migrated`",
            record.drain_migrated as f64,
            metric_sum(after, m, &["reason=\"drain\"", "outcome=\"ok\""]),
        );
        check(
            "drain migrations failed = sum of drains' `failed`",
            record.drain_failed as f64,
            metric_sum(after, m, &["reason=\"drain\"", "outcome=\"failed\""]),
        );
        check(
            "admin migrations ok = moves answered ok",
            admin("ok"),
            metric_sum(after, m, &["reason=\"admin\"", "outcome=\"ok\""]),
        );
        check(
            "admin migrations aborted = moves answered aborted or refused (409)",
            admin("aborted") + refused as f64,
            metric_sum(after, m, &["reason=\"admin\"", "outcome=\"aborted\""]),
        );
        check(
            "failovers ok = sessions on killed servers",
            record.failovers_expected as f64,
            metric_sum(after, m, &["reason=\"failover\"", "outcome=\"ok\""]),
        );
        check(
            "failovers failed",
            0.0,
            metric_sum(after, m, &["reason=\"failover\"", "outcome=\"failed\""]),
        );
        check(
            "sessions in GET /sessions before the quit",
            clients,
            sessions_open as f64,
        );
        check(
            "handover_sessions (gauge) before the quit",
            clients,
            metric_sum(before, "handover_sessions", &[]),
        );
        check(
            "handover_sessions_accepted_total",
            clients,
            metric_sum(after, "handover_sessions_accepted_total", &[]),
        );
        check(
            "sessions closed before the quit",
            0.0,
            metric_sum(before, "handover_sessions_closed_total", &[]),
        );
        check(
            "sessions closed by their client after the quit",
            clients,
            metric_sum(
                after,
                "handover_sessions_closed_total",
                &["reason=\"client\""],
            ),
        );
        check(
            "handover_sessions (gauge) after the quit",
            0.0,
            metric_sum(after, "handover_sessions", &[]),
        );
        check(
            "connections refused",
            0.0,
            metric_sum(after, "handover_connections_refused_total", &[]),
        );
        for (what, filters) in [
            (
                "drain migrations aborted (retried by the drain)",
                ["reason=\"drain\"", "outcome=\"aborted\""],
            ),
            ("backend-initiated migrations", ["reason=\"backend\"", ""]),
        ] {
            self.info
                .push((what.to_string(), metric_sum(after, m, &filters)));
        }
        self.info.push((
            "bytes client to backend".into(),
            metric_sum(after, "handover_bytes_total", &["client_to_backend"]),
        ));
        self.info.push((
            "bytes backend to client".into(),
            metric_sum(after, "handover_bytes_total", &["backend_to_client"]),
        ));
    }

    pub fn clean(&self) -> bool {
        self.disconnects.is_empty()
            && self.lost_unexplained == 0
            && self.duplicates == 0
            && self.reordered == 0
            && self.bad_welcomes == 0
            && self.checks.iter().all(Check::ok)
    }

    pub fn headline(&self) -> String {
        format!(
            "soak: {} sent, {} of {} expected deliveries made; lost {} (explained by SIGKILL {}, \
             unexplained {}); {} duplicates; {} reordered; {} disconnects; metrics {}/{} consistent",
            self.sent,
            self.delivered,
            self.expected,
            self.lost_explained + self.lost_unexplained,
            self.lost_explained,
            self.lost_unexplained,
            self.duplicates,
            self.reordered,
            self.disconnects.len(),
            self.checks.iter().filter(|c| c.ok()).count(),
            self.checks.len()
        )
    }
}

fn explained(record: &Record, receiver: usize, sender: usize, sent_ms: u64) -> bool {
    let (r, s) = (crate::clients::nick(receiver), crate::clients::nick(sender));
    record.kills.iter().any(|k| {
        let receiver_down = k.moved.get(&r).is_some_and(|&moved| {
            sent_ms + SENDER_BEFORE_MS >= k.at_ms && sent_ms <= moved + RECEIVER_MARGIN_MS
        });
        let sender_down = k.moved.contains_key(&s)
            && sent_ms + SENDER_BEFORE_MS >= k.at_ms
            && sent_ms <= k.at_ms + SENDER_AFTER_MS;
        receiver_down || sender_down
    })
}

pub fn markdown(args: &Args, s: &Summary, record: &Record) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "## The last run\n");
    let _ = writeln!(
        o,
        "Generated by `bash scripts/soak.sh --minutes {}` (`examples/soak/`). {} IRC clients \
         connect through handover (release build, its own process) to three linked ngircd \
         servers (`b` is the hub, `a` and `c` are leaves) and spread over {} channels; each \
         sends a numbered message to its channel every {:.1} s. Meanwhile a driver, every {} s, \
         in turn: drains `a` (waiting) and undrains it, moves 10 random sessions to another \
         backend, drains `c`, kills a leaf (`a` or `c`) with SIGKILL and restarts \
         it (whichever leaf holds more sessions), drains `b`. Every client checks that its socket never closes and that it sees one \
         welcome; every receiver counts every numbered message of every other member of its \
         channel.\n",
        args.minutes,
        args.clients,
        args.channels,
        1.0 / args.rate,
        args.pause
    );
    let _ = writeln!(
        o,
        "### Result: {}\n",
        if s.clean() { "clean" } else { "problems found" }
    );
    let _ = writeln!(o, "| figure | value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        ("messages sent", s.sent.to_string()),
        (
            "deliveries expected (sender × other channel members)",
            s.expected.to_string(),
        ),
        ("deliveries made (exactly once)", s.delivered.to_string()),
        (
            "lost while a receiver's or sender's server was SIGKILLed",
            s.lost_explained.to_string(),
        ),
        ("lost otherwise", s.lost_unexplained.to_string()),
        ("duplicated", s.duplicates.to_string()),
        ("out of order", s.reordered.to_string()),
        ("sender/receiver pairs", s.pairs.to_string()),
        ("pairs with any loss", s.pairs_with_loss.to_string()),
        ("client disconnects", s.disconnects.len().to_string()),
        (
            "clients that saw other than one welcome",
            s.bad_welcomes.to_string(),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    let _ = writeln!(o, "\n### Metrics against what happened\n");
    let _ = writeln!(o, "| check | expected | metric | ok |\n|---|---|---|---|");
    for c in &s.checks {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            c.what,
            c.expected + 0.0,
            c.actual + 0.0,
            if c.ok() { "yes" } else { "**no**" }
        );
    }
    for (what, v) in &s.info {
        let _ = writeln!(o, "| {what} (information) | | {} | |", v + 0.0);
    }
    let _ = writeln!(o, "\n### handover's RSS over time\n");
    let _ = writeln!(o, "| t (s) | RSS (MiB) |\n|---|---|");
    let step = (s.rss.len() / 20).max(1);
    for (i, (ms, kib)) in s.rss.iter().enumerate() {
        if i % step == 0 || i + 1 == s.rss.len() {
            let _ = writeln!(
                o,
                "| {:.0} | {:.1} |",
                *ms as f64 / 1000.0,
                *kib as f64 / 1024.0
            );
        }
    }
    if let (Some(first), Some(max)) = (s.rss.first(), s.rss.iter().map(|r| r.1).max()) {
        let last = s.rss.last().map(|r| r.1).unwrap_or(0);
        let _ = writeln!(
            o,
            "\nAt the first message {:.1} MiB; peak {:.1} MiB; at the end (all clients gone) {:.1} MiB.",
            first.1 as f64 / 1024.0,
            max as f64 / 1024.0,
            last as f64 / 1024.0
        );
    }
    let _ = writeln!(o, "\n### What the driver did\n");
    let _ = writeln!(o, "| t (s) | action | outcome |\n|---|---|---|");
    for (ms, what, outcome) in &record.events {
        let _ = writeln!(o, "| {:.1} | {what} | {outcome} |", *ms as f64 / 1000.0);
    }
    for k in &record.kills {
        let slowest = k.moved.values().max().map_or(0, |m| m - k.at_ms);
        let _ = writeln!(
            o,
            "\nSIGKILL of `{}` at {:.1} s: {} sessions failed over, the last one seen on its new \
             backend {} ms later.",
            k.server,
            k.at_ms as f64 / 1000.0,
            k.moved.len(),
            slowest
        );
    }
    if !s.anomalies.is_empty() {
        let _ = writeln!(o, "\n### Losses no SIGKILL explains, and duplicates\n");
        let _ = writeln!(
            o,
            "Sent at t (ms since the start); `copies` 0 is a loss. The receiver's port finds its \
             session in handover's log (`client.addr`).\n"
        );
        let _ = writeln!(
            o,
            "| receiver (port) | sender | seq | sent at t (ms) | copies |\n|---|---|---|---|---|"
        );
        for (r, port, snd, seq, ms, copies) in &s.anomalies {
            let _ = writeln!(
                o,
                "| soak{r} ({port}) | soak{snd} | {seq} | {ms} | {copies} |"
            );
        }
    }
    if !s.disconnects.is_empty() {
        let _ = writeln!(o, "\n### Disconnects\n");
        for d in s.disconnects.iter().take(20) {
            let _ = writeln!(o, "- {d}");
        }
    }
    if !s.odd_lines.is_empty() {
        let _ = writeln!(o, "\n### Lines clients saw that need a look\n");
        for l in s.odd_lines.iter().take(20) {
            let _ = writeln!(o, "- `{l}`");
        }
    }
    o
}

/// Everything above this line of an existing report is kept: notes written by hand.
pub const MARKER: &str = "<!-- everything below is written by scripts/soak.sh -->";

/// The report with the hand-written part of the existing file (up to [`MARKER`]) in front.
pub fn with_preface(path: &std::path::Path, generated: String) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    match old.find(MARKER) {
        Some(at) => format!("{}\n\n{generated}", &old[..at + MARKER.len()]),
        None => format!("# Soak and chaos run\n\n{generated}"),
    }
}
