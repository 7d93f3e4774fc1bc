//! deploy/systemd/handover.service: `systemd-analyze verify` finds nothing to say about it,
//! its sandboxing scores well in `systemd-analyze security`, and the real binary speaks the
//! `Type=notify` protocol the unit relies on (READY=1 once bound, STOPPING=1 on SIGTERM).
//!
//! No systemd runs as PID 1 in the test container, so the unit is checked offline and the
//! notify socket is played by the test, as systemd would create it.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::fake::EchoBackend;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/handover.service"
);
const BIN: &str = env!("CARGO_BIN_EXE_handover");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-systemd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn systemd_analyze(args: &[&str], manpath: &Path) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .env("MANPATH", manpath)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run systemd-analyze ({e}): install Debian's `systemd` package \
             (scripts/install-test-deps.sh does)"
        ),
    }
}

/// The unit as shipped, with ExecStart pointed at the binary under test (verify checks that
/// the program exists), and the man pages its Documentation= names, in a MANPATH.
fn unit_under_test(dir: &Path, text: &str) -> (PathBuf, PathBuf) {
    let unit = dir.join("handover.service");
    std::fs::write(&unit, text.replace("/usr/bin/handover", BIN)).unwrap();
    let man = dir.join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (unit, man)
}

fn verify(unit: &Path, man: &Path) -> (bool, String) {
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()], man);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_unit_verifies_cleanly() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let dir = temp_dir("verify");
    let (unit, man) = unit_under_test(&dir, &text);
    let (ok, said) = verify(&unit, &man);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify complains:\n{said}"
    );

    // The check has teeth: systemd only warns about a bad value, and that warning fails it.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let (unit, man) = unit_under_test(&broken, &text.replace("Type=notify", "Type=notifyy"));
    let (_, said) = verify(&unit, &man);
    assert!(said.contains("notifyy"), "{said}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_unit_is_sandboxed() {
    let dir = temp_dir("security");
    let text = std::fs::read_to_string(UNIT).unwrap();
    let (unit, man) = unit_under_test(&dir, &text);
    // Exposure is 0.0 (locked down) to 10.0 (unprotected); 2.0 is "OK" territory.
    let out = systemd_analyze(
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            unit.to_str().unwrap(),
        ],
        &man,
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let level = said
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no exposure line");
    assert!(out.status.success(), "exposure above 2.0: {level}\n{said}");
    std::fs::remove_dir_all(dir).ok();
}

/// What the unit promises about reload and stop matches what the binary does.
#[test]
fn the_unit_matches_the_binary() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::trim)
    };
    assert_eq!(value("Type"), Some("notify"));
    assert_eq!(
        value("KillSignal"),
        Some("SIGTERM"),
        "SIGTERM is the graceful stop"
    );
    // serve's grace period is 10 s; systemd must not SIGKILL before it is over.
    let stop: u64 = value("TimeoutStopSec")
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop > 10, "TimeoutStopSec={stop}");
    // SIGHUP reloads the config (tests/reload.rs runs it on the binary).
    assert_eq!(value("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    let nofile: u64 = value("LimitNOFILE").unwrap().parse().unwrap();
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    assert!(value("ExecStart")
        .unwrap()
        .starts_with("/usr/bin/handover serve --config "));
}

/// The real binary under a notify socket, as systemd runs it: READY=1 arrives only after the
/// listener is bound (the connect right after it succeeds), with MAINPID; RELOADING=1 then
/// READY=1 around a SIGHUP (here refused: a proxy started from flags has no file to read);
/// STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifies_ready_then_stopping() {
    let backend = EchoBackend::start().await;
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--protocol",
            "raw",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &format!("a={}", backend.addr),
            "--admin",
            "127.0.0.1:0",
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();

    let result = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
        let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
        // The "listening" line was written before READY=1 was sent.
        let mut lines = BufReader::new(stderr).lines();
        let addr: std::net::SocketAddr = loop {
            let line = lines.next().expect("a listening line").unwrap();
            if let Some(at) = line.find("address=").filter(|_| line.contains("listener=")) {
                break line[at + 8..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let connected = std::net::TcpStream::connect(addr).is_ok();
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        let mut reload = String::new();
        for _ in 0..2 {
            let n = socket
                .recv(&mut buf)
                .expect("RELOADING=1, READY=1 after SIGHUP");
            reload.push_str(&String::from_utf8_lossy(&buf[..n]));
            reload.push('|');
        }
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
        (ready, connected, reload, stopping)
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    let (ready, connected, reload, stopping) = result.unwrap();

    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines.first(), Some(&"READY=1"), "{ready}");
    assert!(
        lines.contains(&format!("MAINPID={pid}").as_str()),
        "{ready}"
    );
    assert!(ready.contains("STATUS=serving 1 listener"), "{ready}");
    assert!(connected, "the listener accepts once READY=1 is sent");
    assert!(
        reload.starts_with("RELOADING=1\n") && reload.contains("|READY=1\n"),
        "{reload}"
    );
    assert!(reload.contains("config reload refused"), "{reload}");
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    std::fs::remove_dir_all(dir).ok();
}
