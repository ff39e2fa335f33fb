//! Staged rotation: the four steps, rollback, the grace window and crash recovery.
//!
//! 1. **create** — the provider creates the pending credential at the service while
//!    the current one keeps working. The pending credential goes into the store's
//!    journal (sealed, flushed) before anything else, so a crash cannot lose it.
//! 2. **publish** — it is written into the coordination record (check-and-set), where
//!    every agent and a restarted one can find it.
//! 3. **test** — the provider validates it against the real service (and the policy's
//!    forbidden permissions are checked).
//! 4. **promote** — it is written as the secret's new current version, with
//!    check-and-set on the version that was rotated; the old one becomes `previous`.
//!
//! After the grace window the provider retires `previous`. A failure at any step rolls
//! back: the pending credential is retired at the service, `current` is untouched, the
//! failure is audited and published once (`rotation-failed`, which webhooks deliver).
//! Whether the rotation is tried again is the provider's answer's to say
//! ([`super::next`]): an `unavailable` service, a pending credential that does not
//! validate yet, or a lost check-and-set in steps 2 and 4 is retried with backoff up
//! to `max_attempts`; a `rejected`, `denied`, `unsupported` or `invalid-config`
//! answer is not (the status says `stopped` until the secret changes or an operator
//! rotates it), and a `rejected` step 1 also marks the current credential `invalid`.
//! One exception keeps a credential from being lost: if the current credential no
//! longer works (a provider that changes a password in place), the engine keeps the
//! pending credential and finishes the rotation instead of rolling it back.
//!
//! When the engine stops mid-rotation, the step in flight finishes and is journalled,
//! and the rotation stops before the next step ([`Error::ShuttingDown`]); the next
//! start goes on from there. The claim, the lease and the steps are recorded in the
//! [`super::ledger`]; see there for how exactly one agent wins.

use std::sync::Arc;

use super::ledger::{Entry, Step};
use super::next::{self, Answer, Call, Next};
use super::plan::{backoff, rotates, rotation_due, secs};
use super::validation;
use super::{Engine, Error, State, Status};
use crate::audit::Outcome as AuditOutcome;
use crate::events::Kind;
use crate::path::SecretPath;
use crate::providers::{Credential, LifecycleSpec};
use crate::store::{Secret, Selector};

/// What a call to [`Engine::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// A new version was promoted.
    Rotated {
        /// The new current version.
        version: u64,
    },
    /// Nothing to do: not due, or another agent already rotated it.
    NotDue,
    /// Someone else holds it (another agent's claim, or an operation here).
    Busy {
        /// Who and until when.
        detail: String,
    },
    /// A step failed and the rotation was rolled back.
    RolledBack {
        /// The step and the reason.
        detail: String,
    },
}

impl Engine {
    fn ledger_key(&self, path: &SecretPath) -> Result<SecretPath, Error> {
        SecretPath::parse(&format!("{}/{}", self.inner.spec.ledger_prefix, path)).map_err(
            |source| Error::LedgerPath {
                path: path.clone(),
                source,
            },
        )
    }

    /// The pending credential of a rotation in flight for `path` — published (step
    /// 2) and being tested or promoted — with the version it will replace; `None`
    /// when no rotation has one. Read from the coordination record, so a rotation
    /// run by another agent of the fleet counts too.
    pub async fn pending(&self, path: &SecretPath) -> Result<Option<(u64, Credential)>, Error> {
        let key = self.ledger_key(path)?;
        let Some((_, entry)) = self.inner.ledger.read(&key).await? else {
            return Ok(None);
        };
        Ok(match (entry.step, entry.pending) {
            (Step::Published, Some(pending)) => Some((entry.base_version, pending)),
            _ => None,
        })
    }

    fn lease_until(&self) -> i64 {
        self.now() + secs(self.inner.spec.lease)
    }

    /// Between two steps: whether the engine is stopping, in which case the rotation
    /// ends here with its progress journalled (the next start goes on from it).
    fn stop_between_steps(&self, path: &SecretPath, next_step: &str) -> Result<(), Error> {
        if self.stopping() {
            tracing::info!(path = %path, next_step, "rotation journalled and stopped for the shutdown");
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Rotates `path` now if it is due (or always, when `forced`), unless another
    /// agent holds the rotation.
    pub(super) async fn rotate(&self, path: &SecretPath, forced: bool) -> Result<Outcome, Error> {
        let policy = self
            .policy(path)
            .ok_or_else(|| Error::NoPolicy(path.clone()))?;
        let lock = self.path_lock(path);
        let Ok(_guard) = lock.try_lock_owned() else {
            return Ok(Outcome::Busy {
                detail: "another operation on this secret is running on this agent".into(),
            });
        };
        let key = self.ledger_key(path)?;
        let mut record = self.inner.ledger.read(&key).await?;
        let now = self.now();
        if let Some((_, entry)) = &record {
            if entry.held_by_other(&self.inner.node, now) {
                return Ok(Outcome::Busy {
                    detail: format!(
                        "rotation claimed by {} for {} more seconds",
                        entry.owner,
                        entry.lease_until - now
                    ),
                });
            }
        }
        let mut secret = self.required(path).await?;
        // Rotate what the upstream holds now, not a stale copy.
        {
            let sync = &self.inner.sync;
            match sync
                .upstream()
                .metadata(path)
                .await
                .map_err(crate::sync::Error::from)?
            {
                Some(meta) if meta.version == secret.version => {}
                Some(meta) => {
                    sync.fetch(path).await?;
                    secret = self.required(path).await?;
                    // A scheduled rotation looks again at its next tick; an operator's
                    // rotates what the upstream holds now.
                    if secret.version != meta.version || !forced {
                        return Ok(Outcome::NotDue);
                    }
                }
                None => return Err(Error::NotFound(path.clone())),
            }
        }
        if let Some((_, entry)) = &record {
            // Another agent may have rotated already (or this one, before a restart).
            let rotated_at = entry.rotated_at;
            let status = self.inner.status.update(
                path,
                || Status::new(&policy.plugin, secret.version, now),
                |s| {
                    s.rotated_at = s.rotated_at.max(rotated_at);
                    s.clone()
                },
            );
            if !forced && !rotation_due(&policy, &secret, &status, now) {
                return Ok(Outcome::NotDue);
            }
            // An abandoned claim (lease lapsed): its pending credential goes.
            if entry.step.in_flight() && entry.owner != self.inner.node {
                if let Some(p) = &entry.pending {
                    if !same_fields(p, &Credential::of(&secret)) {
                        self.retire_quietly(path, p, "abandoned pending credential")
                            .await;
                    }
                }
            }
        }
        // Rotating again while the last rotation's grace window is open: retire its
        // previous credential first (only now that this rotation is really due).
        if record
            .as_ref()
            .is_some_and(|(_, e)| e.step == Step::Grace && e.previous.is_some())
        {
            self.retire_previous(path, &key, record.take()).await?;
            record = self.inner.ledger.read(&key).await?;
        }
        let claim = Entry::claim(
            &self.inner.node,
            self.lease_until(),
            secret.version,
            record.as_ref().map(|(_, e)| e),
        );
        let cas = record.as_ref().map_or(0, |(v, _)| *v);
        let version = match self.inner.ledger.write(&key, &claim, cas).await {
            Ok(v) => v,
            Err(super::ledger::Error::Lost(_)) => {
                return Ok(Outcome::Busy {
                    detail: "another agent claimed this rotation first".into(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        self.inner.store.journal_put(path, &claim.to_blob()).await?;
        tracing::info!(path = %path, version = secret.version, "rotation claimed");
        self.run_steps(path, &policy, &secret, claim, version).await
    }

    /// Steps 1 to 4 from wherever `entry` stands (a resumed rotation already has its
    /// pending credential and skips step 1).
    async fn run_steps(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
        secret: &Secret,
        mut entry: Entry,
        mut version: u64,
    ) -> Result<Outcome, Error> {
        let key = self.ledger_key(path)?;
        let current = Credential::of(secret);
        let provider = Arc::clone(&self.inner.provider);
        self.set_state(
            path,
            policy,
            secret,
            State::Rotating,
            "step 1: creating the pending credential",
        );

        // Step 1: create.
        let pending = match entry.pending.clone() {
            Some(p) => p,
            None => {
                match provider
                    .create_pending(path, &current, entry.seed.as_ref())
                    .await
                {
                    Ok(p) => p,
                    Err(failure) => {
                        let next = next::decide(Call::Create, Answer::Failed(&failure));
                        let detail = format!(
                            "step 1 (create) failed: {}",
                            next::describe_failure(&failure)
                        );
                        let failed = Failed { next, detail };
                        return self
                            .roll_back(path, policy, secret, entry, version, None, failed)
                            .await;
                    }
                }
            }
        };
        entry.pending = Some(pending.clone());
        // The result is recorded: the randomness that made it is no longer needed.
        entry.seed = None;
        self.inner.store.journal_put(path, &entry.to_blob()).await?;
        self.stop_between_steps(path, "publish")?;

        // Step 2: publish.
        self.set_state(
            path,
            policy,
            secret,
            State::Rotating,
            "step 2: publishing the pending credential",
        );
        entry.step = Step::Published;
        entry.lease_until = self.lease_until();
        version = match self.inner.ledger.write(&key, &entry, version).await {
            Ok(v) => v,
            Err(e) => {
                let failed = Failed::retried(format!("step 2 (publish) failed: {e}"));
                return self
                    .roll_back(path, policy, secret, entry, version, Some(pending), failed)
                    .await;
            }
        };
        // Where the upstream has stages of its own, the pending credential is also
        // its pending version (AWS: `AWSPENDING`), for its rotation tools to see.
        entry.staged = match self
            .inner
            .sync
            .stage(path, &pending.fields, secret.version)
            .await
        {
            Ok(staged) => staged,
            Err(e) => {
                let failed = Failed::retried(format!("step 2 (publish) failed: {e}"));
                return self
                    .roll_back(path, policy, secret, entry, version, Some(pending), failed)
                    .await;
            }
        };
        self.inner.store.journal_put(path, &entry.to_blob()).await?;
        self.stop_between_steps(path, "test")?;

        // Step 3: test.
        self.set_state(
            path,
            policy,
            secret,
            State::Rotating,
            "step 3: testing the pending credential",
        );
        let tested = provider.validate(path, &pending).await;
        let next = next::decide(Call::Test, validation::answer(policy, &tested));
        if next != Next::Proceed {
            let reason = match &tested {
                Ok(v) => match validation::forbidden(policy, v) {
                    Some(p) => format!("holds forbidden permission {p}"),
                    None => format!("rejected: {}", v.detail),
                },
                Err(failure) => next::describe_failure(failure),
            };
            let failed = Failed {
                next,
                detail: format!("step 3 (test) failed: {reason}"),
            };
            return self
                .roll_back(path, policy, secret, entry, version, Some(pending), failed)
                .await;
        }
        self.stop_between_steps(path, "promote")?;

        // Step 4: promote.
        self.set_state(path, policy, secret, State::Rotating, "step 4: promoting");
        let committed = match entry.staged {
            Some(staged) => {
                self.commit_staged(path, &pending, secret.version, staged)
                    .await
            }
            None => self.commit(path, &pending, secret.version).await,
        };
        let promoted = match committed {
            Ok(s) => s,
            Err(e) => match self.promoted_already(path, &pending).await {
                Some(s) => s,
                None => {
                    let failed = Failed::retried(format!("step 4 (promote) failed: {e}"));
                    return self
                        .roll_back(path, policy, secret, entry, version, Some(pending), failed)
                        .await;
                }
            },
        };
        self.finish(path, policy, &promoted, current, entry, version)
            .await
    }

    /// Records a promoted rotation: grace window, events, audit, status.
    async fn finish(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
        promoted: &Secret,
        previous: Credential,
        mut entry: Entry,
        version: u64,
    ) -> Result<Outcome, Error> {
        let key = self.ledger_key(path)?;
        let now = self.now();
        let grace = policy.grace.map_or(0, secs);
        entry.step = Step::Grace;
        entry.previous = Some(previous);
        entry.pending = None;
        entry.staged = None;
        entry.rotated_at = Some(now);
        entry.retire_at = Some(now + grace);
        entry.attempts = 0;
        entry.next_attempt_at = None;
        entry.detail.clear();
        entry.lease_until = now;
        let recorded = match self.inner.ledger.write(&key, &entry, version).await {
            Ok(v) => Some(v),
            Err(e) => {
                // The promotion stands; a later look at the record sees the current
                // version equal to its pending credential and finishes it.
                tracing::warn!(path = %path, error = %e, "rotation promoted but its record was not updated");
                None
            }
        };
        self.inner.store.journal_remove(path).await?;
        let detail = format!(
            "rotated from version {} to {}",
            entry.base_version, promoted.version
        );
        self.conclude(
            path,
            &policy.plugin,
            promoted.version,
            Some(Kind::Rotated),
            "rotate",
            AuditOutcome::Ok,
            &detail,
            |s| {
                s.version = promoted.version;
                s.rotated_at = Some(now);
                s.failures = 0;
                s.retry_at = None;
                s.stopped = false;
                s.retire_at = Some(now + grace);
                s.set(State::Active, &detail, now);
            },
        );
        tracing::info!(path = %path, version = promoted.version, "rotation promoted");
        if grace == 0 {
            if let Some(v) = recorded {
                self.retire_previous(path, &key, Some((v, entry))).await?;
            }
        }
        Ok(Outcome::Rotated {
            version: promoted.version,
        })
    }

    /// Rolls a failed rotation back (or, if the current credential no longer works,
    /// keeps the pending one to finish later), and records whether and when it is
    /// tried again, as `failed.next` says.
    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        &self,
        path: &SecretPath,
        policy: &LifecycleSpec,
        secret: &Secret,
        mut entry: Entry,
        version: u64,
        pending: Option<Credential>,
        failed: Failed,
    ) -> Result<Outcome, Error> {
        let Failed { next, detail } = failed;
        let key = self.ledger_key(path)?;
        let now = self.now();
        // A rolled-back step 1 is not replayed: its randomness goes.
        entry.seed = None;
        if let Some(p) = &pending {
            let current_works = matches!(
                self.inner.provider.validate(path, &Credential::of(secret)).await,
                Ok(v) if v.valid
            );
            if !current_works {
                // Rolling back would leave no working credential: keep the pending one
                // (journal and record) and finish the rotation on the next attempt.
                let retry = now + backoff(policy.retry_after, 1);
                entry.detail = format!("{detail}; the current credential no longer works, so the rotation will be finished instead");
                entry.next_attempt_at = Some(retry);
                let _ = self.inner.ledger.write(&key, &entry, version).await;
                self.conclude(
                    path,
                    &policy.plugin,
                    secret.version,
                    Some(Kind::RotationFailed),
                    "rotate",
                    AuditOutcome::Failed,
                    &entry.detail,
                    |s| {
                        s.failures += 1;
                        s.retry_at = Some(retry);
                        s.set(State::Rotating, &entry.detail, now);
                    },
                );
                return Ok(Outcome::RolledBack {
                    detail: entry.detail,
                });
            }
            self.retire_quietly(path, p, "rolled-back pending credential")
                .await;
        }
        if let Some(staged) = entry.staged.take() {
            if let Err(e) = self.inner.sync.unstage(path, staged).await {
                tracing::warn!(path = %path, version = staged, error = %e,
                    "cannot drop the pending label of a rolled-back rotation upstream");
            }
        }
        entry.attempts += 1;
        let retried = next.retries();
        let retry = retried.then(|| now + backoff(policy.retry_after, entry.attempts));
        let detail = match next {
            _ if retried && entry.attempts >= policy.max_attempts => {
                format!("{detail}; giving up after {} attempts", entry.attempts)
            }
            _ if retried => detail,
            Next::Invalid => {
                format!("{detail}; not retried: the service refused the current credential")
            }
            Next::ConfigError => {
                format!("{detail}; not retried: the plugin or its configuration must change")
            }
            _ => {
                format!("{detail}; not retried until the secret changes or an operator rotates it")
            }
        };
        entry.step = Step::Failed;
        entry.pending = None;
        entry.next_attempt_at = retry;
        entry.stopped = !retried;
        entry.detail = detail.clone();
        entry.lease_until = now;
        if let Err(e) = self.inner.ledger.write(&key, &entry, version).await {
            tracing::warn!(path = %path, error = %e, "cannot record the rolled-back rotation; its lease will lapse");
        }
        self.inner.store.journal_remove(path).await?;
        let state = if next == Next::Invalid {
            State::Invalid
        } else {
            State::Active
        };
        self.conclude(
            path,
            &policy.plugin,
            secret.version,
            Some(Kind::RotationFailed),
            "rotate",
            AuditOutcome::Failed,
            &detail,
            |s| {
                s.failures = entry.attempts;
                s.retry_at = retry;
                s.stopped = !retried;
                s.set(state, &detail, now);
            },
        );
        if next == Next::ConfigError {
            tracing::error!(path = %path, plugin = %policy.plugin, detail = %detail, "rotation rolled back: configuration error");
        } else {
            tracing::warn!(path = %path, detail = %detail, "rotation rolled back");
        }
        Ok(Outcome::RolledBack { detail })
    }

    async fn retire_quietly(&self, path: &SecretPath, cred: &Credential, what: &str) {
        match self.inner.provider.retire(path, cred).await {
            Ok(()) => {
                self.audit("retire", path, None, AuditOutcome::Ok, what);
            }
            Err(failure) => {
                let detail = format!(
                    "retiring the {what} failed: {}",
                    next::describe_failure(&failure)
                );
                tracing::warn!(path = %path, detail = %detail);
                self.audit("retire", path, None, AuditOutcome::Failed, &detail);
            }
        }
    }

    /// Whether the secret's current version (upstream first) already holds `pending`:
    /// a promotion whose answer was lost. Returns the local copy if so.
    async fn promoted_already(&self, path: &SecretPath, pending: &Credential) -> Option<Secret> {
        {
            let sync = &self.inner.sync;
            let remote = sync.upstream().read(path).await.ok()??;
            if !same(&remote.fields, &pending.fields) {
                return None;
            }
            sync.fetch(path).await.ok()?;
        }
        let local = self.stored(path, Selector::Current).await.ok()??;
        same(&local.fields, &pending.fields).then_some(local)
    }

    /// After the grace window: retires the previous credential, unless the record says
    /// this agent should look again later (see [`Engine::grace_look_at`]).
    pub(super) async fn finish_grace(&self, path: &SecretPath) -> Result<(), Error> {
        let lock = self.path_lock(path);
        let Ok(_guard) = lock.try_lock_owned() else {
            return Ok(());
        };
        let key = self.ledger_key(path)?;
        let record = self.inner.ledger.read(&key).await?;
        let now = self.now();
        if let Some(later) = record
            .as_ref()
            .and_then(|(_, entry)| self.grace_look_at(entry))
            .filter(|at| *at > now)
        {
            self.inner.status.update(
                path,
                || Status::new("", 0, now),
                |s| s.retire_at = Some(later),
            );
            return Ok(());
        }
        self.retire_previous(path, &key, record).await
    }

    /// When this agent should next look at `entry`'s grace window: at its end if this
    /// agent promoted the rotation, one lease later if another did (that agent goes
    /// first; the rest step in only if it is gone), and when the lease ends while
    /// another agent is mid-rotation or mid-retirement. `None`: nothing to wait for.
    fn grace_look_at(&self, entry: &Entry) -> Option<i64> {
        let mine = entry.owner == self.inner.node;
        match entry.step {
            Step::Grace => entry.retire_at.map(|at| {
                if mine {
                    at
                } else {
                    at + secs(self.inner.spec.lease)
                }
            }),
            step if step.in_flight() && !mine => Some(entry.lease_until),
            _ => None,
        }
    }

    /// Reads `path`'s coordination record into its status: when it last rotated
    /// anywhere, an open grace window (so a surviving agent retires the previous
    /// credential if the one that promoted is gone), and a failed rotation's attempts.
    pub(super) async fn learn_record(&self, path: &SecretPath, policy: &LifecycleSpec) {
        let Ok(key) = self.ledger_key(path) else {
            return;
        };
        let Ok(Some((_, entry))) = self.inner.ledger.read(&key).await else {
            return;
        };
        let look_at = self.grace_look_at(&entry);
        let now = self.now();
        self.inner.status.update(
            path,
            || Status::new(&policy.plugin, entry.base_version, now),
            |s| {
                s.rotated_at = s.rotated_at.max(entry.rotated_at);
                if look_at.is_some() {
                    s.retire_at = look_at;
                }
                if entry.step == Step::Failed {
                    s.failures = entry.attempts;
                    s.retry_at = entry.next_attempt_at;
                    s.detail = entry.detail.clone();
                    // A failure not to be retried holds only for the version it was
                    // about.
                    s.stopped = entry.stopped && entry.base_version == s.version;
                }
            },
        );
        self.plan_path(path).await;
    }

    async fn retire_previous(
        &self,
        path: &SecretPath,
        key: &SecretPath,
        record: Option<(u64, Entry)>,
    ) -> Result<(), Error> {
        let now = self.now();
        let Some((version, mut entry)) = record else {
            self.inner
                .status
                .update(path, || Status::new("", 0, now), |s| s.retire_at = None);
            return Ok(());
        };
        if entry.step != Step::Grace || entry.held_by_other(&self.inner.node, now) {
            let retire_at = (entry.step == Step::Grace)
                .then_some(entry.retire_at)
                .flatten();
            self.inner.status.update(
                path,
                || Status::new("", 0, now),
                |s| s.retire_at = retire_at,
            );
            return Ok(());
        }
        let Some(previous) = entry.previous.clone() else {
            entry.step = Step::Idle;
            let _ = self.inner.ledger.write(key, &entry, version).await;
            return Ok(());
        };
        entry.step = Step::Retiring;
        entry.owner = self.inner.node.clone();
        entry.lease_until = self.lease_until();
        let version = match self.inner.ledger.write(key, &entry, version).await {
            Ok(v) => v,
            Err(super::ledger::Error::Lost(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let retired = self.inner.provider.retire(path, &previous).await;
        let next = match &retired {
            Ok(()) => Next::Proceed,
            Err(failure) => next::decide(Call::Retire, Answer::Failed(failure)),
        };
        let ok = next == Next::Proceed;
        let detail = match &retired {
            Ok(()) => "retired the previous credential".to_owned(),
            Err(failure) if next.retries() => format!(
                "retiring the previous credential failed: {}",
                next::describe_failure(failure)
            ),
            // Kept in the record: the next rotation tries it again first.
            Err(failure) => format!(
                "retiring the previous credential failed: {}; not retried until the next rotation",
                next::describe_failure(failure)
            ),
        };
        let policy_retry = self
            .policy(path)
            .map_or(std::time::Duration::from_secs(30), |p| p.retry_after);
        if ok {
            entry.step = Step::Idle;
            entry.previous = None;
            entry.retire_at = None;
        } else {
            entry.step = Step::Grace;
            entry.retire_at = next.retries().then(|| now + backoff(policy_retry, 1));
        }
        entry.lease_until = self.now();
        if let Err(e) = self.inner.ledger.write(key, &entry, version).await {
            tracing::warn!(path = %path, error = %e, "cannot record the retirement");
        }
        let retire_at = entry.retire_at;
        self.inner.status.update(
            path,
            || Status::new("", 0, now),
            |s| s.retire_at = retire_at,
        );
        self.audit(
            "retire",
            path,
            None,
            if ok {
                AuditOutcome::Ok
            } else {
                AuditOutcome::Failed
            },
            &detail,
        );
        Ok(())
    }

    /// At start: finishes or rolls back every rotation this agent's journal says was
    /// in flight (cut off by a crash, or stopped between steps by a shutdown).
    pub(super) async fn recover(&self) {
        let paths = match self
            .inner
            .store
            .blocking(|store| store.journal_paths())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the rotation journal");
                Vec::new()
            }
        };
        for path in paths {
            let Ok(_op) = self.begin() else {
                return;
            };
            if let Err(e) = self.resume(&path).await {
                tracing::error!(path = %path, error = %e, "cannot recover the interrupted rotation; will retry");
            }
        }
    }

    pub(super) async fn resume(&self, path: &SecretPath) -> Result<(), Error> {
        let journalled = path.clone();
        let blob = self
            .inner
            .store
            .blocking(move |store| store.journal_get(&journalled))
            .await?;
        let Some(blob) = blob else {
            return Ok(());
        };
        let Some(journal) = Entry::from_blob(blob.expose()) else {
            tracing::error!(path = %path, "unreadable rotation journal entry; dropping it");
            return Ok(self.inner.store.journal_remove(path).await?);
        };
        drop(blob);
        let Some(policy) = self.policy(path) else {
            return Ok(self.inner.store.journal_remove(path).await?);
        };
        let lock = self.path_lock(path);
        let _guard = lock.lock().await;
        let Some(secret) = self.stored(path, Selector::Current).await? else {
            return Ok(self.inner.store.journal_remove(path).await?);
        };
        let key = self.ledger_key(path)?;
        let record = self.inner.ledger.read(&key).await?;
        let now = self.now();
        tracing::info!(path = %path, "recovering an interrupted rotation");
        let Some((version, mut entry)) = record else {
            // The claim never reached the record: nothing was published.
            if let Some(p) = &journal.pending {
                self.retire_quietly(path, p, "unpublished pending credential")
                    .await;
            }
            return Ok(self.inner.store.journal_remove(path).await?);
        };
        if entry.held_by_other(&self.inner.node, now)
            || (entry.owner != self.inner.node && !entry.step.in_flight())
        {
            // Taken over (or finished) elsewhere while this agent was down.
            return Ok(self.inner.store.journal_remove(path).await?);
        }
        if let Some(p) = &journal.pending {
            if let Some(promoted) = self.promoted_already(path, p).await {
                let previous = match entry.previous.clone() {
                    Some(previous) => previous,
                    // The pre-rotation credential is the `previous` version locally.
                    None => self
                        .stored(path, Selector::Label("previous".into()))
                        .await
                        .ok()
                        .flatten()
                        .map_or_else(|| Credential::of(&secret), |s| Credential::of(&s)),
                };
                self.finish(path, &policy, &promoted, previous, entry, version)
                    .await?;
                return Ok(());
            }
        }
        entry.owner = self.inner.node.clone();
        entry.lease_until = self.lease_until();
        let unchanged = secret.version == entry.base_version;
        let resumable = match &journal.pending {
            Some(p) if unchanged => {
                entry.pending = Some(p.clone());
                true
            }
            None if unchanged && journal.seed.is_some() => {
                // Step 1 may have changed the credential at the service before the
                // crash (a password set in place): run it again with the same
                // randomness, which makes the same credential, and go on from there.
                tracing::info!(path = %path, "replaying the interrupted step 1 with its recorded randomness");
                entry.step = Step::Claimed;
                entry.seed = journal.seed.clone();
                true
            }
            _ => false,
        };
        if !resumable {
            let detail = if unchanged {
                "interrupted in step 1 (create) by a restart"
            } else {
                "interrupted by a restart, and the secret changed meanwhile"
            };
            let pending = journal.pending.clone();
            self.roll_back(
                path,
                &policy,
                &secret,
                entry,
                version,
                pending,
                Failed::retried(detail.into()),
            )
            .await?;
            return Ok(());
        }
        let version = match self.inner.ledger.write(&key, &entry, version).await {
            Ok(v) => v,
            Err(super::ledger::Error::Lost(_)) => {
                return Ok(self.inner.store.journal_remove(path).await?)
            }
            Err(e) => return Err(e.into()),
        };
        self.run_steps(path, &policy, &secret, entry, version)
            .await?;
        Ok(())
    }

    /// Reads the coordination records of rotated secrets so open grace windows are
    /// closed on time after a restart (and failure counts survive it), at most
    /// `[scheduler] concurrency` reads at a time.
    pub(super) async fn learn_grace_windows(&self) {
        let Ok(entries) = self
            .inner
            .store
            .blocking(|store| store.list(&crate::path::Prefix::all()))
            .await
        else {
            return;
        };
        let mut reads = tokio::task::JoinSet::new();
        for e in entries {
            let Some(policy) = self.policy(&e.path).filter(|p| rotates(p)) else {
                continue;
            };
            let Ok(permit) = Arc::clone(&self.inner.reads).acquire_owned().await else {
                return;
            };
            let engine = self.clone();
            reads.spawn(async move {
                let _permit = permit;
                engine.learn_record(&e.path, &policy).await;
            });
            while reads.try_join_next().is_some() {}
        }
        while reads.join_next().await.is_some() {}
    }
}

fn same(a: &crate::secret::Fields, b: &crate::secret::Fields) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| w.expose() == v.expose()))
}

fn same_fields(a: &Credential, b: &Credential) -> bool {
    same(&a.fields, &b.fields)
}

/// A failed step: what the engine does next, and the words for status and audit.
struct Failed {
    next: Next,
    detail: String,
}

impl Failed {
    /// A failure of the engine's own (a lost check-and-set, an interrupted step):
    /// retried with backoff.
    fn retried(detail: String) -> Self {
        Failed {
            next: Next::Retry,
            detail,
        }
    }
}
