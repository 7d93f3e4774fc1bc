//! The `handover` binary: parse the command line, set up logging, run, and turn a failure into
//! one sentence on stderr with exit code 1 (clap's usage errors keep their exit code 2).

use std::process::ExitCode;

use clap::Parser;
use handover::cli::{self, Cli};

// The control plane (accept loops, admin API, health checks) runs here; sessions run on the
// worker threads of `workers.rs`, one single-threaded runtime each.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    handover::telemetry::init(cli.log_format);
    match cli::run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover: {}", cli::sentence(&e));
            ExitCode::FAILURE
        }
    }
}
