//! Memory measurement for tests that run the proxy in-process: the resident set of this
//! process (VmRSS), and a lock so that only one memory-measuring test runs at a time (tests of
//! one binary share the process, so a neighbour's allocations would count against the bound).

/// This process's resident set size in bytes.
pub fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Serialises the tests of one binary that take it (a tokio mutex: held across awaits).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
