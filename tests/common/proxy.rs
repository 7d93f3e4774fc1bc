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

/// With `HANDOVER_TEST_LOG` set (e.g. `debug`), the proxy's own logs go to stderr.
pub async fn start(text: &str) -> Running {
    if let Ok(filter) = std::env::var("HANDOVER_TEST_LOG") {
        std::env::set_var("RUST_LOG", filter);
        handover::telemetry::init(handover::telemetry::LogFormat::Text);
    }
    let config = handover::config::parse(text, "test.toml").expect("test config is valid");
    app::start(config).await.expect("proxy starts")
}

/// Starts from a config file, as `serve --config` does, so the proxy can reload it.
pub async fn start_file(path: &std::path::Path) -> Running {
    let config = handover::config::load(path).expect("test config is valid");
    app::start(config).await.expect("proxy starts")
}
