//! The `latchkey` command line as a client: `get --field`, `put` from stdin, files
//! and JSON, `list`, `rm`, finding the agent from flags, environment or the init
//! folder, and exit codes (3 not found, 4 denied, 5 conflict, 64 bad config).

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use serde_json::json;

use crate::harness::Agent;

#[tokio::test]
async fn get_field_prints_just_that_value() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let put = agent
        .cli(["put", "apps/web/db", "user=web", "password=-"])
        .stdin("from-stdin-pw\n")
        .run()
        .await?
        .success()?;
    assert_eq!(put.stdout.trim(), "apps/web/db: version 1");

    let get = agent
        .cli(["get", "apps/web/db", "--field", "password"])
        .run()
        .await?
        .success()?;
    assert_eq!(get.stdout, "from-stdin-pw\n");

    let whole = agent.cli(["get", "apps/web/db"]).run().await?.success()?;
    let json: serde_json::Value = serde_json::from_str(whole.stdout.trim())?;
    assert_eq!(json["fields"]["user"], "web", "{}", whole.stdout);
    assert_eq!(json["fields"]["password"], "from-stdin-pw");
    assert_eq!(json["version"], 1);

    agent
        .cli(["put", "apps/web/db", "user=web", "password=second-pw"])
        .run()
        .await?
        .success()?;
    let v1 = agent
        .cli([
            "get",
            "apps/web/db",
            "--field",
            "password",
            "--version",
            "1",
        ])
        .run()
        .await?
        .success()?;
    assert_eq!(v1.stdout, "from-stdin-pw\n");
    let prev = agent
        .cli([
            "get",
            "apps/web/db",
            "-f",
            "password",
            "--label",
            "previous",
        ])
        .run()
        .await?
        .success()?;
    assert_eq!(prev.stdout, "from-stdin-pw\n");
    let now = agent
        .cli(["get", "apps/web/db", "-f", "password"])
        .run()
        .await?
        .success()?;
    assert_eq!(now.stdout, "second-pw\n");

    let no_field = agent
        .cli(["get", "apps/web/db", "--field", "nope"])
        .run()
        .await?;
    assert_eq!(no_field.code, 3, "{no_field:?}");
    assert!(no_field.stdout.is_empty(), "{no_field:?}");
    Ok(())
}

#[tokio::test]
async fn put_reads_values_from_files_and_json() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let pem = agent.scratch().join("key.pem");
    std::fs::write(&pem, "-----BEGIN KEY-----\nline two\n-----END KEY-----\n")?;
    let arg = format!("key=@{}", pem.display());
    agent
        .cli(["put", "apps/web/tls", arg.as_str(), "--kind", "certificate"])
        .run()
        .await?
        .success()?;
    let tls = agent.admin()?.read("apps/web/tls").await?;
    // One trailing newline is dropped, inner ones are kept.
    assert_eq!(
        tls.field("key").as_deref(),
        Some("-----BEGIN KEY-----\nline two\n-----END KEY-----")
    );
    assert_eq!(tls.json()["kind"], "certificate");

    let file = agent.scratch().join("creds.json");
    std::fs::write(
        &file,
        json!({"user": "svc", "password": "from-json-file"}).to_string(),
    )?;
    let file_arg = file.to_string_lossy().into_owned();
    agent
        .cli(["put", "apps/web/creds", "--from-json", file_arg.as_str()])
        .run()
        .await?
        .success()?;
    let creds = agent.admin()?.read("apps/web/creds").await?;
    assert_eq!(creds.field("password").as_deref(), Some("from-json-file"));
    assert_eq!(creds.field("user").as_deref(), Some("svc"));

    agent
        .cli(["put", "apps/web/stdin-json", "--from-json", "-"])
        .stdin(r#"{"token": "from-json-stdin"}"#)
        .run()
        .await?
        .success()?;
    let token = agent
        .cli(["get", "apps/web/stdin-json", "--field", "token"])
        .run()
        .await?
        .success()?;
    assert_eq!(token.stdout, "from-json-stdin\n");

    // Refused before anything is sent.
    let missing = agent
        .cli(["put", "apps/web/none", "key=@/nonexistent/file"])
        .run()
        .await?;
    assert_ne!(missing.code, 0, "{missing:?}");
    let nothing = agent.cli(["put", "apps/web/none"]).run().await?;
    assert_ne!(nothing.code, 0, "{nothing:?}");
    let not_object = agent
        .cli(["put", "apps/web/none", "--from-json", "-"])
        .stdin(r#"[12345678]"#)
        .run()
        .await?;
    assert_ne!(not_object.code, 0, "{not_object:?}");
    assert!(!not_object.stderr.contains("12345678"), "{not_object:?}");
    assert_eq!(agent.admin()?.read("apps/web/none").await?.status, 404);

    let listed = agent.cli(["list", "apps/web/"]).run().await?.success()?;
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(
        lines,
        vec!["apps/web/creds", "apps/web/stdin-json", "apps/web/tls"],
        "{listed:?}"
    );
    let listed = agent
        .cli(["list", "apps/web/", "--json"])
        .run()
        .await?
        .success()?;
    let json: serde_json::Value = serde_json::from_str(listed.stdout.trim())?;
    assert_eq!(
        json["secrets"].as_array().map(Vec::len),
        Some(3),
        "{}",
        listed.stdout
    );

    let rm = agent.cli(["rm", "apps/web/creds"]).run().await?.success()?;
    assert_eq!(rm.stdout.trim(), "apps/web/creds: deleted");
    let gone = agent.cli(["get", "apps/web/creds"]).run().await?;
    assert_eq!(gone.code, 3, "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn not_found_exits_3_and_denied_exits_4() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    agent
        .admin()?
        .write("apps/other/db", json!({"password": "others"}))
        .await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "mine"}))
        .await?;

    let missing = agent.cli(["get", "apps/nothing/here"]).run().await?;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(missing.stderr.contains("not_found"), "{missing:?}");
    let missing = agent.cli(["rm", "apps/nothing/here"]).run().await?;
    assert_eq!(missing.code, 3, "{missing:?}");

    let web = agent.issue_cert("web", None).await?;
    let own = agent
        .cli(["get", "apps/web/db", "--field", "password"])
        .presenting(&web)
        .run()
        .await?
        .success()?;
    assert_eq!(own.stdout, "mine\n");

    let denied = agent
        .cli(["get", "apps/other/db"])
        .presenting(&web)
        .run()
        .await?;
    assert_eq!(denied.code, 4, "{denied:?}");
    assert!(denied.stderr.contains("forbidden"), "{denied:?}");
    assert!(!denied.stdout.contains("others") && !denied.stderr.contains("others"));
    let denied = agent
        .cli(["put", "apps/web/db", "password=overwrite"])
        .presenting(&web)
        .run()
        .await?;
    assert_eq!(denied.code, 4, "{denied:?}");
    let denied = agent
        .cli(["rm", "apps/web/db"])
        .presenting(&web)
        .run()
        .await?;
    assert_eq!(denied.code, 4, "{denied:?}");
    assert_eq!(
        agent
            .admin()?
            .read("apps/web/db")
            .await?
            .field("password")
            .as_deref(),
        Some("mine")
    );

    let bad_path = agent.cli(["get", "apps/../etc"]).run().await?;
    assert_ne!(bad_path.code, 0, "{bad_path:?}");
    Ok(())
}

#[tokio::test]
async fn put_with_a_stale_cas_exits_5() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let created = agent
        .cli(["put", "apps/web/db", "p=one", "--cas", "0"])
        .run()
        .await?
        .success()?;
    assert_eq!(created.stdout.trim(), "apps/web/db: version 1");

    let exists = agent
        .cli(["put", "apps/web/db", "p=clobber", "--cas", "0"])
        .run()
        .await?;
    assert_eq!(exists.code, 5, "{exists:?}");
    assert!(exists.stderr.contains("conflict"), "{exists:?}");

    let next = agent
        .cli(["put", "apps/web/db", "p=two", "--cas", "1"])
        .run()
        .await?
        .success()?;
    assert_eq!(next.stdout.trim(), "apps/web/db: version 2");
    let stale = agent
        .cli(["put", "apps/web/db", "p=lost-update", "--cas", "1"])
        .run()
        .await?;
    assert_eq!(stale.code, 5, "{stale:?}");

    let now = agent
        .cli(["get", "apps/web/db", "--field", "p"])
        .run()
        .await?
        .success()?;
    assert_eq!(now.stdout, "two\n");
    let answer = agent.admin()?.read("apps/web/db").await?;
    assert_eq!(answer.version(), Some(2), "{}", answer.body);
    Ok(())
}

#[tokio::test]
async fn the_cli_finds_the_agent_from_flags_environment_or_the_init_folder() -> anyhow::Result<()> {
    let mut agent = Agent::builder().tcp().start().await?;
    agent
        .admin()?
        .write("apps/web/db", json!({"password": "found-it"}))
        .await?;
    let web = agent.issue_cert("web", None).await?;
    let tcp = agent.tcp_addr().map(|a| a.to_string()).unwrap_or_default();
    let ca = agent.ca_path();
    let (cert, key) = (web.cert.clone(), web.key.clone());
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();

    // Flags only, over TCP, from an unrelated folder.
    let flags = agent
        .cli([
            "get",
            "apps/web/db",
            "--field",
            "password",
            "--addr",
            tcp.as_str(),
            "--cert",
            s(&cert).as_str(),
            "--key",
            s(&key).as_str(),
            "--cacert",
            s(&ca).as_str(),
        ])
        .without_dir()
        .run()
        .await?
        .success()?;
    assert_eq!(flags.stdout, "found-it\n");

    // Environment only, over the socket.
    let socket = format!("unix:{}", agent.socket().display());
    let env = agent
        .cli(["get", "apps/web/db", "--field", "password"])
        .without_dir()
        .env("LATCHKEY_ADDR", socket)
        .env("LATCHKEY_CERT", &cert)
        .env("LATCHKEY_KEY", &key)
        .env("LATCHKEY_CACERT", &ca)
        .run()
        .await?
        .success()?;
    assert_eq!(env.stdout, "found-it\n");

    // The init folder given as a flag: admin certificate and socket from there.
    let dir = s(agent.dir());
    let by_dir = agent
        .cli([
            "get",
            "apps/web/db",
            "--field",
            "password",
            "--dir",
            dir.as_str(),
        ])
        .without_dir()
        .run()
        .await?
        .success()?;
    assert_eq!(by_dir.stdout, "found-it\n");

    // The wrong CA for the server: refused, exit 1, and it says why.
    let other_ca = agent.scratch().join("other-ca.pem");
    let foreign = crate::harness::foreign::from_another_ca(
        &agent.scratch().join("x"),
        "x",
        "spiffe://latchkey.local/app/x",
    )?;
    std::fs::copy(&foreign.cert, &other_ca)?;
    let wrong_ca = agent
        .cli(["get", "apps/web/db", "--cacert", s(&other_ca).as_str()])
        .run()
        .await?;
    assert_eq!(wrong_ca.code, 1, "{wrong_ca:?}");
    assert!(!wrong_ca.stdout.contains("found-it"));

    // No agent running: exit 1 with a message naming where it tried.
    assert!(agent.stop().await?.success());
    let down = agent.cli(["get", "apps/web/db"]).run().await?;
    assert_eq!(down.code, 1, "{down:?}");
    assert!(down.stderr.contains("cannot connect"), "{down:?}");
    Ok(())
}

#[tokio::test]
async fn a_bad_config_exits_64_and_names_the_key() -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    let config = agent.config_path();
    let path = config.to_string_lossy().into_owned();
    let ok = agent
        .cli(["check", "--config", path.as_str()])
        .run()
        .await?
        .success()?;
    assert!(ok.stdout.contains("ok"), "{ok:?}");

    assert!(agent.stop().await?.success());
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("max_headers = 64", "max_headerz = 64"),
    )?;
    let check = agent
        .cli(["check", "--config", path.as_str()])
        .run()
        .await?;
    assert_eq!(check.code, 64, "{check:?}");
    assert!(check.stderr.contains("max_headerz"), "{check:?}");
    let run = agent.cli(["run", "--config", path.as_str()]).run().await?;
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("max_headerz"), "{run:?}");
    Ok(())
}

#[tokio::test]
async fn a_relative_token_file_is_found_beside_the_config_and_a_missing_one_is_reported(
) -> anyhow::Result<()> {
    let mut agent = Agent::builder().start().await?;
    assert!(agent.stop().await?.success());
    let config = agent.config_path();
    let folder = config.parent().context("config has a folder")?.to_owned();
    let path = config.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!(
            "{text}\n[upstream]\nkind = \"openbao\"\naddresses = [\"https://127.0.0.1:1\"]\n\
             auth = {{ method = \"token\", token_file = \"bao-token\" }}\n"
        ),
    )?;
    std::fs::write(folder.join("bao-token"), "s.not-a-real-token\n")?;
    let elsewhere = tempfile::tempdir()?;
    let ok = agent
        .cli(["check", "--config", path.as_str()])
        .in_dir(elsewhere.path())
        .run()
        .await?
        .success()?;
    assert!(ok.stdout.contains("ok"), "{ok:?}");

    std::fs::remove_file(folder.join("bao-token"))?;
    let check = agent
        .cli(["check", "--config", path.as_str()])
        .in_dir(elsewhere.path())
        .run()
        .await?;
    assert_eq!(check.code, 64, "{check:?}");
    assert!(
        check.stderr.contains("upstream.auth.token_file"),
        "{check:?}"
    );
    assert!(check.stderr.contains("No such file"), "{check:?}");
    assert!(
        check
            .stderr
            .contains(&folder.join("bao-token").display().to_string()),
        "{check:?}"
    );
    Ok(())
}

#[tokio::test]
async fn init_makes_private_files_and_the_socket_is_not_for_others() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let mode = |rel: &str| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(agent.dir().join(rel))?
            .permissions()
            .mode()
            & 0o777)
    };
    for dir in ["", "keys", "data", "state", "audit", "clients", "server"] {
        assert_eq!(mode(dir)?, 0o700, "{dir}/");
    }
    assert_eq!(mode("run")?, 0o750, "run/");

    for file in [
        "latchkey.toml",
        "keys/kek",
        "ca/ca.key",
        "server/server.key",
        "clients/admin.key",
        "audit/audit.log",
    ] {
        assert_eq!(mode(file)?, 0o600, "{file}");
    }
    let socket = mode("run/latchkey.sock")?;
    assert_eq!(
        socket & 0o007,
        0,
        "the socket is open to others: {socket:o}"
    );
    let web = agent.issue_cert("web", None).await?;
    let key_mode = std::fs::metadata(&web.key)?.permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "{}", web.key.display());
    Ok(())
}

#[tokio::test]
async fn status_shows_each_health_component_in_colour_only_on_a_terminal() -> anyhow::Result<()> {
    let agent = Agent::builder().start().await?;
    let plain = agent.cli(["status"]).run().await?.success()?;
    for component in ["store", "upstream", "certificates", "templates"] {
        assert!(
            plain
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with(component) && l.contains("ok")),
            "{component}: {}",
            plain.stdout
        );
    }
    assert!(plain.stdout.starts_with("latchkey "), "{}", plain.stdout);
    assert!(!plain.stdout.contains('\u{1b}'), "no colour into a pipe");
    let json = agent.cli(["status", "--json"]).run().await?.success()?;
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(parsed["health"]["status"], "ok", "{parsed}");
    assert_eq!(parsed["lifecycle"]["credentials"], json!([]), "{parsed}");

    // On a terminal (a pseudo-terminal from util-linux `script`): green for ok,
    // and none when NO_COLOR asks.
    let bin = crate::harness::binary()?;
    let on_tty = |no_color: bool| {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &format!("{} status", bin.display()), "/dev/null"])
            .env("LATCHKEY_DIR", agent.dir())
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.output().context("cannot run script(1)")
    };
    let coloured = on_tty(false)?;
    let text = String::from_utf8_lossy(&coloured.stdout);
    assert!(coloured.status.success(), "{text}");
    assert!(text.contains("\u{1b}[32mok"), "{text}");
    let uncoloured = on_tty(true)?;
    assert!(!String::from_utf8_lossy(&uncoloured.stdout).contains('\u{1b}'));
    Ok(())
}
