//! The engine's loop, and its orderly stop.
//!
//! [`Engine::spawn`] first recovers the rotations a crash or a stop interrupted (from
//! the store's journal), plans every looked-after secret, and then sleeps until the
//! earliest planned time or until an event about a looked-after secret asks for a new
//! plan, so thousands of idle policies cost nothing between their due times. What is
//! due runs in its own task, at most `[scheduler] concurrency` at once.
//!
//! [`Engine::shutdown`] is the stop: no operation starts any more (an operator's
//! request answers [`Error::ShuttingDown`]), the loop ends, and a rotation in flight
//! finishes the step it is in, journals it and stops before the next one. The stop
//! waits a bounded time for what is in flight; what still runs then is cut off, and
//! its journal lets the next start finish it or roll it back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::plan::{next_due, refresh_due, rotates, rotation_due, secs, validation_due};
use super::{lock, Engine, Error, RotationOutcome, State, Status};
use crate::events::{Event, Kind};
use crate::path::{Prefix, SecretPath};
use crate::providers::LifecycleSpec;
use crate::store::Selector;

/// What was still running when [`Engine::shutdown`]'s grace ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Operations cut off (0: everything finished or journalled itself in time).
    pub cut_off: usize,
}

/// Operations in flight, the tasks running them, and whether the engine is stopping.
pub(super) struct Running {
    state: Mutex<RunState>,
    idle: Notify,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct RunState {
    stopping: bool,
    ops: usize,
    tasks: tokio::task::JoinSet<()>,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            state: Mutex::default(),
            idle: Notify::new(),
            stop: watch::channel(false).0,
        }
    }
}

/// Held by an operation while it runs; the stop waits for every one to be dropped.
pub(super) struct Op {
    engine: Engine,
}

impl Drop for Op {
    fn drop(&mut self) {
        let running = &self.engine.inner.running;
        let mut state = lock(&running.state);
        state.ops = state.ops.saturating_sub(1);
        if state.ops == 0 {
            running.idle.notify_waiters();
        }
    }
}

impl Engine {
    /// Starts an operation, unless the engine is stopping.
    pub(super) fn begin(&self) -> Result<Op, Error> {
        let mut state = lock(&self.inner.running.state);
        if state.stopping {
            return Err(Error::ShuttingDown);
        }
        state.ops += 1;
        Ok(Op {
            engine: self.clone(),
        })
    }

    /// Whether the engine is stopping (a rotation checks between its steps).
    pub(super) fn stopping(&self) -> bool {
        lock(&self.inner.running.state).stopping
    }

    /// Runs `op` in a task of the engine's, which the stop waits for (and cuts off
    /// when its grace has run out).
    fn spawn_op(&self, op: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut state = lock(&self.inner.running.state);
        while state.tasks.try_join_next().is_some() {}
        state.tasks.spawn(op);
    }

    /// An operator's rotation (`POST /v1/rotate`, `latchkey rotate`): forced, and
    /// counted against `[scheduler] concurrency` like a scheduled one, so a burst of
    /// commands cannot put more load on a service than the schedule would. It runs in
    /// the engine's own task: a client that hangs up does not cut it off between steps.
    pub async fn rotate_now(&self, path: &SecretPath) -> Result<RotationOutcome, Error> {
        let op = self.begin()?;
        let (answer, outcome) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        let path = path.clone();
        self.spawn_op(async move {
            let _op = op;
            let rotated = match engine.inner.permits.acquire().await {
                Ok(_permit) => engine.rotate(&path, true).await,
                Err(_) => Err(Error::ShuttingDown),
            };
            let _ = answer.send(rotated);
        });
        // No answer: the task was cut off by the stop (or panicked, which the log shows).
        outcome.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Recovers rotations a crash or a stop interrupted, plans every looked-after
    /// secret and runs until [`Engine::shutdown`].
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        let mut events = self.inner.events.subscribe();
        let mut stop = self.inner.running.stop.subscribe();
        tokio::spawn(async move {
            engine.recover().await;
            engine.plan_all().await;
            // Open grace windows from before a restart: read in the background, so a
            // large fleet of policies does not delay the first plan.
            let learning = engine.clone();
            tokio::spawn(async move { learning.learn_grace_windows().await });
            loop {
                if engine.stopping() {
                    return;
                }
                let now = engine.now();
                let due = lock(&engine.inner.plan).pop_due(now);
                for path in due {
                    let engine_for_tick = engine.clone();
                    engine.spawn_op(async move { engine_for_tick.tick(path).await });
                }
                let sleep_for =
                    lock(&engine.inner.plan)
                        .next()
                        .map_or(Duration::from_secs(3600), |when| {
                            Duration::from_millis(
                                u64::try_from((when - engine.now()).max(0) * 1000).unwrap_or(0),
                            )
                            .max(Duration::from_millis(200))
                        });
                let event = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(sleep_for) => None,
                    _ = engine.inner.replan.notified() => None,
                    event = events.recv() => Some(event),
                };
                if let Some(event) = event {
                    engine.on_event(event).await;
                }
            }
        })
    }

    /// Stops the engine (see the module docs) and waits up to `grace` for the
    /// operations in flight; cuts off what still runs then.
    pub async fn shutdown(&self, grace: Duration) -> Stopped {
        let running = &self.inner.running;
        lock(&running.state).stopping = true;
        running.stop.send_replace(true);
        // Operations waiting for a permit give up at once.
        self.inner.permits.close();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = running.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let ops = lock(&running.state).ops;
            if ops == 0 {
                return Stopped { cut_off: 0 };
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let mut tasks = std::mem::take(&mut lock(&running.state).tasks);
                let cut_off = lock(&running.state).ops;
                tracing::warn!(operations = cut_off, grace_ms = grace.as_millis() as u64, "lifecycle operations still running at the end of the stop's grace; cutting them off (their journal lets the next start finish or roll them back)");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return Stopped { cut_off };
            }
        }
    }

    async fn on_event(&self, event: Result<Event, tokio::sync::broadcast::error::RecvError>) {
        match event {
            Ok(e) if matches!(e.kind, Kind::Updated | Kind::Deleted | Kind::Rotated) => {
                let Some(policy) = self.policy(&e.path) else {
                    return;
                };
                if e.kind == Kind::Deleted {
                    self.inner.status.remove(&e.path);
                    lock(&self.inner.plan).set(&e.path, None);
                    return;
                }
                self.plan_path(&e.path).await;
                if e.kind == Kind::Updated && rotates(&policy) {
                    // Maybe another agent's rotation, synced in: learn its grace window.
                    let engine = self.clone();
                    let path = e.path.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = engine.inner.reads.acquire().await else {
                            return;
                        };
                        engine.learn_record(&path, &policy).await;
                    });
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.plan_all().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
        }
    }

    /// After a reload changed the `[[lifecycle]]` rules: forgets the secrets no rule
    /// looks after any more (their status and plan) and plans every secret again
    /// under the rules in force.
    pub async fn rules_changed(&self) {
        let dropped = self.inner.status.retain(|path| self.policy(path).is_some());
        {
            let mut plan = lock(&self.inner.plan);
            for path in &dropped {
                plan.set(path, None);
            }
        }
        self.plan_all().await;
        self.inner.replan.notify_one();
    }

    /// Plans every looked-after secret in the store.
    async fn plan_all(&self) {
        if !self.inner.provider.has_rules() {
            return;
        }
        let listed = self
            .inner
            .store
            .blocking(|store| store.list(&Prefix::all()))
            .await;
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the store to plan the lifecycle");
                return;
            }
        };
        for entry in entries {
            if !entry
                .path
                .as_str()
                .starts_with(&self.inner.spec.ledger_prefix)
            {
                self.plan_path(&entry.path).await;
            }
        }
    }

    /// Works out when `path` next needs the engine.
    pub(super) async fn plan_path(&self, path: &SecretPath) {
        let Some(policy) = self.policy(path) else {
            return;
        };
        let secret = match self.stored(path, Selector::Current).await {
            Ok(Some(s)) => s,
            _ => {
                lock(&self.inner.plan).set(path, None);
                return;
            }
        };
        let now = self.now();
        let when = self.inner.status.update(
            path,
            || Status::new(&policy.plugin, secret.version, now),
            |s| {
                if s.restored && s.version != secret.version {
                    // Kept from before a restart, about a version the store no
                    // longer holds as current: start again.
                    *s = Status::new(&policy.plugin, secret.version, now);
                }
                s.restored = false;
                if s.version != secret.version {
                    // A new version: what was found (revoked, invalid, a failure
                    // that was not to be retried) was about the old one.
                    s.stopped = false;
                    // (A rotation or refresh in flight sets its own state.)
                    if matches!(
                        s.state,
                        State::Invalid | State::Revoked | State::ReauthRequired | State::Expired
                    ) {
                        s.set(
                            State::Active,
                            format!("version {} written", secret.version),
                            now,
                        );
                    }
                }
                s.version = secret.version;
                let when = next_due(&policy, &secret, s, now)
                    .map(|t| s.not_before.map_or(t, |floor| t.max(floor)));
                s.next_check_at = when;
                when
            },
        );
        lock(&self.inner.plan).set(path, when);
        self.inner.replan.notify_one();
    }

    /// Runs whatever is due for `path`, then plans it again.
    pub(super) async fn tick(&self, path: SecretPath) {
        let Ok(_permit) = self.inner.permits.acquire().await else {
            return;
        };
        let Ok(_op) = self.begin() else {
            return;
        };
        if let Some(policy) = self.policy(&path) {
            if let Err(e) = self.run_due(&path, &policy).await {
                tracing::debug!(path = %path, error = %e, "lifecycle step did not complete");
            }
        }
        self.plan_path(&path).await;
    }

    pub(super) async fn run_due(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
    ) -> Result<(), Error> {
        let Some(secret) = self.stored(path, Selector::Current).await? else {
            return Ok(());
        };
        let now = self.now();
        let journalled = path.clone();
        let in_flight = self
            .inner
            .store
            .blocking(move |store| store.journal_get(&journalled))
            .await?;
        if in_flight.is_some() {
            // A rotation this agent could not finish earlier: finish or roll it back.
            return self.resume(path).await;
        }
        let status = self.status_of(path, policy, &secret, now);
        if status.retire_at.is_some_and(|t| t <= now) {
            self.finish_grace(path).await?;
        }
        if rotation_due(policy, &secret, &status, now) {
            if let RotationOutcome::Busy { .. } = self.rotate(path, false).await? {
                // Held elsewhere: look again when its lease may have lapsed.
                let floor = now + secs(self.inner.spec.lease).clamp(1, 5);
                self.inner
                    .status
                    .update(path, || status.clone(), |s| s.not_before = Some(floor));
            }
            return Ok(());
        }
        if refresh_due(policy, &secret, &status, now) && status.state != State::ReauthRequired {
            self.refresh(path, false).await?;
            return Ok(());
        }
        if validation_due(policy, &status, now) {
            self.validate_now(path).await?;
        }
        if secret.expires_at.is_some_and(|t| t <= now)
            && !matches!(status.state, State::ReauthRequired | State::Invalid)
        {
            self.set_state(path, policy, &secret, State::Expired, "past its expiry");
        }
        Ok(())
    }
}
