//! Starts handover in-process on loopback port 0 from config text.

use handover::app::{self, Running};

/// A config with one listener `main` over the given backends (name, address), plus `extra`
/// TOML appended to the listener table and then whole sections.
pub fn config(
    protocol: &str,
    backends: &[(&str, String)],
    listener_extra: &str,
    sections: &str,
) -> String {
    let names: Vec<String> = backends.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\nbackends = [{}]\n{listener_extra}\n",
        names.join(", ")
    );
    for (name, addr) in backends {
        text.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
        ));
    }
    text.push_str(sections);
    text
}

pub async fn start(text: &str) -> Running {
    init_logs();
    let config = handover::config::parse(text, "test.toml").expect("test config is valid");
    app::start(config).await.expect("proxy starts")
}

/// With `RUST_LOG` set, the proxy's log lines go to the test's output (shown on failure or
/// with `--nocapture`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    }
}
