//! `latchkey status` and `latchkey rotate`: the lifecycle engine, from the command line
//! (clients of the running agent's admin API).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use http::Method;

use super::connect::ClientArgs;
use super::secrets::check;
use super::Failure;
use crate::client::encode_query_value;
use crate::path::{Prefix, SecretPath};

/// `latchkey status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One secret path; without it, every looked-after credential (under `--prefix`).
    pub path: Option<String>,
    /// Only credentials under this prefix.
    #[arg(long, conflicts_with = "path")]
    pub prefix: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `latchkey rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Secret path.
    pub path: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints lifecycle states. Exit 0 when every credential shown is active, 6 otherwise.
pub(super) async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let client = args.client.client()?;
    let target = match (&args.path, &args.prefix) {
        (Some(p), _) => format!("/v1/status/{}", SecretPath::parse(p)?),
        (None, Some(prefix)) => format!(
            "/v1/status?prefix={}",
            encode_query_value(Prefix::parse(prefix)?.as_str())
        ),
        (None, None) => "/v1/status".to_owned(),
    };
    let reply = client.request(Method::GET, &target, None).await?;
    check(&reply)?;
    let json = reply.json().context("the agent's answer is not JSON")?;
    let items: Vec<serde_json::Value> = match json.get("credentials") {
        Some(list) => list.as_array().cloned().unwrap_or_default(),
        None => vec![json.clone()],
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        println!(
            "{:<40} {:<16} {:>7} {:<25} {:<25} DETAIL",
            "PATH", "STATE", "VERSION", "ROTATED", "NEXT CHECK"
        );
        for item in &items {
            let s = |k: &str| item.get(k).and_then(|v| v.as_str()).unwrap_or("-");
            let n = |k: &str| item.get(k).and_then(|v| v.as_i64());
            println!(
                "{:<40} {:<16} {:>7} {:<25} {:<25} {}",
                s("path"),
                s("state"),
                n("version").unwrap_or(0),
                s("rotated_at"),
                s("next_check_at"),
                s("detail")
            );
        }
    }
    let all_active = items
        .iter()
        .all(|i| i.get("state").and_then(|v| v.as_str()) == Some("active"));
    Ok(if all_active {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::INVALID)
    })
}

/// Rotates a secret now and waits for the outcome. Exit 0 when rotated, 5 when another
/// agent or operation holds it, 1 when a step failed and was rolled back.
pub(super) async fn rotate(args: RotateArgs) -> Result<ExitCode, Failure> {
    let path = SecretPath::parse(&args.path)?;
    let client = args.client.client()?;
    let reply = client
        .request(Method::POST, &format!("/v1/rotate/{path}"), None)
        .await?;
    let json = reply.json().ok();
    let outcome = json
        .as_ref()
        .and_then(|j| j.get("outcome"))
        .and_then(|o| o.as_str())
        .map(str::to_owned);
    match outcome.as_deref() {
        Some("rotated") => {
            let version = json
                .as_ref()
                .and_then(|j| j.get("version"))
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            println!("{path}: rotated to version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => {
            let detail = json
                .as_ref()
                .and_then(|j| j.get("detail"))
                .and_then(|d| d.as_str())
                .unwrap_or("");
            eprintln!("{path}: {other}: {detail}");
            Ok(ExitCode::from(if other == "rolled-back" {
                super::exit::FAILURE
            } else {
                super::exit::CONFLICT
            }))
        }
        None => {
            check(&reply)?;
            Ok(ExitCode::from(1))
        }
    }
}
