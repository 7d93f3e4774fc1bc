//! The command line (CONTRACT.md): clap types for every subcommand and what each one does.
//! `main.rs` only parses, sets up logging and turns an error into one sentence and exit 1;
//! clap's own usage errors keep exit 2.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::admin::client::{status_table, AdminClient, DrainReply, DEFAULT_ADMIN_URL};
use crate::config::{self, Config, ConfigError};
use crate::telemetry::LogFormat;

/// A front proxy for long-lived TCP/TLS sessions that moves live sessions between backends.
#[derive(Debug, Parser)]
#[command(name = "handover", version, propagate_version = true)]
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
    #[command(override_usage = "handover serve --config <FILE>\n       \
        handover serve --protocol <NAME> --listen <ADDR> --backend <NAME=ADDR>... [--admin <ADDR>]")]
    Serve(ServeArgs),
    /// Validate a config file and print what it would run; exit 0 when it is valid.
    Check(CheckArgs),
    /// Show backends and sessions as a table.
    Status(AdminArgs),
    /// Drain a backend: move its sessions to the others in its pools.
    Drain(DrainArgs),
    /// Stop a drain; the backend takes sessions again.
    Undrain(UndrainArgs),
    /// Move one session to another backend.
    Migrate(MigrateArgs),
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
            return config::load_with(path, |c| c.admin.insecure |= insecure);
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
    use clap::CommandFactory;

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
