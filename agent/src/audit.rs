//! The audit trail: an append-only JSON-lines record of who did what to which path.
//!
//! Every denial, every write and delete, and (unless `audit.reads = false`) every
//! read is accounted for with the peer's identity, the operation, the path, the
//! outcome and the stable error code. Values never: a record has no field that could hold
//! one. Requests hand records to a bounded channel and a single writer thread appends
//! them in batches, so the request path does no file I/O; when the channel is full the request
//! waits rather than drop a record. Denials are also logged at `warn`.
//!
//! Denials and failed reads go through [`Audit::record_coalesced`], which coalesces a
//! client's repeats into one record a second with a `count` ([`coalesce`]), so a
//! client in a loop cannot flood the trail (or the log). Successful reads go through
//! [`Audit::record_read`]: by default the first read of each version by each reader
//! is a record of its own and repeats are counted per window ([`reads`]).

mod coalesce;
mod reads;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

/// Records waiting to be written before requests start to wait.
const QUEUE: usize = 8192;
/// How long the writer lets records gather after a write.
const LINGER: Duration = Duration::from_millis(1);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed and done.
    Ok,
    /// Refused by policy or identity checks.
    Denied,
    /// Allowed, but it failed (not found, conflict, integrity, …).
    Failed,
}

/// Which successful reads the trail records (`audit.reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// None (`false`).
    Off,
    /// Each one, as its own record (`"each"`).
    Each,
    /// The first of each version by each reader, and counted repeats per window
    /// (`true` or `"aggregate"`, the default).
    Aggregate(Duration),
}

impl Default for Reads {
    fn default() -> Self {
        Reads::Aggregate(Duration::from_secs(1))
    }
}

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Unix time in milliseconds.
    pub time_ms: i64,
    /// The caller's SPIFFE id.
    pub peer: Arc<str>,
    /// The caller's uid on a Unix socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// `read`, `write`, `list`, `admin`, …
    pub op: &'static str,
    /// The secret path or list prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Box<str>>,
    /// Outcome.
    pub outcome: Outcome,
    /// HTTP status sent.
    pub status: u16,
    /// Stable error code, when it failed or was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Version read or written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What happened, for lifecycle operations (a rotation step and a provider's
    /// reason). Never a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<str>>,
    /// How many like events this record stands for, when more than this one (repeated
    /// denials, coalesced; counted reads); absent means one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For counted reads: the time of the last read counted (`time_ms` is the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ms: Option<i64>,
}

impl Record {
    /// A record stamped now.
    pub fn now(peer: Arc<str>, uid: Option<u32>, op: &'static str, path: Option<&str>) -> Self {
        Record {
            time_ms: crate::clock::now_ms(),
            peer,
            uid,
            op,
            path: path.map(Into::into),
            outcome: Outcome::Ok,
            status: 200,
            code: None,
            version: None,
            detail: None,
            count: None,
            last_ms: None,
        }
    }
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit file {path}")]
pub struct Error {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The handle requests use to record.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Record>,
    reads: Reads,
    denials: Arc<coalesce::Coalescer>,
    tally: Arc<reads::ReadTally>,
    /// Set by [`Audit::reopen`]; the writer opens the file again before its next write.
    reopen: Arc<std::sync::atomic::AtomicBool>,
}

/// Opens the audit file (or the log file) to append, creating it `0600`, never
/// through a link.
pub(crate) fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The writer thread; [`Writer::finish`] waits until every record is on disk.
#[derive(Debug)]
pub struct Writer(JoinHandle<()>);

impl Writer {
    /// Waits for the writer to drain (after every [`Audit`] handle is dropped).
    pub async fn finish(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}

impl Audit {
    /// Opens (creating with mode 0600) the audit file and starts the writer.
    pub async fn open(path: &Path, reads: Reads) -> Result<(Audit, Writer), Error> {
        let err = |source| Error {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_file(path).map_err(err)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let reopen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let owned = path.to_owned();
        let denials = Arc::new(coalesce::Coalescer::default());
        let window = match reads {
            Reads::Aggregate(window) => window,
            Reads::Off | Reads::Each => coalesce::WINDOW,
        };
        let tally = Arc::new(reads::ReadTally::new(window));
        let held = (denials.clone(), tally.clone(), reopen.clone());
        let thread = std::thread::Builder::new()
            .name("latchkey-audit".into())
            .spawn(move || write_loop(file, rx, owned, &held.0, &held.1, &held.2))
            .map_err(err)?;
        let audit = Audit {
            tx,
            reads,
            denials,
            tally,
            reopen,
        };
        tokio::spawn(flush_held(audit.downgrade()));
        Ok((audit, Writer(thread)))
    }

    /// Opens the audit file again (by its path) before the next record: after
    /// logrotate moved it away (`SIGUSR1`, or `postrotate kill -USR1`), new records go
    /// to the new file and none is lost.
    pub fn reopen(&self) {
        self.reopen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records what a client can cause in a loop (a denial, a failed read), coalescing
    /// its repeats (see [`coalesce`]).
    pub async fn record_coalesced(&self, record: Record) {
        for record in self.denials.admit(record, std::time::Instant::now()) {
            self.record(record).await;
        }
    }

    /// Whether successful reads are recorded (each, or counted).
    pub fn records_reads(&self) -> bool {
        self.reads != Reads::Off
    }

    /// Records a successful read (or listing) as `audit.reads` says: not at all, as
    /// its own record, or counted with its repeats ([`reads`]).
    pub async fn record_read(&self, record: Record) {
        match self.reads {
            Reads::Off => {}
            Reads::Each => self.record(record).await,
            Reads::Aggregate(_) => {
                for record in self.tally.admit(record, std::time::Instant::now()) {
                    self.record(record).await;
                }
            }
        }
    }

    /// Queues a record; waits only when the queue is full. Never drops a record
    /// while the writer runs.
    pub async fn record(&self, record: Record) {
        if record.outcome == Outcome::Denied {
            tracing::warn!(
                target: "latchkey::audit",
                peer = %record.peer,
                op = record.op,
                path = record.path.as_deref().unwrap_or(""),
                code = record.code.unwrap_or(""),
                count = record.count.unwrap_or(1),
                "denied"
            );
        }
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                if self.tx.send(record).await.is_err() {
                    tracing::error!("audit writer stopped; a record was lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer stopped; a record was lost");
            }
        }
    }
}

impl Audit {
    /// Queues a record from synchronous code (e.g. the plugin host's threads). Never
    /// blocks; if the queue is full the record is handed to a task that waits for room.
    pub fn try_record(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = tx.send(record).await;
                        });
                    }
                    Err(_) => {
                        tracing::error!("audit queue full outside the runtime; a record was lost")
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer stopped; a record was lost");
            }
        }
    }
}

/// Runs on its own thread with plain blocking writes: a request only queues its
/// record. After each flush the thread waits [`LINGER`] so that a burst of records
/// shares one `write(2)` and senders rarely have to wake it; when the queue is empty
/// it parks until the next record.
fn write_loop(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Record>,
    path: PathBuf,
    held: &coalesce::Coalescer,
    tally: &reads::ReadTally,
    reopen: &std::sync::atomic::AtomicBool,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut line = Vec::with_capacity(256);
    let mut write = |out: &mut std::io::BufWriter<std::fs::File>, record: &Record| {
        line.clear();
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            tracing::error!(path = %path.display(), error = %e, "audit write failed");
        }
    };
    while let Some(first) = rx.blocking_recv() {
        if reopen.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = out.flush();
            match open_file(&path) {
                Ok(file) => {
                    out = std::io::BufWriter::with_capacity(64 * 1024, file);
                    tracing::info!(path = %path.display(), "audit file reopened");
                }
                Err(e) => tracing::error!(path = %path.display(), error = %e,
                    "cannot reopen the audit file; writing on to the one open"),
            }
        }
        write(&mut out, &first);
        while let Ok(record) = rx.try_recv() {
            write(&mut out, &record);
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "audit flush failed");
        }
        std::thread::sleep(LINGER);
    }
    // Every handle is gone: what the coalescer and the read tally still hold is
    // written last.
    for record in held.drain().into_iter().chain(tally.drain()) {
        write(&mut out, &record);
    }
    let _ = out.flush();
}

/// A handle to the trail that does not keep it open.
struct WeakAudit {
    tx: mpsc::WeakSender<Record>,
    reads: Reads,
    denials: Arc<coalesce::Coalescer>,
    tally: Arc<reads::ReadTally>,
    reopen: Arc<std::sync::atomic::AtomicBool>,
}

impl Audit {
    fn downgrade(&self) -> WeakAudit {
        WeakAudit {
            tx: self.tx.downgrade(),
            reads: self.reads,
            denials: self.denials.clone(),
            tally: self.tally.clone(),
            reopen: self.reopen.clone(),
        }
    }
}

/// Writes the coalesced denials and counted reads whose window closed, every
/// window, until the last [`Audit`] handle is dropped (the writer thread then writes
/// what is left).
async fn flush_held(weak: WeakAudit) {
    let every = coalesce::WINDOW.min(weak.tally.window());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Upgrade first: once the channel is closed, the writer thread drains the rest.
        let Some(tx) = weak.tx.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        let due = weak.denials.due(now).into_iter().chain(weak.tally.due(now));
        let audit = Audit {
            tx,
            reads: weak.reads,
            denials: weak.denials.clone(),
            tally: weak.tally.clone(),
            reopen: weak.reopen.clone(),
        };
        for record in due {
            audit.record(record).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn records_are_appended_as_json_lines_with_tight_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(&path, Reads::Each).await.expect("open");
        let mut denied = Record::now("spiffe://td/app/a".into(), Some(1000), "read", Some("b/x"));
        denied.outcome = Outcome::Denied;
        denied.status = 403;
        denied.code = Some("forbidden");
        audit.record(denied).await;
        audit
            .record(Record::now(
                "spiffe://td/app/b".into(),
                None,
                "read",
                Some("b/x"),
            ))
            .await;
        drop(audit);
        writer.finish().await;
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[0]["code"], "forbidden");
        assert_eq!(lines[0]["uid"], 1000);
        assert_eq!(lines[1]["peer"], "spiffe://td/app/b");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
