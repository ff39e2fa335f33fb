//! Templates to files: secrets for apps that read only config files.
//!
//! A `[[template]]` block names a Jinja template, a destination file, its mode and
//! owner, an optional `validate` command and an optional `on_change` action. The
//! pieces, in the order a render goes through them:
//!
//! ```text
//! change (event / SSE / retry timer) -> runner (which templates used that path?)
//!   -> engine (minijinja; secret() reads through a source, records the paths it read)
//!   -> write (folder fd; compare through an O_NOFOLLOW fd; temp file, fchown/fchmod,
//!             fsync, validate, renameat), each template within its render deadline
//!   -> action (on_change command or signal, once per distinct action per pass)
//! ```
//!
//! - [`spec`]: the config section and its validated form, [`Template`].
//! - [`engine`]: minijinja with `secret()`, `env()` and the encoders; zeroizing output.
//! - [`source`]: where secrets come from: the daemon's store, or a running agent.
//! - [`write`]: atomic, change-only writes, validate-then-swap.
//! - [`action`]: commands with deadlines, signals by pid file.
//! - [`runner`]: the loop: dependency tracking, retries with backoff, reports.
//! - [`sse`]: follows the agent's `/v1/watch` stream for the client commands.
//!
//! In the daemon, [`spawn`] starts the runner over the store and the event bus. The
//! CLI's `latchkey render` and `latchkey exec` run the same runner as clients of the
//! agent. A failing template (syntax, missing secret or field, validation) is
//! reported with its name and line, leaves the previous file in place, is retried
//! with backoff, and never stops the other templates. Rendered text is never logged.

pub mod action;
pub mod engine;
pub mod runner;
pub mod source;
pub mod spec;
pub mod sse;
pub mod write;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};

pub use runner::{Change, Mode, Outcome, Report, Runner};
pub use spec::{Template, TemplateSection};

use crate::events::{Events, Kind};
use crate::store::Store;

/// Why one template could not be rendered or written. Names the template, never a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The template did not compile or failed while running (missing secret or
    /// field, undefined variable, bad filter input).
    #[error("template {template}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        /// Template name.
        template: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// What went wrong (paths and field names, no values).
        message: String,
    },
    /// The template file could not be read.
    #[error("template {template}: cannot read {path}")]
    ReadTemplate {
        /// Template name.
        template: String,
        /// The template file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The destination could not be written.
    #[error("template {template}: cannot write {path}")]
    Write {
        /// Template name.
        template: String,
        /// The destination (or its folder).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `validate` command refused the new file; the old one stays.
    #[error("template {template}: validate command refused the new file; the previous file stays")]
    Validate {
        /// Template name.
        template: String,
        /// What the command did.
        #[source]
        source: action::Error,
    },
    /// An `on_change` action failed after the file was written.
    #[error("template {template}: on_change {action} failed")]
    Action {
        /// Template name.
        template: String,
        /// Which action.
        action: String,
        /// Why.
        #[source]
        source: action::Error,
    },
    /// The render did not finish within the template's `render_timeout`.
    #[error("template {template}: the render did not finish within {timeout:?}; the previous file stays")]
    Deadline {
        /// Template name.
        template: String,
        /// The deadline.
        timeout: std::time::Duration,
    },
    /// An earlier render of the template, past its deadline, has not returned yet.
    #[error("template {template}: an earlier render past its deadline is still running; the previous file stays")]
    Busy {
        /// Template name.
        template: String,
    },
    /// A lock was poisoned by a panic in another render.
    #[error("renderer state is poisoned")]
    Poisoned,
}

/// Whether an event can change what a template renders.
fn changes_values(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Updated | Kind::Deleted | Kind::Rotated | Kind::Refreshed
    )
}

/// Starts the daemon's renderer: renders every template now, then re-renders those
/// that read a secret when an event says it changed. Runs until `stop` turns true.
/// Subscribes before the first render, so no change between the two is missed.
pub fn spawn(
    templates: Vec<Template>,
    store: Store,
    events: &Events,
    renders: crate::metrics::TemplateRenders,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = events.subscribe();
    let (tx, changes) = mpsc::channel(1024);
    let forward = tokio::spawn(async move {
        loop {
            let change = match rx.recv().await {
                Ok(event) if changes_values(event.kind) => Change::Path(event.path),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => Change::All,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    });
    let source = Arc::new(source::StoreSource::new(store));
    tokio::spawn(async move {
        Runner::new(templates, source)
            .with_metrics(renders)
            .run(changes, stop)
            .await;
        forward.abort();
    })
}

#[cfg(test)]
mod examples {
    //! The templates in `examples/templates/` validate and render.

    use std::path::Path;

    use super::engine::{Engine, Pass};
    use super::source::MemorySource;
    use super::*;
    use crate::path::SecretPath;
    use crate::secret::{Fields, SecretString};

    fn secrets() -> Arc<MemorySource> {
        let src = MemorySource::new();
        let put = |path: &str, pairs: &[(&str, &str)]| {
            let fields: Fields = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), SecretString::from(*v)))
                .collect();
            src.put(SecretPath::parse(path).expect("path"), fields);
        };
        put(
            "apps/web/db",
            &[("username", "web"), ("password", "p@ss:w/rd'1")],
        );
        put("apps/web/stripe", &[("api_key", "sk_test_$1")]);
        put(
            "infra/haproxy/stats",
            &[("username", "ops"), ("password", "st4ts")],
        );
        put(
            "infra/upstream/api",
            &[("username", "svc"), ("password", "up")],
        );
        Arc::new(src)
    }

    fn render_example(folder: &str) -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/templates")
            .join(folder);
        let text = std::fs::read_to_string(dir.join("templates.toml")).expect("example config");
        // The example users and groups do not exist on a test machine.
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("owner") && !l.starts_with("group"))
            .map(|l| format!("{l}\n"))
            .collect();
        #[derive(serde::Deserialize)]
        struct File {
            template: Vec<TemplateSection>,
        }
        let file: File = toml::from_str(&text).expect("example parses");
        let mut problems = Vec::new();
        let templates = spec::validate(&dir, &file.template, &mut problems);
        assert!(problems.is_empty(), "{folder}: {problems:?}");
        let engine = Engine::new();
        let pass = Pass::new(secrets());
        templates
            .iter()
            .map(|t| {
                let out = engine
                    .render(t, &pass)
                    .result
                    .unwrap_or_else(|e| panic!("{folder}: {e}"));
                (
                    t.name.clone(),
                    String::from_utf8(out.to_vec()).expect("utf8"),
                )
            })
            .collect()
    }

    #[test]
    fn postgres_example_renders() {
        let out = render_example("postgres");
        assert_eq!(out[0].1, "127.0.0.1:5432:app:web:p@ss\\:w/rd'1\n");
        assert!(
            out[1].1.starts_with(
                "DATABASE_URL=postgresql://web:p%40ss%3Aw%2Frd%271@127.0.0.1:5432/app?sslmode="
            ),
            "{}",
            out[1].1
        );
    }

    #[test]
    fn haproxy_and_dotenv_examples_render() {
        let haproxy = render_example("haproxy");
        assert!(haproxy[0].1.contains("user ops insecure-password st4ts"));
        assert!(haproxy[0].1.contains("Authorization \"Basic c3ZjOnVw\""));
        let env = render_example("dotenv");
        assert!(
            env[0].1.contains("DB_PASSWORD='p@ss:w/rd'\\''1'\n"),
            "{}",
            env[0].1
        );
        assert!(env[0].1.contains("STRIPE_API_KEY='sk_test_$1'\n"));
        assert!(!env[0].1.contains("WEBHOOK"));
    }
}
