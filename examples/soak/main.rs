//! Soak and chaos run: IRC clients through handover on three linked real ngircd servers
//! exchange numbered channel messages while a driver drains backends back and forth, moves
//! single sessions, and kills a server with SIGKILL and restarts it. At the end it counts
//! disconnects, lost, duplicated and reordered messages per sender and receiver, samples of
//! handover's RSS, and checks the metrics against what the driver did; it writes the figures
//! to a Markdown report.
//!
//! ```sh
//! bash scripts/soak.sh                 # 10 minutes, 200 clients, report in docs/SOAK.md
//! bash scripts/soak.sh --minutes 2     # the short run
//! ```

mod chaos;
mod clients;
mod procs;
mod report;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use handover::admin::client::AdminClient;
use tokio::sync::watch;
use tokio::time::Instant;

use clients::Phase;

#[derive(Parser, Debug)]
#[command(about = "Soak and chaos run of handover over three linked ngircd servers")]
pub struct Args {
    /// How long the chaos runs.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// IRC clients through handover.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Channels the clients are spread over (each client is in one).
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Messages per second each client sends to its channel.
    #[arg(long, default_value_t = 0.5)]
    pub rate: f64,
    /// Seconds between two chaos actions.
    #[arg(long, default_value_t = 8.0)]
    pub pause: f64,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "docs/SOAK.md")]
    pub report: std::path::PathBuf,
    /// Keep the work directory (configs and logs) afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("handover-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("soak: work directory {}", dir.display());
    let result = run(&args, &dir).await;
    if !args.keep && result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run(args: &Args, dir: &std::path::Path) -> Result<()> {
    let mut ircds = procs::ircds(dir)?;
    for ircd in ircds.iter_mut() {
        ircd.start()?;
    }
    for (i, ircd) in ircds.iter().enumerate() {
        procs::wait_linked(ircd.addr(), &format!("probe{i}"), Duration::from_secs(30)).await?;
    }
    let handover = procs::Handover::start(dir, &ircds)?;
    let admin = AdminClient::new(&handover.admin.to_string(), None);
    let up = Instant::now();
    while admin.backends().await.is_err() {
        if up.elapsed() > Duration::from_secs(10) {
            bail!(
                "handover did not start; see {}",
                dir.join("handover.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "soak: ngircd a, b, c linked; handover pid {} on {}",
        handover.pid(),
        handover.listen
    );

    let started = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "soak: t = 0 is {:.3} s after the Unix epoch",
        wall.as_secs_f64()
    );
    let (phase_tx, phase_rx) = watch::channel(Phase::Ready);
    let shared = Arc::new(clients::Shared {
        started,
        phase: phase_rx,
        joined: AtomicUsize::new(0),
        disconnected: AtomicBool::new(false),
    });
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(clients::run(
            handover.listen,
            i,
            args.channels,
            interval,
            shared,
        )));
        // ngircd's listen backlog is 10: connect in small steps.
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let limit = Instant::now() + Duration::from_secs(120);
    while shared.joined.load(Ordering::Relaxed) < args.clients {
        if Instant::now() > limit || shared.disconnected.load(Ordering::Relaxed) {
            bail!(
                "only {} of {} clients joined",
                shared.joined.load(Ordering::Relaxed),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every JOIN cross the network before the first message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("soak: {} clients joined; sending", args.clients);
    let rss_start = handover.rss_kib();
    phase_tx.send(Phase::Send).ok();

    let mut rss = vec![(started.elapsed().as_millis() as u64, rss_start)];
    let deadline = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let sampler = {
        let pid = handover.pid();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(kib) = read_rss(pid) else { break };
                samples.push((started.elapsed().as_millis() as u64, kib));
                if Instant::now() > deadline + Duration::from_secs(30) {
                    break;
                }
            }
            samples
        })
    };
    let mut chaos = chaos::Chaos::new(admin.clone(), &mut ircds, started);
    chaos
        .run(deadline, Duration::from_secs_f64(args.pause))
        .await
        .context("chaos driver")?;
    let record = std::mem::take(&mut chaos.record);
    drop(chaos);
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;

    // Stop sending; give the last messages time to arrive.
    phase_tx.send(Phase::Quiet).ok();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let metrics_before_quit = handover.metrics().await?;
    let sessions_open = admin.sessions().await?.len();
    phase_tx.send(Phase::Quit).ok();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics_after_quit = handover.metrics().await?;
    rss.extend(sampler.await?);
    rss.push((started.elapsed().as_millis() as u64, handover.rss_kib()));

    let summary = report::Summary::compute(
        args,
        &reports,
        &record,
        &rss,
        sessions_open,
        &metrics_before_quit,
        &metrics_after_quit,
    );
    let text = report::with_preface(&args.report, report::markdown(args, &summary, &record));
    std::fs::write(&args.report, &text)
        .with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!("{}", summary.headline());
    eprintln!("soak: report written to {}", args.report.display());
    if !summary.clean() {
        bail!("the soak found problems; see {}", args.report.display());
    }
    Ok(())
}

fn read_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
