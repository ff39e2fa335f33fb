//! The `postgres` and `mysql` providers rotating real role passwords, called through
//! `latchkey plugin call --sql NAME=env:VAR` (the real binary and host).
//!
//! PostgreSQL runs on a private server per test ([`PgServer`]: scram-sha-256, so a
//! wrong password is refused; the machine's cluster trusts every loopback login).
//! MySQL runs on the machine's MariaDB (127.0.0.1:3306, root without a password,
//! database `test`), which checks passwords of users created `IDENTIFIED BY`; each
//! test creates users with unique names and drops them at the end.
//!
//! Every rotation is checked with real logins: before it (the old password works),
//! after `create-pending` (single: only the new one; alternate: both), and after
//! `retire` (alternate: only the new one); a second rotation re-enables the retired
//! role; failures leave the current password working and never print a password.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::Connection as _;

use crate::harness::postgres::PgServer;
use crate::harness::wasm::{call_with_env, plugin, Called};

/// The environment variable the connection URL travels in (per call).
const URL_VAR: &str = "LATCHKEY_TEST_DB_URL";
/// The machine's MariaDB, as its administrator.
const MARIA_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// A role or user name no other test (or test process) uses.
fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "lk{tag}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One provider with one granted connection.
struct Provider {
    wasm: PathBuf,
    /// The connection's name (granted with `--sql NAME=env:…`).
    name: String,
    url: String,
}

impl Provider {
    fn new(plugin_name: &str, url: String) -> anyhow::Result<Self> {
        Ok(Self {
            wasm: plugin(plugin_name)?,
            name: plugin_name.to_owned(),
            url,
        })
    }

    /// The same plugin with connection `name` granted from `url` instead.
    fn granting(&self, name: &str, url: &str) -> Self {
        Self {
            wasm: self.wasm.clone(),
            name: name.to_owned(),
            url: url.to_owned(),
        }
    }

    fn call(&self, op: &str, config: &Value, cred: &Value) -> anyhow::Result<Called> {
        let grant = format!("{}=env:{URL_VAR}", self.name);
        call_with_env(
            &self.wasm,
            op,
            config,
            cred,
            &["--sql", &grant],
            &[(URL_VAR, &self.url)],
        )
    }

    /// `ok` of a call that must succeed.
    fn ok(&self, op: &str, config: &Value, cred: &Value) -> anyhow::Result<Value> {
        let called = self.call(op, config, cred)?;
        match called.json.get("ok") {
            Some(ok) if called.success => Ok(ok.clone()),
            _ => bail!("{op} failed: {} (stderr: {})", called.json, called.stderr),
        }
    }

    /// `error.code` of a call that must fail; checks its output holds none of `secrets`.
    fn error(
        &self,
        op: &str,
        config: &Value,
        cred: &Value,
        secrets: &[&str],
    ) -> anyhow::Result<String> {
        let called = self.call(op, config, cred)?;
        let Some(code) = called.json["error"]["code"].as_str() else {
            bail!("{op} should have failed: {}", called.json);
        };
        if called.success {
            bail!("{op} failed but the CLI exited 0");
        }
        for s in secrets {
            let printed = format!("{}{}", called.json, called.stderr);
            if printed.contains(s) {
                bail!("{op}'s error printed a password: {printed}");
            }
        }
        Ok(code.to_owned())
    }

    fn validate(&self, config: &Value, cred: &Value) -> anyhow::Result<bool> {
        let answer = self.ok("validate", config, cred)?;
        answer["valid"]
            .as_bool()
            .with_context(|| format!("validate answered {answer}"))
    }
}

fn cred(kind: &str, user: &str, password: &str) -> Value {
    json!({"kind": kind, "fields": {"username": user, "password": password}, "expires_at": null})
}

/// `(username, password)` of a credential a call returned.
fn user_and_password(credential: &Value) -> anyhow::Result<(String, String)> {
    let field = |name: &str| {
        credential["fields"][name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name} in {credential}"))
    };
    Ok((field("username")?, field("password")?))
}

const PG: &str = "postgres-password";
const MY: &str = "mysql-password";

/// `info` of `provider` (credential kind `kind`) names the kind, the three operations
/// and the default connection (the provider's name); `validate` of `user`, whose
/// password is `good-password`, is true, false for a bad password (which it never
/// prints) and for an unknown user, and `unsupported` for the other product's kind;
/// `refresh`, not in the manifest, is refused by the host.
fn check_info_and_validate(provider: &Provider, kind: &str, user: &str) -> anyhow::Result<()> {
    let info = provider.ok(
        "info",
        &json!({}),
        &json!({"kind": "generic", "fields": {}}),
    )?;
    assert_eq!(info["name"], provider.name.as_str());
    assert_eq!(info["kinds"], json!([kind]));
    assert_eq!(
        info["operations"],
        json!(["validate", "create-pending", "retire"])
    );
    assert_eq!(info["sql_connections"], json!([provider.name]));

    assert!(provider.validate(&json!({}), &cred(kind, user, "good-password"))?);
    let bad = provider.ok("validate", &json!({}), &cred(kind, user, "bad-password"))?;
    assert_eq!(bad["valid"], false);
    assert!(!bad["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("bad-password"));
    assert!(!provider.validate(&json!({}), &cred(kind, &unique("none"), "x"))?);
    // Another kind never reaches the plugin: the host refuses it (exit 10, unsupported).
    let other = if kind == PG { MY } else { PG };
    let refused = provider.call("validate", &json!({}), &cred(other, user, "good-password"))?;
    assert_eq!(refused.code, Some(10), "{refused:?}");
    assert!(
        refused.stderr.contains("does not declare credential kind"),
        "{}",
        refused.stderr
    );
    let called = provider.call("refresh", &json!({}), &cred(kind, user, "good-password"))?;
    assert!(!called.success);
    assert!(
        called.stderr.contains("does not declare operation refresh"),
        "{}",
        called.stderr
    );
    Ok(())
}

/// Counts the `ALTER ROLE` statements on `role` in the server's log.
fn alters_of(pg: &PgServer, role: &str) -> usize {
    let prefix = format!("ALTER ROLE \"{role}\"");
    pg.statements()
        .iter()
        .filter(|s| s.starts_with(&prefix))
        .count()
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test(flavor = "multi_thread")]
async fn private_postgres_server_checks_passwords() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    // About 0.3 s from the template (2.5 s more on a machine's first run): a bound
    // that only catches a hang.
    assert!(
        pg.started_in() < std::time::Duration::from_secs(60),
        "{:?}",
        pg.started_in()
    );
    assert!(pg.can_login("postgres", pg.admin_password()).await?);
    assert!(
        !pg.can_login("postgres", "not-the-password").await?,
        "the private server must refuse a wrong password (scram), unlike the machine's"
    );
    assert!(pg
        .admin_url()
        .contains(&format!("@127.0.0.1:{}/postgres", pg.port())));
    pg.execute("CREATE ROLE \"harness check\" LOGIN PASSWORD 'a b'")
        .await?;
    assert!(pg.can_login("harness check", "a b").await?);
    assert_eq!(
        pg.statements().last().map(String::as_str),
        Some("CREATE ROLE \"harness check\" LOGIN PASSWORD 'a b'")
    );
    // The URL form percent-encodes what needs it.
    assert!(pg
        .url_for("harness check", "a b", "postgres")
        .starts_with("postgres://harness%20check:a%20b@"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_single_rotation_replaces_the_password_in_place() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let provider = Provider::new("postgres", pg.admin_url())?;
    let role = unique("ps");
    let old = "initial-Password-1";
    pg.execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{old}'"))
        .await?;
    let config = json!({"connection": "postgres", "strategy": "single"});

    assert!(pg.can_login(&role, old).await?);
    assert!(provider.validate(&config, &cred(PG, &role, old))?);
    assert!(!provider.validate(&config, &cred(PG, &role, "wrong-password"))?);

    let pending = provider.ok("create-pending", &config, &cred(PG, &role, old))?;
    let (user, new) = user_and_password(&pending)?;
    assert_eq!(user, role);
    assert_eq!(pending["kind"], PG);
    assert_eq!(new.len(), 32);
    assert!(pg.can_login(&role, &new).await?, "the new password logs in");
    assert!(
        !pg.can_login(&role, old).await?,
        "the old one no longer does"
    );
    assert!(provider.validate(&config, &cred(PG, &role, &new))?);
    assert!(!provider.validate(&config, &cred(PG, &role, old))?);

    // One ALTER ROLE at the server, carrying a SCRAM verifier, never the password.
    assert_eq!(alters_of(&pg, &role), 1);
    assert!(
        !pg.log().contains(&new),
        "the password reached the server log"
    );
    let stored = pg
        .query_column(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"
        ))
        .await?;
    assert!(stored[0].starts_with("SCRAM-SHA-256$4096:"), "{stored:?}");

    // Single: retire has nothing to revoke, and must not touch the (same) role.
    assert_eq!(
        provider.ok("retire", &config, &cred(PG, &role, old))?,
        Value::Null
    );
    assert!(pg.can_login(&role, &new).await?);
    assert_eq!(alters_of(&pg, &role), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_server_hashing_sends_the_password_and_honours_length_and_alphabet(
) -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let provider = Provider::new("postgres", pg.admin_url())?;
    let role = unique("ph");
    pg.execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'first-one'"
    ))
    .await?;
    let config = json!({"password-hashing": "server", "password-length": "64",
                        "password-alphabet": "alphanumeric"});
    let pending = provider.ok("create-pending", &config, &cred(PG, &role, "first-one"))?;
    let (_, new) = user_and_password(&pending)?;
    assert_eq!(new.len(), 64);
    assert!(new.chars().all(|c| c.is_ascii_alphanumeric()));
    assert!(pg.can_login(&role, &new).await?);
    assert!(!pg.can_login(&role, "first-one").await?);
    // With server hashing the statement (and so the log) carries the password.
    assert!(pg.log().contains(&new));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_alternate_rotation_keeps_the_previous_role_until_retired() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let provider = Provider::new("postgres", pg.admin_url())?;
    let base = unique("pa");
    let (a, b) = (format!("{base}_a"), format!("{base}_b"));
    let pw1 = "first-Password-a";
    pg.execute(&format!(
        "CREATE ROLE \"{a}\" LOGIN PASSWORD '{pw1}'; CREATE ROLE \"{b}\" NOLOGIN"
    ))
    .await?;
    let config = json!({"strategy": "alternate", "username": base});
    assert!(pg.can_login(&a, pw1).await?);

    // Rotation 1: a → b. Both work during the grace window.
    let pending = provider.ok("create-pending", &config, &cred(PG, &a, pw1))?;
    let (user, pw2) = user_and_password(&pending)?;
    assert_eq!(user, b);
    assert!(pg.can_login(&b, &pw2).await?, "the pending role logs in");
    assert!(
        pg.can_login(&a, pw1).await?,
        "the previous role still logs in"
    );
    assert!(provider.validate(&config, &cred(PG, &b, &pw2))?);

    // Retire a: only b works.
    assert_eq!(
        provider.ok("retire", &config, &cred(PG, &a, pw1))?,
        Value::Null
    );
    assert!(
        !pg.can_login(&a, pw1).await?,
        "the retired role is locked out"
    );
    assert!(pg.can_login(&b, &pw2).await?);
    assert!(!provider.validate(&config, &cred(PG, &a, pw1))?);
    let login = pg
        .query_column(&format!(
            "SELECT rolcanlogin::text FROM pg_roles WHERE rolname = '{a}'"
        ))
        .await?;
    assert_eq!(login, vec!["false".to_owned()]);
    // Retiring again is a no-op success.
    assert_eq!(
        provider.ok("retire", &config, &cred(PG, &a, pw1))?,
        Value::Null
    );

    // Rotation 2: b → a, which must log in again.
    let pending = provider.ok("create-pending", &config, &cred(PG, &b, &pw2))?;
    let (user, pw3) = user_and_password(&pending)?;
    assert_eq!(user, a);
    assert!(
        pg.can_login(&a, &pw3).await?,
        "the retired role is re-enabled"
    );
    assert!(pg.can_login(&b, &pw2).await?);
    // A late retry of rotation 1's retire must not lock out the active role again.
    assert_eq!(
        provider.ok("retire", &config, &cred(PG, &a, pw1))?,
        Value::Null
    );
    assert!(
        pg.can_login(&a, &pw3).await?,
        "a stale retire left the active role alone"
    );
    assert_eq!(
        provider.ok("retire", &config, &cred(PG, &b, &pw2))?,
        Value::Null
    );
    assert!(!pg.can_login(&b, &pw2).await?);
    assert!(pg.can_login(&a, &pw3).await?);

    // At the server: b set once; a disabled once, set once; b disabled once.
    assert_eq!(alters_of(&pg, &a), 2);
    assert_eq!(alters_of(&pg, &b), 2);
    for pw in [&pw2, &pw3] {
        assert!(!pg.log().contains(pw.as_str()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_failures_leave_the_current_password_working() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let provider = Provider::new("postgres", pg.admin_url())?;
    let base = unique("pf");
    let current = format!("{base}_a");
    let pw = "current-Password-9";
    let weak = unique("pw");
    pg.execute(&format!(
        "CREATE ROLE \"{current}\" LOGIN PASSWORD '{pw}'; \
         CREATE ROLE \"{weak}\" LOGIN PASSWORD 'weak-admin-pw'"
    ))
    .await?;
    let me = cred(PG, &current, pw);

    // The other role of the pair does not exist.
    let config = json!({"strategy": "alternate", "username": base});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "invalid-config"
    );
    // A pair that does not contain the current role.
    let config = json!({"strategy": "alternate", "roles": "x_one,x_two"});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "invalid-config"
    );
    // A connection the plugin was not granted.
    let config = json!({"connection": "elsewhere"});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "denied"
    );
    // Granted on the command line but not in the manifest's needs: not granted either.
    let stranger = provider.granting("elsewhere", &pg.admin_url());
    assert_eq!(
        stranger.error("create-pending", &config, &me, &[pw])?,
        "denied"
    );
    // An admin connection without the right to alter roles: the ALTER fails.
    let weak_admin = provider.granting("postgres", &pg.url_for(&weak, "weak-admin-pw", "postgres"));
    let called = weak_admin.call("create-pending", &json!({}), &me)?;
    assert_eq!(called.json["error"]["code"], "rejected", "{}", called.json);
    let detail = called.json["error"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("permission denied"), "{detail}");
    // A database that is down.
    let down = provider.granting(
        "postgres",
        &format!(
            "postgres://postgres:x@127.0.0.1:{}/postgres",
            crate::harness::free_port()?
        ),
    );
    // (validate connects directly; statements would first wait out the host pool's
    // 10 s acquire timeout, with the same answer.)
    assert_eq!(
        down.error("validate", &json!({}), &me, &[pw])?,
        "unavailable"
    );
    // A MySQL URL under the postgres name.
    let wrong = provider.granting("postgres", MARIA_ADMIN);
    assert_eq!(
        wrong.error("create-pending", &json!({}), &me, &[pw])?,
        "invalid-config"
    );

    assert!(
        pg.can_login(&current, pw).await?,
        "the current password still works"
    );
    assert_eq!(
        alters_of(&pg, &current),
        1,
        "only the weak admin's refused ALTER was tried"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_info_and_validate() -> anyhow::Result<()> {
    let pg = PgServer::start().await?;
    let provider = Provider::new("postgres", pg.admin_url())?;
    let role = unique("pv");
    pg.execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'good-password'"
    ))
    .await?;
    check_info_and_validate(&provider, PG, &role)
}

// ---------------------------------------------------------------- MariaDB

/// Users created on the machine's MariaDB by one test, dropped when it ends (even
/// when it fails).
struct MariaUsers(Vec<String>);

impl MariaUsers {
    /// Creates `'user'@'%'` with `password` (none: locked, with a random password),
    /// allowed to log in to database `test`.
    async fn create(&mut self, user: &str, password: Option<&str>) -> anyhow::Result<()> {
        self.0.push(user.to_owned());
        let auth = match password {
            Some(pw) => format!("IDENTIFIED BY '{pw}'"),
            None => "IDENTIFIED BY 'unused-locked-pw' ACCOUNT LOCK".to_owned(),
        };
        maria(&format!(
            "CREATE USER '{user}'@'%' {auth}; GRANT SELECT ON test.* TO '{user}'@'%'"
        ))
        .await
    }
}

impl Drop for MariaUsers {
    fn drop(&mut self) {
        let drops: Vec<String> = self
            .0
            .iter()
            .map(|u| format!("DROP USER IF EXISTS '{u}'@'%';"))
            .collect();
        let _ = std::process::Command::new("mariadb")
            .args(["-h127.0.0.1", "-P3306", "-uroot", "-e", &drops.join(" ")])
            .output();
    }
}

/// Runs admin SQL on the machine's MariaDB.
async fn maria(sql: &str) -> anyhow::Result<()> {
    let mut conn = MySqlConnection::connect(MARIA_ADMIN)
        .await
        .context("connect to MariaDB on 127.0.0.1:3306 as root")?;
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .with_context(|| format!("run {sql:?}"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Whether `user` / `password` can log in to MariaDB's `test` database; `false` when
/// the server refuses (wrong password, locked account).
async fn maria_can_login(user: &str, password: &str) -> anyhow::Result<bool> {
    let options = MySqlConnectOptions::from_str(MARIA_ADMIN)?
        .username(user)
        .password(password);
    match MySqlConnection::connect_with(&options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(true)
        }
        Err(sqlx::Error::Database(_)) => Ok(false),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("log in as {user}"))),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_single_rotation_replaces_the_password_in_place() -> anyhow::Result<()> {
    let provider = Provider::new("mysql", MARIA_ADMIN.to_owned())?;
    let mut users = MariaUsers(Vec::new());
    let user = unique("ms");
    let old = "initial-Password-2";
    users.create(&user, Some(old)).await?;
    let config = json!({"connection": "mysql", "strategy": "single"});

    assert!(maria_can_login(&user, old).await?);
    assert!(provider.validate(&config, &cred(MY, &user, old))?);
    assert!(!provider.validate(&config, &cred(MY, &user, "wrong-password"))?);

    let pending = provider.ok("create-pending", &config, &cred(MY, &user, old))?;
    let (name, new) = user_and_password(&pending)?;
    assert_eq!(name, user);
    assert_eq!(pending["kind"], MY);
    assert_eq!(new.len(), 32);
    assert!(
        maria_can_login(&user, &new).await?,
        "the new password logs in"
    );
    assert!(
        !maria_can_login(&user, old).await?,
        "the old one no longer does"
    );
    assert!(provider.validate(&config, &cred(MY, &user, &new))?);

    assert_eq!(
        provider.ok("retire", &config, &cred(MY, &user, old))?,
        Value::Null
    );
    assert!(
        maria_can_login(&user, &new).await?,
        "retire left the single account alone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_alternate_rotation_keeps_the_previous_account_until_retired() -> anyhow::Result<()> {
    let provider = Provider::new("mysql", MARIA_ADMIN.to_owned())?;
    let mut users = MariaUsers(Vec::new());
    let (a, b) = (unique("maa"), unique("mab"));
    let pw1 = "first-Password-a";
    users.create(&a, Some(pw1)).await?;
    users.create(&b, None).await?;
    let config = json!({"strategy": "alternate", "roles": format!("{a},{b}"), "host": "%"});
    assert!(maria_can_login(&a, pw1).await?);

    // Rotation 1: a → b (unlocked). Both work during the grace window.
    let pending = provider.ok("create-pending", &config, &cred(MY, &a, pw1))?;
    let (user, pw2) = user_and_password(&pending)?;
    assert_eq!(user, b);
    assert!(
        maria_can_login(&b, &pw2).await?,
        "the pending account logs in"
    );
    assert!(
        maria_can_login(&a, pw1).await?,
        "the previous account still logs in"
    );

    // Retire a: locked, only b works.
    assert_eq!(
        provider.ok("retire", &config, &cred(MY, &a, pw1))?,
        Value::Null
    );
    assert!(
        !maria_can_login(&a, pw1).await?,
        "the retired account is locked out"
    );
    assert!(maria_can_login(&b, &pw2).await?);
    assert!(!provider.validate(&config, &cred(MY, &a, pw1))?);
    assert_eq!(
        provider.ok("retire", &config, &cred(MY, &a, pw1))?,
        Value::Null
    );

    // Rotation 2: b → a, unlocked again.
    let pending = provider.ok("create-pending", &config, &cred(MY, &b, &pw2))?;
    let (user, pw3) = user_and_password(&pending)?;
    assert_eq!(user, a);
    assert!(
        maria_can_login(&a, &pw3).await?,
        "the retired account is re-enabled"
    );
    assert!(maria_can_login(&b, &pw2).await?);
    // A late retry of rotation 1's retire leaves the active account alone.
    assert_eq!(
        provider.ok("retire", &config, &cred(MY, &a, pw1))?,
        Value::Null
    );
    assert!(maria_can_login(&a, &pw3).await?);
    assert_eq!(
        provider.ok("retire", &config, &cred(MY, &b, &pw2))?,
        Value::Null
    );
    assert!(!maria_can_login(&b, &pw2).await?);
    assert!(maria_can_login(&a, &pw3).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_failures_leave_the_current_password_working() -> anyhow::Result<()> {
    let provider = Provider::new("mysql", MARIA_ADMIN.to_owned())?;
    let mut users = MariaUsers(Vec::new());
    let current = unique("mf");
    let pw = "current-Password-8";
    users.create(&current, Some(pw)).await?;
    let weak = unique("mw");
    users.create(&weak, Some("weak-admin-pw")).await?;
    // Can read mysql.user (to find accounts) but not ALTER USER.
    maria(&format!("GRANT SELECT ON mysql.* TO '{weak}'@'%'")).await?;
    let me = cred(MY, &current, pw);

    // The other account of the pair does not exist.
    let config = json!({"strategy": "alternate", "roles": format!("{current},{current}_gone")});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "invalid-config"
    );
    // The account exists only for another host part.
    let config = json!({"host": "10.9.8.7"});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "rejected"
    );
    // A connection the plugin was not granted.
    let config = json!({"connection": "elsewhere"});
    assert_eq!(
        provider.error("create-pending", &config, &me, &[pw])?,
        "denied"
    );
    // An admin connection without CREATE USER: the ALTER USER fails.
    let weak_admin = provider.granting(
        "mysql",
        &format!("mysql://{weak}:weak-admin-pw@127.0.0.1:3306/test"),
    );
    let called = weak_admin.call("create-pending", &json!({}), &me)?;
    assert_eq!(called.json["error"]["code"], "rejected", "{}", called.json);
    let detail = called.json["error"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("CREATE USER"), "{detail}");
    // A PostgreSQL URL under the mysql name.
    let wrong = provider.granting("mysql", "postgres://postgres:x@127.0.0.1:5432/postgres");
    assert_eq!(
        wrong.error("create-pending", &json!({}), &me, &[pw])?,
        "invalid-config"
    );

    assert!(
        maria_can_login(&current, pw).await?,
        "the current password still works"
    );
    assert!(provider.validate(&json!({}), &me)?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_info_and_validate() -> anyhow::Result<()> {
    let provider = Provider::new("mysql", MARIA_ADMIN.to_owned())?;
    let mut users = MariaUsers(Vec::new());
    let user = unique("mv");
    users.create(&user, Some("good-password")).await?;
    check_info_and_validate(&provider, MY, &user)
}
