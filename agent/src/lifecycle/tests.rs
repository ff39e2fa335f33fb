//! The engine's state machine against a scripted provider and a clock moved by hand:
//! each answer a provider can give at each rotation step, in refresh and in
//! validation, and the stop in the middle of a rotation. The store is a real one in a
//! temporary folder and is its own upstream (`upstream::local`), so the coordination
//! records live in the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_plugin_host::{CallError, Operation, ProviderError, Seed};
use tokio::sync::{broadcast, Semaphore};

use super::plan::tests::policy;
use super::validation::forbidden;
use super::*;
use crate::cache::HotCache;
use crate::crypto::LocalKek;
use crate::providers::Validation;
use crate::secret::{Fields, SecretString};
use crate::store::{Selector, StoreConfig};

const ORIGINAL: &str = "key-original";

/// A scripted answer; a call with nothing scripted succeeds.
#[derive(Clone)]
enum Reply {
    /// The provider's `provider-error`.
    Fail(ProviderError),
    /// The host's fault: the call ran past its deadline.
    Fault,
    /// `validate` answers `valid: false`.
    Invalid,
    /// Waits for the gate to open, then succeeds.
    Stall(Arc<Gate>),
}

/// A call that waits: `reached` gets a permit when the call arrives, the call goes on
/// when `release` gets one.
struct Gate {
    reached: Semaphore,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            reached: Semaphore::new(0),
            release: Semaphore::new(0),
        }
    }
}

/// The provider of `svc/*` secrets, answering as scripted.
struct Fake {
    policy: Arc<LifecycleSpec>,
    script: Mutex<HashMap<Operation, VecDeque<Reply>>>,
    calls: Mutex<Vec<Operation>>,
    made: AtomicU32,
}

impl Fake {
    fn new(policy: LifecycleSpec) -> Arc<Fake> {
        Arc::new(Fake {
            policy: Arc::new(policy),
            script: Mutex::default(),
            calls: Mutex::default(),
            made: AtomicU32::new(0),
        })
    }

    /// Answers the next call of `op` with `reply`.
    fn then(&self, op: Operation, reply: Reply) {
        lock(&self.script).entry(op).or_default().push_back(reply);
    }

    fn calls(&self, op: Operation) -> usize {
        lock(&self.calls).iter().filter(|c| **c == op).count()
    }

    async fn answer(&self, op: Operation) -> Result<(), Failure> {
        lock(&self.calls).push(op);
        let reply = lock(&self.script)
            .get_mut(&op)
            .and_then(VecDeque::pop_front);
        match reply {
            None | Some(Reply::Invalid) => Ok(()),
            Some(Reply::Fail(source)) => Err(Failure::Answered {
                plugin: "svc".into(),
                operation: op,
                source,
            }),
            Some(Reply::Fault) => Err(Failure::Host {
                plugin: "svc".into(),
                source: CallError::Timeout {
                    plugin: "svc".into(),
                    deadline: Duration::from_secs(1),
                },
            }),
            Some(Reply::Stall(gate)) => {
                gate.reached.add_permits(1);
                if let Ok(permit) = gate.release.acquire().await {
                    permit.forget();
                }
                Ok(())
            }
        }
    }

    fn invalid_next(&self, op: Operation) -> bool {
        matches!(
            lock(&self.script).get(&op).and_then(|q| q.front()),
            Some(Reply::Invalid)
        )
    }
}

#[async_trait]
impl Provider for Fake {
    fn policy(&self, path: &SecretPath) -> Option<Arc<LifecycleSpec>> {
        path.as_str()
            .starts_with("svc/")
            .then(|| Arc::clone(&self.policy))
    }

    fn has_rules(&self) -> bool {
        true
    }

    async fn validate(&self, _: &SecretPath, _: &Credential) -> Result<Validation, Failure> {
        let invalid = self.invalid_next(Operation::Validate);
        self.answer(Operation::Validate).await?;
        Ok(Validation {
            valid: !invalid,
            detail: if invalid { "unknown key" } else { "accepted" }.into(),
            permissions: Vec::new(),
            expires_at: None,
        })
    }

    async fn create_pending(
        &self,
        _: &SecretPath,
        current: &Credential,
        seed: Option<&Seed>,
    ) -> Result<Credential, Failure> {
        self.answer(Operation::CreatePending).await?;
        // The same seed makes the same key, as a provider drawing from the host's
        // randomness does.
        let key = match seed {
            Some(seed) => format!("made-{}", hex::encode(&seed.expose()[..4])),
            None => format!("made-{}", self.made.fetch_add(1, Ordering::SeqCst)),
        };
        Ok(cred(&current.kind, &key))
    }

    async fn retire(&self, _: &SecretPath, _: &Credential) -> Result<(), Failure> {
        self.answer(Operation::Retire).await
    }

    async fn refresh(&self, _: &SecretPath, cred: &Credential) -> Result<Credential, Failure> {
        self.answer(Operation::Refresh).await?;
        let mut fresh = cred.clone();
        fresh
            .fields
            .insert("key".to_owned(), SecretString::from("refreshed"));
        fresh.expires_at = cred.expires_at.map(|t| t + 3600);
        Ok(fresh)
    }
}

fn cred(kind: &str, key: &str) -> Credential {
    let fields: Fields = [("key".to_owned(), SecretString::from(key))]
        .into_iter()
        .collect();
    Credential {
        kind: kind.to_owned(),
        fields,
        expires_at: None,
    }
}

/// An engine over a real store in a temporary folder, a [`Fake`] and a manual clock.
struct Bed {
    engine: Engine,
    fake: Arc<Fake>,
    clock: Clock,
    store: Store,
    events: broadcast::Receiver<Event>,
    path: SecretPath,
    _writer: crate::audit::Writer,
    _dir: tempfile::TempDir,
}

impl Bed {
    async fn new(policy: LifecycleSpec) -> Bed {
        Bed::on(tempfile::tempdir().expect("tempdir"), Fake::new(policy)).await
    }

    /// An engine on the store in `dir` (made if missing).
    async fn on(dir: tempfile::TempDir, fake: Arc<Fake>) -> Bed {
        let kek_path = dir.path().join("kek");
        let kek = if kek_path.exists() {
            LocalKek::from_file(&kek_path).expect("kek")
        } else {
            LocalKek::generate_file(&kek_path).expect("kek")
        };
        let store = Store::open(&StoreConfig::new(dir.path().join("db")), &kek)
            .await
            .expect("store");
        let (audit, writer) = Audit::open(&dir.path().join("audit.log"), crate::audit::Reads::Off)
            .await
            .expect("audit");
        let events = Events::new();
        // Two hours ahead of the store's clock: what the bed writes is an hour past
        // due for an hourly rotation.
        let clock = Clock::manual(crate::clock::unix_now() + 2 * 3600);
        let engine = Engine::new(Parts {
            providers: Arc::clone(&fake) as Arc<dyn Provider>,
            store: store.clone(),
            events: events.clone(),
            sync: crate::sync::Syncer::over_store(
                "local",
                store.clone(),
                Arc::new(HotCache::new(16)),
                events.clone(),
                crate::sync::SyncConfig::for_test(),
            ),
            audit,
            spec: SchedulerSpec::default(),
            clock: clock.clone(),
            outcomes: crate::metrics::LifecycleOutcomes::default(),
        });
        Bed {
            engine,
            fake,
            clock,
            store,
            events: events.subscribe(),
            path: SecretPath::parse("svc/key").expect("path"),
            _writer: writer,
            _dir: dir,
        }
    }

    fn write(&self, key: &str, expires_at: Option<i64>) -> Secret {
        let write = store::Write {
            fields: cred("api-key", key).fields,
            kind: Some("api-key".into()),
            expires_at,
            cas: None,
        };
        self.store.put(&self.path, write).expect("write")
    }

    fn current_key(&self) -> String {
        let secret = self
            .store
            .get(&self.path, Selector::Current)
            .expect("read")
            .expect("present");
        secret.fields.get("key").expect("key").expose().to_owned()
    }

    fn status(&self) -> Status {
        self.engine.status(&self.path).expect("a status")
    }

    /// The kinds of the events published since the last call.
    fn events(&mut self) -> Vec<Kind> {
        let mut kinds = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            kinds.push(e.kind);
        }
        kinds
    }

    /// Moves the clock on by `by` and runs what is then due, as the loop's tick would
    /// (which logs a failed operation and carries on).
    async fn later(&self, by: Duration) {
        self.clock.advance(by);
        let policy = self.engine.policy(&self.path).expect("policy");
        let _ = self.engine.run_due(&self.path, &policy).await;
    }

    /// Starts an operator's rotation of [`ORIGINAL`] whose step 1 waits at the
    /// service until the gate is released; returns once it waits.
    async fn rotation_stalled_in_step_1(
        &self,
    ) -> (
        Arc<Gate>,
        tokio::task::JoinHandle<Result<RotationOutcome, Error>>,
    ) {
        self.write(ORIGINAL, None);
        let gate = Arc::new(Gate::default());
        self.fake
            .then(Operation::CreatePending, Reply::Stall(Arc::clone(&gate)));
        let engine = self.engine.clone();
        let path = self.path.clone();
        let rotation = tokio::spawn(async move { engine.rotate_now(&path).await });
        gate.reached.acquire().await.expect("reached").forget();
        (gate, rotation)
    }

    /// Drops this engine and its store, and starts a new engine on the same folder
    /// with the same provider: the agent restarted.
    async fn restart(self) -> Bed {
        let Bed {
            engine,
            fake,
            store,
            _dir,
            ..
        } = self;
        drop(engine);
        drop(store);
        Bed::on(_dir, fake).await
    }
}

fn rotating() -> LifecycleSpec {
    let mut p = policy();
    p.paths = vec!["svc/*".into()];
    p.plugin = "svc".into();
    p.rotate_every = Some(Duration::from_secs(3600));
    p.retry_after = Duration::from_secs(60);
    p.max_attempts = 5;
    p
}

fn rolled_back(outcome: RotationOutcome) -> String {
    match outcome {
        RotationOutcome::RolledBack { detail } => detail,
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_create_is_attempted_once_rolls_back_marks_the_credential_and_alerts_once() {
    let mut bed = Bed::new(rotating()).await;
    bed.write(ORIGINAL, None);
    bed.fake.then(
        Operation::CreatePending,
        Reply::Fail(ProviderError::Rejected(
            "the service refused the key".into(),
        )),
    );
    // A scheduled rotation (the secret is past due).
    bed.later(Duration::ZERO).await;
    let detail = bed.status().detail;
    assert!(
        detail.contains("step 1 (create) failed: rejected"),
        "{detail}"
    );
    assert_eq!(bed.current_key(), ORIGINAL, "current untouched");
    let status = bed.status();
    assert_eq!(status.state, State::Invalid, "{status:?}");
    assert!(status.stopped && status.retry_at.is_none(), "{status:?}");
    assert_eq!(bed.events(), vec![Kind::RotationFailed], "one alert");

    // Neither its retry time nor its next rotation time brings another attempt.
    bed.later(Duration::from_secs(2 * 3600)).await;
    bed.later(Duration::from_secs(48 * 3600)).await;
    assert_eq!(
        bed.fake.calls(Operation::CreatePending),
        1,
        "attempted once"
    );
    assert_eq!(
        bed.fake.calls(Operation::Retire),
        0,
        "nothing was made to retire"
    );
    assert!(bed.events().is_empty());
}

#[tokio::test]
async fn an_unavailable_create_is_retried_with_backoff_until_it_succeeds() {
    let mut bed = Bed::new(rotating()).await;
    bed.write(ORIGINAL, None);
    for _ in 0..2 {
        bed.fake.then(
            Operation::CreatePending,
            Reply::Fail(ProviderError::Unavailable("service answered 503".into())),
        );
    }
    let t0 = bed.clock.unix();
    bed.later(Duration::ZERO).await;
    let status = bed.status();
    assert!(
        status
            .detail
            .contains("step 1 (create) failed: unavailable"),
        "{}",
        status.detail
    );
    assert_eq!((status.state, status.failures), (State::Active, 1));
    let first = status.retry_at.expect("a retry is planned") - t0;
    assert!(
        (60..=72).contains(&first),
        "first retry after retry_after: {first}s"
    );
    assert!(!status.stopped);

    // Not before its time; at its time, again; the second delay doubles.
    bed.later(Duration::from_secs(30)).await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 1);
    bed.later(Duration::from_secs(43)).await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 2);
    let status = bed.status();
    let second = status.retry_at.expect("planned") - bed.clock.unix();
    assert_eq!(status.failures, 2);
    assert!(
        (120..=144).contains(&second),
        "second delay doubles: {second}s"
    );

    bed.later(Duration::from_secs(145)).await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 3);
    assert_ne!(bed.current_key(), ORIGINAL, "the third attempt rotated");
    let status = bed.status();
    assert_eq!((status.state, status.failures), (State::Active, 0));
    assert_eq!(
        bed.events()
            .into_iter()
            .filter(|k| *k == Kind::RotationFailed)
            .count(),
        2
    );
}

#[tokio::test]
async fn configuration_errors_at_step_1_are_not_retried() {
    for e in [
        ProviderError::Denied("http request denied by the host".into()),
        ProviderError::Unsupported("create-pending".into()),
        ProviderError::InvalidConfig("no base-url".into()),
    ] {
        let mut bed = Bed::new(rotating()).await;
        bed.write(ORIGINAL, None);
        bed.fake
            .then(Operation::CreatePending, Reply::Fail(e.clone()));
        let detail = rolled_back(bed.engine.rotate_now(&bed.path).await.expect("rotate"));
        assert!(
            detail.contains(e.code()) && detail.contains("configuration must change"),
            "{detail}"
        );
        let status = bed.status();
        assert_eq!(status.state, State::Active, "{}: {status:?}", e.code());
        assert!(status.stopped, "{}", e.code());
        bed.later(Duration::from_secs(48 * 3600)).await;
        assert_eq!(bed.fake.calls(Operation::CreatePending), 1, "{}", e.code());
        assert_eq!(bed.events(), vec![Kind::RotationFailed], "{}", e.code());
    }
}

#[tokio::test]
async fn a_host_fault_at_step_1_is_retried() {
    let bed = Bed::new(rotating()).await;
    bed.write(ORIGINAL, None);
    bed.fake.then(Operation::CreatePending, Reply::Fault);
    let detail = rolled_back(bed.engine.rotate_now(&bed.path).await.expect("rotate"));
    assert!(detail.contains("deadline"), "{detail}");
    assert!(bed.status().retry_at.is_some() && !bed.status().stopped);
    bed.later(Duration::from_secs(73)).await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 2);
    assert_ne!(bed.current_key(), ORIGINAL);
}

#[tokio::test]
async fn each_answer_at_step_3_rolls_back_and_retires_the_pending_credential() {
    let cases = [
        (Reply::Invalid, true),
        (Reply::Fail(ProviderError::Unavailable("503".into())), true),
        (Reply::Fault, true),
        (
            Reply::Fail(ProviderError::Rejected("unknown key".into())),
            false,
        ),
        (Reply::Fail(ProviderError::Denied("http".into())), false),
        (
            Reply::Fail(ProviderError::Unsupported("validate".into())),
            false,
        ),
        (
            Reply::Fail(ProviderError::InvalidConfig("url".into())),
            false,
        ),
    ];
    for (reply, retried) in cases {
        let mut bed = Bed::new(rotating()).await;
        bed.write(ORIGINAL, None);
        bed.fake.then(Operation::Validate, reply);
        let detail = rolled_back(bed.engine.rotate_now(&bed.path).await.expect("rotate"));
        assert!(detail.contains("step 3 (test) failed"), "{detail}");
        assert_eq!(bed.current_key(), ORIGINAL, "{detail}");
        assert_eq!(
            bed.fake.calls(Operation::Retire),
            1,
            "pending retired: {detail}"
        );
        let status = bed.status();
        assert_eq!(status.state, State::Active, "{detail}");
        assert_eq!(status.retry_at.is_some(), retried, "{detail}");
        assert_eq!(status.stopped, !retried, "{detail}");
        assert_eq!(bed.events(), vec![Kind::RotationFailed], "{detail}");
        bed.later(Duration::from_secs(80)).await;
        assert_eq!(
            bed.fake.calls(Operation::CreatePending),
            if retried { 2 } else { 1 },
            "{detail}"
        );
    }
}

#[tokio::test]
async fn a_new_version_lifts_a_stop() {
    let bed = Bed::new(rotating()).await;
    bed.write(ORIGINAL, None);
    bed.fake.then(
        Operation::CreatePending,
        Reply::Fail(ProviderError::InvalidConfig("no base-url".into())),
    );
    rolled_back(bed.engine.rotate_now(&bed.path).await.expect("rotate"));
    assert!(bed.status().stopped);
    bed.write("key-written-by-an-admin", None);
    bed.engine.plan_path(&bed.path).await;
    assert!(!bed.status().stopped);
    bed.later(Duration::from_secs(3601)).await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 2);
}

fn refreshing() -> LifecycleSpec {
    let mut p = policy();
    p.paths = vec!["svc/*".into()];
    p.plugin = "svc".into();
    p.refresh_before = Some(Duration::from_secs(60));
    p.retry_after = Duration::from_secs(10);
    p
}

/// A bed whose token expires `in_secs` from now and whose first refresh answers `e`.
async fn token_refresh_answering(in_secs: i64, e: ProviderError) -> Bed {
    let bed = Bed::new(refreshing()).await;
    let expires = bed.clock.unix() + in_secs;
    bed.write(ORIGINAL, Some(expires));
    bed.fake.then(Operation::Refresh, Reply::Fail(e));
    bed
}

#[tokio::test]
async fn refresh_answers_lead_to_reauth_retry_or_a_stop() {
    // Rejected: reauth-required, one alert, no more scheduled refreshes.
    let mut bed =
        token_refresh_answering(30, ProviderError::Rejected("invalid_grant".into())).await;
    bed.later(Duration::ZERO).await;
    assert_eq!(bed.status().state, State::ReauthRequired);
    assert_eq!(bed.events(), vec![Kind::ReauthRequired]);
    bed.later(Duration::from_secs(3600)).await;
    assert_eq!(bed.fake.calls(Operation::Refresh), 1);

    // Unavailable: retried after its backoff, then refreshed.
    let mut bed = token_refresh_answering(
        30,
        ProviderError::Unavailable("token endpoint answered 503".into()),
    )
    .await;
    bed.later(Duration::ZERO).await;
    let status = bed.status();
    assert_eq!((status.failures, status.stopped), (1, false));
    assert!(status.retry_at.is_some());
    bed.later(Duration::from_secs(13)).await;
    assert_eq!(bed.fake.calls(Operation::Refresh), 2);
    assert_eq!(bed.current_key(), "refreshed");
    assert!(bed.events().contains(&Kind::Refreshed));

    // A plugin that cannot refresh: not retried on schedule.
    let bed = token_refresh_answering(30, ProviderError::Unsupported("refresh".into())).await;
    bed.later(Duration::ZERO).await;
    let status = bed.status();
    assert!(status.stopped && status.retry_at.is_none(), "{status:?}");
    bed.later(Duration::from_secs(3600)).await;
    assert_eq!(bed.fake.calls(Operation::Refresh), 1);
}

#[tokio::test]
async fn a_refresh_the_server_rejects_reaches_the_reader_as_the_providers_answer() {
    let bed = token_refresh_answering(-5, ProviderError::Rejected("invalid_grant".into())).await;
    let err = bed
        .engine
        .refresh(&bed.path, true)
        .await
        .expect_err("rejected");
    assert!(
        matches!(
            &err,
            Error::Provider(f) if matches!(f.answer(), Some(ProviderError::Rejected(_)))
        ),
        "{err:?}"
    );
}

fn validating() -> LifecycleSpec {
    let mut p = policy();
    p.paths = vec!["svc/*".into()];
    p.plugin = "svc".into();
    p.validate_every = Some(Duration::from_secs(300));
    p
}

/// Issue 15, item 2: the contract's table (`wit/provider.wit`, `validate`), one row
/// each: the answer → the outcome word, the state, the event.
#[tokio::test]
async fn every_validate_answer_follows_the_contract_table() {
    let rows: [(Option<Reply>, &str, State, Option<Kind>); 7] = [
        (None, "valid", State::Active, Some(Kind::Validated)),
        (
            Some(Reply::Invalid),
            "invalid",
            State::Invalid,
            Some(Kind::Invalid),
        ),
        (
            Some(Reply::Fail(ProviderError::Rejected("gone".into()))),
            "rejected",
            State::Revoked,
            Some(Kind::Invalid),
        ),
        (
            Some(Reply::Fail(ProviderError::Unavailable("503".into()))),
            "unavailable",
            State::Active,
            None,
        ),
        (
            Some(Reply::Fail(ProviderError::Denied("http".into()))),
            "denied",
            State::Active,
            None,
        ),
        (
            Some(Reply::Fail(ProviderError::Unsupported("kind".into()))),
            "unsupported",
            State::Active,
            None,
        ),
        (
            Some(Reply::Fail(ProviderError::InvalidConfig("url".into()))),
            "invalid-config",
            State::Active,
            None,
        ),
    ];
    for (reply, outcome, state, event) in rows {
        let mut bed = Bed::new(validating()).await;
        bed.write(ORIGINAL, None);
        if let Some(reply) = reply {
            bed.fake.then(Operation::Validate, reply);
        }
        let checked = bed.engine.validate_now(&bed.path).await.expect("answered");
        assert_eq!(checked.outcome, outcome);
        assert_eq!(checked.state, state, "{outcome}");
        assert_eq!(bed.status().state, state, "{outcome}");
        assert_eq!(
            bed.events(),
            event.into_iter().collect::<Vec<_>>(),
            "{outcome}"
        );
        assert_eq!(
            crate::cli::exit::of_outcome(checked.outcome) == 0,
            outcome == "valid",
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn validation_answers_set_the_state() {
    let mut bed = Bed::new(validating()).await;
    bed.write(ORIGINAL, None);
    let checked = bed.engine.validate_now(&bed.path).await.expect("validated");
    assert!(checked.valid && checked.undecided().is_none());
    assert_eq!(bed.status().state, State::Active);
    assert_eq!(bed.events(), vec![Kind::Validated]);

    bed.fake.then(Operation::Validate, Reply::Invalid);
    bed.engine.validate_now(&bed.path).await.expect("validated");
    assert_eq!(bed.status().state, State::Invalid);

    bed.fake.then(
        Operation::Validate,
        Reply::Fail(ProviderError::Rejected("revoked".into())),
    );
    let checked = bed.engine.validate_now(&bed.path).await.expect("validated");
    assert_eq!(checked.undecided(), None, "rejected is an answer");
    assert_eq!(bed.status().state, State::Revoked);
    assert_eq!(bed.events(), vec![Kind::Invalid, Kind::Invalid]);

    // Could not tell: the state stays, the detail says why, no event.
    bed.fake.then(
        Operation::Validate,
        Reply::Fail(ProviderError::Unavailable("503".into())),
    );
    let checked = bed.engine.validate_now(&bed.path).await.expect("validated");
    assert_eq!(checked.undecided(), Some("unavailable"));
    let status = bed.status();
    assert_eq!(status.state, State::Revoked);
    assert!(status.detail.contains("unavailable"), "{}", status.detail);
    assert!(bed.events().is_empty());

    // A fault in the host is the caller's error; the next check comes on schedule.
    bed.fake.then(Operation::Validate, Reply::Fault);
    let err = bed.engine.validate_now(&bed.path).await.expect_err("fault");
    assert!(
        matches!(err, Error::Provider(Failure::Host { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_write_the_provider_does_not_accept_is_refused_and_one_it_cannot_check_fails() {
    let bed = Bed::new(validating()).await;
    let candidate = cred("api-key", "key-new");
    bed.engine
        .check_before_write(&bed.path, &candidate, true)
        .await
        .expect("accepted");
    bed.fake.then(Operation::Validate, Reply::Invalid);
    let err = bed
        .engine
        .check_before_write(&bed.path, &candidate, true)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::Rejected { .. },
                ..
            }
        ),
        "{err:?}"
    );
    bed.fake.then(
        Operation::Validate,
        Reply::Fail(ProviderError::Unavailable("503".into())),
    );
    let err = bed
        .engine
        .check_before_write(&bed.path, &candidate, true)
        .await
        .expect_err("cannot tell");
    assert!(
        matches!(err, Error::Provider(Failure::Answered { .. })),
        "{err:?}"
    );
}

#[test]
fn forbidden_permissions_are_found_only_when_granted() {
    let checked = |perms: Vec<(&str, bool)>| Validation {
        valid: true,
        detail: String::new(),
        permissions: perms.into_iter().map(|(n, g)| (n.to_owned(), g)).collect(),
        expires_at: None,
    };
    let p = policy();
    assert_eq!(
        forbidden(&p, &checked(vec![("Withdraw", true)])),
        Some("Withdraw".into())
    );
    assert_eq!(
        forbidden(&p, &checked(vec![("withdraw", false), ("trade", true)])),
        None
    );
}

#[tokio::test]
async fn a_stop_mid_rotation_lets_the_step_finish_journals_it_and_the_next_start_completes_it() {
    let bed = Bed::new(rotating()).await;
    let (gate, rotation) = bed.rotation_stalled_in_step_1().await;

    // The stop waits for the step in flight; it finishes once the service answers.
    let engine = bed.engine.clone();
    let stop = tokio::spawn(async move { engine.shutdown(Duration::from_secs(30)).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while !bed.engine.stopping() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the engine to be stopping within 10s");
    let refused = bed.engine.rotate_now(&bed.path).await;
    assert!(matches!(refused, Err(Error::ShuttingDown)), "{refused:?}");
    gate.release.add_permits(1);
    let answered = rotation.await.expect("joined");
    assert!(matches!(answered, Err(Error::ShuttingDown)), "{answered:?}");
    assert_eq!(stop.await.expect("joined"), Stopped { cut_off: 0 });
    assert_eq!(bed.current_key(), ORIGINAL, "stopped before promoting");
    assert!(bed.store.journal_get(&bed.path).expect("journal").is_some());

    // The next start goes on from the journalled step: no second create.
    let bed = bed.restart().await;
    bed.engine.recover().await;
    assert_eq!(
        bed.fake.calls(Operation::CreatePending),
        1,
        "step 1 is not run again"
    );
    assert!(
        bed.current_key().starts_with("made-"),
        "{}",
        bed.current_key()
    );
    assert!(bed.store.journal_get(&bed.path).expect("journal").is_none());
}

#[tokio::test]
async fn a_stop_cuts_off_a_step_that_outlives_its_grace_and_the_next_start_replays_it() {
    let bed = Bed::new(rotating()).await;
    let (_never_released, rotation) = bed.rotation_stalled_in_step_1().await;
    let stopped = bed.engine.shutdown(Duration::from_millis(200)).await;
    assert_eq!(stopped, Stopped { cut_off: 1 });
    let answered = rotation.await.expect("joined");
    assert!(matches!(answered, Err(Error::ShuttingDown)), "{answered:?}");

    // The claim and its seed are journalled: step 1 runs again with the same seed.
    let bed = bed.restart().await;
    bed.engine.recover().await;
    assert_eq!(bed.fake.calls(Operation::CreatePending), 2);
    assert!(
        bed.current_key().starts_with("made-"),
        "{}",
        bed.current_key()
    );
}
