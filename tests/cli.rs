//! The real `handover` binary: exit codes, the one-sentence errors on stderr, `check` output,
//! and client commands against an in-process admin server backed by a small fake engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use handover::admin::api::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the binary with `args`; HANDOVER_ADMIN_TOKEN only when `token` is given.
fn handover(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover"));
    cmd.args(args).env_remove("HANDOVER_ADMIN_TOKEN");
    if let Some(token) = token {
        cmd.env("HANDOVER_ADMIN_TOKEN", token);
    }
    cmd.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit 1 and a single stderr line `handover: ...`; returns that line.
fn one_sentence_failure(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("handover: "), "{err}");
    err.trim_end().to_string()
}

/// A config file in a fresh temp directory.
fn config_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("handover.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const VALID: &str = r#"
[admin]
listen = "127.0.0.1:9797"

[[listener]]
name = "front"
listen = "127.0.0.1:7000"
protocol = "raw"
backends = ["a", "b"]

[[backend]]
name = "a"
address = "127.0.0.1:7001"

[[backend]]
name = "b"
address = "localhost:7002"
proxy_protocol = "v2"

[migration]
max_concurrent = 8
"#;

#[test]
fn check_prints_a_valid_config() {
    let path = config_file("valid", VALID);
    let out = handover(&["check", "--config", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.trim_end().ends_with("# config OK"), "{text}");
    // The output is itself a config, with defaults filled in.
    let shown: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(shown["listener"][0]["name"].as_str(), Some("front"));
    assert_eq!(shown["backend"][1]["proxy_protocol"].as_str(), Some("v2"));
    assert_eq!(shown["migration"]["max_concurrent"].as_integer(), Some(8));
    assert_eq!(
        shown["migration"]["connect_timeout_ms"].as_integer(),
        Some(3000)
    );
}

#[test]
fn check_names_the_file_and_key() {
    let cases = [
        (
            "unknown-key",
            VALID.replace("max_concurrent = 8", "max_concurent = 8"),
            "max_concurent",
        ),
        (
            "bad-address",
            VALID.replace("127.0.0.1:7000", "localhost"),
            "listener[0].listen",
        ),
        (
            "bad-backend",
            VALID.replace("\"a\", \"b\"", "\"a\", \"c\""),
            "listener[0].backends",
        ),
        (
            "bad-value",
            VALID.replace("max_concurrent = 8", "max_concurrent = 0"),
            "migration.max_concurrent",
        ),
    ];
    for (test, text, key) in cases {
        let path = config_file(test, &text);
        let file = path.to_str().unwrap();
        let err = one_sentence_failure(&handover(&["check", "--config", file], None));
        assert!(err.contains(file), "{test}: {err}");
        assert!(err.contains(key), "{test}: {err}");
    }
    let err = one_sentence_failure(&handover(
        &["check", "--config", "/nonexistent/h.toml"],
        None,
    ));
    assert!(
        err.contains("/nonexistent/h.toml") && err.contains("cannot read"),
        "{err}"
    );
    let bad_backend = config_file(
        "bad-backend",
        &VALID.replace("\"a\", \"b\"", "\"a\", \"c\""),
    );
    let err = one_sentence_failure(&handover(
        &["check", "--config", bad_backend.to_str().unwrap()],
        None,
    ));
    assert!(err.contains("`c`"), "{err}");
}

#[test]
fn serve_config_errors_are_one_sentence_too() {
    let err = one_sentence_failure(&handover(
        &["serve", "--config", "/nonexistent/h.toml"],
        None,
    ));
    assert!(err.contains("/nonexistent/h.toml"), "{err}");
    let flags = [
        "serve",
        "--protocol",
        "raw",
        "--listen",
        "nowhere",
        "--backend",
        "a=127.0.0.1:1",
    ];
    let err = one_sentence_failure(&handover(&flags, None));
    assert!(err.contains("--listen") && err.contains("nowhere"), "{err}");
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    format!("http://{addr}")
}

#[test]
fn client_commands_fail_cleanly_without_a_server() {
    let url = dead_port();
    for args in [
        vec!["status"],
        vec!["drain", "a"],
        vec!["drain", "a", "--wait"],
        vec!["undrain", "a"],
        vec!["migrate", "s1", "--to", "b"],
        vec!["reload"],
    ] {
        let mut all = args.clone();
        all.extend(["--admin", url.as_str()]);
        let err = one_sentence_failure(&handover(&all, None));
        assert_eq!(
            err,
            format!("handover: cannot reach the admin API at {url}: connection refused"),
            "{args:?}"
        );
    }
}

#[test]
fn help_works_everywhere() {
    for sub in [
        "",
        "serve",
        "check",
        "status",
        "drain",
        "undrain",
        "migrate",
        "reload",
        "completions",
        "man",
    ] {
        let args: Vec<&str> = [sub, "--help"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let out = handover(&args, None);
        assert_eq!(out.status.code(), Some(0), "{sub}: {out:?}");
        assert!(stdout(&out).contains("Usage: handover"), "{sub}");
    }
    let help = stdout(&handover(&["status", "--help"], Some("do-not-print-me")));
    assert!(help.contains("HANDOVER_ADMIN_TOKEN"), "{help}");
    assert!(!help.contains("do-not-print-me"), "{help}");
}

#[test]
fn help_stands_on_its_own() {
    let top = stdout(&handover(&["--help"], None));
    for needle in [
        "without the client noticing",
        "HANDOVER_ADMIN_TOKEN",
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "Exit status",
        "completions",
    ] {
        assert!(top.contains(needle), "--help lacks {needle:?}:\n{top}");
    }
    // Each command's --help explains it beyond its one-line summary.
    for (sub, needle) in [
        ("serve", "SIGTERM"),
        ("check", "# config OK"),
        ("status", "drained"),
        ("drain", "preStop"),
        ("undrain", "never moves a session back"),
        ("migrate", "least-loaded"),
        ("reload", "needs a restart"),
        ("serve", "SIGHUP"),
        ("completions", "bash_completion"),
        ("man", "man -l"),
    ] {
        let long = stdout(&handover(&[sub, "--help"], None));
        let short = stdout(&handover(&[sub, "-h"], None));
        assert!(
            long.contains(needle),
            "{sub} --help lacks {needle:?}:\n{long}"
        );
        assert!(
            long.len() > short.len(),
            "{sub}: --help is no longer than -h"
        );
    }
}

/// The bash script is real bash: it parses, and completing `handover dr<TAB>` and
/// `handover completions <TAB>` offers what exists.
#[test]
fn completions_complete_in_bash() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = handover(&["completions", shell], None);
        assert_eq!(out.status.code(), Some(0), "{shell}: {out:?}");
        assert!(stdout(&out).contains("undrain"), "{shell}");
    }
    assert_eq!(
        handover(&["completions", "tcsh"], None).status.code(),
        Some(2)
    );

    let dir = std::env::temp_dir().join(format!("handover-cli-{}-compl", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("handover.bash");
    std::fs::write(&script, handover(&["completions", "bash"], None).stdout).unwrap();
    let complete = |words: &str| {
        let words: Vec<&str> = words.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _handover handover {} {}; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
    };
    let offered = complete("handover dr");
    assert_eq!(offered.trim(), "drain", "{offered}");
    let offered = complete("handover completions ''");
    for shell in ["bash", "zsh", "fish"] {
        assert!(offered.lines().any(|l| l == shell), "{offered}");
    }
    let offered = complete("handover drain --");
    assert!(offered.lines().any(|l| l == "--wait"), "{offered}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn man_pages_render() {
    let out = handover(&["man"], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = stdout(&out);
    assert!(page.starts_with(".ie"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains(".TH handover 1"), "{page}");
    assert!(page.contains("HANDOVER_ADMIN_TOKEN"), "{page}");

    let dir = std::env::temp_dir().join(format!("handover-cli-{}-man", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = handover(&["man", "--dir", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for sub in [
        "serve", "check", "status", "drain", "undrain", "migrate", "reload",
    ] {
        let page = std::fs::read_to_string(dir.join(format!("handover-{sub}.1"))).unwrap();
        assert!(page.contains(&format!(".TH handover-{sub} 1")), "{page}");
    }
    let drain = std::fs::read_to_string(dir.join("handover-drain.1")).unwrap();
    assert!(drain.contains("preStop"), "{drain}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["serve"],
        vec!["serve", "--config", "a.toml", "--listen", "127.0.0.1:1"],
        vec!["drain"],
        vec!["frobnicate"],
        vec!["status", "--log-format", "xml"],
    ] {
        assert_eq!(handover(&args, None).status.code(), Some(2), "{args:?}");
    }
}

/// The engine side for the round trips: `a` with session `s1` (alice), `b` whose drain leaves
/// one session behind, and session `stuck` whose migration aborts.
struct Engine;

fn view(name: &str, state: &str, sessions: usize) -> BackendView {
    BackendView {
        name: name.into(),
        address: "127.0.0.1:7001".into(),
        state: state.into(),
        sessions,
        pools: vec!["front".into()],
    }
}

impl ControlApi for Engine {
    fn backends(&self) -> Vec<BackendView> {
        vec![view("a", "active", 1), view("b", "active", 1)]
    }
    fn backend(&self, name: &str) -> Option<BackendView> {
        self.backends().into_iter().find(|b| b.name == name)
    }
    fn put_backend(&self, _: &str, _: PutBackend) -> Result<bool, ControlError> {
        Ok(true)
    }
    fn delete_backend(&self, _: &str) -> Result<(), ControlError> {
        Ok(())
    }
    fn drain(&self, name: &str) -> Result<DrainStarted, ControlError> {
        let b = self.backend(name).ok_or_else(|| missing(name))?;
        Ok(DrainStarted {
            backend: b.name,
            state: "draining".into(),
            sessions: b.sessions,
        })
    }
    fn drain_wait(&self, name: &str) -> BoxFuture<'_, Result<DrainFinished, ControlError>> {
        let name = name.to_string();
        Box::pin(async move {
            let failed = u64::from(name == "b");
            Ok(DrainFinished {
                backend: name,
                state: "drained".into(),
                migrated: 1 - failed,
                failed,
            })
        })
    }
    fn undrain(&self, name: &str) -> Result<BackendView, ControlError> {
        self.backend(name).ok_or_else(|| missing(name))
    }
    fn sessions(&self) -> Vec<SessionView> {
        vec![SessionView {
            id: "s1".into(),
            listener: "front".into(),
            protocol: "raw".into(),
            client: "192.0.2.7:50000".into(),
            backend: "a".into(),
            identity: Some("alice".into()),
            since: "2026-01-02T03:04:05Z".into(),
            migrations: 0,
        }]
    }
    fn migrate(
        &self,
        id: &str,
        to: Option<String>,
    ) -> BoxFuture<'_, Result<MigrateReply, ControlError>> {
        let result = match id {
            "s1" | "stuck" => Ok(MigrateReply {
                id: id.into(),
                from: "a".into(),
                to: to.unwrap_or_else(|| "b".into()),
                outcome: if id == "s1" { "ok" } else { "aborted" }.into(),
                reason: (id == "stuck").then(|| "registration timed out".into()),
            }),
            _ => Err(ControlError::NotFound(format!("no session has id `{id}`"))),
        };
        Box::pin(async move { result })
    }
    fn metrics_text(&self) -> String {
        String::new()
    }
    fn reload(&self) -> Result<ReloadReport, ControlError> {
        Ok(ReloadReport {
            backends_removing: vec!["a".into()],
            settings_changed: vec!["migration.max_concurrent".into()],
            ..ReloadReport::default()
        })
    }
}

fn missing(name: &str) -> ControlError {
    ControlError::NotFound(format!("no backend is named `{name}`"))
}

/// An admin server with [`Engine`] behind it, and its URL.
async fn admin(token: Option<&str>) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = token.map(String::from);
    tokio::spawn(handover::admin::serve(
        listener,
        Arc::new(Engine),
        token,
        stop.clone(),
    ));
    (format!("http://{addr}"), stop)
}

/// Runs the binary off the runtime's threads, so the in-process server keeps answering.
async fn run(args: Vec<String>, token: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        handover(&args, token)
    })
    .await
    .unwrap()
}

fn with_admin(args: &[&str], url: &str) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--admin".to_string(), url.to_string()]);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_uses_the_token_from_the_environment() {
    let (url, stop) = admin(Some("t0k")).await;
    let out = run(with_admin(&["status"], &url), Some("t0k")).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    assert!(table.starts_with("NAME  ADDRESS"), "{table}");
    assert!(
        table.contains("s1  front     a        192.0.2.7:50000  alice"),
        "{table}"
    );
    let err = one_sentence_failure(&run(with_admin(&["status"], &url), None).await);
    assert!(
        err.contains("Bearer") && err.contains("HANDOVER_ADMIN_TOKEN"),
        "{err}"
    );
    let err = one_sentence_failure(&run(with_admin(&["status"], &url), Some("nope")).await);
    assert!(err.contains("wrong"), "{err}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_undrain_and_migrate_report_outcomes() {
    let (url, stop) = admin(None).await;
    let out = run(with_admin(&["drain", "a"], &url), None).await;
    assert_eq!(stdout(&out), "draining a: 1 session to move\n");
    let out = run(with_admin(&["drain", "a", "--wait"], &url), None).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "drained a: 1 migrated, 0 failed\n");
    let out = run(with_admin(&["drain", "b", "--wait"], &url), None).await;
    assert_eq!(stdout(&out), "drained b: 0 migrated, 1 failed\n");
    let err = one_sentence_failure(&out);
    assert!(err.contains("1 session could not be moved off b"), "{err}");
    let err = one_sentence_failure(&run(with_admin(&["undrain", "zz"], &url), None).await);
    assert_eq!(err, "handover: no backend is named `zz`");
    let out = run(with_admin(&["undrain", "a"], &url), None).await;
    assert_eq!(stdout(&out), "undrained a: active, 1 session\n");
    let out = run(with_admin(&["migrate", "s1", "--to", "b"], &url), None).await;
    assert_eq!(stdout(&out), "migrated s1: a -> b\n");
    let err = one_sentence_failure(&run(with_admin(&["migrate", "stuck"], &url), None).await);
    assert!(err.contains("aborted: registration timed out"), "{err}");
    let out = run(with_admin(&["reload"], &url), None).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out),
        "reloaded: backends draining for removal: a; settings changed: migration.max_concurrent\n"
    );
    stop.cancel();
}
