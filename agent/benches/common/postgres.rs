//! The first-party `postgres` provider and the machine's PostgreSQL, for benches
//! that rotate credentials through a real plugin (`lifecycle`, `soak`).
//!
//! The plugin is built for `wasm32-wasip2` into the target dir the tests use, so a
//! tested tree builds nothing here; the agent gets it through `[[plugin]]` and the
//! admin URL through `[[sql]] url_env` (never in the config file).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sqlx::Connection as _;

/// The environment variable the agent's `[[sql]]` reads the admin URL from.
pub const URL_ENV: &str = "LATCHKEY_BENCH_PG_URL";
/// Where the benches expect PostgreSQL (trust auth) unless told otherwise.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// [`URL_ENV`] if set, else [`DEFAULT_URL`].
pub fn url_from_env() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the `postgres` provider for wasm32-wasip2 into the same target dir the
/// tests use (`tests/harness/wasm.rs`) and installs it as `<dir>/postgres.wasm`
/// beside `postgres.toml`. Returns the wasm path and its sha256.
pub fn install_plugin(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let built = latchkey_guest_build::Guests::new(workspace_root(), env!("CARGO_TARGET_TMPDIR"))
        .build("latchkey-plugin-postgres")
        .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir)?;
    let wasm = dir.join("postgres.wasm");
    std::fs::copy(&built, &wasm).with_context(|| format!("copy {}", built.display()))?;
    std::fs::copy(
        workspace_root().join("plugins/postgres/plugin.toml"),
        dir.join("postgres.toml"),
    )
    .context("copy the postgres manifest")?;
    let bytes = std::fs::read(&wasm)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok((wasm, hex::encode(digest.as_ref())))
}

/// The `[[sql]]` (a pool of `pool` connections), `[[plugin]]` and `[scheduler]`
/// blocks for an agent that rotates through the plugin at `wasm`.
pub fn provider_toml(wasm: &Path, sha256: &str, pool: usize, concurrency: usize) -> String {
    format!(
        "\n[[sql]]\nname = \"postgres\"\nurl_env = \"{URL_ENV}\"\nmax_connections = {pool}\n\n\
         [[plugin]]\nname = \"postgres\"\nwasm = {wasm:?}\nsha256 = \"{sha256}\"\nsql = [\"postgres\"]\n\n\
         [scheduler]\nconcurrency = {concurrency}\n",
        wasm = wasm.display().to_string(),
    )
}

/// A connection to the server at `url`.
pub async fn connect(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connect to PostgreSQL at {url}"))
}

/// `SHOW server_version`.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let mut db = connect(url).await?;
    let row: (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&mut db)
        .await?;
    Ok(row.0)
}

/// Whether role `name` may log in.
pub async fn can_login(url: &str, name: &str) -> anyhow::Result<bool> {
    let mut db = connect(url).await?;
    let row: (bool,) = sqlx::query_as("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_one(&mut db)
        .await?;
    Ok(row.0)
}
