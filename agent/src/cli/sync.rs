//! `latchkey sync`: ask the running agent to poll its upstream now, and — after an
//! operator has checked them — to apply the deletions its guard held back.

use std::process::ExitCode;

use clap::Args;
use http::Method;

use super::connect::ClientArgs;
use super::secrets::check;
use super::Failure;

/// `latchkey sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Also drop the cached secrets the upstream no longer lists that the deletion
    /// guard held (`deletion-held` events, health `degraded`): only once the
    /// deletions are known to be meant.
    #[arg(long)]
    pub accept_deletions: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints the poll's report (JSON): listed, fetched, deleted, skipped, held.
pub(super) async fn run(args: SyncArgs) -> Result<ExitCode, Failure> {
    let client = args.client.client()?;
    let target = if args.accept_deletions {
        "/v1/sync?accept_deletions=true"
    } else {
        "/v1/sync"
    };
    // A poll of a large upstream takes a while: say so on a terminal.
    let waiting = super::progress::Progress::saying("polling the upstream…");
    let reply = client.request(Method::POST, target, None).await;
    drop(waiting);
    let reply = reply?;
    check(&reply)?;
    println!("{}", String::from_utf8_lossy(reply.body.expose()));
    Ok(ExitCode::SUCCESS)
}
