//! The session workers: one thread per worker, each running a single-threaded tokio runtime,
//! and every session lives its whole life on the worker it was handed to (thread per core,
//! no work stealing, as Pingora's no-steal runtime and nginx's worker processes do).
//!
//! Why not tokio's multi-thread runtime: a session is one task whose events come from its own
//! two sockets, so stealing it to another thread buys nothing, while the work-stealing
//! scheduler costs every wake-up its bookkeeping (clock reads, a poll-time average, atomic
//! queue hand-offs). callgrind counted 11,998 instructions per small-message round trip on
//! the multi-thread runtime and 10,661 on the workers (`docs/BENCHMARKS.md`). The price is
//! a cross-thread hand-off per accepted client.
//!
//! The control plane (accept loops, admin API, health checks, drains, reloads) runs on the
//! runtime that called [`crate::app::start`]. An accept loop hands each accepted socket,
//! registered with no reactor yet, to the worker holding the fewest sessions; it joins that
//! worker's reactor when the session starts.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// The worker threads; dropping the last handle stops them (their runtimes drop whatever
/// sessions are still on them, so graceful shutdown closes sessions first).
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

struct Worker {
    handle: Handle,
    /// Sessions on this worker now.
    load: Arc<AtomicUsize>,
}

/// A session's place on its worker, given back when dropped. The session's future holds it
/// (see [`Workers::spawn`]), so it is given back when the session ends or is dropped.
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` workers; 0 starts one per CPU this process may run on (`runtime.workers`).
    pub fn start(n: usize) -> io::Result<Self> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("handover-worker-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled_owned()))?;
            workers.push(Worker {
                handle,
                load: Default::default(),
            });
        }
        Ok(Self { workers, stop })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs the session that `session` makes on the worker holding the fewest sessions (the
    /// first such). The future must keep the [`Place`] it is given. Not a wrapper around the
    /// future: an `async` block that awaits a future it captured stores it twice, and a
    /// task's memory is allocated at its largest for the session's whole life.
    pub fn spawn<F>(&self, session: impl FnOnce(Place) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        worker.handle.spawn(session(Place(worker.load.clone())));
    }

    /// Each worker's count of its sessions, in worker order, for the metrics.
    pub fn counters(&self) -> Vec<Arc<AtomicUsize>> {
        self.workers.iter().map(|w| w.load.clone()).collect()
    }

    /// Sessions on each worker now, in worker order.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sessions_go_to_the_least_loaded_worker_and_give_their_place_back() {
        let workers = Workers::start(2).unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        let (tx, mut names) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (mut held, tx) = (held.clone(), tx.clone());
            workers.spawn(|place| async move {
                let _place = place;
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
                let _ = held.wait_for(|&go| go).await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(names.recv().await.unwrap().unwrap());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "handover-worker-0",
                "handover-worker-0",
                "handover-worker-1",
                "handover-worker-1"
            ]
        );
        assert_eq!(workers.loads(), [2, 2]);
        hold.send(true).unwrap();
        for _ in 0..200 {
            if workers.loads() == [0, 0] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("loads stayed at {:?}", workers.loads());
    }

    #[test]
    fn dropping_the_pool_stops_its_threads() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A session that never ends holds its sender until its runtime drops it.
        workers.spawn(|place| async move {
            let _hold = (tx, place);
            std::future::pending::<()>().await
        });
        drop(workers);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the session is dropped with its worker"
        );
    }
}
