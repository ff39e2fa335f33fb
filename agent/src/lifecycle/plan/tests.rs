//! Unit tests of the engine's planning arithmetic.

use std::time::Duration;

use super::*;
use crate::path::SecretPath;
use crate::secret::{Fields, SecretString};

/// A policy covering `db/*` that does nothing until a test sets its times.
pub(in crate::lifecycle) fn policy() -> LifecycleSpec {
    LifecycleSpec {
        paths: vec!["db/*".into()],
        plugin: "pg".into(),
        config: Default::default(),
        validate_every: None,
        refresh_before: None,
        rotate_every: None,
        rotate_before_expiry: None,
        grace: None,
        max_attempts: 3,
        retry_after: Duration::from_secs(10),
        forbid_permissions: vec!["withdraw".into()],
        validate_on_write: false,
    }
}

/// Version 3 of `db/a`, written at `updated_at`.
pub(in crate::lifecycle) fn secret(updated_at: i64, expires_at: Option<i64>) -> Secret {
    let fields: Fields = [("password".to_owned(), SecretString::from("x"))]
        .into_iter()
        .collect();
    Secret {
        path: SecretPath::parse("db/a").expect("path"),
        version: 3,
        labels: vec!["current".into()],
        kind: "generic".into(),
        fields,
        created_at: updated_at,
        updated_at,
        expires_at,
    }
}

#[test]
fn rotation_is_due_by_age_or_by_expiry_whichever_comes_first() {
    let mut p = policy();
    p.rotate_every = Some(Duration::from_secs(100));
    p.rotate_before_expiry = Some(Duration::from_secs(50));
    let status = Status::new("pg", 3, 0);
    assert_eq!(rotation_at(&p, &secret(1000, None), &status), Some(1100));
    assert_eq!(
        rotation_at(&p, &secret(1000, Some(1080)), &status),
        Some(1030)
    );
    // A later rotation recorded elsewhere moves the age clock.
    let mut rotated = status.clone();
    rotated.rotated_at = Some(1500);
    assert_eq!(rotation_at(&p, &secret(1000, None), &rotated), Some(1600));
}

#[test]
fn failed_rotations_wait_for_their_retry_and_stop_at_the_attempt_limit() {
    let mut p = policy();
    p.rotate_every = Some(Duration::from_secs(100));
    let mut status = Status::new("pg", 3, 0);
    status.failures = 1;
    status.retry_at = Some(5000);
    assert_eq!(rotation_at(&p, &secret(1000, None), &status), Some(5000));
    status.failures = 3;
    assert_eq!(rotation_at(&p, &secret(1000, None), &status), None);
}

#[test]
fn refresh_is_planned_ahead_of_expiry_and_backs_off_after_failures() {
    let mut p = policy();
    p.refresh_before = Some(Duration::from_secs(60));
    let mut status = Status::new("oauth", 1, 0);
    assert!(refresh_due(&p, &secret(0, Some(1000)), &status, 940));
    assert!(!refresh_due(&p, &secret(0, Some(1000)), &status, 939));
    status.failures = 1;
    status.retry_at = Some(2000);
    assert!(!refresh_due(&p, &secret(0, Some(1000)), &status, 1500));
}

#[test]
fn validation_runs_every_interval_after_the_last_check() {
    let mut p = policy();
    p.validate_every = Some(Duration::from_secs(300));
    let mut status = Status::new("pg", 1, 1000);
    let first = validation_at(&p, &status).expect("planned");
    assert!((1000..1060).contains(&first), "{first}");
    status.checked_at = Some(2000);
    assert_eq!(validation_at(&p, &status), Some(2300));
    assert_eq!(validation_at(&policy(), &status), None);
}

#[test]
fn next_due_is_the_earliest_of_everything_planned() {
    let mut p = policy();
    p.rotate_every = Some(Duration::from_secs(1000));
    let mut status = Status::new("pg", 3, 0);
    status.retire_at = Some(1200);
    assert_eq!(next_due(&p, &secret(1000, None), &status, 0), Some(1200));
    assert_eq!(
        next_due(&p, &secret(1000, Some(1100)), &status, 0),
        Some(1100),
        "expiry itself is planned, to mark the credential expired"
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    let base = Duration::from_secs(10);
    let first = backoff(base, 1);
    assert!((10..=12).contains(&first), "{first}");
    let third = backoff(base, 3);
    assert!((40..=48).contains(&third), "{third}");
    assert!(backoff(base, 30) <= 3600 + 720);
}

#[test]
fn the_plan_pops_due_entries_in_time_order_and_replaces_old_ones() {
    let mut plan = Plan::default();
    let a = SecretPath::parse("a").expect("path");
    let b = SecretPath::parse("b").expect("path");
    plan.set(&a, Some(10));
    plan.set(&b, Some(5));
    plan.set(&a, Some(20));
    assert_eq!(plan.next(), Some(5));
    assert_eq!(plan.pop_due(10), vec![b]);
    assert_eq!(plan.pop_due(19), Vec::<SecretPath>::new());
    assert_eq!(plan.pop_due(20), vec![a]);
    assert_eq!(plan.next(), None);
}
