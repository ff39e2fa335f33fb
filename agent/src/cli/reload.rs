//! `latchkey reload`: ask the running agent to re-read its config, as SIGHUP does,
//! and print what came of it — which SIGHUP cannot tell its sender.

use std::process::ExitCode;

use clap::Args;
use http::Method;

use super::connect::ClientArgs;
use super::Failure;

/// `latchkey reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints what changed (exit 0), or every problem of a config that does not validate
/// (exit 64: nothing changed, the config in force keeps serving).
pub(super) async fn run(args: ReloadArgs) -> Result<ExitCode, Failure> {
    let client = args.client.client()?;
    let reply = client.request(Method::POST, "/v1/reload", None).await?;
    if reply.status == 422 {
        let json = reply.json().ok();
        let problems: Vec<String> = json
            .as_ref()
            .and_then(|j| j.get("problems"))
            .and_then(|p| p.as_array())
            .map(|p| {
                p.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for problem in &problems {
            eprintln!("{problem}");
        }
        return Err(Failure::with_code(
            super::exit::CONFIG,
            anyhow::anyhow!(
                "reload refused: {} problem(s); the config in force keeps serving",
                problems.len()
            ),
        ));
    }
    super::secrets::check(&reply)?;
    let json = reply.json().ok();
    let changed = json
        .as_ref()
        .and_then(|j| j.get("changed"))
        .and_then(|c| c.as_str())
        .unwrap_or("nothing");
    println!("reloaded: {changed}");
    Ok(ExitCode::SUCCESS)
}
