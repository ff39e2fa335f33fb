//! `latchkey exec`: run a program with secrets in its environment (and rendered
//! files beside it), supervise it, and restart or signal it when a value it received
//! actually changed.
//!
//! A client of the running agent. The order at start is: open the agent's change
//! stream, then read the secrets (so no change between the two is missed), render
//! the templates, start the child. Afterwards:
//!
//! - SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to the
//!   child; after SIGTERM, SIGINT or SIGQUIT no restart happens any more.
//! - When the child exits, `latchkey exec` exits with its code (128 + signal when it
//!   was killed by one), like a shell.
//! - A change event for a path the child uses re-reads the values and re-renders
//!   the templates. If an environment value changed, the child is restarted (an
//!   environment cannot be changed from outside). If only a file changed, the
//!   `--on-change` policy applies: restart, or send a signal. If nothing the child
//!   received changed (an unrelated field, a re-sync, a rotation that promoted the
//!   same value), nothing happens — unlike supervisors that restart on every render.
//! - A restart is SIGTERM, up to `--grace` to exit, then SIGKILL, then a new child.
//!
//! Values appear only in the child's environment and the rendered files: not in
//! latchkey's argv (the command line names paths and fields), not in logs.

pub mod child;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::path::{Prefix, SecretPath};
use crate::render::action::SignalName;
use crate::render::source::{self, ClientSource};
use crate::render::{Change, Mode, Runner, Template};
use crate::secret::SecretString;

pub use child::Program;

/// How long to wait for the change stream at start before going on without it.
const WATCH_CONNECT: Duration = Duration::from_secs(10);

/// Why `latchkey exec` could not start or supervise the child.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `--env` binding is malformed.
    #[error("--env {0:?} must be NAME=path#field (or NAME=path for a one-field secret)")]
    Binding(String),
    /// A secret an `--env` binding names does not exist.
    #[error("--env {name}: secret {path} not found")]
    MissingSecret {
        /// The variable.
        name: String,
        /// The secret.
        path: SecretPath,
    },
    /// The field an `--env` binding names does not exist.
    #[error("--env {name}: secret {path} has no field {field:?}")]
    MissingField {
        /// The variable.
        name: String,
        /// The secret.
        path: SecretPath,
        /// The field.
        field: String,
    },
    /// `--env` gave no field and the secret has more than one.
    #[error("--env {name}: secret {path} has {count} fields; name one with {path}#FIELD")]
    AmbiguousField {
        /// The variable.
        name: String,
        /// The secret.
        path: SecretPath,
        /// How many fields it has.
        count: usize,
    },
    /// A secret could not be read.
    #[error("cannot read secret {path}")]
    Fetch {
        /// The secret.
        path: SecretPath,
        /// Why.
        #[source]
        source: source::Error,
    },
    /// A template failed before the child started.
    #[error("{0}")]
    Render(String),
    /// The program could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed, or waiting for the child failed.
    #[error("cannot supervise the child")]
    Supervise(#[source] std::io::Error),
}

/// `NAME=path#field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBinding {
    /// Environment variable name.
    pub name: String,
    /// Secret path.
    pub path: SecretPath,
    /// Field; `None` takes the only field.
    pub field: Option<String>,
}

impl std::str::FromStr for EnvBinding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Binding(s.to_owned());
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(bad());
        }
        let (path, field) = match rest.split_once('#') {
            Some((p, f)) if !f.is_empty() => (p, Some(f.to_owned())),
            Some(_) => return Err(bad()),
            None => (rest, None),
        };
        let path = SecretPath::parse(path).map_err(|_| bad())?;
        Ok(EnvBinding {
            name: name.to_owned(),
            path,
            field,
        })
    }
}

/// What to do when a rendered file the child uses changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop the child gracefully and start a new one.
    Restart,
    /// Send the child this signal.
    Signal(SignalName),
}

impl std::str::FromStr for OnChange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "restart" {
            return Ok(OnChange::Restart);
        }
        match s.strip_prefix("signal:") {
            Some(sig) => SignalName::parse(sig).map(OnChange::Signal),
            None => Err(format!(
                "{s:?} must be restart or signal:NAME (e.g. signal:SIGHUP)"
            )),
        }
    }
}

/// Everything `latchkey exec` was asked to do.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Environment variables from secrets.
    pub env: Vec<EnvBinding>,
    /// Files rendered before the child starts and kept current.
    pub templates: Vec<Template>,
    /// What a file change does.
    pub on_change: OnChange,
    /// Time the child gets to exit after SIGTERM on a restart.
    pub grace: Duration,
    /// The program.
    pub program: Program,
}

type Env = BTreeMap<String, SecretString>;

/// Reads every `--env` value; each secret once.
async fn fetch_env(client: &Client, bindings: &[EnvBinding]) -> Result<Env, Error> {
    let mut by_path = BTreeMap::new();
    for b in bindings {
        if !by_path.contains_key(&b.path) {
            let fields = source::fetch_async(client, &b.path)
                .await
                .map_err(|source| Error::Fetch {
                    path: b.path.clone(),
                    source,
                })?;
            by_path.insert(b.path.clone(), fields);
        }
    }
    let mut env = Env::new();
    for b in bindings {
        let Some(Some(fields)) = by_path.get(&b.path) else {
            return Err(Error::MissingSecret {
                name: b.name.clone(),
                path: b.path.clone(),
            });
        };
        let value = match &b.field {
            Some(f) => fields.get(f).ok_or_else(|| Error::MissingField {
                name: b.name.clone(),
                path: b.path.clone(),
                field: f.clone(),
            })?,
            None if fields.len() == 1 => {
                fields
                    .iter()
                    .next()
                    .map(|(_, v)| v)
                    .ok_or_else(|| Error::AmbiguousField {
                        name: b.name.clone(),
                        path: b.path.clone(),
                        count: 0,
                    })?
            }
            None => {
                return Err(Error::AmbiguousField {
                    name: b.name.clone(),
                    path: b.path.clone(),
                    count: fields.len(),
                })
            }
        };
        env.insert(b.name.clone(), value.clone());
    }
    Ok(env)
}

fn failures(reports: &[crate::render::Report]) -> Option<String> {
    let lines: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.outcome {
            crate::render::Outcome::Failed(e) | crate::render::Outcome::ActionFailed(e) => {
                Some(crate::render::runner::chain(e))
            }
            _ => None,
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Runs the child under supervision; returns the exit code to pass on.
pub async fn run(spec: Spec, client: Arc<Client>) -> Result<i32, Error> {
    let (tx, mut changes) = mpsc::channel(256);
    let (ready_tx, ready_rx) = oneshot::channel();
    let watcher = tokio::spawn(crate::render::sse::follow(
        client.clone(),
        Prefix::all(),
        tx,
        Some(ready_tx),
    ));
    let _stop_watcher = AbortOnDrop(watcher);
    if tokio::time::timeout(WATCH_CONNECT, ready_rx).await.is_err() {
        tracing::warn!("no change stream from the agent yet; starting anyway, changes are picked up once it connects");
    }

    let env_paths: BTreeSet<SecretPath> = spec.env.iter().map(|b| b.path.clone()).collect();
    let mut env = fetch_env(&client, &spec.env).await?;
    let source = Arc::new(ClientSource::new(
        client.clone(),
        tokio::runtime::Handle::current(),
    ));
    let mut runner = Runner::new(spec.templates.clone(), source);
    if let Some(msg) = failures(&runner.pass_all(Mode::Write).await) {
        return Err(Error::Render(msg));
    }

    let mut signals = child::Signals::install().map_err(Error::Supervise)?;
    let spawn = |env: &Env| {
        child::Child::spawn(&spec.program, env).map_err(|source| Error::Spawn {
            program: spec.program.program.to_string_lossy().into_owned(),
            source,
        })
    };
    let mut child = spawn(&env)?;
    tracing::info!(
        pid = child.pid(),
        env = env.len(),
        files = runner.len(),
        "child started"
    );
    let mut stopping = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(Error::Supervise)?;
                let code = child::exit_code(status);
                tracing::info!(code, "child exited");
                return Ok(code);
            }
            sig = signals.recv() => {
                use rustix::process::Signal;
                if matches!(sig, Signal::TERM | Signal::INT | Signal::QUIT) {
                    stopping = true;
                }
                tracing::debug!(signal = ?sig, pid = child.pid(), "forwarding signal");
                child::send(child.pid(), sig);
            }
            got = changes.recv(), if !stopping => {
                let Some(first) = got else {
                    // The watcher ended (it only does when we drop it); keep supervising.
                    stopping = true;
                    continue;
                };
                let mut batch = vec![first];
                while let Ok(more) = changes.try_recv() {
                    batch.push(more);
                }
                let relevant = batch.iter().any(|c| match c {
                    Change::All => true,
                    Change::Path(p) => env_paths.contains(p) || runner.uses(p),
                });
                if !relevant {
                    continue;
                }
                let new_env = match fetch_env(&client, &spec.env).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %crate::render::runner::chain(&e), "cannot re-read the child's secrets; it keeps the values it has");
                        continue;
                    }
                };
                let env_changed = new_env != env;
                let mut dirty = BTreeSet::new();
                for c in &batch {
                    dirty.extend(runner.affected(c));
                }
                let reports = runner.pass(dirty.into_iter().collect(), Mode::Write).await;
                let files_changed = reports
                    .iter()
                    .any(|r| matches!(r.outcome, crate::render::Outcome::Changed));
                let action = if env_changed {
                    Some(OnChange::Restart)
                } else if files_changed {
                    Some(spec.on_change)
                } else {
                    None
                };
                match action {
                    None => tracing::debug!("a watched secret changed, but no value the child received did"),
                    Some(OnChange::Signal(sig)) => {
                        tracing::info!(signal = sig.name(), pid = child.pid(), "a file the child uses changed; signalling it");
                        child::send(child.pid(), sig.signal());
                    }
                    Some(OnChange::Restart) => {
                        tracing::info!(pid = child.pid(), env_changed, files_changed, "a value the child uses changed; restarting it");
                        let status = child.stop(spec.grace).await.map_err(Error::Supervise)?;
                        tracing::debug!(code = child::exit_code(status), "old child stopped");
                        env = new_env;
                        child = spawn(&env)?;
                        tracing::info!(pid = child.pid(), "child restarted");
                    }
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse() {
        let b: EnvBinding = "DB_PASSWORD=apps/db#password".parse().expect("ok");
        assert_eq!(b.name, "DB_PASSWORD");
        assert_eq!(b.path.as_str(), "apps/db");
        assert_eq!(b.field.as_deref(), Some("password"));
        let b: EnvBinding = "TOKEN=apps/token".parse().expect("ok");
        assert_eq!(b.field, None);
        for bad in ["=a#b", "1X=a#b", "X=a#", "X-Y=a#b", "X"] {
            assert!(bad.parse::<EnvBinding>().is_err(), "{bad}");
        }
    }

    #[test]
    fn on_change_parses() {
        assert_eq!("restart".parse::<OnChange>(), Ok(OnChange::Restart));
        assert!(matches!(
            "signal:SIGHUP".parse::<OnChange>(),
            Ok(OnChange::Signal(s)) if s.name() == "SIGHUP"
        ));
        assert!("reload".parse::<OnChange>().is_err());
    }
}
