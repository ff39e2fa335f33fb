//! `latchkey status` and `latchkey rotate`: the agent's health and the lifecycle
//! engine, from the command line (clients of the running agent's admin API).
//!
//! `status` without a path prints each health component (store, upstream,
//! certificates, templates, lifecycle) with its state and what explains it, then the
//! table of looked-after credentials; in colour when standard output is a terminal
//! and `NO_COLOR` is unset. `--json` prints both answers as one JSON object.

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
    /// Print JSON (`{"health": …, "lifecycle": …}` without a path) instead of text.
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

/// Prints the health and the lifecycle states. Exit 0 when the agent is healthy and
/// every credential shown is active, 6 otherwise.
pub(super) async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let client = args.client.client()?;
    // The health of the whole agent, unless one secret or prefix was asked about.
    let health = if args.path.is_none() && args.prefix.is_none() {
        let reply = client
            .request(
                Method::GET,
                "/v1/health?degradedcode=200&failingcode=200",
                None,
            )
            .await?;
        check(&reply)?;
        Some(reply.json().context("the agent's health is not JSON")?)
    } else {
        None
    };
    let target = match (&args.path, &args.prefix) {
        (Some(p), _) => format!("/v1/status/{}", SecretPath::parse(p)?),
        (None, Some(prefix)) => format!(
            "/v1/status?prefix={}",
            encode_query_value(Prefix::parse(prefix)?.as_str())
        ),
        (None, None) => "/v1/status".to_owned(),
    };
    let reply = client.request(Method::GET, &target, None).await?;
    // Without any `[[lifecycle]]` rule there is no table, only the health.
    let json = if health.is_some() && reply.status == 422 {
        serde_json::json!({ "credentials": [] })
    } else {
        check(&reply)?;
        reply.json().context("the agent's answer is not JSON")?
    };
    let items: Vec<serde_json::Value> = match json.get("credentials") {
        Some(list) => list.as_array().cloned().unwrap_or_default(),
        None => vec![json.clone()],
    };
    let healthy = health
        .as_ref()
        .is_none_or(|h| h.get("status").and_then(|s| s.as_str()) == Some("ok"));
    if args.json {
        let shown = match &health {
            Some(h) => serde_json::json!({ "health": h, "lifecycle": json }),
            None => json.clone(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_default()
        );
    } else {
        let paint = Paint::for_stdout();
        if let Some(h) = &health {
            print!("{}", health_text(h, &paint));
        }
        if items.is_empty() && health.is_some() {
            return Ok(exit_for(healthy));
        }
        println!(
            "{:<40} {:<16} {:>7} {:<25} {:<25} DETAIL",
            "PATH", "STATE", "VERSION", "ROTATED", "NEXT CHECK"
        );
        for item in &items {
            let s = |k: &str| item.get(k).and_then(|v| v.as_str()).unwrap_or("-");
            let n = |k: &str| item.get(k).and_then(|v| v.as_i64());
            println!(
                "{:<40} {} {:>7} {:<25} {:<25} {}",
                s("path"),
                paint.state(&format!("{:<16}", s("state")), s("state")),
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
    Ok(exit_for(healthy && all_active))
}

fn exit_for(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::INVALID)
    }
}

/// ANSI colours, or none (not a terminal, or `NO_COLOR` set).
struct Paint {
    on: bool,
}

impl Paint {
    fn for_stdout() -> Self {
        use std::io::IsTerminal as _;
        Paint {
            on: std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// `text` in the colour of `state`: green when well, yellow when it needs
    /// attention soon, red when something fails.
    fn state(&self, text: &str, state: &str) -> String {
        let colour = match state {
            "ok" | "active" | "fresh" => "32",
            "degraded" | "stale" | "refreshing" | "rotating" | "expiring" => "33",
            _ => "31",
        };
        if self.on {
            format!("\x1b[{colour}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The health answer as lines: the overall state, then one line per component with
/// what explains its state (its other scalar fields; lists by their length).
fn health_text(health: &serde_json::Value, paint: &Paint) -> String {
    use std::fmt::Write as _;
    let status = health
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown");
    let version = health.get("version").and_then(|v| v.as_str()).unwrap_or("");
    let mut out = format!("latchkey {version}: {}\n", paint.state(status, status));
    let Some(components) = health.as_object() else {
        return out;
    };
    for (name, part) in components {
        let Some(fields) = part.as_object() else {
            continue;
        };
        let state = fields.get("status").and_then(|s| s.as_str()).unwrap_or("-");
        let detail: Vec<String> = fields
            .iter()
            .filter(|(k, _)| *k != "status")
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(format!("{k}={s}")),
                serde_json::Value::Array(a) if a.is_empty() => None,
                serde_json::Value::Array(a) => Some(format!("{k}: {}", a.len())),
                serde_json::Value::Object(o) if o.is_empty() => None,
                serde_json::Value::Object(o) => Some(format!("{k}: {}", o.len())),
                other => Some(format!("{k}={other}")),
            })
            .collect();
        let _ = writeln!(
            out,
            "  {name:<14} {} {}",
            paint.state(&format!("{state:<9}"), state),
            detail.join(", ")
        );
    }
    out
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
