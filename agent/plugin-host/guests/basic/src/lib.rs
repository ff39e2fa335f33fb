//! Test guest for the plugin host's own tests (built for wasm32-wasip2 by
//! `tests/plugins/support.rs`). `validate` does what the `mode` config field says:
//!
//! | mode | behaviour |
//! | --- | --- |
//! | `key` | valid iff the credential's `key` field is `good` |
//! | `http` | GET `url`; valid iff 2xx; `detail` = the body |
//! | `loop` | spins forever (the host's deadline must stop it) |
//! | `alloc` | allocates 1 MiB blocks forever (the memory limit must stop it) |
//! | `trap` | panics (a wasm trap) |
//! | `sql` | on connection `connection`: creates role `user` with a fresh password, checks it can log in, drops it |
//! | `sql-exec` | runs `statement` on `connection` as it is; `detail` = the rows (cells `\|`, rows `;`) |
//! | `sql-literal` | `SELECT` of `text` quoted by the host on `connection`; valid iff it reads back as `text`; `detail` = the literal and what it read as |
//! | `log` | logs the `key` field's *name* and prints to stdout/stderr |
//! | `leak` | logs, prints and answers with every field's *value* (the host must scrub them); `answer = "rejected"` puts them in the error instead |
//! | `service` | an API-key service at `service` (a test fixture): see below |
//! | `answer` | answers what `answer` names: `valid`, `invalid` (`valid: false`), `withdraw` (valid, with `withdraw` granted), or a `provider-error` code (`rejected`, `unavailable`, `denied`, `unsupported`, `invalid-config`) — one per row of the contract's table |
//!
//! In `service` mode every operation is a call to the fixture, which keeps the set of
//! live keys and can be told to fail any step: `validate` is `GET /check` with the key
//! in `x-key` (200 valid, 401 not), `create-pending` is `POST /keys` (200 with
//! `{"key": ...}`), `retire` is `DELETE /keys` with the key in `x-key` (200 or 404).
//! With `in_place = "true"`, `create-pending` instead makes a password itself (from
//! the host's randomness) and sets it in place of the current key with `PUT /keys`
//! (`x-key`: the current key, body `{"key": ...}`), like a database role's password.
//! Other statuses map to `unavailable` (5xx) or `rejected` (4xx).

use latchkey_plugin_sdk::sql::{Connection, Dialect, Value};
use latchkey_plugin_sdk::{
    config, http, log, secret, Credential, Field, Operation, Permission, Provider, ProviderError,
    ProviderInfo, Validation,
};

struct Basic;

fn answer(valid: bool, detail: String) -> Validation {
    Validation {
        valid,
        detail,
        permissions: Vec::new(),
        expires_at: None,
    }
}

fn sql_round_trip(cfg: &[Field]) -> Result<Validation, ProviderError> {
    let db = Connection::new(config::require(cfg, "connection")?);
    let user = config::require(cfg, "user")?;
    let password = secret::password(24);
    let role = db.quote_identifier(user)?;
    let literal = db.quote_literal(&password)?;
    let dialect = db.dialect()?;
    let (create, drop) = match dialect {
        Dialect::Postgres => (
            format!("CREATE ROLE {role} LOGIN PASSWORD {literal}"),
            format!("DROP ROLE IF EXISTS {role}"),
        ),
        Dialect::Mysql => (
            format!("CREATE USER {role}@'%' IDENTIFIED BY {literal}"),
            format!("DROP USER IF EXISTS {role}@'%'"),
        ),
    };
    db.execute(&drop, &[])?;
    db.execute(&create, &[])?;
    if dialect == Dialect::Mysql {
        // A MySQL account needs a privilege on the database to log in to it.
        let current = db.execute("SELECT DATABASE()", &[])?;
        let Some(Some(Value::Text(name))) = current.rows.first().map(|r| r.first().cloned()) else {
            return Err(ProviderError::InvalidConfig(
                "connection has no database".into(),
            ));
        };
        let name = db.quote_identifier(&name)?;
        db.execute(&format!("GRANT SELECT ON {name}.* TO {role}@'%'"), &[])?;
    }
    let ok = db.check_login(user, &password)?;
    let wrong = db.check_login(&format!("{user}_missing"), &password)?;
    let placeholder = match dialect {
        Dialect::Postgres => "SELECT $1::bigint + 1 AS n, $2::text AS t",
        Dialect::Mysql => "SELECT CAST(? AS SIGNED) + 1 AS n, ? AS t",
    };
    let rows = db.execute(placeholder, &[Value::Int(41), Value::Text("it's".into())])?;
    db.execute(&drop, &[])?;
    let n = match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Int(n)) => *n,
        _ => -1,
    };
    let t = match rows.rows.first().and_then(|r| r.get(1)) {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    };
    Ok(answer(
        ok && !wrong && n == 42,
        format!(
            "login={ok} missing={wrong} n={n} t={t} columns={}",
            rows.columns.join(",")
        ),
    ))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn sql_exec(cfg: &[Field]) -> Result<Validation, ProviderError> {
    let db = Connection::new(config::require(cfg, "connection")?);
    let result = db.execute(config::require(cfg, "statement")?, &[])?;
    let rows: Vec<String> = result
        .rows
        .iter()
        .map(|r| r.iter().map(cell).collect::<Vec<_>>().join("|"))
        .collect();
    Ok(answer(true, rows.join(";")))
}

fn sql_literal(cfg: &[Field]) -> Result<Validation, ProviderError> {
    let db = Connection::new(config::require(cfg, "connection")?);
    let text = config::require(cfg, "text")?;
    let literal = db.quote_literal(text)?;
    let result = db.execute(&format!("SELECT {literal} AS v"), &[])?;
    let read = result
        .rows
        .first()
        .and_then(|r| r.first())
        .map(cell)
        .unwrap_or_default();
    Ok(answer(read == text, format!("{literal} read as {read}")))
}

impl Provider for Basic {
    fn info() -> ProviderInfo {
        latchkey_plugin_sdk::info(
            "basic",
            "0.1.0",
            &["api-key", "db-password"],
            &[
                Operation::Validate,
                Operation::CreatePending,
                Operation::Retire,
            ],
        )
    }

    fn validate(cfg: Vec<Field>, cred: Credential) -> Result<Validation, ProviderError> {
        match config::require(&cfg, "mode")? {
            "key" => Ok(answer(cred.field("key") == Some("good"), "checked".into())),
            "http" => {
                let url = config::require(&cfg, "url")?;
                let response = http::get(url).header("x-test", "1").send()?;
                let ok = (200..300).contains(&response.status);
                Ok(answer(ok, response.text()))
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "trap" => panic!("test guest traps on purpose"),
            "sql" => sql_round_trip(&cfg),
            "sql-exec" => sql_exec(&cfg),
            "sql-literal" => sql_literal(&cfg),
            "service" => {
                let base = config::require(&cfg, "service")?;
                let key = cred.require("key")?;
                let response = http::get(&format!("{base}/check"))
                    .header("x-key", key)
                    .send()?;
                match response.status {
                    200 => Ok(answer(true, "the service accepted the key".into())),
                    401 => Ok(answer(false, "the service does not know the key".into())),
                    status => Err(ProviderError::from_status(status)),
                }
            }
            #[allow(clippy::print_stdout, clippy::print_stderr)] // the point of this mode
            "log" => {
                log::info(format!(
                    "validating fields {:?}",
                    cred.fields.iter().map(|f| &f.name).collect::<Vec<_>>()
                ));
                println!("hello from stdout");
                eprintln!("hello from stderr");
                Ok(answer(true, "logged".into()))
            }
            "leak" => {
                // A careless plugin: logs and prints the credential's values. The host
                // must scrub them before anything reaches the agent's log.
                #[allow(clippy::print_stdout, clippy::print_stderr)] // the point of this mode
                for f in &cred.fields {
                    log::warn(format!("field {} is {}", f.name, f.value));
                    println!("stdout {}={}", f.name, f.value);
                    eprintln!("stderr {}={}", f.name, f.value);
                }
                // And puts them into what it answers: the detail, a permission's
                // name, or (with `answer = "rejected"`) the error message.
                let values: Vec<&str> = cred.fields.iter().map(|f| f.value.as_str()).collect();
                let told = format!("leaked {}", values.join(","));
                if config::get(&cfg, "answer") == Some("rejected") {
                    return Err(ProviderError::Rejected(told));
                }
                let mut leaked = answer(true, told.clone());
                leaked.permissions.push(Permission {
                    name: told,
                    granted: true,
                });
                Ok(leaked)
            }
            "answer" => {
                let said = "answered as configured".to_owned();
                match config::require(&cfg, "answer")? {
                    "valid" => Ok(answer(true, said)),
                    "invalid" => Ok(answer(false, said)),
                    "withdraw" => {
                        let mut v = answer(true, said);
                        v.permissions.push(Permission {
                            name: "withdraw".into(),
                            granted: true,
                        });
                        Ok(v)
                    }
                    "rejected" => Err(ProviderError::Rejected(said)),
                    "unavailable" => Err(ProviderError::Unavailable(said)),
                    "denied" => Err(ProviderError::Denied(said)),
                    "unsupported" => Err(ProviderError::Unsupported(said)),
                    other => Err(ProviderError::InvalidConfig(format!(
                        "unknown answer {other}"
                    ))),
                }
            }
            other => Err(ProviderError::InvalidConfig(format!(
                "unknown mode {other}"
            ))),
        }
    }

    fn create_pending(cfg: Vec<Field>, current: Credential) -> Result<Credential, ProviderError> {
        if config::get(&cfg, "mode") == Some("service") {
            let base = config::require(&cfg, "service")?;
            if config::get(&cfg, "in_place") == Some("true") {
                #[derive(serde::Serialize)]
                struct NewKey<'a> {
                    key: &'a str,
                }
                let key = secret::password(32);
                http::put(&format!("{base}/keys"))
                    .header("x-key", current.require("key")?)
                    .json(&NewKey { key: &key })?
                    .send()?
                    .error_for_status()?;
                return Ok(Credential::new(&current.kind, [("key", key)]));
            }
            #[derive(serde::Deserialize)]
            struct Created {
                key: String,
            }
            let created: Created = http::post(&format!("{base}/keys"))
                .send()?
                .error_for_status()?
                .json()?;
            return Ok(Credential::new(&current.kind, [("key", created.key)]));
        }
        let mut next = Credential::new(&current.kind, [("key", secret::password(32))]);
        next.expires_at = current.expires_at;
        Ok(next)
    }

    fn retire(cfg: Vec<Field>, previous: Credential) -> Result<(), ProviderError> {
        if config::get(&cfg, "mode") == Some("service") {
            let base = config::require(&cfg, "service")?;
            let key = previous.require("key")?;
            let response = http::delete(&format!("{base}/keys"))
                .header("x-key", key)
                .send()?;
            return match response.status {
                200 | 404 => Ok(()),
                status => Err(ProviderError::from_status(status)),
            };
        }
        Ok(())
    }

    fn refresh(_cfg: Vec<Field>, _cred: Credential) -> Result<Credential, ProviderError> {
        Err(ProviderError::Unsupported("refresh".into()))
    }
}

latchkey_plugin_sdk::export!(Basic);
