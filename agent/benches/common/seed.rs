//! Filling an agent's store with many secrets, fast.

use std::path::Path;

use latchkey::path::SecretPath;
use latchkey::secret::{Fields, SecretString};
use latchkey::store::{Store, Write};

/// Stores `n` secrets `{prefix}s00000`, `{prefix}s00001`, … of `kind` with the
/// library's store while the agent (configured by `config`) is stopped: one process,
/// one flush at the end. Each has a `username` and a `password`, and `host` if given.
pub async fn store(
    config: &Path,
    prefix: &str,
    n: usize,
    kind: &str,
    host: Option<&str>,
) -> anyhow::Result<()> {
    let config = latchkey::config::Config::load(config)?;
    let kek = config.kek.load()?;
    let store = Store::open(&config.store, kek.as_ref()).await?;
    for i in 0..n {
        let path = SecretPath::parse(&format!("{prefix}s{i:05}"))?;
        let mut fields = Fields::new();
        fields.insert(
            "username",
            SecretString::from(format!("svc_bench_{i:05}").as_str()),
        );
        fields.insert(
            "password",
            SecretString::from(format!("Zq7!pR2v{i:05}xK9mWc4T").as_str()),
        );
        if let Some(host) = host {
            fields.insert("host", SecretString::from(host));
        }
        store.put(
            &path,
            Write {
                fields,
                kind: Some(kind.into()),
                expires_at: None,
                cas: None,
            },
        )?;
    }
    store.flush().await?;
    Ok(())
}
