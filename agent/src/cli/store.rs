//! `latchkey store`: look after the local store while the agent is stopped.
//!
//! `recover` is for a store sled refuses to open (its log is damaged below the point
//! its snapshot recorded as stable). It copies the whole folder aside first, so
//! nothing is destroyed, then removes sled's snapshot files, so that sled recovers by
//! reading its log from the start up to the damage, and opens the store: the store's
//! check then reports what was lost, by name, and keeps reporting it (`/v1/health`
//! answers 503) until an operator acknowledges it.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::Failure;

/// `latchkey store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Open a store sled refuses to open: keep a copy of the damaged folder beside it,
    /// recover what sled's log still holds, and print what was lost.
    Recover {
        /// The agent's config file.
        #[arg(long, short, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
}

impl StoreCommand {
    /// The config file the command reads.
    pub fn config(&self) -> &Path {
        match self {
            StoreCommand::Recover { config } => config,
        }
    }
}

/// Runs a `latchkey store` command.
pub(super) async fn run(cmd: StoreCommand) -> Result<ExitCode, Failure> {
    match cmd {
        StoreCommand::Recover { config } => recover(&config).await,
    }
}

async fn recover(config_path: &Path) -> Result<ExitCode, Failure> {
    let config = crate::config::Config::load(config_path)?;
    let dir = &config.store.path;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut copy = dir.clone().into_os_string();
    copy.push(format!(".damaged-{stamp}"));
    let copy = PathBuf::from(copy);
    copy_folder(dir, &copy)
        .with_context(|| format!("cannot copy {} to {}", dir.display(), copy.display()))?;
    println!("kept a copy of the damaged store in {}", copy.display());
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    let store = crate::server::open_store(&config).await?;
    let problems = store.problems();
    println!("opened {} ({} secrets)", dir.display(), store.len());
    if problems.is_empty() {
        println!("no problem found");
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    store.flush().await?;
    Ok(ExitCode::SUCCESS)
}

/// Copies the files of `from` (and its `blobs` folder) into a new private folder `to`.
fn copy_folder(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_folder(&entry.path(), &target)?;
        } else if kind.is_file() {
            let mut src = std::fs::File::open(entry.path())?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}
