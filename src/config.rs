//! The config file (TOML) and the flags of `serve`, resolved into one [`Config`].
//!
//! Flow: [`load`] parses with `deny_unknown_fields` everywhere, then [`Config::validate`]
//! checks every cross-reference, address and certificate. Every error names the file, the key
//! and the problem, so `handover check` can print it as one sentence.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A config problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(file: &str, key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A string that never shows in `Debug` or logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    #[serde(default)]
    pub backend: Vec<BackendConfig>,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Where the config came from, for error messages; not a key.
    #[serde(skip)]
    pub source: String,
    /// The file it was read from, which a reload reads again; `None` when built from flags.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `serve --admin-insecure` was given: a reload applies it to the file again.
    #[serde(skip)]
    pub admin_insecure_flag: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// Allows the admin API on a non-loopback address without a token. Anyone who can reach
    /// it can then drain backends and move sessions; handover refuses to start that way
    /// unless this says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
            insecure: false,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9797".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub backends: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Raw only: how many of the client's first bytes are replayed on a new backend.
    #[serde(default)]
    pub prelude_bytes: usize,
    /// Raw only: how long the new backend's reply to the prelude is swallowed.
    #[serde(default = "default_prelude_settle_ms")]
    pub prelude_settle_ms: u64,
    /// IRC only: the backends are linked into one network, so a new backend registers under a
    /// temporary nick while the old one still holds the real one (default true).
    #[serde(default)]
    pub irc_linked: Option<bool>,
    /// OSCAR only: the host:port clients are told to connect to for BOS and services (login
    /// replies and service redirects are rewritten to it). Default: the address the client
    /// reached this listener at.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Most sessions this listener holds at once; past it new clients are closed at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// How long a TLS handshake from a client may take.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Most sessions from one client address at once (0: no limit). Past it new connections
    /// from that address are closed at once.
    #[serde(default)]
    pub max_sessions_per_ip: usize,
    /// How long a client may take to complete its registration (IRC: the server's welcome)
    /// before the session is closed. Protocols without a registration (raw) ignore it.
    #[serde(default = "default_registration_timeout_ms")]
    pub registration_timeout_ms: u64,
    /// How long a client may leave what handover sends it unread, once the queue to it is full
    /// and not a byte of it moves, before the session is closed.
    #[serde(default = "default_client_stall_timeout_ms")]
    pub client_stall_timeout_ms: u64,
    /// Raw only: forward bulk traffic with splice(2) on plain sockets, socket to socket inside
    /// the kernel (default true). Other protocols read their frames and never splice.
    #[serde(default)]
    pub splice: Option<bool>,
}

fn default_protocol() -> String {
    "raw".into()
}
fn default_prelude_settle_ms() -> u64 {
    200
}
fn default_max_sessions() -> usize {
    8000
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_registration_timeout_ms() -> u64 {
    60_000
}
fn default_client_stall_timeout_ms() -> u64 {
    120_000
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tls: BackendTls,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    pub webirc: Option<WebircConfig>,
}

/// `tls = false`, `tls = true` (system roots), or a table naming a CA and server name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BackendTls {
    Enabled(bool),
    Custom(BackendTlsOptions),
}

impl Default for BackendTls {
    fn default() -> Self {
        BackendTls::Enabled(false)
    }
}

impl BackendTls {
    pub fn enabled(&self) -> bool {
        !matches!(self, BackendTls::Enabled(false))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsOptions {
    /// PEM file of the CA that signed the backend's certificate.
    pub ca: Option<PathBuf>,
    /// The name to check the certificate against (default: the address's host).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebircConfig {
    pub password: Secret,
    #[serde(default = "default_gateway")]
    pub gateway: String,
}

fn default_gateway() -> String {
    "handover".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    #[serde(default = "d_connect")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_register")]
    pub register_timeout_ms: u64,
    #[serde(default = "d_flush")]
    pub flush_timeout_ms: u64,
    #[serde(default = "d_concurrent")]
    pub max_concurrent: usize,
    #[serde(default = "d_per_second")]
    pub max_per_second: u32,
    #[serde(default = "d_inflight")]
    pub inflight_limit_bytes: usize,
    /// How long a session whose backend died keeps trying other backends before it closes.
    #[serde(default = "d_failover")]
    pub failover_timeout_ms: u64,
}

fn d_connect() -> u64 {
    3000
}
fn d_register() -> u64 {
    10_000
}
fn d_flush() -> u64 {
    2000
}
fn d_concurrent() -> usize {
    64
}
fn d_per_second() -> u32 {
    200
}
fn d_inflight() -> usize {
    65_536
}
fn d_failover() -> u64 {
    30_000
}

impl Default for MigrationConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "d_interval")]
    pub interval_ms: u64,
    #[serde(default = "d_hc_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend back.
    #[serde(default = "d_rise")]
    pub rise: u32,
    /// Consecutive failures that mark a backend down.
    #[serde(default = "d_fall")]
    pub fall: u32,
}

fn d_interval() -> u64 {
    2000
}
fn d_hc_timeout() -> u64 {
    1000
}
fn d_rise() -> u32 {
    2
}
fn d_fall() -> u32 {
    2
}

impl Default for HealthConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Session worker threads (`src/workers.rs`); 0, the default, is one per CPU. Like
    /// haproxy's `nbthread`, it takes effect at start: a reload that changes it is refused.
    #[serde(default)]
    pub workers: usize,
}

/// The most worker threads `runtime.workers` may ask for.
pub const MAX_WORKERS: usize = 256;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, |_| {})
}

/// Reads a config file, lets `adjust` apply command-line overrides, then validates.
pub fn load_with(path: &Path, adjust: impl FnOnce(&mut Config)) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
    let mut config = parse_with(&text, &file, adjust)?;
    config.path = Some(path.to_path_buf());
    Ok(config)
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    parse_with(text, file, |_| {})
}

fn parse_with(
    text: &str,
    file: &str,
    adjust: impl FnOnce(&mut Config),
) -> Result<Config, ConfigError> {
    let mut config: Config = toml::from_str(text).map_err(|e| toml_error(file, e))?;
    config.source = file.to_string();
    adjust(&mut config);
    config.validate()?;
    Ok(config)
}

fn toml_error(file: &str, e: toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    // toml names unknown keys in its message; keep it as the problem.
    let key = match message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        // An empty key (`"" = 1`) must still be named, as TOML writes it.
        Some("") => "\"\"".to_string(),
        Some(key) => key.to_string(),
        None => "(syntax)".to_string(),
    };
    let problem = match e.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message,
    };
    ConfigError::new(file, key, problem)
}

impl Config {
    /// The config `serve` builds from its flags instead of a file.
    pub fn from_flags(
        protocol: &str,
        listen: &str,
        backends: &[(String, String)],
        admin: Option<&str>,
        admin_insecure: bool,
    ) -> Result<Config, ConfigError> {
        let mut config = Config {
            admin: AdminConfig::default(),
            listener: vec![ListenerConfig {
                name: protocol.to_string(),
                listen: listen.to_string(),
                protocol: protocol.to_string(),
                backends: backends.iter().map(|(n, _)| n.clone()).collect(),
                tls: None,
                prelude_bytes: 0,
                prelude_settle_ms: default_prelude_settle_ms(),
                irc_linked: None,
                advertise: None,
                max_sessions: default_max_sessions(),
                handshake_timeout_ms: default_handshake_timeout_ms(),
                max_sessions_per_ip: 0,
                registration_timeout_ms: default_registration_timeout_ms(),
                client_stall_timeout_ms: default_client_stall_timeout_ms(),
                splice: None,
            }],
            backend: backends
                .iter()
                .map(|(name, address)| BackendConfig {
                    name: name.clone(),
                    address: address.clone(),
                    tls: BackendTls::default(),
                    proxy_protocol: ProxyProtocol::None,
                    webirc: None,
                })
                .collect(),
            migration: MigrationConfig::default(),
            health: HealthConfig::default(),
            runtime: RuntimeConfig::default(),
            source: "command line".into(),
            path: None,
            admin_insecure_flag: admin_insecure,
        };
        if let Some(admin) = admin {
            config.admin.listen = admin.to_string();
        }
        config.admin.insecure = admin_insecure;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-references, addresses, protocols and TLS files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = self.source.as_str();
        let admin = parse_addr(file, "admin.listen", &self.admin.listen)?;
        if let Some(path) = &self.admin.token_file {
            read_token(path).map_err(|p| ConfigError::new(file, "admin.token_file", p))?;
        }
        if !admin.ip().to_canonical().is_loopback()
            && self.admin.token_file.is_none()
            && !self.admin.insecure
        {
            return Err(ConfigError::new(
                file,
                "admin.token_file",
                format!(
                    "the admin API listens on {admin}, which is not loopback, and has no token: \
                     anyone who reaches it could drain backends and move sessions; set \
                     admin.token_file, or admin.insecure = true (serve --admin-insecure) to \
                     allow it"
                ),
            ));
        }
        if self.runtime.workers > MAX_WORKERS {
            return Err(ConfigError::new(
                file,
                "runtime.workers",
                format!(
                    "{} worker threads is more than {MAX_WORKERS}; 0 runs one per CPU",
                    self.runtime.workers
                ),
            ));
        }
        if self.listener.is_empty() {
            return Err(ConfigError::new(
                file,
                "listener",
                "at least one [[listener]] is needed",
            ));
        }
        let mut backend_names = HashSet::new();
        for (i, b) in self.backend.iter().enumerate() {
            let key = format!("backend[{i}]");
            check_name(file, &format!("{key}.name"), &b.name)?;
            if !backend_names.insert(b.name.as_str()) {
                return Err(ConfigError::new(
                    file,
                    format!("{key}.name"),
                    format!("backend `{}` is defined twice", b.name),
                ));
            }
            check_backend_address(file, &format!("{key}.address"), &b.address)?;
            if let BackendTls::Custom(opts) = &b.tls {
                if let Some(ca) = &opts.ca {
                    crate::net::tls::load_roots(ca)
                        .map_err(|p| ConfigError::new(file, format!("{key}.tls.ca"), p))?;
                }
            }
        }
        let mut listener_names = HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            check_name(file, &format!("{key}.name"), &l.name)?;
            if !listener_names.insert(l.name.as_str()) {
                return Err(ConfigError::new(
                    file,
                    format!("{key}.name"),
                    format!("listener `{}` is defined twice", l.name),
                ));
            }
            parse_addr(file, &format!("{key}.listen"), &l.listen)?;
            let protocol = crate::protocol::lookup(&l.protocol, l).ok_or_else(|| {
                ConfigError::new(
                    file,
                    format!("{key}.protocol"),
                    format!(
                        "unknown protocol `{}` (known: {})",
                        l.protocol,
                        crate::protocol::names().join(", ")
                    ),
                )
            })?;
            if let Some(advertise) = &l.advertise {
                let key = format!("{key}.advertise");
                if l.protocol != "oscar" {
                    return Err(ConfigError::new(
                        file,
                        key,
                        format!("applies only to oscar listeners, not {}", l.protocol),
                    ));
                }
                check_backend_address(file, &key, advertise)?;
            }
            if l.splice.is_some() && l.protocol != "raw" {
                return Err(ConfigError::new(
                    file,
                    format!("{key}.splice"),
                    format!("applies only to raw listeners, not {}", l.protocol),
                ));
            }
            if l.backends.is_empty() {
                return Err(ConfigError::new(
                    file,
                    format!("{key}.backends"),
                    "the pool is empty",
                ));
            }
            for name in &l.backends {
                let Some(b) = self.backend.iter().find(|b| &b.name == name) else {
                    return Err(ConfigError::new(
                        file,
                        format!("{key}.backends"),
                        format!("no [[backend]] is named `{name}`"),
                    ));
                };
                protocol
                    .validate_backend(b)
                    .map_err(|p| ConfigError::new(file, format!("backend `{name}`"), p))?;
            }
            for (k, v) in [
                ("max_sessions", l.max_sessions as u64),
                ("handshake_timeout_ms", l.handshake_timeout_ms),
                ("registration_timeout_ms", l.registration_timeout_ms),
                ("client_stall_timeout_ms", l.client_stall_timeout_ms),
            ] {
                if v == 0 {
                    return Err(ConfigError::new(
                        file,
                        format!("{key}.{k}"),
                        "must be greater than 0",
                    ));
                }
            }
            if let Some(tls) = &l.tls {
                crate::net::tls::server_config(tls)
                    .map_err(|p| ConfigError::new(file, format!("{key}.tls"), p))?;
            }
        }
        let m = &self.migration;
        for (k, v) in [
            ("migration.connect_timeout_ms", m.connect_timeout_ms),
            ("migration.register_timeout_ms", m.register_timeout_ms),
            ("migration.flush_timeout_ms", m.flush_timeout_ms),
            ("migration.max_concurrent", m.max_concurrent as u64),
            ("migration.max_per_second", m.max_per_second as u64),
            (
                "migration.inflight_limit_bytes",
                m.inflight_limit_bytes as u64,
            ),
            ("health.interval_ms", self.health.interval_ms),
            ("health.rise", self.health.rise as u64),
            ("health.fall", self.health.fall as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::new(file, k, "must be greater than 0"));
            }
        }
        Ok(())
    }

    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backend.iter().find(|b| b.name == name)
    }
}

fn check_name(file: &str, key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            key,
            format!("`{name}` is not a valid name (1-64 of A-Z a-z 0-9 - _ .)"),
        ))
    }
}

fn parse_addr(file: &str, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            file,
            key,
            format!("`{value}` is not an address like 127.0.0.1:6667"),
        )
    })
}

/// A backend address is `host:port`; the host may be a name resolved at connect time.
pub fn check_backend_address(file: &str, key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::new(file, key, format!("`{value}` is not a host:port address"));
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(bad());
    }
    Ok(())
}

/// Reads a bearer token file: one line, not empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/handover.toml");

    /// Writes a throwaway self-signed pair and a token so the example's paths can point at them.
    fn example_files() -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("handover-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("admin.token"), "t0ken\n").unwrap();
        let text = EXAMPLE.replace("/etc/handover", dir.to_str().unwrap());
        (dir, text)
    }

    #[test]
    fn example_config_parses() {
        let (dir, text) = example_files();
        let config = parse(&text, "examples/handover.toml").unwrap();
        assert_eq!(config.listener.len(), 2);
        assert_eq!(config.backend.len(), 3);
        assert_eq!(config.migration.max_concurrent, 16);
        assert!(config.listener[0].tls.is_some());
        assert_eq!(config.listener[0].max_sessions_per_ip, 50);
        assert_eq!(config.runtime, RuntimeConfig::default());
        assert_eq!(config.listener[0].registration_timeout_ms, 60_000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(
            "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\nbogus=1\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.file, "t.toml");
        assert_eq!(err.key, "bogus");
    }

    /// Found by `fuzz/fuzz_targets/config_parse.rs` (crash-a70f7267, the input `''=''`): the
    /// error named an empty key, printing as `t.toml: : unknown field ...`.
    #[test]
    fn an_empty_key_is_still_named() {
        for text in ["''=''", "\"\" = 1", "[admin]\n'' = 2"] {
            let err = parse(text, "t.toml").unwrap_err();
            assert_eq!(err.key, "\"\"", "{text}: {err}");
            assert!(
                err.to_string().starts_with("t.toml: \"\": unknown field"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_backend_is_named() {
        let err = parse(
            "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(err.key, "listener[0].backends");
        assert!(err.problem.contains("`x`"), "{err}");
    }

    #[test]
    fn bad_address_is_named() {
        let text = "[[listener]]\nname='a'\nlisten='nowhere'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\n";
        let err = parse(text, "t.toml").unwrap_err();
        assert_eq!(err.key, "listener[0].listen");
        let text = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n[[backend]]\nname='x'\naddress='host'\n";
        assert_eq!(parse(text, "t.toml").unwrap_err().key, "backend[0].address");
    }

    #[test]
    fn worker_count_is_checked() {
        let base = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\n";
        assert_eq!(parse(base, "t.toml").unwrap().runtime.workers, 0);
        let two = parse(&format!("{base}[runtime]\nworkers = 2\n"), "t.toml").unwrap();
        assert_eq!(two.runtime.workers, 2);
        let err = parse(&format!("{base}[runtime]\nworkers = 100000\n"), "t.toml").unwrap_err();
        assert_eq!(err.key, "runtime.workers");
        assert!(err.problem.contains("100000"), "{err}");
    }

    #[test]
    fn unreadable_certificate_is_named() {
        let text = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\ntls={cert='/nonexistent/c.pem',key='/nonexistent/k.pem'}\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\n";
        let err = parse(text, "t.toml").unwrap_err();
        assert_eq!(err.key, "listener[0].tls");
        assert!(err.problem.contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn webirc_only_on_irc() {
        let text = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nprotocol='raw'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\nwebirc={password='p'}\n";
        let err = parse(text, "t.toml").unwrap_err();
        assert!(err.problem.contains("webirc"), "{err}");
    }

    const ONE_LISTENER: &str = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nbackends=['x']\n[[backend]]\nname='x'\naddress='127.0.0.1:1'\n";

    #[test]
    fn admin_off_loopback_needs_a_token_or_insecure() {
        let open = format!("[admin]\nlisten='0.0.0.0:9797'\n{ONE_LISTENER}");
        let err = parse(&open, "t.toml").unwrap_err();
        assert_eq!(err.key, "admin.token_file");
        assert!(err.problem.contains("admin.insecure"), "{err}");
        assert!(err.problem.contains("0.0.0.0:9797"), "{err}");
        let v6 = format!("[admin]\nlisten='[::]:9797'\n{ONE_LISTENER}");
        assert_eq!(parse(&v6, "t.toml").unwrap_err().key, "admin.token_file");
        // Explicitly insecure, a token, or loopback (v4, v6, v4-mapped) are all fine.
        let insecure = format!("[admin]\nlisten='0.0.0.0:9797'\ninsecure=true\n{ONE_LISTENER}");
        assert!(parse(&insecure, "t.toml").unwrap().admin.insecure);
        let dir = std::env::temp_dir().join(format!("handover-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "t0ken\n").unwrap();
        let token = format!(
            "[admin]\nlisten='0.0.0.0:9797'\ntoken_file='{}'\n{ONE_LISTENER}",
            dir.join("token").display()
        );
        assert!(parse(&token, "t.toml").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
        for lo in [
            "127.0.0.1:9797",
            "127.8.9.10:1",
            "[::1]:9797",
            "[::ffff:127.0.0.1]:9797",
        ] {
            let text = format!("[admin]\nlisten='{lo}'\n{ONE_LISTENER}");
            assert!(parse(&text, "t.toml").is_ok(), "{lo}");
        }
        // The command-line override applies before validation.
        let fixed = parse_with(&open, "t.toml", |c| c.admin.insecure = true);
        assert!(fixed.is_ok());
    }

    #[test]
    fn listener_limits_must_be_positive() {
        for key in [
            "max_sessions",
            "handshake_timeout_ms",
            "registration_timeout_ms",
            "client_stall_timeout_ms",
        ] {
            let text = ONE_LISTENER.replace("backends=['x']", &format!("backends=['x']\n{key}=0"));
            let err = parse(&text, "t.toml").unwrap_err();
            assert_eq!(err.key, format!("listener[0].{key}"));
        }
        let text = ONE_LISTENER.replace(
            "backends=['x']",
            "backends=['x']\nmax_sessions_per_ip=0\nregistration_timeout_ms=5000",
        );
        let l = &parse(&text, "t.toml").unwrap().listener[0];
        assert_eq!(
            (l.max_sessions_per_ip, l.registration_timeout_ms),
            (0, 5000)
        );
        assert_eq!(l.client_stall_timeout_ms, 120_000);
    }

    #[test]
    fn splice_is_a_raw_listener_key_on_by_default() {
        let l = &parse(ONE_LISTENER, "t.toml").unwrap().listener[0];
        assert_eq!(l.splice, None, "unset: on");
        let off = ONE_LISTENER.replace("backends=['x']", "backends=['x']\nsplice=false");
        assert_eq!(
            parse(&off, "t.toml").unwrap().listener[0].splice,
            Some(false)
        );
        let irc = off.replace("backends=['x']", "backends=['x']\nprotocol='irc'");
        let err = parse(&irc, "t.toml").unwrap_err();
        assert_eq!(err.key, "listener[0].splice");
        assert!(err.to_string().contains("only to raw"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "\"***\"");
    }
}
