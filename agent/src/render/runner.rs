//! The render loop: which templates to render when, and what came of it.
//!
//! Each template remembers the secret paths its last render read. A change to a
//! path re-renders only the templates that read it; a `Change::All` (a lagging
//! event stream, a reconnect) re-renders everything. Changes that arrive together
//! are handled in one pass, and one pass reads each secret once. A template that
//! fails keeps its previous file and is retried with exponential backoff (1 s up to
//! 60 s), or at once when a path it read changes. Actions run after the pass's
//! writes, once per distinct action, so three files reloading one nginx reload it
//! once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::action::Action;
use super::engine::{Engine, Pass};
use super::source::Source;
use super::spec::Template;
use super::write::{self, Written};
use super::Error;
use crate::path::SecretPath;

/// First retry delay after a failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Threads rendering and writing in one pass.
const WORKERS: usize = 4;

/// Something that may change what templates render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This secret changed.
    Path(SecretPath),
    /// Anything may have changed (missed events, reconnect).
    All,
}

/// Whether a pass writes files and runs actions, or only compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write changed files and run their actions.
    Write,
    /// Render and compare with the files on disk; write nothing, run nothing.
    DryRun,
}

/// What happened to one template in a pass.
#[derive(Debug)]
pub enum Outcome {
    /// The file already held this content.
    Unchanged,
    /// The file was replaced.
    Changed,
    /// Dry run: the file would be replaced.
    WouldChange,
    /// Rendering, validation or writing failed; the previous file stays.
    Failed(Error),
    /// The file was replaced but its action failed.
    ActionFailed(Error),
}

impl Outcome {
    /// Whether this counts as a failure (`latchkey render --once` exits non-zero).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::ActionFailed(_))
    }
}

/// One template's result.
#[derive(Debug)]
pub struct Report {
    /// Template name.
    pub name: String,
    /// Its destination.
    pub destination: PathBuf,
    /// What happened.
    pub outcome: Outcome,
}

struct Slot {
    template: Arc<Template>,
    deps: BTreeSet<SecretPath>,
    failure: Option<Failure>,
    /// Whether a render of this template is still running (past its deadline).
    busy: Arc<AtomicBool>,
}

struct Failure {
    attempts: u32,
    retry_at: Instant,
}

/// Renders a set of templates from a source.
pub struct Runner {
    engine: Arc<Engine>,
    source: Arc<dyn Source>,
    slots: Vec<Slot>,
    renders: Option<crate::metrics::TemplateRenders>,
}

impl Runner {
    /// A runner; nothing is rendered until [`Runner::pass`] or [`Runner::run`].
    pub fn new(templates: Vec<Template>, source: Arc<dyn Source>) -> Runner {
        Runner {
            engine: Arc::new(Engine::new()),
            source,
            slots: templates
                .into_iter()
                .map(|t| Slot {
                    template: Arc::new(t),
                    deps: BTreeSet::new(),
                    failure: None,
                    busy: Arc::new(AtomicBool::new(false)),
                })
                .collect(),
            renders: None,
        }
    }

    /// Counts every render in `renders` (the agent's `/metrics` and health).
    pub fn with_metrics(mut self, renders: crate::metrics::TemplateRenders) -> Runner {
        renders.reset();
        self.renders = Some(renders);
        self
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether any template read `path` in its last render.
    pub fn uses(&self, path: &SecretPath) -> bool {
        self.slots.iter().any(|s| s.deps.contains(path))
    }

    /// Indexes of the templates a change concerns.
    pub fn affected(&self, change: &Change) -> Vec<usize> {
        match change {
            Change::All => (0..self.slots.len()).collect(),
            Change::Path(p) => self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.deps.contains(p))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Renders every template once.
    pub async fn pass_all(&mut self, mode: Mode) -> Vec<Report> {
        let all = (0..self.slots.len()).collect();
        self.pass(all, mode).await
    }

    /// Renders the given templates (indexes), writes what changed and runs the
    /// actions of what was written (in [`Mode::Write`]).
    pub async fn pass(&mut self, which: Vec<usize>, mode: Mode) -> Vec<Report> {
        let jobs: Vec<(usize, Arc<Template>)> = which
            .into_iter()
            .filter_map(|i| self.slots.get(i).map(|s| (i, s.template.clone())))
            .collect();
        if jobs.is_empty() {
            return Vec::new();
        }
        let engine = self.engine.clone();
        let pass = Pass::new(self.source.clone());
        // A few at a time: writes wait on fsync, so they overlap well even on few
        // cores. Each has its own deadline: a template stuck in a read or a write
        // is reported failed and its thread left to finish on its own, so it never
        // holds the others (its slot stays busy until the thread returns).
        let permits = Arc::new(tokio::sync::Semaphore::new(WORKERS));
        let mut running = tokio::task::JoinSet::new();
        for (i, t) in jobs {
            let busy = self.slots[i].busy.clone();
            if busy.swap(true, Ordering::AcqRel) {
                let outcome = Outcome::Failed(Error::Busy {
                    template: t.name.clone(),
                });
                running.spawn(async move { (i, BTreeSet::new(), outcome) });
                continue;
            }
            let (engine, pass, permits) = (engine.clone(), pass.clone(), permits.clone());
            running.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    busy.store(false, Ordering::Release);
                    return (i, BTreeSet::new(), Outcome::Failed(Error::Poisoned));
                };
                let job = t.clone();
                let work = tokio::task::spawn_blocking(move || {
                    let done = render_one(&engine, &pass, &job, mode);
                    busy.store(false, Ordering::Release);
                    done
                });
                match tokio::time::timeout(t.render_timeout, work).await {
                    Ok(Ok((paths, outcome))) => (i, paths, outcome),
                    Ok(Err(e)) => {
                        tracing::error!(template = %t.name, error = %e, "template render panicked");
                        (i, BTreeSet::new(), Outcome::Failed(Error::Poisoned))
                    }
                    Err(_) => {
                        let outcome = Outcome::Failed(Error::Deadline {
                            template: t.name.clone(),
                            timeout: t.render_timeout,
                        });
                        (i, BTreeSet::new(), outcome)
                    }
                }
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(result) => done.push(result),
                Err(e) => tracing::error!(error = %e, "render task failed"),
            }
        }
        done.sort_by_key(|(i, _, _)| *i);
        let folders: BTreeSet<PathBuf> = done
            .iter()
            .filter(|(_, _, o)| matches!(o, Outcome::Changed))
            .filter_map(|(i, _, _)| self.slots.get(*i))
            .map(|s| write::folder_of(&s.template.destination))
            .collect();
        if !folders.is_empty() {
            let synced = tokio::task::spawn_blocking(move || {
                for folder in folders {
                    if let Err(e) = write::sync_dir(&folder) {
                        tracing::warn!(folder = %folder.display(), error = %e, "cannot fsync the folder after a rename");
                    }
                }
            });
            if tokio::time::timeout(RETRY_MAX, synced).await.is_err() {
                tracing::warn!("fsync of the rendered files' folders did not finish in time");
            }
        }
        let mut reports = Vec::with_capacity(done.len());
        let mut actions: Vec<(Action, Duration, Vec<String>, usize)> = Vec::new();
        for (i, paths, outcome) in done {
            let slot = &mut self.slots[i];
            let t = &slot.template;
            // Keep the old dependencies when a render failed before reading anything
            // (a syntax error), so a later change still wakes the template.
            if !paths.is_empty() || !outcome.is_failure() {
                slot.deps = paths;
            }
            match &outcome {
                Outcome::Failed(e) => {
                    let attempts = slot.failure.as_ref().map_or(0, |f| f.attempts) + 1;
                    let delay = backoff(attempts);
                    slot.failure = Some(Failure {
                        attempts,
                        retry_at: Instant::now() + delay,
                    });
                    tracing::warn!(
                        template = %t.name,
                        destination = %t.destination.display(),
                        error = %chain(e),
                        retry_in = ?delay,
                        "template failed; the previous file stays"
                    );
                }
                Outcome::Changed => {
                    slot.failure = None;
                    tracing::info!(template = %t.name, destination = %t.destination.display(), "template rendered");
                    if let Some(action) = &t.on_change {
                        if !actions.iter().any(|(a, _, _, _)| a == action) {
                            actions.push((
                                action.clone(),
                                t.timeout,
                                t.command_env.clone(),
                                reports.len(),
                            ));
                        }
                    }
                }
                Outcome::Unchanged | Outcome::WouldChange | Outcome::ActionFailed(_) => {
                    slot.failure = None;
                    tracing::debug!(template = %t.name, "template unchanged");
                }
            }
            reports.push(Report {
                name: t.name.clone(),
                destination: t.destination.clone(),
                outcome,
            });
        }
        for (action, timeout, env, report_index) in actions {
            let what = action.describe();
            let ran = tokio::task::spawn_blocking(move || action.run_blocking(timeout, &env)).await;
            let report = &mut reports[report_index];
            match ran {
                Ok(Ok(())) => {
                    tracing::info!(template = %report.name, action = %what, "on_change action ran")
                }
                Ok(Err(source)) => {
                    let e = Error::Action {
                        template: report.name.clone(),
                        action: what,
                        source,
                    };
                    tracing::warn!(error = %chain(&e), "on_change action failed");
                    report.outcome = Outcome::ActionFailed(e);
                }
                Err(e) => tracing::error!(error = %e, "on_change action panicked"),
            }
        }
        if let Some(renders) = &self.renders {
            for report in &reports {
                let (outcome, failing) = match &report.outcome {
                    Outcome::Changed => ("changed", false),
                    Outcome::Unchanged | Outcome::WouldChange => ("unchanged", false),
                    Outcome::Failed(_) => ("failed", true),
                    Outcome::ActionFailed(_) => ("action-failed", true),
                };
                renders.record(&report.name, outcome, failing);
            }
        }
        reports
    }

    /// Renders everything, then re-renders on changes and retries failures, until
    /// `stop` turns true or `changes` closes.
    pub async fn run(
        mut self,
        mut changes: mpsc::Receiver<Change>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.pass_all(Mode::Write).await;
        loop {
            if *stop.borrow() {
                return;
            }
            let next_retry = self
                .slots
                .iter()
                .filter_map(|s| s.failure.as_ref().map(|f| f.retry_at))
                .min();
            let retry = async move {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                got = changes.recv() => {
                    let Some(first) = got else { return };
                    let mut dirty = BTreeSet::new();
                    dirty.extend(self.affected(&first));
                    while let Ok(more) = changes.try_recv() {
                        dirty.extend(self.affected(&more));
                    }
                    self.pass(dirty.into_iter().collect(), Mode::Write).await;
                }
                _ = retry => {
                    let now = Instant::now();
                    let due = self
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.failure.as_ref().is_some_and(|f| f.retry_at <= now))
                        .map(|(i, _)| i)
                        .collect();
                    self.pass(due, Mode::Write).await;
                }
            }
        }
    }
}

/// Renders and writes (or compares) one template.
fn render_one(
    engine: &Engine,
    pass: &Arc<Pass>,
    t: &Template,
    mode: Mode,
) -> (BTreeSet<SecretPath>, Outcome) {
    let rendered = engine.render(t, pass);
    let outcome = match rendered.result {
        Err(e) => Outcome::Failed(e),
        Ok(content) => match mode {
            Mode::DryRun => match write::differs(t, &content) {
                Ok(true) => Outcome::WouldChange,
                Ok(false) => Outcome::Unchanged,
                Err(source) => Outcome::Failed(Error::Write {
                    template: t.name.clone(),
                    path: t.destination.clone(),
                    source,
                }),
            },
            Mode::Write => match write::write(t, &content) {
                Ok(Written::Changed) => Outcome::Changed,
                Ok(Written::Unchanged) => Outcome::Unchanged,
                Err(e) => Outcome::Failed(e),
            },
        },
    };
    (rendered.paths, outcome)
}

fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    RETRY_MIN.saturating_mul(factor).min(RETRY_MAX)
}

pub use crate::telemetry::chain;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::source::MemorySource;
    use crate::render::spec::TemplateText;
    use crate::secret::{Fields, SecretString};

    fn fields(pw: &str) -> Fields {
        let mut f = Fields::new();
        f.insert("password", SecretString::from(pw));
        f
    }

    fn template(dir: &std::path::Path, name: &str, text: &str) -> Template {
        let mut t = Template::simple("unused".into(), dir.join(name));
        t.text = TemplateText::Inline(text.to_owned());
        t
    }

    #[tokio::test]
    async fn only_templates_that_used_a_path_rerender_and_failures_stay_isolated() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = Arc::new(MemorySource::new());
        let a = SecretPath::parse("a").expect("p");
        let b = SecretPath::parse("b").expect("p");
        src.put(a.clone(), fields("a1"));
        src.put(b.clone(), fields("b1"));
        let templates = vec![
            template(dir.path(), "a.conf", "{{ secret('a').password }}"),
            template(dir.path(), "b.conf", "{{ secret('b').password }}"),
            template(dir.path(), "broken.conf", "x\n{{ secret('c').password }}"),
        ];
        let mut runner = Runner::new(templates, src.clone());
        let reports = runner.pass_all(Mode::Write).await;
        assert!(matches!(reports[0].outcome, Outcome::Changed));
        assert!(matches!(reports[1].outcome, Outcome::Changed));
        match &reports[2].outcome {
            Outcome::Failed(e) => assert_eq!(
                e.to_string(),
                "template broken.conf line 2: secret c not found"
            ),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(runner.affected(&Change::Path(a.clone())), vec![0]);
        assert_eq!(
            runner.affected(&Change::Path(SecretPath::parse("c").expect("p"))),
            vec![2]
        );
        src.put(a.clone(), fields("a2"));
        let which = runner.affected(&Change::Path(a));
        let reports = runner.pass(which, Mode::Write).await;
        assert_eq!(reports.len(), 1);
        assert_eq!(
            std::fs::read(dir.path().join("a.conf")).expect("read"),
            b"a2"
        );
        let reports = runner.pass_all(Mode::DryRun).await;
        assert!(matches!(reports[0].outcome, Outcome::Unchanged));
    }

    /// Answers every path from `inner`, except `stuck`, which blocks until released.
    struct StuckSource {
        inner: MemorySource,
        stuck: SecretPath,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Source for StuckSource {
        fn fetch(&self, path: &SecretPath) -> Result<Option<Fields>, crate::render::source::Error> {
            if path == &self.stuck {
                if let Ok(rx) = self.release.lock() {
                    let _ = rx.recv_timeout(Duration::from_secs(60));
                }
            }
            self.inner.fetch(path)
        }
    }

    #[tokio::test]
    async fn r1_a_stuck_template_fails_at_its_deadline_and_others_still_render() {
        let dir = tempfile::tempdir().expect("tmp");
        let inner = MemorySource::new();
        let b = SecretPath::parse("b").expect("p");
        let stuck = SecretPath::parse("stuck").expect("p");
        inner.put(b.clone(), fields("b1"));
        inner.put(stuck.clone(), fields("s1"));
        let (release, rx) = std::sync::mpsc::channel();
        let src = Arc::new(StuckSource {
            inner,
            stuck,
            release: std::sync::Mutex::new(rx),
        });
        let mut a = template(dir.path(), "a.conf", "{{ secret('stuck').password }}");
        a.render_timeout = Duration::from_millis(300);
        let templates = vec![
            a,
            template(dir.path(), "b.conf", "{{ secret('b').password }}"),
        ];
        let mut runner = Runner::new(templates, src.clone());
        let started = std::time::Instant::now();
        let reports = runner.pass_all(Mode::Write).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        match &reports[0].outcome {
            Outcome::Failed(e) => assert!(e.to_string().contains("did not finish within"), "{e}"),
            other => panic!("expected a deadline failure, got {other:?}"),
        }
        assert!(matches!(reports[1].outcome, Outcome::Changed));
        // While the stuck render has not returned, the template is not started twice,
        // and the others keep rendering.
        src.inner.put(b.clone(), fields("b2"));
        let reports = runner.pass_all(Mode::Write).await;
        assert!(matches!(
            &reports[0].outcome,
            Outcome::Failed(Error::Busy { .. })
        ));
        assert!(matches!(reports[1].outcome, Outcome::Changed));
        assert_eq!(
            std::fs::read(dir.path().join("b.conf")).expect("read"),
            b"b2"
        );
        let _ = release.send(());
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), RETRY_MAX);
    }
}
