//! `latchkey exec`: start a program with secrets in its environment and rendered
//! files beside it, and keep both current (see [`crate::exec`]).
//!
//! The command line names secrets by path and field (`--env DB_PASSWORD=apps/db#password`),
//! so no value is ever in latchkey's own argv or `ps` output.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::connect::ClientArgs;
use super::Failure;
use crate::exec::{EnvBinding, OnChange, Program, Spec};
use crate::render::Template;

/// `latchkey exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// An environment variable from a secret: `NAME=path#field` (repeatable).
    #[arg(long = "env", value_name = "NAME=PATH#FIELD")]
    pub env: Vec<String>,
    /// A template rendered before the child starts and kept current: `SRC:DEST` (repeatable).
    #[arg(long = "template", value_name = "SRC:DEST")]
    pub templates: Vec<String>,
    /// What a changed file does to the child: `restart` or `signal:NAME` (e.g.
    /// `signal:SIGHUP`). A changed environment value always restarts it.
    #[arg(long, default_value = "restart")]
    pub on_change: String,
    /// How long the child may take to exit after SIGTERM on a restart before SIGKILL.
    #[arg(long, default_value = "10s")]
    pub grace: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn spec(args: &ExecArgs) -> anyhow::Result<Spec> {
    let env = args
        .env
        .iter()
        .map(|b| b.parse::<EnvBinding>())
        .collect::<Result<Vec<_>, _>>()?;
    let templates = args
        .templates
        .iter()
        .map(|t| {
            let (src, dest) = t
                .split_once(':')
                .filter(|(s, d)| !s.is_empty() && !d.is_empty())
                .ok_or_else(|| anyhow!("--template {t:?} must be SRC:DEST"))?;
            Ok(Template::simple(PathBuf::from(src), PathBuf::from(dest)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if env.is_empty() && templates.is_empty() {
        return Err(anyhow!("give at least one --env or --template"));
    }
    let on_change = args
        .on_change
        .parse::<OnChange>()
        .map_err(|e| anyhow!("--on-change: {e}"))?;
    let grace = humantime::parse_duration(&args.grace)
        .map_err(|e| anyhow!("--grace {:?}: {e}", args.grace))?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow!("give the command to run after --"))?;
    Ok(Spec {
        env,
        templates,
        on_change,
        grace: grace.max(Duration::from_millis(1)),
        program: Program {
            program: program.clone(),
            args: rest.to_vec(),
        },
    })
}

/// `latchkey exec`.
pub(super) async fn run(args: ExecArgs) -> Result<ExitCode, Failure> {
    let spec = spec(&args).map_err(|e| Failure::with_code(super::exit::USAGE, e))?;
    let client = Arc::new(args.client.client()?);
    let renewal = args.client.keep_renewed(client.clone());
    let code = crate::exec::run(spec, client).await;
    renewal.abort();
    let code = code?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
