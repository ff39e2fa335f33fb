//! The SQL capability against the real PostgreSQL and MariaDB on the machine.

use latchkey_plugin_host::{Capability, Credential, DenyReason, ProviderError, SecretString};

use crate::support::{basic_spec, config, host};

fn cred() -> Credential {
    Credential::new("db-password", [("password", SecretString::from("unused"))])
}

async fn round_trip(connection: &str) {
    let t = host();
    let plugin = granted(&t, connection).await;
    let user = format!("lk_test_{}_{connection}", std::process::id());
    let answer = plugin
        .validate(
            config(&[("mode", "sql"), ("connection", connection), ("user", &user)]),
            cred(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(answer.valid, "{}", answer.detail);
    assert!(answer.detail.contains("t=it's"), "{}", answer.detail);
    assert!(answer.detail.contains("columns=n,t"), "{}", answer.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_capability_creates_checks_and_drops_a_postgres_role() {
    round_trip("pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_capability_creates_checks_and_drops_a_mariadb_user() {
    round_trip("maria").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_not_granted_is_denied_and_audited() {
    let t = host();
    let plugin = granted(&t, "pg").await;
    let answer = plugin
        .validate(
            config(&[("mode", "sql"), ("connection", "maria"), ("user", "x")]),
            cred(),
        )
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(ProviderError::Denied(_))),
        "{answer:?}"
    );
    let events = t.audit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].capability, Capability::Sql);
    assert_eq!(events[0].target, "maria");
    assert_eq!(events[0].reason, DenyReason::ConnectionNotGranted);
}

/// The basic guest, granted `connection` on `t`'s host.
async fn granted(t: &crate::support::TestHost, connection: &str) -> latchkey_plugin_host::Plugin {
    let mut spec = basic_spec();
    spec.grants.sql = vec![connection.to_owned()];
    t.host.load(spec).await.unwrap()
}

/// The machine's two servers as one-connection pools (so consecutive calls share a
/// session), the PostgreSQL one with `standard_conforming_strings` off from the
/// start, as a DSN or a server config can set it.
fn one_connection_host() -> crate::support::TestHost {
    crate::support::host_with(|c| {
        for conn in &mut c.sql {
            conn.max_connections = 1;
            if conn.name == "pg" {
                let url = conn.url.expose().to_owned();
                let sep = if url.contains('?') { '&' } else { '?' };
                conn.url =
                    format!("{url}{sep}options=-c%20standard_conforming_strings%3Doff").into();
            }
        }
    })
}

async fn exec(
    plugin: &latchkey_plugin_host::Plugin,
    connection: &str,
    statement: &str,
) -> Result<latchkey_plugin_host::Validation, ProviderError> {
    plugin
        .validate(
            config(&[
                ("mode", "sql-exec"),
                ("connection", connection),
                ("statement", statement),
            ]),
            cred(),
        )
        .await
        .unwrap()
}

async fn literal(
    plugin: &latchkey_plugin_host::Plugin,
    connection: &str,
    text: &str,
) -> latchkey_plugin_host::Validation {
    plugin
        .validate(
            config(&[
                ("mode", "sql-literal"),
                ("connection", connection),
                ("text", text),
            ]),
            cred(),
        )
        .await
        .unwrap()
        .unwrap()
}

/// Runs `SELECT 1; {second}` and checks it was refused and `probe` (a count of what
/// `second` would create) is 0; `cleanup` removes it if it was created.
async fn two_statements_are_refused(connection: &str, second: &str, probe: &str, cleanup: &str) {
    let t = host();
    let plugin = granted(&t, connection).await;
    let refused = exec(&plugin, connection, &format!("SELECT 1; {second}")).await;
    // Nothing of the second statement ran (checked first, so a failure leaves the
    // shared server as it was).
    let count = exec(&plugin, connection, probe).await.unwrap();
    if count.detail != "0" {
        let _ = exec(&plugin, connection, cleanup).await;
    }
    assert_eq!(count.detail, "0", "{connection}: the second statement ran");
    assert!(
        matches!(refused, Err(ProviderError::Rejected(_))),
        "{connection}: {refused:?}"
    );
    // One statement (with a trailing semicolon) still runs.
    let one = exec(&plugin, connection, "SELECT 41 + 1;").await.unwrap();
    assert_eq!(one.detail, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_a_two_statement_call_is_refused_on_postgres_and_nothing_runs() {
    let role = format!("lk_r15_second_{}", std::process::id());
    two_statements_are_refused(
        "pg",
        &format!("CREATE ROLE {role}"),
        &format!("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = '{role}'"),
        &format!("DROP ROLE IF EXISTS {role}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_a_two_statement_call_is_refused_on_mariadb_and_nothing_runs() {
    let user = format!("lk_r15_second_{}", std::process::id());
    two_statements_are_refused(
        "maria",
        &format!("CREATE USER '{user}'@'%'"),
        &format!("SELECT count(*) FROM mysql.user WHERE User = '{user}'"),
        &format!("DROP USER IF EXISTS '{user}'@'%'"),
    )
    .await;
}

/// Texts whose quoting depends on the session's settings.
const TRICKY: [&str; 5] = [
    "back\\slash",
    "it's",
    "\\'; SELECT 1; --",
    "trailing\\",
    "\u{00bf}\\' \u{4e2d}\\\\ \u{1f511}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_postgres_literals_read_back_exactly_with_standard_conforming_strings_off() {
    let t = one_connection_host();
    let plugin = granted(&t, "pg").await;
    let setting = exec(&plugin, "pg", "SHOW standard_conforming_strings")
        .await
        .unwrap();
    assert_eq!(setting.detail, "off", "the session under test");
    for text in TRICKY {
        let read = literal(&plugin, "pg", text).await;
        assert!(read.valid, "{text:?}: {}", read.detail);
    }
    // Turned on, then off again by an earlier call of the session: the same.
    for value in ["on", "off"] {
        exec(
            &plugin,
            "pg",
            &format!("SET standard_conforming_strings = {value}"),
        )
        .await
        .unwrap();
        for text in TRICKY {
            let read = literal(&plugin, "pg", text).await;
            assert!(read.valid, "{value}: {text:?}: {}", read.detail);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_mariadb_sessions_are_pinned_to_utf8mb4_with_backslash_escapes() {
    let t = one_connection_host();
    let plugin = granted(&t, "maria").await;
    let session = exec(
        &plugin,
        "maria",
        "SELECT @@SESSION.character_set_client, @@SESSION.character_set_connection",
    )
    .await
    .unwrap();
    assert_eq!(session.detail, "utf8mb4|utf8mb4");
    for text in TRICKY {
        let read = literal(&plugin, "maria", text).await;
        assert!(read.valid, "{text:?}: {}", read.detail);
    }
    // An earlier call that turns NO_BACKSLASH_ESCAPES on and switches the character
    // set does not change how a later call's literals read.
    exec(
        &plugin,
        "maria",
        "SET NAMES gbk, SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')",
    )
    .await
    .unwrap();
    let session = exec(
        &plugin,
        "maria",
        "SELECT @@SESSION.character_set_client, FIND_IN_SET('NO_BACKSLASH_ESCAPES', @@SESSION.sql_mode)",
    )
    .await
    .unwrap();
    assert_eq!(session.detail, "utf8mb4|0", "the session was pinned again");
    for text in TRICKY {
        let read = literal(&plugin, "maria", text).await;
        assert!(read.valid, "{text:?}: {}", read.detail);
    }
}

/// Runs `leave` in one call, then `probe` in the next on a one-connection pool:
/// whatever the first call left in its session must not be seen by the second.
async fn nothing_is_left_for_the_next_call(connection: &str, leave: &[String], probe: &[String]) {
    let t = one_connection_host();
    let plugin = granted(&t, connection).await;
    for statement in leave {
        exec(&plugin, connection, statement)
            .await
            .unwrap_or_else(|e| panic!("{connection}: {statement}: {e:?}"));
    }
    for statement in probe {
        let seen = exec(&plugin, connection, statement).await;
        assert!(
            matches!(&seen, Ok(v) if v.detail == "clean") || seen.is_err(),
            "{connection}: the next call saw the session of the last: {statement} -> {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_call_never_sees_what_an_earlier_call_left_in_its_session() {
    let table = format!("lk_left_{}", std::process::id());
    nothing_is_left_for_the_next_call(
        "pg",
        &[
            format!("CREATE TEMP TABLE {table} (x int)"),
            "SET lk.leftover = 'set'".to_owned(),
        ],
        &[
            // A temporary table is visible only to the session that made it.
            format!("SELECT 'leaked' FROM pg_temp.{table}"),
            "SELECT CASE WHEN current_setting('lk.leftover', true) = 'set' \
             THEN 'leaked' ELSE 'clean' END"
                .to_owned(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_call_never_sees_what_an_earlier_call_left_in_its_session() {
    let table = format!("lk_left_{}", std::process::id());
    nothing_is_left_for_the_next_call(
        "maria",
        &[
            format!("CREATE TEMPORARY TABLE {table} (x int)"),
            "SET @lk_left = 'set'".to_owned(),
            "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',ANSI_QUOTES')".to_owned(),
        ],
        &[
            format!("SELECT 'leaked' FROM {table}"),
            "SELECT IF(@lk_left = 'set', 'leaked', 'clean')".to_owned(),
            "SELECT IF(FIND_IN_SET('ANSI_QUOTES', @@SESSION.sql_mode), 'leaked', 'clean')"
                .to_owned(),
        ],
    )
    .await;
}
