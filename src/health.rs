//! Health checks: a TCP connect to every backend each `interval_ms`; `fall` failures in a row
//! mark it down, `rise` successes bring it back (HAProxy's model). Sessions notice a dead
//! backend by themselves (end of stream) and fail over; health keeps new sessions and
//! failovers away from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::HealthConfig;
use crate::registry::Registry;
use crate::reload::Live;

#[derive(Default, Clone, Copy)]
struct Streak {
    ok: u32,
    failed: u32,
}

/// Checks until `shutdown`. `settings` is read every round, so a reload's new interval,
/// timeout and thresholds apply from the next round.
pub async fn run(
    registry: Arc<Registry>,
    settings: Arc<Live<HealthConfig>>,
    shutdown: CancellationToken,
) {
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    let mut interval_ms = settings.get().interval_ms;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let config = settings.get();
        if config.interval_ms != interval_ms {
            interval_ms = config.interval_ms;
            tick = tokio::time::interval(Duration::from_millis(interval_ms));
            tick.tick().await; // the first tick is immediate: this round is it
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let backends = registry.backends();
        // Forget the streaks of backends a reload removed.
        streaks.retain(|name, _| backends.iter().any(|b| &b.config.name == name));
        let mut checks = JoinSet::new();
        for b in backends {
            let address = b.config.address.clone();
            checks.spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, TcpStream::connect(address.as_str())).await,
                    Ok(Ok(_))
                );
                (b.config.name, ok)
            });
        }
        while let Some(Ok((name, ok))) = checks.join_next().await {
            let streak = streaks.entry(name.clone()).or_default();
            if ok {
                streak.ok += 1;
                streak.failed = 0;
                if streak.ok >= config.rise && registry.set_healthy(&name, true) {
                    info!(backend = %name, "backend is up");
                }
            } else {
                streak.failed += 1;
                streak.ok = 0;
                if streak.failed >= config.fall && registry.set_healthy(&name, false) {
                    warn!(backend = %name, "backend is down");
                }
            }
        }
    }
}
