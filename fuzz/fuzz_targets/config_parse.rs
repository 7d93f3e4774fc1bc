//! The config loader on arbitrary text: it must return a config or a `ConfigError` naming the
//! key, never panic. Paths in the text are real paths on this machine, so the seed corpus and
//! dictionary (fuzz/config.dict) point them at harmless ones.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match handover::config::parse(text, "fuzz.toml") {
        Ok(config) => {
            // A valid config resolves and prints again (what `check` does).
            assert!(!config.listener.is_empty());
            let _ = handover::cli::render_config(&config);
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            assert!(!e.key.is_empty() && !e.problem.is_empty(), "{e}");
        }
    }
});
