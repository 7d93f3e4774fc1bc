//! The command line (CONTRACT.md): clap types for every subcommand and what each one does.
//! `main.rs` only parses, sets up logging and turns an error into one sentence and exit 1;
//! clap's own usage errors keep exit 2.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::admin::client::{status_table, AdminClient, DrainReply, DEFAULT_ADMIN_URL};
use crate::config::{self, Config, ConfigError};
use crate::telemetry::LogFormat;

/// `handover --help`: what the program is, the commands, and where everything else lives.
const LONG_ABOUT: &str = "\
A front proxy for long-lived TCP and TLS sessions (IRC, OSCAR/AIM, raw byte streams) that moves live \
sessions between backends without the client noticing.

Clients connect to handover; handover connects each one to a backend of the listener's pool. \
When an operator drains a backend, when a backend dies, or when a backend asks its clients to \
move, handover registers the session on another backend and swaps the link under the client \
socket: no reconnect, no second welcome, no lost or duplicated message.

`serve` runs the proxy. `check` validates a config file. `status`, `drain`, `undrain`, \
`migrate` and `reload` talk to a running proxy's admin HTTP API. `completions` and `man` print shell \
completions and manual pages.";

const AFTER_LONG_HELP: &str = "\
Environment:
  HANDOVER_ADMIN_TOKEN  bearer token for the admin API (status, drain, undrain, migrate, reload)
  RUST_LOG              log filter for serve, like `info` (the default) or `handover=debug`
  NOTIFY_SOCKET         set by systemd for Type=notify; serve sends READY=1 when bound

Exit status:
  0 success; 1 failure, explained in one sentence on stderr; 2 a usage error.

Files and docs:
  examples/handover.toml  every config key, with comments
  docs/OPERATIONS.md      install, run, drain, upgrade backends, metrics, sizing, logs";

const SERVE_ABOUT: &str = "\
Run the proxy until SIGTERM or SIGINT.

With --config, everything comes from the TOML file (listeners, backends, TLS, PROXY protocol, \
WEBIRC, migration pacing, health checks, the admin API). With --protocol, --listen and \
--backend, one listener is built from flags and the admin API listens on --admin \
(127.0.0.1:9797 by default).

Logs go to stderr (text, or one JSON object per line with --log-format json); every \
migration, abort, failover and refused connection has one line carrying the session's \
`session.id`. Under systemd (Type=notify) READY=1 is sent once every listener and the admin \
API are bound.

SIGHUP reloads the config file (like `handover reload`) without closing a session. SIGTERM \
stops accepting, closes every session after flushing what is queued, and exits within \
10 seconds. SIGINT exits at once. Drain backends, not the proxy: a stopped proxy disconnects \
its clients.";

const CHECK_ABOUT: &str = "\
Validate a config file and print what it would run.

Prints the config resolved with every default filled in, as TOML with secrets masked, then \
`# config OK`, and exits 0. An invalid config (unknown key, bad address, unreadable \
certificate, unknown backend in a pool...) is one sentence on stderr naming the file, the key \
and the problem, with exit 1. Nothing is bound or started.";

const STATUS_ABOUT: &str = "\
Show backends and sessions as tables, from a running proxy's admin API.

Backends: name, address, state (active, draining, drained, down) and session count. \
Sessions: id, listener, protocol, client address, backend, identity (the IRC nick), age and \
how many times it has been moved.";

const DRAIN_ABOUT: &str = "\
Drain a backend: move every session on it to the other backends of its pools.

The backend stops taking new sessions at once; its sessions are migrated live, at most \
[migration] max_concurrent at a time and max_per_second new backend connections per second. \
Without --wait this returns as soon as the drain has started. With --wait it returns when the \
backend is empty (`drained`), printing how many sessions moved and how many could not; it \
exits 1 if any could not be moved or the drain was stopped. A drained backend stays out of \
rotation until `handover undrain`.

This is the command to run before stopping or upgrading a backend, for example from a \
Kubernetes preStop hook: handover drain irc-0 --wait --admin http://handover-admin:9797";

const UNDRAIN_ABOUT: &str = "\
Stop a drain; the backend takes new sessions again.

Sessions already moved stay where they are: handover never moves a session back on its own.";

const MIGRATE_ABOUT: &str = "\
Move one session to another backend.

The session id is the one `handover status` shows (and `session.id` in the logs). Without \
--to the least-loaded healthy backend of the session's pool is chosen. Prints the move and \
exits 0 when it succeeded; a migration that aborted (the session stays where it was, \
unharmed) or failed is one sentence on stderr with exit 1.";

const RELOAD_ABOUT: &str = "\
Make a running proxy read its config file again, without closing a session.

Backends added take sessions at once; backends removed stop taking sessions at once, are \
drained to the rest of their pools (at the [migration] pace) and removed once empty; changed \
backends are used with their new settings by new connections. Every TLS listener reads its \
certificate and key again (new handshakes get the new certificate). Limits, pools, migration \
pacing, health checks and the admin token apply to new sessions, drains and requests.

Prints what changed and exits 0. A bad config (the same sentence `handover check` prints: \
file, key, problem) or a change that needs a restart (a listener added, removed or moved, the \
admin address) is refused with exit 1, and the running config stays in force. SIGHUP does the \
same, logging the outcome instead.";

const COMPLETIONS_ABOUT: &str = "\
Print a shell completion script to stdout.

  bash: handover completions bash > /etc/bash_completion.d/handover
  zsh:  handover completions zsh > \"${fpath[1]}/_handover\"
  fish: handover completions fish > ~/.config/fish/completions/handover.fish";

const MAN_ABOUT: &str = "\
Print the manual page (roff) to stdout, or write one page per command into --dir.

  handover man | man -l -
  handover man --dir /usr/local/share/man/man1";

/// A front proxy for long-lived TCP/TLS sessions that moves live sessions between backends.
#[derive(Debug, Parser)]
#[command(
    name = "handover",
    version,
    propagate_version = true,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// How log lines are written to stderr (the filter comes from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, from a config file or from flags.
    #[command(
        long_about = SERVE_ABOUT,
        override_usage = "handover serve --config <FILE>\n       \
        handover serve --protocol <NAME> --listen <ADDR> --backend <NAME=ADDR>... [--admin <ADDR>]"
    )]
    Serve(ServeArgs),
    /// Validate a config file and print what it would run; exit 0 when it is valid.
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Show backends and sessions as a table.
    #[command(long_about = STATUS_ABOUT)]
    Status(AdminArgs),
    /// Drain a backend: move its sessions to the others in its pools.
    #[command(long_about = DRAIN_ABOUT)]
    Drain(DrainArgs),
    /// Stop a drain; the backend takes sessions again.
    #[command(long_about = UNDRAIN_ABOUT)]
    Undrain(UndrainArgs),
    /// Move one session to another backend.
    #[command(long_about = MIGRATE_ABOUT)]
    Migrate(MigrateArgs),
    /// Make the proxy read its config file again, without closing a session.
    #[command(long_about = RELOAD_ABOUT)]
    Reload(AdminArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(long_about = COMPLETIONS_ABOUT)]
    Completions(CompletionsArgs),
    /// Print the manual page.
    #[command(long_about = MAN_ABOUT)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write handover.1 and one handover-COMMAND.1 per command into this directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `--config FILE`, or `--protocol --listen --backend... [--admin]` for a one-listener proxy.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "listen"])))]
pub struct ServeArgs {
    /// The config file (TOML).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["protocol", "listen", "backends", "admin"]
    )]
    pub config: Option<PathBuf>,
    /// The protocol clients speak: irc, oscar or raw.
    #[arg(long, value_name = "NAME", requires = "listen")]
    pub protocol: Option<String>,
    /// Where clients connect, like 127.0.0.1:6667.
    #[arg(long, value_name = "ADDR", requires_all = ["protocol", "backends"])]
    pub listen: Option<String>,
    /// A backend of the pool, like a=127.0.0.1:6668; repeat for each.
    #[arg(
        long = "backend",
        value_name = "NAME=ADDR",
        value_parser = parse_backend,
        requires = "listen"
    )]
    pub backends: Vec<(String, String)>,
    /// Where the admin API listens [default: 127.0.0.1:9797].
    #[arg(long, value_name = "ADDR", requires = "listen")]
    pub admin: Option<String>,
    /// Allow the admin API on a non-loopback address without a token (admin.insecure).
    #[arg(long)]
    pub admin_insecure: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// How to reach the admin API; shared by every client subcommand.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API's URL.
    #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// The admin bearer token. Prefer the environment variable: flags show in `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HANDOVER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl AdminArgs {
    fn client(&self) -> AdminClient {
        AdminClient::new(&self.admin, self.token.clone())
    }
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The backend to drain.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Wait until the backend is empty and report how many sessions moved.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct UndrainArgs {
    /// The backend to take sessions again.
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The session's id, as `handover status` shows it.
    #[arg(value_name = "SESSION_ID")]
    pub session: String,
    /// The backend to move to; by default the proxy picks one.
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Runs one subcommand. An `Err` is a failure to report as one sentence with exit 1.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => crate::app::serve_forever(args.into_config()?).await,
        Command::Check(args) => check(&args.config),
        Command::Status(args) => status(&args.client()).await,
        Command::Drain(args) => drain(&args).await,
        Command::Undrain(args) => undrain(&args).await,
        Command::Migrate(args) => migrate(&args).await,
        Command::Reload(args) => {
            let report = args.client().reload().await?;
            println!("reloaded: {}", report.summary());
            Ok(())
        }
        Command::Completions(args) => {
            // Rendered into memory first: clap_complete panics when its writer fails (a
            // closed pipe); here that is one sentence and exit 1 like any other error.
            let mut out = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "handover", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)
                .context("cannot write the completion script to stdout")
        }
        Command::Man(args) => man(args.dir.as_deref()),
    }
}

/// `handover man`: the top page to stdout, or every page into `dir`.
fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("cannot write manual pages into {}", dir.display())),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)
                .context("cannot write the manual page to stdout")
        }
    }
}

/// An error as the one line `main` prints: the whole context chain, no line breaks.
pub fn sentence(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl ServeArgs {
    /// The config to serve: the file, or one listener built from the flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let insecure = self.admin_insecure;
        if let Some(path) = &self.config {
            return config::load_with(path, |c| {
                c.admin.insecure |= insecure;
                c.admin_insecure_flag = insecure;
            });
        }
        let protocol = self.protocol.unwrap_or_default();
        let listen = self.listen.unwrap_or_default();
        let admin = self.admin.as_deref();
        Config::from_flags(&protocol, &listen, &self.backends, admin, insecure).map_err(|mut e| {
            e.key = flag_for_key(&e.key).to_string();
            e
        })
    }
}

/// Names the flag that set a config key, so a flag error points at what the user typed.
fn flag_for_key(key: &str) -> &str {
    match key {
        "admin.listen" | "admin.token_file" => "--admin",
        "listener[0].listen" => "--listen",
        "listener[0].name" | "listener[0].protocol" => "--protocol",
        k if k.starts_with("listener[0].backends") || k.starts_with("backend") => "--backend",
        k => k,
    }
}

fn parse_backend(spec: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
            Ok((name.to_string(), addr.to_string()))
        }
        _ => Err(format!("`{spec}` is not NAME=ADDR, like a=127.0.0.1:6668")),
    }
}

/// Prints the resolved config as TOML, then `# config OK` (a comment, so the output is still
/// a valid config).
fn check(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    print!("{}", render_config(&config)?);
    println!("# config OK");
    Ok(())
}

/// The config as TOML, with secrets masked: `check` output ends up in tickets and chat.
pub fn render_config(config: &Config) -> anyhow::Result<String> {
    let mut shown = config.clone();
    for backend in &mut shown.backend {
        if let Some(webirc) = &mut backend.webirc {
            webirc.password = config::Secret("***".into());
        }
    }
    toml::to_string_pretty(&shown).context("the config cannot be shown as TOML")
}

async fn status(client: &AdminClient) -> anyhow::Result<()> {
    let backends = client.backends().await?;
    let sessions = client.sessions().await?;
    print!("{}", status_table(&backends, &sessions));
    Ok(())
}

async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let name = &args.name;
    match args.admin.client().drain(name, args.wait).await? {
        DrainReply::Started(s) => println!("{} {name}: {} to move", s.state, sessions(s.sessions)),
        DrainReply::Finished(f) => {
            let counts = format!("{} migrated, {} failed", f.migrated, f.failed);
            if f.state != "drained" {
                println!("drain of {name} stopped: {counts}");
                bail!("the drain of {name} ended with the backend {}", f.state);
            }
            println!("drained {name}: {counts}");
            if f.failed > 0 {
                bail!(
                    "{} could not be moved off {name}",
                    sessions(f.failed as usize)
                );
            }
        }
    }
    Ok(())
}

fn sessions(n: usize) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

async fn undrain(args: &UndrainArgs) -> anyhow::Result<()> {
    let b = args.admin.client().undrain(&args.name).await?;
    println!(
        "undrained {}: {}, {}",
        b.name,
        b.state,
        sessions(b.sessions)
    );
    Ok(())
}

async fn migrate(args: &MigrateArgs) -> anyhow::Result<()> {
    let client = args.admin.client();
    let reply = client.migrate(&args.session, args.to.as_deref()).await?;
    if reply.outcome != "ok" {
        let reason = reply.reason.as_deref().unwrap_or("no reason given");
        bail!(
            "the migration of session {} from {} to {} {}: {reason}",
            reply.id,
            reply.from,
            reply.to,
            reply.outcome
        );
    }
    println!("migrated {}: {} -> {}", reply.id, reply.from, reply.to);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("handover").chain(args.iter().copied()))
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::Serve(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_a_file_or_flags_not_both() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["serve", "--config", "a.toml", "--listen", "127.0.0.1:1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["serve"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["serve", "--protocol", "irc", "--listen", "127.0.0.1:1"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "serve",
                "--protocol",
                "irc",
                "--listen",
                "1:1",
                "--backend",
                "x"
            ]),
            ErrorKind::ValueValidation
        );
        assert!(parse(&["serve", "--config", "a.toml"]).is_ok());
    }

    #[test]
    fn serve_flags_become_a_config() {
        let args = serve_args(&[
            "--protocol",
            "raw",
            "--listen",
            "127.0.0.1:6667",
            "--backend",
            "a=127.0.0.1:6668",
            "--backend",
            "b=127.0.0.1:6669",
            "--admin",
            "127.0.0.1:9000",
        ]);
        let config = args.into_config().unwrap();
        assert_eq!(config.listener[0].backends, ["a", "b"]);
        assert_eq!(config.backend[1].address, "127.0.0.1:6669");
        assert_eq!(config.admin.listen, "127.0.0.1:9000");
    }

    #[test]
    fn admin_off_loopback_needs_the_insecure_flag() {
        let flags = [
            "--protocol",
            "raw",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "a=127.0.0.1:2",
            "--admin",
            "0.0.0.0:0",
        ];
        let err = serve_args(&flags).into_config().unwrap_err();
        assert_eq!(err.key, "--admin");
        assert!(err.problem.contains("--admin-insecure"), "{err}");
        let mut insecure = flags.to_vec();
        insecure.push("--admin-insecure");
        assert!(serve_args(&insecure).into_config().unwrap().admin.insecure);

        let dir = std::env::temp_dir().join(format!("handover-cli-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("h.toml");
        std::fs::write(
            &file,
            "[admin]\nlisten='0.0.0.0:0'\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let err = serve_args(&["--config", path]).into_config().unwrap_err();
        assert_eq!(err.key, "admin.token_file");
        let ok = serve_args(&["--config", path, "--admin-insecure"]).into_config();
        assert!(ok.unwrap().admin.insecure);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn serve_flag_errors_name_the_flag() {
        let base = ["--protocol", "raw", "--backend", "a=127.0.0.1:1"];
        let mut args = base.to_vec();
        args.extend(["--listen", "nowhere"]);
        let err = serve_args(&args).into_config().unwrap_err();
        assert_eq!(err.key, "--listen");
        assert_eq!(err.file, "command line");
        let mut args = base.to_vec();
        args.extend(["--listen", "127.0.0.1:1", "--backend", "a=127.0.0.1:2"]);
        assert_eq!(
            serve_args(&args).into_config().unwrap_err().key,
            "--backend"
        );
        let args = [
            "--protocol",
            "nope",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "a=b:1",
        ];
        assert_eq!(
            serve_args(&args).into_config().unwrap_err().key,
            "--protocol"
        );
    }

    #[test]
    fn client_commands_default_the_admin_url() {
        let cli = parse(&["drain", "irc-a", "--wait"]).unwrap();
        let Command::Drain(d) = cli.command else {
            panic!()
        };
        assert!(d.wait);
        assert_eq!(d.admin.admin, "http://127.0.0.1:9797");
        let cli = parse(&["migrate", "s1", "--to", "b", "--admin", "http://h:1"]).unwrap();
        let Command::Migrate(m) = cli.command else {
            panic!()
        };
        assert_eq!(
            (m.to.as_deref(), m.admin.admin.as_str()),
            (Some("b"), "http://h:1")
        );
    }

    #[test]
    fn log_format_is_global() {
        let cli = parse(&["status", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(
            parse(&["--log-format", "xml", "status"])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn rendered_config_hides_secrets_and_parses_back() {
        let text = "[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nbackends=['x']\n\
                    [[backend]]\nname='x'\naddress='127.0.0.1:2'\n";
        let mut config = config::parse(text, "t.toml").unwrap();
        config.backend[0].webirc = Some(config::WebircConfig {
            password: config::Secret("hunter2".into()),
            gateway: "gw".into(),
        });
        let shown = render_config(&config).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        let again: Config = toml::from_str(&shown).unwrap();
        let webirc = again.backend[0].webirc.as_ref().unwrap();
        assert_eq!(webirc.password.0, "***");
        assert_eq!(again.listener[0].backends, ["x"]);
        assert_eq!(
            again.migration.max_concurrent,
            config.migration.max_concurrent
        );
    }

    #[test]
    fn sentences_are_one_line() {
        let e = anyhow::anyhow!("inner\nproblem").context("outer");
        assert_eq!(sentence(&e), "outer: inner problem");
    }
}
