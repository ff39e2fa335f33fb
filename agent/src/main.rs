//! The `latchkey` binary: parse arguments, start logging, run the command, map the
//! outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use latchkey::cli::{self, Cli};

/// How long leftover tasks may run once the command is done.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.keeps_files() {
        // Before any thread exists, and for good: every file the agent creates (sled
        // makes its own, from its own threads) gets no group or other bits; files that
        // must be wider set their mode explicitly.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
    // Also before any thread exists: the key-encryption key, database URLs and
    // fallback values leave the environment (children and `/proc/<pid>/environ`
    // no longer show them); the agent keeps them in memory.
    latchkey::environment::take_at_start(&cli.command.secret_env_names());
    if let Err(e) = latchkey::telemetry::init(
        cli.log_format,
        cli.log_level.as_deref(),
        cli.log_file.as_deref(),
    ) {
        let file = cli.log_file.as_deref().unwrap_or(std::path::Path::new("-"));
        report(
            &anyhow::Error::new(e).context(format!("cannot open the log file {}", file.display())),
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&anyhow::Error::new(e).context("cannot start the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::run(cli));
    // Everything the command waits for has ended; what is left (a plugin call stuck
    // on the blocking pool past the stop's grace) must not hold the exit.
    runtime.shutdown_timeout(EXIT_GRACE);
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            report(&failure.error);
            ExitCode::from(failure.code)
        }
    }
}

#[allow(clippy::print_stderr)]
fn report(error: &anyhow::Error) {
    eprintln!("latchkey: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
