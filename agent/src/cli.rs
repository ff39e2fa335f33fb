//! The `latchkey` command line: one file per group of subcommands. It prints; the
//! library decides.
//!
//! Exit codes: 0 success; 1 failure; 2 usage; 3 not found; 4 denied; 5 conflict;
//! 6 credential rejected by its provider; 64 bad configuration.

// The command line is where output to the terminal belongs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod ca;
mod cert;
mod connect;
mod dev;
mod exec;
pub mod exit;
mod import;
mod init;
mod lifecycle;
mod plugin;
mod progress;
mod reload;
mod render;
mod secrets;
mod store;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use connect::ClientArgs;

/// Per-host credential sidecar: serves secrets to local apps over mTLS.
#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about, max_term_width = 100)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LATCHKEY_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `latchkey=trace` (RUST_LOG syntax).
    #[arg(long, global = true, env = "LATCHKEY_LOG")]
    pub log_level: Option<String>,
    /// Append the log to this file (created 0600, never through a symbolic link)
    /// instead of stderr; SIGUSR1 and every reload open it again, for logrotate.
    #[arg(long, global = true, env = "LATCHKEY_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a CA, keys, certificates and a working latchkey.toml in a folder.
    Init(init::InitArgs),
    /// Run the agent (the daemon) with a config file.
    Run {
        /// The config file.
        #[arg(long, short, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
    /// Initialise a local folder if needed, seed an example secret and run the agent,
    /// printing the commands that fetch the secret.
    Dev(dev::DevArgs),
    /// Check a config file and print every problem.
    Check {
        /// The config file.
        #[arg(long, short, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
    /// Client certificates for apps.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// The agent's CA: rotate it with an overlap, or see where a rotation stands.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Print a secret (JSON), or one field of it.
    Get(secrets::GetArgs),
    /// Store a new version of a secret.
    Put(secrets::PutArgs),
    /// List secret paths under a prefix.
    List(secrets::ListArgs),
    /// Delete a secret and all its versions.
    Rm(secrets::RmArgs),
    /// Ask a secret's provider plugin whether it works (exit 6 when rejected).
    Validate(secrets::ValidateArgs),
    /// Rotate a secret now through its provider plugin (staged, with rollback).
    Rotate(lifecycle::RotateArgs),
    /// Show lifecycle states: active, rotating, expired, invalid, reauth-required, ...
    Status(lifecycle::StatusArgs),
    /// Re-read the running agent's config (as SIGHUP does) and print what changed.
    Reload(reload::ReloadArgs),
    /// Poll the upstream now; `--accept-deletions` applies the deletions the guard held.
    Sync(sync::SyncArgs),
    /// Store environment variables as secrets (migration from `.env` files).
    Import(import::ImportArgs),
    /// Inspect or call a provider plugin (`.wasm`), for plugin authors.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Render the [[template]] blocks of a config file (a client of the running agent).
    Render(render::RenderArgs),
    /// Run a program with secrets in its environment; restart or signal it when they change.
    Exec(exec::ExecArgs),
    /// Look after the local store while the agent is stopped.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

impl Command {
    /// Whether this command runs the agent or opens its store, and so creates files
    /// that must be private to it (the caller sets the umask before any thread starts).
    pub fn keeps_files(&self) -> bool {
        matches!(
            self,
            Command::Run { .. } | Command::Dev(_) | Command::Store(_)
        )
    }

    /// The environment variables holding secrets that this command reads (the
    /// key-encryption key, database URLs, fallbacks): `main` takes them out of the
    /// environment before any thread starts (see [`crate::environment`]).
    pub fn secret_env_names(&self) -> Vec<String> {
        match self {
            Command::Run { config } => crate::config::secret_env_names(config),
            Command::Dev(args) => crate::config::secret_env_names(&args.dir.join("latchkey.toml")),
            Command::Store(store) => crate::config::secret_env_names(store.config()),
            _ => Vec::new(),
        }
    }
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = exit::of_error(&error);
        Failure { code, error }
    }
}

impl Failure {
    /// A failure with an explicit exit code.
    pub fn with_code(code: u8, error: anyhow::Error) -> Self {
        Failure { code, error }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Run { config } => {
            let config = crate::config::Config::load(&config)?;
            crate::server::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Check { config } => {
            let loaded = crate::config::Config::load(&config)?;
            let missing = loaded.check_files();
            if !missing.is_empty() {
                return Err(crate::config::Error::Invalid {
                    path: config.clone(),
                    problems: missing,
                }
                .into());
            }
            // Load every plugin as the agent would (digest, manifest, `info`, grants),
            // so what would stop the agent from starting stops the check.
            let plugins = crate::providers::Providers::check(
                &loaded.plugins,
                &loaded.sql,
                plugin::cache_dir(),
            )
            .await
            .map_err(|e| crate::config::Error::Invalid {
                path: config.clone(),
                problems: vec![latchkey_plugin_host::error_chain(&e)],
            })?;
            for warning in loaded.warnings() {
                eprintln!("warning: {}: {warning}", config.display());
            }
            for (name, warnings) in &plugins {
                for warning in warnings {
                    eprintln!("warning: {}: plugin {name}: {warning}", config.display());
                }
            }
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert(cmd) => cert::run(cmd).await,
        Command::Ca(cmd) => Ok(ca::run(cmd)?),
        Command::Get(args) => secrets::get(args).await,
        Command::Put(args) => secrets::put(args).await,
        Command::List(args) => secrets::list(args).await,
        Command::Rm(args) => secrets::rm(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Sync(args) => sync::run(args).await,
        Command::Reload(args) => reload::run(args).await,
        Command::Validate(args) => secrets::validate(args).await,
        Command::Rotate(args) => lifecycle::rotate(args).await,
        Command::Status(args) => lifecycle::status(args).await,
        Command::Plugin(cmd) => plugin::run(cmd).await,
        Command::Render(args) => render::run(args).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Store(cmd) => store::run(cmd).await,
    }
}
