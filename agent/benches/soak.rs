//! Soak benchmark (issue 13): minutes of steady reads while the agent is reloaded,
//! rotates a credential and renews certificates, watching for leaks and errors.
//!
//! `cargo bench -p latchkey-agent --bench soak [-- --minutes 3 | --seconds S | --quick] [-- --write docs/BENCHMARKS.md]`
//!
//! On a temp folder made with `latchkey init`, with the first-party `postgres`
//! provider and the machine's PostgreSQL (as the lifecycle bench: `--pg-url` or
//! `LATCHKEY_BENCH_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
//!
//! 1. starts the release agent with a `[[lifecycle]]` rule on `apps/soak/rotated`
//!    (`strategy = "single"` on the role `latchkey_soak`, created and dropped here)
//!    and seeds secrets through the API;
//! 2. drives `--conns` closed-loop mTLS connections (an app certificate, keep-alive,
//!    reads spread over the seeded secrets and the rotated one) for the whole run,
//!    plus one connection opened and closed per read every `--churn` seconds;
//! 3. every `--every` seconds runs, a third of the period apart: a SIGHUP reload
//!    (the config alternates between two policies; the audit record and the new
//!    policy are checked), a rotation (`POST /v1/rotate/{path}` as admin) and an app
//!    certificate renewal (`POST /v1/cert/renew`, the new pair then used), and every
//!    `--server-every`-th renewal also reissues the server certificate
//!    (`latchkey cert issue --server`, checked on a new handshake);
//! 4. samples the agent's RSS, open file descriptors and threads every second;
//! 5. reports RSS first/last/max and its slope over the second half, fds, every
//!    error, p50/p99 of reads started within ±500 ms of each planned operation
//!    against the reads outside every window, and the client's CPU per read; exits
//!    non-zero if anything failed, the fds grew past `--max-fd-growth` or RSS
//!    drifted past `--max-drift` MiB/min (judged on runs of 2 minutes or more: a
//!    shorter one, like `--quick`'s 30 s, is still in the agent's warm-up growth).
//!
//! Warm-up (`--warmup`, 10 s) runs each operation once before anything is counted
//! in the figures (its failures still count), so pools and caches that fill once
//! (the SQL pool, the plugin's compiled artifact) are in the first sample.
//!
//! Other options: `--conns N`, `--agent-bin PATH`, `--keep` (keep the temp folder).

#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "serve/load.rs"]
mod load;
#[path = "soak/ops.rs"]
mod ops;
#[path = "soak/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use http_body_util::Full;
use latchkey::secret::{SecretBytes, SecretString};
use serde_json::json;

use common::agent;
use common::postgres;
use common::process::Proc;
use common::procfs;
use load::Target;
use ops::{Kind, Ops};
use report::{Class, Measured, OpRow, Report, Sample};

#[derive(Debug, Clone)]
struct Opts {
    measured: Duration,
    warmup: Duration,
    every: Duration,
    server_every: usize,
    conns: usize,
    churn: Option<Duration>,
    max_drift: f64,
    max_fd_growth: usize,
    pg_url: String,
    agent_bin: PathBuf,
    write: Option<PathBuf>,
    keep: bool,
    /// The arguments as given, for the report's command line.
    args: Vec<String>,
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        measured: Duration::from_secs(180),
        warmup: Duration::from_secs(10),
        every: Duration::from_secs(6),
        server_every: 5,
        conns: 4,
        churn: Some(Duration::from_millis(100)),
        max_drift: 1.0,
        max_fd_growth: 4,
        pg_url: postgres::url_from_env(),
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_latchkey")),
        write: None,
        keep: false,
        args: args
            .iter()
            .filter(|a| a.as_str() != "--bench")
            .cloned()
            .collect(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => {
                o.measured = Duration::from_secs(30);
                o.warmup = Duration::from_secs(5);
            }
            "--minutes" => o.measured = common::args::seconds(&value()?)? * 60,
            "--seconds" => o.measured = common::args::seconds(&value()?)?,
            "--warmup" => o.warmup = common::args::seconds(&value()?)?,
            "--every" => o.every = common::args::seconds(&value()?)?,
            "--server-every" => o.server_every = value()?.parse()?,
            "--conns" => o.conns = value()?.parse()?,
            "--churn" => {
                let every = common::args::seconds(&value()?)?;
                o.churn = (!every.is_zero()).then_some(every);
            }
            "--max-drift" => o.max_drift = value()?.parse()?,
            "--max-fd-growth" => o.max_fd_growth = value()?.parse()?,
            "--pg-url" => o.pg_url = value()?,
            "--agent-bin" => o.agent_bin = PathBuf::from(value()?),
            "--write" => o.write = Some(common::markdown::from_workspace(&value()?)),
            "--keep" => o.keep = true,
            other => bail!("unknown option {other:?} (see the top of agent/benches/soak.rs)"),
        }
    }
    if o.conns == 0 || o.server_every == 0 {
        bail!("--conns and --server-every must be at least 1");
    }
    // The three ±500 ms windows of a period must not overlap.
    if o.every < Duration::from_secs(3) {
        bail!("--every must be at least 3 s (three operations a third apart, ±500 ms windows)");
    }
    if o.measured < o.every {
        bail!("the run must last at least one period (--every)");
    }
    Ok(o)
}

fn main() {
    common::runtime::main("soak bench failed", parse_opts, run);
}

/// The app certificate the load uses (`spiffe://latchkey.local/app/soak`).
const APP: &str = "soak";
/// The PostgreSQL role the rotations change the password of.
const ROLE: &str = "latchkey_soak";
/// Secrets the load reads besides the rotated one.
const SEEDED: usize = 50;
/// Half the width of the latency window around each operation.
const WINDOW: Duration = Duration::from_millis(500);

fn seeded_path(i: usize) -> String {
    format!("apps/soak/s{i:02}")
}

/// The app may read [`ops::TOGGLE`] under the second config only.
fn toggle_rule() -> String {
    format!(
        "\n[[policy]]\nidentity = \"spiffe://latchkey.local/app/{APP}\"\npaths = [\"{}\"]\noperations = [\"read\"]\n",
        ops::TOGGLE
    )
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    if !opts.agent_bin.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release --bin latchkey` or pass --agent-bin",
            opts.agent_bin.display()
        );
    }
    let machine = report::Machine::probe();
    let pg = postgres::version(&opts.pg_url)
        .await
        .with_context(|| format!("PostgreSQL at {} (set --pg-url)", opts.pg_url))?;
    let tmp = tempfile::Builder::new()
        .prefix("latchkey-soak-bench-")
        .tempdir()?;
    let root = tmp.path().to_owned();
    eprintln!("soak bench: folder {}", root.display());
    let (wasm, sha) = postgres::install_plugin(&root.join("plugins"))?;

    let mut db = postgres::connect(&opts.pg_url).await?;
    sqlx::query(&format!("DROP ROLE IF EXISTS {ROLE}"))
        .execute(&mut db)
        .await?;
    sqlx::query(&format!("CREATE ROLE {ROLE} LOGIN PASSWORD 'soak-initial'"))
        .execute(&mut db)
        .await?;
    let result = soak(&opts, &root, &wasm, &sha).await;
    let dropped = sqlx::query(&format!("DROP ROLE IF EXISTS {ROLE}"))
        .execute(&mut db)
        .await;
    if opts.keep {
        let kept = tmp.keep();
        eprintln!("soak bench: kept {}", kept.display());
    }
    let measured = result?;
    dropped.context("drop the soak role")?;

    let report = Report {
        machine,
        pg,
        command: std::iter::once("cargo bench -p latchkey-agent --bench soak".to_owned())
            .chain((!opts.args.is_empty()).then(|| format!("-- {}", opts.args.join(" "))))
            .collect::<Vec<_>>()
            .join(" "),
        measured: opts.measured,
        warmup: opts.warmup,
        every: opts.every,
        server_every: opts.server_every,
        conns: opts.conns,
        churn: opts.churn,
        max_drift: opts.max_drift,
        max_fd_growth: opts.max_fd_growth,
        seeded: SEEDED,
        m: measured,
    };
    let text = report.markdown();
    println!("{text}");
    if let Some(path) = &opts.write {
        common::markdown::write_section(path, report::SECTION, "soak", &text)?;
        eprintln!("soak bench: wrote the section to {}", path.display());
    }
    let failures = report.failures();
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Shared by the load, the sampler and the schedule.
struct Shared {
    phase: AtomicU8,
    /// Start of the measured phase; the windows are planned from it.
    t0: OnceLock<Instant>,
    reads: AtomicU64,
    bad_reads: AtomicU64,
    conn_errors: AtomicU64,
    churn_ok: AtomicU64,
    churn_errors: AtomicU64,
    churn_hist: Mutex<Histogram<u64>>,
    stop_churn: AtomicBool,
    /// The first errors, for the report.
    messages: Mutex<Vec<String>>,
}

impl Shared {
    fn note(&self, what: String) {
        eprintln!("soak bench: error: {what}");
        let mut m = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() < 20 {
            m.push(what);
        }
    }
}

/// Starts the agent, runs the load and the schedule, and returns what it measured.
async fn soak(opts: &Opts, root: &Path, wasm: &Path, sha: &str) -> anyhow::Result<Measured> {
    let dir = root.join("agent");
    let base = agent::init(&opts.agent_bin, &dir)?;
    agent::latchkey(
        &opts.agent_bin,
        &[
            "cert",
            "issue",
            "--app",
            APP,
            "--dir",
            dir.to_str().context("utf-8 path")?,
        ],
    )?;
    let mut text = base;
    text.push_str(&postgres::provider_toml(wasm, sha, 2, 2));
    text.push_str(&format!(
        "\n[[lifecycle]]\npaths = [\"{}\"]\nplugin = \"postgres\"\n\
         config = {{ connection = \"postgres\", strategy = \"single\" }}\nrotate_every = \"30d\"\n",
        ops::ROTATED
    ));
    let texts = [text.clone(), format!("{text}{}", toggle_rule())];
    let config = dir.join("latchkey.toml");
    std::fs::write(&config, &texts[0])?;

    let log = root.join("agent.log");
    let mut cmd = agent::run_command(&opts.agent_bin, &config);
    cmd.env(postgres::URL_ENV, &opts.pg_url);
    let file = std::fs::File::create(&log)?;
    let mut agent = Proc::spawn("agent", cmd, file.try_clone()?.into(), file.into())?;
    agent::wait_ready(&dir, &mut agent, &log, Duration::from_secs(120)).await?;
    let pid = agent.pid();

    // Secrets: the rotated credential, the toggled one and the seeded ones.
    let admin = agent::admin_client(&dir)?;
    let put = |path: String, body: serde_json::Value| {
        let admin = &admin;
        async move {
            let reply = admin
                .request(
                    Method::PUT,
                    &format!("/v1/secrets/{path}"),
                    Some(SecretBytes::new(serde_json::to_vec(&body)?)),
                )
                .await?;
            if !reply.is_success() {
                bail!("PUT {path}: {}", reply.status);
            }
            anyhow::Ok(())
        }
    };
    put(
        ops::ROTATED.to_owned(),
        json!({"kind": "postgres-password", "fields": {"username": ROLE, "password": "soak-initial"}}),
    )
    .await?;
    put(
        ops::TOGGLE.to_owned(),
        json!({"kind": "api-key", "fields": {"key": "toggle-value"}}),
    )
    .await?;
    put(
        ops::STATIC.to_owned(),
        json!({"kind": "database", "fields": {"username": "svc_soak", "password": "Zq7!pR2vxK9mWc4T", "host": "db.internal:5432"}}),
    )
    .await?;
    for i in 0..SEEDED {
        put(
            seeded_path(i),
            json!({"kind": "database", "fields": {"username": format!("svc_soak_{i:02}"), "password": format!("Zq7!pR2v{i:02}xK9mWc4T")}}),
        )
        .await?;
    }
    let mut paths: Vec<String> = vec![ops::STATIC.to_owned(), ops::ROTATED.to_owned()];
    paths.extend((0..SEEDED).map(seeded_path));

    let app_files = |ext: &str| dir.join(format!("clients/{APP}.{ext}"));
    let target = Target {
        socket: dir.join("run/latchkey.sock"),
        tls: load::client_config(&dir.join("ca/ca.pem"), &app_files("pem"), &app_files("key"))?,
    };
    let probe = latchkey::client::Client::new(
        latchkey::client::Endpoint::Unix(target.socket.clone()),
        target.tls.clone(),
    );
    let status = probe
        .get(&format!("/v1/secrets/{}", ops::TOGGLE))
        .await?
        .status;
    if status != 403 {
        bail!(
            "the app read {} with {status} before any reload, expected 403",
            ops::TOGGLE
        );
    }
    let mut ops = Ops {
        bin: opts.agent_bin.clone(),
        dir: dir.clone(),
        pid,
        config: config.clone(),
        texts,
        current: 0,
        admin,
        probe,
        app_cert: std::fs::read_to_string(app_files("pem"))?,
        app_key: SecretString::new(std::fs::read_to_string(app_files("key"))?),
        target: target.clone(),
        audit_read: std::fs::metadata(dir.join("audit/audit.log")).map_or(0, |m| m.len()),
        version: 0,
    };

    let shared = Arc::new(Shared {
        phase: AtomicU8::new(load::WARMUP),
        t0: OnceLock::new(),
        reads: AtomicU64::new(0),
        bad_reads: AtomicU64::new(0),
        conn_errors: AtomicU64::new(0),
        churn_ok: AtomicU64::new(0),
        churn_errors: AtomicU64::new(0),
        churn_hist: Mutex::new(load::histogram()),
        stop_churn: AtomicBool::new(false),
        messages: Mutex::new(Vec::new()),
    });
    let paths = Arc::new(paths);
    let mut conns = tokio::task::JoinSet::new();
    for c in 0..opts.conns {
        conns.spawn(read_loop(
            target.clone(),
            paths.clone(),
            c,
            shared.clone(),
            opts.every,
            opts.measured,
        ));
    }
    let churn = opts
        .churn
        .map(|every| tokio::spawn(churn_loop(target.clone(), every, shared.clone())));

    // Warm-up: load, and each operation once (two reloads: back to the first policy).
    let warm_until = Instant::now() + opts.warmup;
    let mut rows: Vec<OpRow> = [Kind::Reload, Kind::Rotate, Kind::Renew, Kind::ServerReissue]
        .into_iter()
        .map(OpRow::new)
        .collect();
    let mut warm_failures = 0;
    for kind in [
        Kind::Reload,
        Kind::Rotate,
        Kind::Renew,
        Kind::ServerReissue,
        Kind::Reload,
    ] {
        if let Err(e) = run_op(&mut ops, kind).await {
            warm_failures += 1;
            shared.note(format!("warm-up {}: {e:#}", kind.name()));
        }
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(warm_until)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_start = procfs::fd_count(pid)?;

    // Measured phase.
    let hz = procfs::clock_ticks();
    let me = std::process::id();
    let (client0, agent0) = (procfs::cpu_ticks(me)?, procfs::cpu_ticks(pid)?);
    let t0 = Instant::now();
    shared.t0.set(t0).map_err(|_| anyhow!("t0 set twice"))?;
    shared.phase.store(load::MEASURE, Ordering::Relaxed);
    let sampler = tokio::spawn(sample_loop(pid, shared.clone(), t0, opts.measured));

    let third = opts.every / 3;
    let mut period = 0u32;
    'schedule: loop {
        for (slot, kind) in [(0, Kind::Reload), (1, Kind::Rotate), (2, Kind::Renew)] {
            let planned = opts.every * period + third * slot;
            if planned >= opts.measured {
                break 'schedule;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + planned)).await;
            let kinds: &[Kind] =
                if kind == Kind::Renew && (period as usize + 1).is_multiple_of(opts.server_every) {
                    &[Kind::Renew, Kind::ServerReissue]
                } else {
                    std::slice::from_ref(&kind)
                };
            for &k in kinds {
                let lag = t0.elapsed().saturating_sub(planned);
                let started = Instant::now();
                let outcome = run_op(&mut ops, k).await;
                let row = rows
                    .iter_mut()
                    .find(|r| r.kind == k)
                    .expect("a row per kind");
                row.record(started.elapsed(), lag, outcome.is_ok());
                if let Err(e) = outcome {
                    shared.note(format!(
                        "{} at {:.1} s: {e:#}",
                        k.name(),
                        planned.as_secs_f64()
                    ));
                }
            }
        }
        period += 1;
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + opts.measured)).await;
    let elapsed = t0.elapsed();
    let (client1, agent1) = (procfs::cpu_ticks(me)?, procfs::cpu_ticks(pid)?);
    let reads = shared.reads.load(Ordering::Relaxed);
    shared.stop_churn.store(true, Ordering::Relaxed);
    if let Some(churn) = churn {
        churn.await?;
    }
    let samples = sampler.await??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_end = procfs::fd_count(pid)?;
    shared.phase.store(load::STOP, Ordering::Relaxed);
    let mut hists: Vec<Histogram<u64>> = (0..Class::ALL.len()).map(|_| load::histogram()).collect();
    while let Some(done) = conns.join_next().await {
        for (h, c) in hists.iter_mut().zip(done??) {
            h.add(&c)?;
        }
    }
    agent.check_alive(Some(&log))?;
    agent.stop_within(Duration::from_secs(15))?;
    let (log_errors, log_warnings) = log_levels(&log)?;

    let churn_hist = shared
        .churn_hist
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let messages = shared
        .messages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Measured {
        samples,
        fds_start,
        fds_end,
        reads,
        elapsed,
        bad_reads: shared.bad_reads.load(Ordering::Relaxed),
        conn_errors: shared.conn_errors.load(Ordering::Relaxed),
        churn_ok: shared.churn_ok.load(Ordering::Relaxed),
        churn_errors: shared.churn_errors.load(Ordering::Relaxed),
        churn_hist,
        warm_failures,
        ops: rows,
        classes: hists,
        client_cpu: procfs::ticks_to_duration(client1 - client0, hz),
        agent_cpu: procfs::ticks_to_duration(agent1 - agent0, hz),
        log_errors,
        log_warnings,
        messages,
        version: ops.version,
    })
}

async fn run_op(ops: &mut Ops, kind: Kind) -> anyhow::Result<()> {
    match kind {
        Kind::Reload => ops.reload().await,
        Kind::Rotate => ops.rotate().await,
        Kind::Renew => ops.renew().await,
        Kind::ServerReissue => ops.reissue_server().await,
    }
}

/// Which window a read started at `at` (since the measured start) falls in: within
/// [`WINDOW`] of a planned reload, rotation or renewal, or none (steady).
fn class_of(at: Duration, every: Duration, measured: Duration) -> Class {
    let at = at.as_secs_f64();
    let every_s = every.as_secs_f64();
    for (slot, class) in [
        (0.0, Class::Reload),
        (1.0, Class::Rotate),
        (2.0, Class::Renew),
    ] {
        let offset = every_s * slot / 3.0;
        let k = ((at - offset) / every_s).round();
        let planned = k * every_s + offset;
        if k >= 0.0
            && planned < measured.as_secs_f64()
            && (at - planned).abs() <= WINDOW.as_secs_f64()
        {
            return class;
        }
    }
    Class::Steady
}

/// One closed-loop keep-alive connection reading `paths` in turn (starting at
/// `first`) until the phase is STOP. A failed connection is counted and replaced.
/// Returns a latency histogram per [`Class`] of the reads started while measuring.
async fn read_loop(
    target: Target,
    paths: Arc<Vec<String>>,
    first: usize,
    shared: Arc<Shared>,
    every: Duration,
    measured: Duration,
) -> anyhow::Result<Vec<Histogram<u64>>> {
    let uris = paths
        .iter()
        .map(|p| format!("/v1/secrets/{p}").parse::<http::Uri>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut hists: Vec<Histogram<u64>> = (0..Class::ALL.len()).map(|_| load::histogram()).collect();
    let mut i = first;
    while shared.phase.load(Ordering::Relaxed) != load::STOP {
        let io = match load::open(&target).await {
            Ok(io) => io,
            Err(e) => {
                shared.conn_errors.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("load connection: {e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
        let work = async {
            loop {
                let phase = shared.phase.load(Ordering::Relaxed);
                if phase == load::STOP {
                    return anyhow::Ok(());
                }
                let uri = &uris[i % uris.len()];
                i += 1;
                let start = Instant::now();
                let (status, len) = load::get(&mut sender, uri).await?;
                let took = start.elapsed();
                if status != StatusCode::OK || len == 0 {
                    shared.bad_reads.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("read {uri}: {status}"));
                }
                if phase == load::MEASURE {
                    if let Some(t0) = shared.t0.get() {
                        let class = class_of(start.saturating_duration_since(*t0), every, measured);
                        hists[class as usize]
                            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                        shared.reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        tokio::pin!(conn);
        let ended = tokio::select! {
            biased;
            r = work => r,
            r = &mut conn => match r {
                Ok(()) => Err(anyhow!("the agent closed the connection")),
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = ended {
            shared.conn_errors.fetch_add(1, Ordering::Relaxed);
            shared.note(format!("load connection: {e:#}"));
        }
    }
    Ok(hists)
}

/// A new connection, one read and a close, every `every`, until told to stop.
async fn churn_loop(target: Target, every: Duration, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stop_churn.load(Ordering::Relaxed) {
        tick.tick().await;
        let start = Instant::now();
        let once = async {
            let mut sender = load::connect(&target).await?;
            let (status, body) = load::request(
                &mut sender,
                Method::GET,
                &format!("/v1/secrets/{}", ops::STATIC),
                None,
            )
            .await?;
            if status != StatusCode::OK || body.is_empty() {
                bail!("answered {status}");
            }
            anyhow::Ok(())
        };
        match once.await {
            Ok(()) => {
                let took = start.elapsed();
                shared.churn_ok.fetch_add(1, Ordering::Relaxed);
                if shared.phase.load(Ordering::Relaxed) == load::MEASURE {
                    shared
                        .churn_hist
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                }
            }
            Err(e) => {
                shared.churn_errors.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("new connection: {e:#}"));
            }
        }
    }
}

/// The agent's RSS, fds and threads and the reads so far, every second from `t0`
/// to `t0 + measured`.
async fn sample_loop(
    pid: u32,
    shared: Arc<Shared>,
    t0: Instant,
    measured: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::from_std(t0), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let at = t0.elapsed();
        let mem = procfs::memory(pid)?;
        out.push(Sample {
            at,
            rss_kib: mem.rss_kib,
            hwm_kib: mem.hwm_kib,
            fds: procfs::fd_count(pid)?,
            threads: procfs::threads(pid)?,
            reads: shared.reads.load(Ordering::Relaxed),
        });
        if at + Duration::from_secs(1) > measured {
            return Ok(out);
        }
    }
}

/// Lines of the agent's log at level ERROR and WARN.
fn log_levels(log: &Path) -> anyhow::Result<(usize, usize)> {
    let text = std::fs::read_to_string(log)?;
    let count = |level: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().take(3).any(|w| w.contains(level)))
            .count()
    };
    Ok((count("ERROR"), count("WARN")))
}
