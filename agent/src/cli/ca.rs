//! `latchkey ca rotate | status`: replacing the CA with an overlap, so that no client
//! sees a handshake fail (see `identity::ca::rotate` for the steps and the files).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::identity::ca::{Ca, RotationState};

/// `latchkey ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Rotate the CA in three steps: `--stage` (a new CA is trusted beside the old
    /// one), `--activate` (it issues, and the server certificate is reissued by it),
    /// `--finish` (the old CA is dropped once nothing it issued is still valid).
    Rotate {
        /// Step 1: make the new CA and add it to the trust bundle `ca/ca.pem`.
        #[arg(long, required_unless_present_any = ["activate", "finish"], conflicts_with_all = ["activate", "finish"])]
        stage: bool,
        /// Step 2: the staged CA issues from now on.
        #[arg(long, conflicts_with = "finish")]
        activate: bool,
        /// Step 3: drop the previous CA from the bundle and the CRL.
        #[arg(long)]
        finish: bool,
        /// With `--finish`: drop it although certificates it issued are still valid
        /// (they stop working at once).
        #[arg(long, requires = "finish")]
        force: bool,
        /// The folder made by `latchkey init`.
        #[arg(long, env = "LATCHKEY_DIR", default_value = ".latchkey")]
        dir: PathBuf,
    },
    /// Where a CA rotation stands (`--json` for machines).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The folder made by `latchkey init`.
        #[arg(long, env = "LATCHKEY_DIR", default_value = ".latchkey")]
        dir: PathBuf,
    },
}

/// Runs a `ca` subcommand (offline: on the files of the init folder).
pub(super) fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    let dir = match &cmd {
        CaCommand::Rotate { dir, .. } | CaCommand::Status { dir, .. } => dir.clone(),
    };
    let ca = Ca::load(&dir).with_context(|| format!("cannot load the CA in {}", dir.display()))?;
    match cmd {
        CaCommand::Status { json, .. } => {
            let state = ca.rotation_state()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                println!("{}", describe(&state));
            }
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Rotate {
            stage,
            activate,
            force,
            ..
        } => {
            let bundle = ca.layout().ca_cert();
            if stage {
                ca.stage_rotation()?;
                println!(
                    "staged a new CA: {} now trusts both; a running agent takes it within a second.\n\
                     Copy it to every client that verifies the agent from elsewhere, then run `latchkey ca rotate --activate`.",
                    bundle.display()
                );
            } else if activate {
                let ca = ca.activate_rotation()?;
                println!("the new CA issues from now on; the previous one stays trusted");
                super::cert::reissue_server(&ca, std::time::Duration::from_secs(365 * 86_400))?;
                println!(
                    "renew app and admin certificates (`latchkey cert renew`, `cert issue --admin`), then run `latchkey ca rotate --finish`"
                );
            } else {
                let ca = ca.finish_rotation(force)?;
                drop(ca);
                println!(
                    "the previous CA is no longer trusted: {} holds one CA; a running agent takes it within a second",
                    bundle.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(state: &RotationState) -> String {
    match state {
        RotationState::None => "no CA rotation in progress".to_owned(),
        RotationState::Staged { since } => format!(
            "a new CA is staged (trusted, not issuing) since {}: next `latchkey ca rotate --activate`",
            crate::api::rfc3339(*since)
        ),
        RotationState::Overlap {
            since,
            still_valid,
            last_expiry,
        } => format!(
            "the new CA issues since {}; the previous one is still trusted: {still_valid} certificate(s) it issued are still valid{}; next `latchkey ca rotate --finish`",
            crate::api::rfc3339(*since),
            last_expiry.map_or_else(String::new, |t| format!(" (the last until {})", crate::api::rfc3339(t)))
        ),
    }
}
