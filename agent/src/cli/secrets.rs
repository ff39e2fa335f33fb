//! `latchkey get | put | list | rm | validate`: the secret API from the shell.
//!
//! `put` takes values as `name=value` (visible in `ps`, fine for test data),
//! `name=@file` (read from a file), `name=-` (read from stdin), or a whole JSON
//! object with `--from-json FILE` (`-` for stdin). Prefer the file and stdin forms
//! for real secrets.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use http::Method;

use super::connect::ClientArgs;
use super::Failure;
use crate::client::{encode_query_value, Reply};
use crate::path::{Prefix, SecretPath};
use crate::secret::{Fields, SecretBytes, SecretString};

/// `latchkey get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Secret path, e.g. `apps/web/db`.
    pub path: String,
    /// Print only this field's value.
    #[arg(long, short)]
    pub field: Option<String>,
    /// Read this version instead of the current one.
    #[arg(long, conflicts_with = "label")]
    pub version: Option<u64>,
    /// Read the version with this label (`previous`, `pending`).
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `latchkey put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Secret path.
    pub path: String,
    /// Fields as `name=value`, `name=@file` or `name=-` (stdin).
    pub fields: Vec<String>,
    /// Read all fields from a JSON object in FILE (`-` for stdin).
    #[arg(long, conflicts_with = "fields")]
    pub from_json: Option<PathBuf>,
    /// Kind of credential (`generic`, `database`, `api-key`, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// Expiry, RFC 3339.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Write only if the current version is this (0: only if it does not exist): the
    /// version number the agent shows, or the upstream's own version id (AWS's
    /// `VersionId`).
    #[arg(long)]
    pub cas: Option<String>,
    /// Have the secret's provider plugin validate the credential first; a rejected
    /// credential is not stored and the reason is printed.
    #[arg(long)]
    pub validate: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `latchkey list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Prefix, e.g. `apps/web/` (everything when omitted).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Print the JSON answer instead of one path per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `latchkey rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Secret path.
    pub path: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Maps an error answer to a failure with a meaningful exit code.
pub(super) fn check(reply: &Reply) -> Result<(), Failure> {
    if reply.is_success() {
        return Ok(());
    }
    let json = reply.json().ok();
    let code = json
        .as_ref()
        .and_then(|j| j.pointer("/error/code"))
        .and_then(|c| c.as_str())
        .unwrap_or("unknown")
        .to_owned();
    let message = json
        .as_ref()
        .and_then(|j| j.pointer("/error/message"))
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_owned();
    let exit = super::exit::of_status(reply.status);
    Err(Failure::with_code(
        exit,
        anyhow!("{} {code}: {message}", reply.status),
    ))
}

/// `latchkey get`.
pub(super) async fn get(args: GetArgs) -> Result<ExitCode, Failure> {
    let path = SecretPath::parse(&args.path)?;
    let client = args.client.client()?;
    let mut uri = format!("/v1/secrets/{path}");
    if let Some(v) = args.version {
        uri.push_str(&format!("?version={v}"));
    } else if let Some(label) = &args.label {
        uri.push_str(&format!("?label={}", encode_query_value(label)));
    }
    let reply = client.get(&uri).await?;
    check(&reply)?;
    let mut out = std::io::stdout().lock();
    match &args.field {
        Some(field) => {
            let json = reply.json().context("the agent's answer is not JSON")?;
            let value = json
                .pointer("/fields")
                .and_then(|f| f.get(field))
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    Failure::with_code(
                        super::exit::NOT_FOUND,
                        anyhow!("secret {path} has no field {field:?}"),
                    )
                })?;
            out.write_all(value.as_bytes())?;
            out.write_all(b"\n")?;
        }
        None => {
            out.write_all(reply.body.expose())?;
            out.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_source(source: &str) -> anyhow::Result<SecretString> {
    let mut buf = Vec::new();
    if source == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
    } else {
        buf = std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
    }
    let buf = SecretBytes::new(buf);
    let text = std::str::from_utf8(buf.expose()).context("the value is not UTF-8 text")?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(SecretString::from(text))
}

fn parse_fields(args: &PutArgs) -> anyhow::Result<Fields> {
    if let Some(file) = &args.from_json {
        let raw = read_source(&file.to_string_lossy())?;
        return serde_json::from_str::<Fields>(raw.expose()).map_err(|e| {
            anyhow!(
                "--from-json must hold a JSON object of strings (line {}, column {})",
                e.line(),
                e.column()
            )
        });
    }
    let mut fields = Fields::new();
    let mut stdin_used = false;
    for spec in &args.fields {
        let Some((name, value)) = spec.split_once('=') else {
            bail!("field {spec:?} must be name=value, name=@file or name=-");
        };
        if name.is_empty() {
            bail!("a field name is empty");
        }
        let value = if value == "-" {
            if stdin_used {
                bail!("only one field can be read from stdin");
            }
            stdin_used = true;
            read_source("-")?
        } else if let Some(file) = value.strip_prefix('@') {
            read_source(file)?
        } else {
            SecretString::from(value)
        };
        fields.insert(name, value);
    }
    if fields.is_empty() {
        bail!("give at least one field (name=value, name=@file, name=-) or --from-json");
    }
    Ok(fields)
}

/// `latchkey put`.
pub(super) async fn put(args: PutArgs) -> Result<ExitCode, Failure> {
    let path = SecretPath::parse(&args.path)?;
    let fields = parse_fields(&args)?;
    let mut body = serde_json::Map::new();
    body.insert(
        "fields".into(),
        serde_json::to_value(fields.exposed()).context("cannot encode fields")?,
    );
    if let Some(kind) = &args.kind {
        body.insert("kind".into(), kind.clone().into());
    }
    if let Some(exp) = &args.expires_at {
        body.insert("expires_at".into(), exp.clone().into());
    }
    if let Some(cas) = &args.cas {
        let cas = match cas.parse::<u64>() {
            Ok(n) => n.into(),
            Err(_) => cas.clone().into(),
        };
        body.insert("cas".into(), cas);
    }
    let bytes = SecretBytes::new(serde_json::to_vec(&body).context("cannot encode the request")?);
    drop(body);
    let client = args.client.client()?;
    let target = if args.validate {
        format!("/v1/secrets/{path}?validate=true")
    } else {
        format!("/v1/secrets/{path}")
    };
    let reply = client.request(Method::PUT, &target, Some(bytes)).await?;
    check(&reply)?;
    let json = reply.json().context("the agent's answer is not JSON")?;
    println!(
        "{path}: version {}",
        json.get("version").and_then(|v| v.as_u64()).unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

/// `latchkey list`.
pub(super) async fn list(args: ListArgs) -> Result<ExitCode, Failure> {
    let prefix = Prefix::parse(&args.prefix)?;
    let client = args.client.client()?;
    let reply = client
        .get(&format!(
            "/v1/secrets?prefix={}",
            encode_query_value(prefix.as_str())
        ))
        .await?;
    check(&reply)?;
    if args.json {
        println!("{}", String::from_utf8_lossy(reply.body.expose()));
        return Ok(ExitCode::SUCCESS);
    }
    let json = reply.json().context("the agent's answer is not JSON")?;
    let mut out = std::io::stdout().lock();
    for entry in json
        .get("secrets")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(p) = entry.get("path").and_then(|p| p.as_str()) {
            writeln!(out, "{p}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `latchkey rm`.
pub(super) async fn rm(args: RmArgs) -> Result<ExitCode, Failure> {
    let path = SecretPath::parse(&args.path)?;
    let client = args.client.client()?;
    let reply = client
        .request(Method::DELETE, &format!("/v1/secrets/{path}"), None)
        .await?;
    check(&reply)?;
    println!("{path}: deleted");
    Ok(ExitCode::SUCCESS)
}

/// `latchkey validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Secret path.
    pub path: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `latchkey validate`: asks the secret's provider plugin now and exits with the
/// code of its outcome ([`super::exit::of_outcome`]: 0 valid, 6 invalid, 7 rejected,
/// 8 unavailable, …; 12 when the plugin call itself failed).
pub(super) async fn validate(args: ValidateArgs) -> Result<ExitCode, Failure> {
    let path = SecretPath::parse(&args.path)?;
    let client = args.client.client()?;
    let reply = client
        .request(Method::POST, &format!("/v1/validate/{path}"), None)
        .await?;
    if let Err(failure) = check(&reply) {
        let code = reply
            .json()
            .ok()
            .and_then(|j| j.pointer("/error/code")?.as_str().map(str::to_owned));
        if code.as_deref() == Some("plugin_failed") {
            return Err(Failure::with_code(super::exit::PLUGIN_FAULT, failure.error));
        }
        return Err(failure);
    }
    println!("{}", String::from_utf8_lossy(reply.body.expose()));
    let json = reply.json().context("the agent's answer is not JSON")?;
    let outcome = json
        .get("outcome")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    Ok(ExitCode::from(super::exit::of_outcome(outcome)))
}
