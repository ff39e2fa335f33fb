//! `latchkey plugin inspect | call`: look into a provider plugin and call it, for
//! plugin authors. Both run the plugin in the same sandboxed host the agent uses.
//!
//! `call` grants only what its flags grant (`--grant-http [http://]host:port`,
//! `--allow-network 127.0.0.0/8`), prints the answer as JSON, and prints returned
//! credentials in clear: that is its purpose, so run it on test credentials. Its exit
//! code is the answer's outcome (`cli::exit`: 0 valid or done, 6 invalid, 7
//! rejected, 8 unavailable, 9 denied, 10 unsupported, 11 invalid-config, 12 a trap or
//! a hit limit).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Subcommand;
use latchkey_plugin_host as host;

use super::Failure;

/// `latchkey plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show a plugin's digest, manifest, WIT imports and exports, and its `info`.
    Inspect {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Its manifest [default: FILE with .toml, or plugin.toml beside it].
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Call one operation with JSON arguments and print the JSON answer.
    Call {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Its manifest [default: FILE with .toml, or plugin.toml beside it].
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// `info`, `validate`, `create-pending`, `retire` or `refresh`.
        #[arg(long)]
        op: String,
        /// Provider config: a JSON object of strings.
        #[arg(long, default_value = "{}")]
        config: String,
        /// The credential, `{"kind":..,"fields":{..}}`: JSON, `@FILE` or `-` (stdin).
        #[arg(long, default_value = r#"{"kind":"generic","fields":{}}"#)]
        cred: String,
        /// Allow outgoing HTTP to `[scheme://]host[:port]` (no scheme: HTTPS only;
        /// `http://host:port` for plaintext); repeatable.
        #[arg(long = "grant-http")]
        grant_http: Vec<String>,
        /// Let granted names resolve into this non-public network (CIDR); repeatable.
        #[arg(long = "allow-network")]
        allow_network: Vec<String>,
        /// Define and grant a SQL connection: `NAME=env:VAR` (the URL is read from the
        /// environment variable VAR, so it stays out of `ps`) or `NAME=@FILE`;
        /// `postgres://…` or `mysql://…`. Repeatable.
        #[arg(long = "sql", value_name = "NAME=env:VAR")]
        sql: Vec<String>,
        /// Deadline of the call.
        #[arg(long, default_value = "10s")]
        deadline: String,
    },
}

/// Where the one-shot commands (`plugin inspect | call`, `check`) keep compiled
/// plugins: per user, in the temporary folder, apart from the agent's own cache.
pub(super) fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("latchkey-plugin-cache-{}", uid()))
}

fn plugin_host(sql: Vec<host::SqlConnectionConfig>) -> anyhow::Result<host::PluginHost> {
    host::PluginHost::new(host::HostConfig {
        cache_dir: Some(cache_dir()),
        sql,
        ..host::HostConfig::default()
    })
    .map_err(|e| anyhow!("cannot start the plugin host: {}", host::error_chain(&e)))
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn manifest_for(file: &Path, explicit: Option<&Path>) -> anyhow::Result<host::Manifest> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let beside = file.with_extension("toml");
            if beside.is_file() {
                beside
            } else {
                file.parent()
                    .map(|d| d.join("plugin.toml"))
                    .filter(|p| p.is_file())
                    .ok_or_else(|| {
                        anyhow!("no manifest beside {}; pass --manifest", file.display())
                    })?
            }
        }
    };
    host::Manifest::from_file(&path)
        .with_context(|| format!("cannot use manifest {}", path.display()))
}

/// Parses `--sql NAME=env:VAR` or `NAME=@FILE` into a connection. The URL itself is
/// never accepted on the command line, where other users could read it.
fn sql_connection(arg: &str) -> anyhow::Result<host::SqlConnectionConfig> {
    let (name, source) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--sql {arg:?}: write NAME=env:VAR or NAME=@FILE"))?;
    let url = if let Some(var) = source.strip_prefix("env:") {
        std::env::var(var)
            .map_err(|_| anyhow!("--sql {name}: environment variable {var} is not set"))?
    } else if let Some(file) = source.strip_prefix('@') {
        std::fs::read_to_string(file)
            .with_context(|| format!("--sql {name}: cannot read {file}"))?
            .trim()
            .to_owned()
    } else {
        return Err(anyhow!(
            "--sql {name}: give the URL as env:VAR or @FILE, not on the command line"
        ));
    };
    let dialect = sql_dialect(&url)
        .ok_or_else(|| anyhow!("--sql {name}: the URL must start with postgres:// or mysql://"))?;
    Ok(host::SqlConnectionConfig {
        name: name.to_owned(),
        dialect,
        url: host::SecretString::new(url),
        max_connections: 1,
    })
}

/// The dialect a connection URL's scheme names.
pub(crate) fn sql_dialect(url: &str) -> Option<host::Dialect> {
    let scheme = url.split_once("://")?.0;
    match scheme {
        "postgres" | "postgresql" => Some(host::Dialect::Postgres),
        "mysql" => Some(host::Dialect::Mysql),
        _ => None,
    }
}

fn read_arg(value: &str) -> anyhow::Result<String> {
    if value == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        return Ok(s);
    }
    if let Some(file) = value.strip_prefix('@') {
        return std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"));
    }
    Ok(value.to_owned())
}

/// The outcome word of a `plugin call` answer, for its exit code: `valid` or
/// `invalid` for a validation, `ok` for any other answer, or the provider error's
/// code.
fn outcome(answer: &serde_json::Value) -> &str {
    if let Some(code) = answer.pointer("/error/code") {
        return code.as_str().unwrap_or("unknown");
    }
    match answer
        .pointer("/ok/valid")
        .and_then(serde_json::Value::as_bool)
    {
        Some(true) => "valid",
        Some(false) => "invalid",
        None => "ok",
    }
}

/// The exit code of a call that brought no answer: an operation the plugin does not
/// declare is `unsupported`, arguments that do not parse are a usage error, and the
/// rest (a trap, a deadline, the memory cap) is a plugin fault.
fn fault_code(e: &host::CallError) -> u8 {
    match e {
        host::CallError::NotDeclared { .. }
        | host::CallError::KindNotDeclared { .. }
        | host::CallError::UnknownOperation => super::exit::UNSUPPORTED,
        host::CallError::BadArguments(_) => super::exit::USAGE,
        _ => super::exit::PLUGIN_FAULT,
    }
}

/// Runs a `plugin` subcommand.
pub(super) async fn run(cmd: PluginCommand) -> Result<ExitCode, Failure> {
    match cmd {
        PluginCommand::Inspect { file, manifest } => {
            let host = plugin_host(Vec::new())?;
            let inspection = tokio::task::spawn_blocking(move || {
                host::inspect(&host, &file, manifest.as_deref())
                    .map_err(|e| anyhow!("{}", host::error_chain(&e)))
            })
            .await
            .context("inspect task failed")??;
            println!(
                "{}",
                serde_json::to_string_pretty(&inspection).context("cannot print the inspection")?
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Call {
            file,
            manifest,
            op,
            config,
            cred,
            grant_http,
            allow_network,
            sql,
            deadline,
        } => {
            let sql = sql
                .iter()
                .map(|s| sql_connection(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // `None` is `info`, which takes no arguments and is not a host::Operation.
            let op: Option<host::Operation> = match op.as_str() {
                "info" => None,
                other => Some(other.parse().map_err(|_| {
                    anyhow!("--op {op:?} is not info, validate, create-pending, retire or refresh")
                })?),
            };
            let deadline = humantime::parse_duration(&deadline)
                .with_context(|| format!("--deadline {deadline:?} is not a duration"))?;
            let allowed_networks = allow_network
                .iter()
                .map(|n| {
                    n.parse::<host::IpNet>()
                        .map_err(|e| anyhow!("--allow-network: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let manifest = manifest_for(&file, manifest.as_deref())?;
            let sha256 = host::sha256_file(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let granted_sql = sql.iter().map(|c| c.name.clone()).collect();
            let host = plugin_host(sql)?;
            let plugin = host
                .load(host::LoadSpec {
                    wasm: file.clone(),
                    manifest,
                    sha256,
                    grants: host::Grants {
                        http: grant_http,
                        allowed_networks,
                        sql: granted_sql,
                    },
                    limits: host::Limits {
                        deadline: deadline.max(Duration::from_millis(10)),
                        ..host::Limits::default()
                    },
                })
                .await
                .map_err(|e| {
                    anyhow!("cannot load {}: {}", file.display(), host::error_chain(&e))
                })?;
            // Read the arguments even for `info`, so a caller writing them to stdin
            // never meets a closed pipe.
            let config = read_arg(&config)?;
            let cred = read_arg(&cred)?;
            let called = match op {
                None => tokio::task::spawn_blocking(move || plugin.info_blocking())
                    .await
                    .context("call task failed")?
                    .map(|info| serde_json::json!({ "ok": info })),
                Some(op) => {
                    tokio::task::spawn_blocking(move || plugin.call_json(op, &config, &cred))
                        .await
                        .context("call task failed")?
                }
            };
            let answer = called.map_err(|e| {
                Failure::with_code(
                    fault_code(&e),
                    anyhow!("the call failed: {}", host::error_chain(&e)),
                )
            })?;
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            Ok(ExitCode::from(super::exit::of_outcome(outcome(&answer))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::exit;

    /// Issue 15: `plugin call` exited 1 for every provider error and 0 for `valid: false`.
    #[test]
    fn plugin_call_exits_with_its_answers_outcome() {
        let code = |v: serde_json::Value| exit::of_outcome(outcome(&v));
        assert_eq!(code(serde_json::json!({"ok": {"valid": true}})), 0);
        assert_eq!(
            code(serde_json::json!({"ok": {"valid": false}})),
            exit::INVALID
        );
        assert_eq!(code(serde_json::json!({"ok": null})), 0, "retire");
        assert_eq!(code(serde_json::json!({"ok": {"kind": "api-key"}})), 0);
        for (word, want) in [
            ("rejected", exit::REJECTED),
            ("unavailable", exit::UNAVAILABLE),
            ("denied", exit::PROVIDER_DENIED),
            ("unsupported", exit::UNSUPPORTED),
            ("invalid-config", exit::INVALID_CONFIG),
        ] {
            let answer = serde_json::json!({"error": {"code": word, "detail": "x"}});
            assert_eq!(code(answer), want, "{word}");
        }
        let undeclared = host::CallError::NotDeclared {
            plugin: "p".into(),
            operation: host::Operation::Refresh,
        };
        assert_eq!(fault_code(&undeclared), exit::UNSUPPORTED);
        let timeout = host::CallError::Timeout {
            plugin: "p".into(),
            deadline: Duration::from_secs(1),
        };
        assert_eq!(fault_code(&timeout), exit::PLUGIN_FAULT);
    }
}
