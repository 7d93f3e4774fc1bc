//! A deadline timer that a session keeps across events.
//!
//! The session's `select!` used to make a fresh `Sleep` for each deadline on every event. A
//! `Sleep` is 112 bytes, and the `select!` state is part of the session's future while it
//! waits, so an idle session carried two of them (its largest single cost after the links)
//! even with no deadline at all; and each event entered and left tokio's timer wheel. A
//! [`Timer`] is 8 bytes while unset and allocates its `Sleep` only while a deadline exists.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Points the timer at `at`, or clears it; the `Sleep` moves only when `at` changes.
    pub fn set(&mut self, at: Option<Instant>) {
        match (at, self.0.as_mut()) {
            (None, _) => self.0 = None,
            (Some(at), Some(sleep)) if sleep.deadline() != at => sleep.as_mut().reset(at),
            (Some(_), Some(_)) => {}
            (Some(at), None) => self.0 = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Completes once the deadline has passed (at once if it already has, and again on
    /// every poll until the timer is moved); never while unset. Cancel-safe.
    pub async fn fired(&mut self) {
        match self.0.as_mut() {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_at_its_deadline_and_follows_it() {
        let mut timer = Timer::default();
        assert!(!timer.is_set());
        let start = Instant::now();
        timer.set(Some(start + Duration::from_secs(5)));
        timer.set(Some(start + Duration::from_secs(2)));
        timer.fired().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(2));
        // Still fired until moved.
        timer.fired().await;
        timer.set(Some(start + Duration::from_secs(3)));
        timer.fired().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(3));
        timer.set(None);
        assert!(!timer.is_set());
        let never = tokio::time::timeout(Duration::from_secs(60), timer.fired()).await;
        assert!(never.is_err());
    }
}
