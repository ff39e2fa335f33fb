//! `latchkey render`: render the `[[template]]` blocks of a config file as a client
//! of the running agent (secrets come over mTLS; the daemon holds the store).
//!
//! `--once` renders everything and exits non-zero if any template failed (init
//! containers, CI). `--dry-run` prints which files would change, never a value.
//! Without either it keeps running and re-renders on the agent's change events.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::connect::ClientArgs;
use super::Failure;
use crate::path::Prefix;
use crate::render::source::ClientSource;
use crate::render::{spec, Mode, Outcome, Runner, Template, TemplateSection};

/// `latchkey render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// A TOML file with `[[template]]` blocks (latchkey.toml, or a file of its own).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Render once and exit; the exit code is 1 if any template failed.
    #[arg(long)]
    pub once: bool,
    /// Print which files would change; write nothing and run no action (implies --once).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Only the templates of a config file; every other key is left to its owner.
#[derive(Deserialize)]
struct TemplatesOnly {
    #[serde(default)]
    template: Vec<TemplateSection>,
}

/// Reads and validates the `[[template]]` blocks of `path`.
pub(super) fn load_templates(path: &Path) -> Result<Vec<Template>, crate::config::Error> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::config::Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let raw: TemplatesOnly = toml::from_str(&text).map_err(|e| crate::config::Error::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    let templates = spec::validate(base, &raw.template, &mut problems);
    if !problems.is_empty() {
        return Err(crate::config::Error::Invalid {
            path: path.to_owned(),
            problems,
        });
    }
    if templates.is_empty() {
        problems.push("template: the file has no [[template]] blocks".to_owned());
        return Err(crate::config::Error::Invalid {
            path: path.to_owned(),
            problems,
        });
    }
    Ok(templates)
}

/// `latchkey render`.
pub(super) async fn run(args: RenderArgs) -> Result<ExitCode, Failure> {
    let templates = load_templates(&args.config)?;
    let client = Arc::new(args.client.client()?);
    let source = Arc::new(ClientSource::new(
        client.clone(),
        tokio::runtime::Handle::current(),
    ));
    if args.once || args.dry_run {
        let mode = if args.dry_run {
            Mode::DryRun
        } else {
            Mode::Write
        };
        let mut runner = Runner::new(templates, source);
        let reports = runner.pass_all(mode).await;
        let mut out = std::io::stdout().lock();
        let mut failed = 0;
        for r in &reports {
            let dest = r.destination.display();
            match &r.outcome {
                Outcome::Unchanged => writeln!(out, "unchanged     {dest}")?,
                Outcome::Changed => writeln!(out, "written       {dest}")?,
                Outcome::WouldChange => writeln!(out, "would change  {dest}")?,
                Outcome::Failed(e) | Outcome::ActionFailed(e) => {
                    failed += 1;
                    writeln!(
                        out,
                        "failed        {dest}: {}",
                        crate::render::runner::chain(e)
                    )?;
                }
            }
        }
        out.flush()?;
        return if failed == 0 {
            Ok(ExitCode::SUCCESS)
        } else {
            Err(Failure::with_code(
                1,
                anyhow::anyhow!("{failed} of {} template(s) failed", reports.len()),
            ))
        };
    }

    let renewal = args.client.keep_renewed(client.clone());
    let (tx, changes) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(crate::render::sse::follow(
        client.clone(),
        Prefix::all(),
        tx,
        Some(ready_tx),
    ));
    // Read secrets only once the change stream is open, so no change is missed.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ready_rx).await;
    let (stop_tx, stop) = watch::channel(false);
    let runner = tokio::spawn(Runner::new(templates, source).run(changes, stop));
    crate::server::wait_for_signal().await;
    let _ = stop_tx.send(true);
    runner.await.context("the renderer stopped unexpectedly")?;
    watcher.abort();
    renewal.abort();
    Ok(ExitCode::SUCCESS)
}
