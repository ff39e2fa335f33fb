//! `latchkey import --from-env PREFIX_`: move secrets out of environment variables.
//!
//! Every variable whose name starts with the prefix becomes a secret through the
//! agent's API: the rest of the name, lowercased, is the path under `--to`, with `__`
//! separating segments (`LK_AI__OPENAI_KEY` → `imported/ai/openai_key`); the value is
//! stored as one field (`value` unless `--field`). Existing secrets are kept unless
//! `--overwrite`. Only names are printed, never values.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use http::Method;

use super::connect::ClientArgs;
use super::Failure;
use crate::path::SecretPath;
use crate::secret::{Fields, SecretBytes, SecretString};

/// Variables latchkey itself reads; never imported.
const OWN_VARS: &[&str] = &[
    "LATCHKEY_DIR",
    "LATCHKEY_ADDR",
    "LATCHKEY_CERT",
    "LATCHKEY_KEY",
    "LATCHKEY_CACERT",
    "LATCHKEY_CONFIG",
    "LATCHKEY_LOG",
    "LATCHKEY_LOG_FORMAT",
    "LATCHKEY_KEK",
];

/// `latchkey import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Import the environment variables whose names start with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    pub from_env: String,
    /// Path prefix of the imported secrets.
    #[arg(long, default_value = "imported")]
    pub to: String,
    /// Field name each value is stored as.
    #[arg(long, default_value = "value")]
    pub field: String,
    /// Replace secrets that exist already (otherwise they are kept).
    #[arg(long)]
    pub overwrite: bool,
    /// Print what would be imported (names only) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Maps a variable name to a secret path, or says why it cannot.
pub(super) fn path_for(to: &str, prefix: &str, name: &str) -> anyhow::Result<SecretPath> {
    let rest = name
        .strip_prefix(prefix)
        .filter(|r| !r.is_empty())
        .with_context(|| format!("{name} has nothing after the prefix {prefix}"))?;
    let tail = rest.to_ascii_lowercase().replace("__", "/");
    let to = to.trim_matches('/');
    let full = if to.is_empty() {
        tail
    } else {
        format!("{to}/{tail}")
    };
    SecretPath::parse(&full).with_context(|| format!("{name} does not map to a valid path"))
}

/// `latchkey import`.
pub(super) async fn run(args: ImportArgs) -> Result<ExitCode, Failure> {
    if args.from_env.is_empty() {
        return Err(anyhow::anyhow!("--from-env needs a non-empty prefix").into());
    }
    let mut plan = Vec::new();
    let mut skipped = 0;
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        if !name.starts_with(&args.from_env) || OWN_VARS.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = value.into_string() else {
            eprintln!("skip {name}: its value is not UTF-8");
            skipped += 1;
            continue;
        };
        match path_for(&args.to, &args.from_env, &name) {
            Ok(path) => plan.push((name, path, SecretString::new(value))),
            Err(e) => {
                eprintln!("skip {name}: {e:#}");
                skipped += 1;
            }
        }
    }
    plan.sort_by(|a, b| a.1.cmp(&b.1));
    if plan.is_empty() {
        bail_failure(format!(
            "no environment variable starts with {}",
            args.from_env
        ))?;
    }
    if args.dry_run {
        for (name, path, _) in &plan {
            println!("would import {name} -> {path}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.client.client()?;
    let (mut imported, mut kept) = (0, 0);
    let mut progress = super::progress::Progress::new("importing", plan.len());
    for (name, path, value) in plan {
        let mut fields = Fields::new();
        fields.insert(args.field.clone(), value);
        let mut body = serde_json::json!({ "fields": fields.exposed(), "kind": "imported" });
        if !args.overwrite {
            body["cas"] = 0.into();
        }
        let bytes = SecretBytes::new(serde_json::to_vec(&body).context("cannot encode")?);
        drop(body);
        let reply = client
            .request(Method::PUT, &format!("/v1/secrets/{path}"), Some(bytes))
            .await?;
        progress.clear();
        match reply.status {
            200 => {
                println!("imported {name} -> {path}");
                imported += 1;
            }
            409 => {
                println!("kept {path}: it exists already (use --overwrite to replace)");
                kept += 1;
            }
            status => {
                let code = reply.error_code().unwrap_or_default();
                bail_failure(format!(
                    "importing {name} -> {path} failed: {status} {code}"
                ))?;
            }
        }
        progress.step();
    }
    drop(progress);
    println!("{imported} imported, {kept} kept, {skipped} skipped");
    if imported > 0 {
        println!(
            "remove the imported variables from the environment once apps read them from latchkey"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bail_failure(message: String) -> anyhow::Result<()> {
    bail!(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_paths() {
        let p = |name: &str| path_for("imported", "LK_", name).map(|p| p.to_string());
        assert_eq!(
            p("LK_OPENAI_API_KEY").expect("ok"),
            "imported/openai_api_key"
        );
        assert_eq!(p("LK_AI__OPENAI").expect("ok"), "imported/ai/openai");
        assert!(p("LK_").is_err());
        assert!(p("LK_A____B").is_err(), "empty segment");
        assert_eq!(path_for("", "LK_", "LK_DB").expect("ok").to_string(), "db");
    }
}
