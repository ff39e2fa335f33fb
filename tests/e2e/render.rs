//! Templates rendered by the daemon and by `latchkey render`: a PostgreSQL
//! credential that a real `psql` uses before and after a rotation, `on_change` run
//! once per change, nothing re-rendered on restart, a broken template isolated and
//! reported by name and line, and files that no reader ever sees half-written.
//!
//! The PostgreSQL server is the machine's own on 127.0.0.1:5432 (user `postgres`,
//! database `test`). Its pg_hba trusts loopback, so a login alone proves nothing
//! about the password: each check also compares the rendered password with the
//! role's stored hash (`md5(password || role)`) as the server computes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::harness::{eventually, Agent};

const WAIT: Duration = Duration::from_secs(15);

/// Runs SQL as `postgres` on the local server; returns trimmed output.
async fn psql_admin(sql: &str) -> anyhow::Result<String> {
    psql(
        &["-h", "127.0.0.1", "-U", "postgres", "-d", "test"],
        sql,
        &[],
    )
    .await
}

async fn psql(conn: &[&str], sql: &str, env: &[(&str, &Path)]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(conn)
        .args(["-X", "-w", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = crate::harness::within("psql to finish", Duration::from_secs(20), cmd.output())
        .await?
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A login role for one test, dropped at the end.
struct Role {
    name: String,
}

impl Role {
    async fn create(password: &str) -> anyhow::Result<Role> {
        let name = format!("lk_e2e_{:08x}", std::process::id() ^ rand_u32());
        psql_admin(&format!(
            "SET password_encryption = 'md5'; CREATE ROLE {name} LOGIN PASSWORD '{}';",
            password.replace('\'', "''")
        ))
        .await?;
        Ok(Role { name })
    }

    async fn set_password(&self, password: &str) -> anyhow::Result<()> {
        psql_admin(&format!(
            "SET password_encryption = 'md5'; ALTER ROLE {} PASSWORD '{}';",
            self.name,
            password.replace('\'', "''")
        ))
        .await
        .map(drop)
    }

    /// Whether `password` is this role's password, by the server's own hash.
    async fn password_is(&self, password: &str) -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT rolpassword = 'md5' || md5('{}' || rolname) FROM pg_authid WHERE rolname = '{}'",
            password.replace('\'', "''"),
            self.name
        );
        Ok(psql_admin(&sql).await? == "t")
    }

    async fn drop_role(self) -> anyhow::Result<()> {
        psql_admin(&format!("DROP ROLE IF EXISTS {}", self.name))
            .await
            .map(drop)
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Appends `[[template]]` blocks to the agent's config and restarts it.
async fn add_templates(agent: &mut Agent, blocks: &str) -> anyhow::Result<()> {
    let path = agent.config_path();
    let mut text = std::fs::read_to_string(&path)?;
    text.push('\n');
    text.push_str(blocks);
    std::fs::write(&path, text)?;
    agent.restart().await
}

async fn wait_for_content(
    path: &Path,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let check = &check;
    eventually(what, WAIT, || async move {
        std::fs::read_to_string(path).ok().filter(|t| check(t))
    })
    .await
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn render_args(agent: &Agent, flag: &str) -> Vec<std::ffi::OsString> {
    vec![
        "render".into(),
        flag.into(),
        "--config".into(),
        agent.config_path().into_os_string(),
    ]
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn postgres_credential_is_rendered_rotated_and_used_by_psql() -> anyhow::Result<()> {
    let pw1 = "first:pa ss@word";
    let role = Role::create(pw1).await?;
    let result = postgres_flow(&role, pw1).await;
    let dropped = role.drop_role().await;
    result.and(dropped)
}

async fn postgres_flow(role: &Role, pw1: &str) -> anyhow::Result<()> {
    // At debug the renderer logs each template a pass left unchanged.
    let mut agent = Agent::builder().log_level("debug").start().await?;
    let admin = agent.admin()?;
    admin
        .write("db/app", json!({"username": role.name, "password": pw1}))
        .await?;
    let out = agent.scratch().join("out");
    let tmpl = agent.scratch().join("templates");
    std::fs::create_dir_all(&tmpl)?;
    std::fs::write(
        tmpl.join("pgpass.tmpl"),
        "{% set db = secret('db/app') %}127.0.0.1:5432:test:{{ db.username | pgpass }}:{{ db.password | pgpass }}\n",
    )?;
    std::fs::write(
        tmpl.join("url.tmpl"),
        "{% set db = secret('db/app') -%}\npostgresql://{{ db.username | urlencode }}:{{ db.password | urlencode }}@127.0.0.1:5432/test\n",
    )?;
    let counter = agent.scratch().join("on_change.count");
    let pgpass = out.join(".pgpass");
    let url = out.join("database.url");
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
source = {src1}
destination = {pgpass}
mode = "0600"
on_change = {{ command = ["sh", "-c", "echo ran >> {counter}"] }}

[[template]]
source = {src2}
destination = {url}
mode = "0640"
"#,
            src1 = toml_path(&tmpl.join("pgpass.tmpl")),
            src2 = toml_path(&tmpl.join("url.tmpl")),
            pgpass = toml_path(&pgpass),
            url = toml_path(&url),
            counter = counter.display(),
        ),
    )
    .await?;

    let text = wait_for_content(&pgpass, "the .pgpass file", |t| !t.is_empty()).await?;
    assert_eq!(
        text,
        format!("127.0.0.1:5432:test:{}:first\\:pa ss@word\n", role.name)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&pgpass)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    wait_for_content(&url, "the URL file", |t| !t.is_empty()).await?;
    check_logins(role, &pgpass, &url, pw1).await?;
    eventually("on_change to run", WAIT, || async {
        (lines(&counter) == 1).then_some(())
    })
    .await?;

    // Rotation: the service gets the new password, then the secret's new version.
    let pw2 = "second/pw'\"x";
    role.set_password(pw2).await?;
    admin
        .write("db/app", json!({"username": role.name, "password": pw2}))
        .await?;
    wait_for_content(&pgpass, "the rotated .pgpass", |t| t.contains("second/pw")).await?;
    wait_for_content(&url, "the rotated URL", |t| t.contains("second%2Fpw")).await?;
    check_logins(role, &pgpass, &url, pw2).await?;
    eventually("on_change to run again", WAIT, || async {
        (lines(&counter) == 2).then_some(())
    })
    .await?;

    // An unrelated change and a restart re-render nothing and run no action: the
    // pass at start and the pass after a write of the same values both find the two
    // templates unchanged (and would have run the action before saying so).
    let modified = std::fs::metadata(&pgpass)?.modified()?;
    admin.write("db/other", json!({"password": "x"})).await?;
    let stopped = agent.stop().await?;
    assert!(
        stopped.success(),
        "the agent did not stop cleanly: {stopped}"
    );
    let unchanged = |agent: &Agent| agent.logs().matches("template unchanged").count();
    let before = unchanged(&agent);
    agent.start().await?;
    let admin = agent.admin()?;
    admin
        .write("db/app", json!({"username": role.name, "password": pw2}))
        .await?;
    eventually(
        "two passes to find both templates unchanged",
        WAIT,
        || async { (unchanged(&agent) >= before + 4).then_some(()) },
    )
    .await?;
    assert_eq!(lines(&counter), 2, "on_change ran without a content change");
    assert_eq!(std::fs::metadata(&pgpass)?.modified()?, modified);
    let logs = agent.logs();
    assert!(
        !logs.contains("second/pw") && !logs.contains("pa ss@word"),
        "a value reached the log"
    );
    Ok(())
}

/// `psql` logs in with the rendered URL and with the rendered `.pgpass`, and the
/// rendered password is the role's password by the server's stored hash.
async fn check_logins(
    role: &Role,
    pgpass: &Path,
    url: &Path,
    password: &str,
) -> anyhow::Result<()> {
    let dsn = std::fs::read_to_string(url)?;
    let who = psql(&[dsn.trim()], "SELECT current_user", &[]).await?;
    assert_eq!(who, role.name);
    let who = psql(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            &role.name,
            "-d",
            "test",
        ],
        "SELECT current_user",
        &[("PGPASSFILE", pgpass)],
    )
    .await?;
    assert_eq!(who, role.name);
    let line = std::fs::read_to_string(pgpass)?;
    let prefix = format!("127.0.0.1:5432:test:{}:", role.name);
    let rendered = line
        .trim_end()
        .strip_prefix(&prefix)
        .map(|p| p.replace("\\:", ":").replace("\\\\", "\\"))
        .unwrap_or_default();
    assert_eq!(rendered, password);
    assert!(
        role.password_is(&rendered).await?,
        "the rendered password is not the role's"
    );
    Ok(())
}

#[tokio::test]
async fn broken_template_is_reported_by_name_and_line_and_isolated() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/a", json!({"v": "a1"})).await?;
    admin.write("apps/b", json!({"v": "b1"})).await?;
    let dir = agent.scratch();
    let good = dir.join("good.txt");
    let fragile = dir.join("fragile.txt");
    let fragile_src = dir.join("fragile.tmpl");
    std::fs::write(&fragile_src, "b={{ secret('apps/b').v }}\n")?;
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
contents = "a={{{{ secret('apps/a').v }}}}\n"
destination = {good}

[[template]]
name = "fragile"
source = {src}
destination = {fragile}
"#,
            good = toml_path(&good),
            src = toml_path(&fragile_src),
            fragile = toml_path(&fragile),
        ),
    )
    .await?;
    wait_for_content(&good, "good.txt", |t| t == "a=a1\n").await?;
    wait_for_content(&fragile, "fragile.txt", |t| t == "b=b1\n").await?;

    // Break it: a field that does not exist, on line 3.
    std::fs::write(
        &fragile_src,
        "# header\nb={{ secret('apps/b').v }}\nc={{ secret('apps/b', 'nope') }}\n",
    )?;
    admin.write("apps/b", json!({"v": "b2"})).await?;
    admin.write("apps/a", json!({"v": "a2"})).await?;
    wait_for_content(&good, "good.txt to follow apps/a", |t| t == "a=a2\n").await?;
    eventually("the failure in the log", WAIT, || async {
        agent
            .logs()
            .contains("template fragile line 3: secret apps/b has no field")
            .then_some(())
    })
    .await?;
    assert_eq!(
        std::fs::read_to_string(&fragile)?,
        "b=b1\n",
        "the previous file stays"
    );

    // The CLI reports the same, exits non-zero, and still renders the good one.
    let once = agent.cli(render_args(&agent, "--once")).run().await?;
    assert_eq!(once.code, 1, "{once:?}");
    assert!(once.stdout.contains("template fragile line 3"), "{once:?}");
    assert!(
        once.stdout
            .contains(&format!("unchanged     {}", good.display())),
        "{once:?}"
    );
    assert!(
        !once.stdout.contains("b2") && !once.stderr.contains("b2"),
        "{once:?}"
    );

    // A syntax error is reported with its line too, and retried until fixed.
    std::fs::write(&fragile_src, "ok\n{% if %}\n")?;
    eventually(
        "the syntax error in the log",
        Duration::from_secs(90),
        || async {
            agent
                .logs()
                .contains("template fragile line 2:")
                .then_some(())
        },
    )
    .await?;
    std::fs::write(&fragile_src, "b={{ secret('apps/b').v }}\n")?;
    wait_for_content(
        &fragile,
        "the fixed template to be rendered on retry",
        |t| t == "b=b2\n",
    )
    .await?;

    // Dry run: says what would change, writes nothing, prints no value.
    std::fs::write(&good, "stale\n")?;
    let dry = agent
        .cli(render_args(&agent, "--dry-run"))
        .run()
        .await?
        .success()?;
    assert!(
        dry.stdout
            .contains(&format!("would change  {}", good.display())),
        "{dry:?}"
    );
    assert!(
        dry.stdout
            .contains(&format!("unchanged     {}", fragile.display())),
        "{dry:?}"
    );
    assert!(
        !dry.stdout.contains("a2") && !dry.stdout.contains("b2"),
        "{dry:?}"
    );
    assert_eq!(std::fs::read_to_string(&good)?, "stale\n");
    Ok(())
}

#[tokio::test]
async fn readers_never_see_a_partial_file() -> anyhow::Result<()> {
    const LINES: usize = 4000;
    let mut agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/big", json!({"v": "v0000"})).await?;
    let dest = agent.scratch().join("big.conf");
    add_templates(
        &mut agent,
        &format!(
            r#"
[[template]]
contents = "{{% set v = secret('apps/big').v %}}{{% for i in range({LINES}) %}}line {{{{ i }}}} {{{{ v }}}} padding-padding-padding\n{{% endfor %}}end {{{{ v }}}}\n"
destination = {dest}
"#,
            dest = toml_path(&dest),
        ),
    )
    .await?;
    wait_for_content(&dest, "the first render", |t| t.ends_with("end v0000\n")).await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let dest: PathBuf = dest.clone();
        std::thread::spawn(move || -> Result<(usize, usize), String> {
            let mut reads = 0;
            let mut versions = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text =
                    std::fs::read_to_string(&dest).map_err(|e| format!("read failed: {e}"))?;
                reads += 1;
                let last = text.lines().last().unwrap_or_default().to_owned();
                let Some(v) = last.strip_prefix("end ") else {
                    return Err(format!(
                        "partial file after {reads} reads: {} bytes, ends {last:?}",
                        text.len()
                    ));
                };
                if text.lines().count() != LINES + 1
                    || text.lines().any(|l| {
                        !l.ends_with(&format!("{v} padding-padding-padding"))
                            && !l.starts_with("end ")
                    })
                {
                    return Err(format!("mixed or short file after {reads} reads"));
                }
                versions.insert(v.to_owned());
            }
            Ok((reads, versions.len()))
        })
    };
    for i in 1..=60 {
        admin
            .write("apps/big", json!({"v": format!("v{i:04}")}))
            .await?;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    wait_for_content(&dest, "the last render", |t| t.ends_with("end v0060\n")).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, seen) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    assert!(reads > 100, "only {reads} reads");
    assert!(seen > 5, "the reader saw only {seen} distinct versions");
    Ok(())
}

#[tokio::test]
async fn render_command_keeps_files_current_as_a_client() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let admin = agent.admin()?;
    admin.write("apps/svc", json!({"token": "t1"})).await?;
    let dir = agent.scratch();
    let dest = dir.join("svc.env");
    let config = dir.join("templates.toml");
    std::fs::write(
        &config,
        format!(
            "[[template]]\ncontents = \"TOKEN={{{{ secret('apps/svc').token | shell_quote }}}}\\n\"\ndestination = {}\n",
            toml_path(&dest)
        ),
    )?;
    let mut render = tokio::process::Command::new(crate::harness::binary()?)
        .args(["render", "--config"])
        .arg(&config)
        .env("LATCHKEY_DIR", agent.dir())
        .env_remove("LATCHKEY_ADDR")
        .env_remove("LATCHKEY_CERT")
        .env_remove("LATCHKEY_KEY")
        .env_remove("LATCHKEY_CACERT")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_for_content(&dest, "the first render", |t| t == "TOKEN='t1'\n").await?;
    admin.write("apps/svc", json!({"token": "t2"})).await?;
    wait_for_content(&dest, "the re-render on change", |t| t == "TOKEN='t2'\n").await?;
    let pid = render.id().context("render exited")?;
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let status = crate::harness::within("render to exit", WAIT, render.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_failing_template_degrades_health_and_is_counted_until_it_renders() -> anyhow::Result<()>
{
    let mut agent = Agent::builder().start().await?;
    let out = agent.scratch().join("late.txt");
    add_templates(
        &mut agent,
        &format!(
            "[[template]]\nname = \"late\"\ncontents = \"v={{{{ secret('apps/late').v }}}}\\n\"\ndestination = {}\n",
            toml_path(&out)
        ),
    )
    .await?;
    let admin = agent.admin()?;
    // The secret does not exist yet: the render fails and health says which.
    let health = eventually("health to name the failing template", WAIT, || async {
        let h = admin.health().await.ok()?;
        (h.json()["templates"]["failing"][0] == "late").then_some(h)
    })
    .await?;
    assert_eq!(health.status, 429, "{}", health.body);
    let metrics = admin.get("/metrics").await?.body;
    assert!(
        metrics.contains("latchkey_template_renders_total{template=\"late\",outcome=\"failed\"}"),
        "{metrics}"
    );
    admin.write("apps/late", json!({"v": "here"})).await?;
    wait_for_content(&out, "late.txt", |t| t == "v=here\n").await?;
    eventually("health ok again", WAIT, || async {
        (admin.health().await.ok()?.status == 200).then_some(())
    })
    .await?;
    let metrics = admin.get("/metrics").await?.body;
    assert!(
        metrics
            .contains("latchkey_template_renders_total{template=\"late\",outcome=\"changed\"} 1"),
        "{metrics}"
    );
    Ok(())
}
