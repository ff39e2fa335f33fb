//! Lifecycle benchmark: rotation throughput, the cost of idle policies, and what a
//! rotation adds to reads.
//!
//! `cargo bench -p latchkey-agent --bench lifecycle [-- --quick] [-- --roles N --conc 1,4]`
//!
//! Runs the real `latchkey` binary (the release build cargo made for this bench) on
//! temp folders made with `latchkey init`, with the first-party `postgres` provider
//! (built for `wasm32-wasip2` like the tests build it) and the machine's PostgreSQL
//! (`postgres://postgres@127.0.0.1:5432/test`, trust auth; `--pg-url` or
//! `LATCHKEY_BENCH_PG_URL` to change it). In one run:
//!
//! 1. **rotations per second**: N pairs of PostgreSQL roles (`latchkey_bench_NNN_a` /
//!    `_b`, dropped at the end), one secret and one `[[lifecycle]]` rule per pair
//!    (`strategy = "alternate"`: the roles of a pair are per rule), then
//!    `POST /v1/rotate/{path}` for all N at once from a client with bounded
//!    concurrency (one mTLS connection per worker), at each `--conc` level,
//!    interleaved round by round: rotations/s, p50/p99 per-rotation latency and the
//!    agent's CPU time per rotation (from /proc);
//! 2. **added read latency during rotations**: paced `GET /v1/secrets/{path}` of a
//!    secret no rule covers and of a secret being rotated back to back, with four
//!    rotations running continuously (that one plus three cycling through the
//!    others), against the same reads with nothing running; interleaved;
//! 3. **idle policies**: an agent holding `--idle-secrets` secrets (default 10,000,
//!    stored with the library while it is stopped) all covered by one rule with
//!    `rotate_every = "30d"` (nothing due), against the same agent, store, plugin and
//!    SQL connection with no `[[lifecycle]]` rule: CPU time over `--idle` seconds of
//!    idling after start (summed per-thread run time from `/proc/PID/task/*/schedstat`,
//!    ns precision; also utime+stime) and RSS.
//!
//! Prints a markdown section for `docs/BENCHMARKS.md`. Options: `--quick` (10 roles,
//! 1 round, 1,000 idle secrets, 5 s windows), `--roles N`, `--conc 1,4`, `--rounds N`,
//! `--scheduler-concurrency N`, `--idle-secrets N`, `--idle S`, `--read S`,
//! `--read-rounds N`, `--pg-url URL`, `--agent-bin PATH`.

#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use http::Method;
use latchkey::client::Client;
use latchkey::secret::SecretBytes;
use serde_json::{json, Value};

use common::agent::{self, admin_client};
use common::postgres::{self, URL_ENV as PG_URL_ENV};
use common::process::Proc;
use common::procfs;

/// Background rotations while reads are measured.
const BACKGROUND_ROTATORS: usize = 4;

#[derive(Debug, Clone)]
struct Opts {
    roles: usize,
    conc: Vec<usize>,
    rounds: usize,
    scheduler_concurrency: usize,
    idle_secrets: usize,
    idle: Duration,
    read: Duration,
    read_rounds: usize,
    read_interval: Duration,
    pg_url: String,
    agent_bin: PathBuf,
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        roles: 50,
        conc: vec![1, 4],
        rounds: 2,
        scheduler_concurrency: 4,
        idle_secrets: 10_000,
        idle: Duration::from_secs(30),
        read: Duration::from_secs(10),
        read_rounds: 2,
        read_interval: Duration::from_millis(2),
        pg_url: postgres::url_from_env(),
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_latchkey")),
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
                o.roles = 10;
                o.rounds = 1;
                o.idle_secrets = 1_000;
                o.idle = Duration::from_secs(5);
                o.read = Duration::from_secs(3);
                o.read_rounds = 1;
            }
            "--roles" => o.roles = value()?.parse()?,
            "--conc" => o.conc = common::args::counts(&value()?)?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--scheduler-concurrency" => o.scheduler_concurrency = value()?.parse()?,
            "--idle-secrets" => o.idle_secrets = value()?.parse()?,
            "--idle" => o.idle = common::args::seconds(&value()?)?,
            "--read" => o.read = common::args::seconds(&value()?)?,
            "--read-rounds" => o.read_rounds = value()?.parse()?,
            "--pg-url" => o.pg_url = value()?,
            "--agent-bin" => o.agent_bin = PathBuf::from(value()?),
            other => {
                bail!("unknown option {other:?} (see the top of agent/benches/lifecycle.rs)")
            }
        }
    }
    if o.roles < BACKGROUND_ROTATORS
        || o.rounds == 0
        || o.read_rounds == 0
        || o.idle_secrets == 0
        || o.conc.is_empty()
        || o.conc.contains(&0)
        || o.scheduler_concurrency == 0
    {
        bail!(
            "--roles must be at least {BACKGROUND_ROTATORS}; --rounds, --read-rounds, \
             --idle-secrets, --conc and --scheduler-concurrency at least 1"
        );
    }
    Ok(o)
}

fn main() {
    common::runtime::main("lifecycle bench failed", parse_opts, run);
}

/// The `[[sql]]`, `[[plugin]]` and `[scheduler]` blocks every agent here gets.
fn provider_toml(opts: &Opts, wasm: &Path, sha256: &str, pool: usize) -> String {
    postgres::provider_toml(wasm, sha256, pool, opts.scheduler_concurrency)
}

fn spawn_agent(opts: &Opts, config: &Path, log: &Path) -> anyhow::Result<Proc> {
    let mut cmd = agent::run_command(&opts.agent_bin, config);
    cmd.env(PG_URL_ENV, &opts.pg_url);
    Proc::spawn(
        "agent",
        cmd,
        Stdio::null(),
        std::fs::File::create(log)?.into(),
    )
}

/// Waits for `/v1/health`; fails if the agent exits first.
async fn wait_ready(dir: &Path, agent: &mut Proc, log: &Path) -> anyhow::Result<()> {
    agent::wait_ready(dir, agent, log, Duration::from_secs(120)).await
}

async fn put(client: &Client, path: &str, body: &Value) -> anyhow::Result<()> {
    let reply = client
        .request(
            Method::PUT,
            &format!("/v1/secrets/{path}"),
            Some(SecretBytes::new(serde_json::to_vec(body)?)),
        )
        .await?;
    if !reply.is_success() {
        bail!(
            "PUT {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(reply.body.expose())
        );
    }
    Ok(())
}

fn role(i: usize, side: &str) -> String {
    format!("latchkey_bench_{i:03}_{side}")
}

fn rotated_path(i: usize) -> String {
    format!("bench/rot/s{i:03}")
}

/// The PostgreSQL side: the role pairs the rotations take turns on.
struct Roles {
    url: String,
    n: usize,
}

impl Roles {
    async fn connect(&self) -> anyhow::Result<sqlx::PgConnection> {
        postgres::connect(&self.url).await
    }

    /// Drops leftovers of an earlier run and creates `_a` (LOGIN) and `_b` (NOLOGIN).
    async fn create(&self) -> anyhow::Result<()> {
        let mut db = self.connect().await?;
        self.drop_with(&mut db).await?;
        for i in 0..self.n {
            for sql in [
                format!(
                    "CREATE ROLE {} LOGIN PASSWORD 'bench-initial-{i:03}'",
                    role(i, "a")
                ),
                format!("CREATE ROLE {} NOLOGIN", role(i, "b")),
            ] {
                sqlx::query(&sql).execute(&mut db).await?;
            }
        }
        Ok(())
    }

    async fn drop_with(&self, db: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        for i in 0..self.n {
            for side in ["a", "b"] {
                sqlx::query(&format!("DROP ROLE IF EXISTS {}", role(i, side)))
                    .execute(&mut *db)
                    .await?;
            }
        }
        Ok(())
    }

    async fn drop_all(&self) -> anyhow::Result<()> {
        let mut db = self.connect().await?;
        self.drop_with(&mut db).await
    }

    async fn can_login(&self, name: &str) -> anyhow::Result<bool> {
        postgres::can_login(&self.url, name).await
    }
}

/// Latency samples of one kind.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[idx]
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "—".into();
    }
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

/// One `POST /v1/rotate/{path}`; anything but 200 `rotated` is an error.
async fn rotate_once(client: &Client, path: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = client
        .request(Method::POST, &format!("/v1/rotate/{path}"), None)
        .await?;
    let elapsed = started.elapsed();
    if reply.status != 200 {
        bail!(
            "rotate {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(reply.body.expose())
        );
    }
    Ok(elapsed)
}

/// Rotates every path once with `conc` workers (one connection each).
async fn rotate_all(
    dir: &Path,
    paths: &Arc<Vec<String>>,
    conc: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..conc {
        let client = admin_client(dir)?;
        client.get("/v1/health").await?; // connect before the clock starts
        clients.push(client);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (next, paths) = (next.clone(), paths.clone());
        tasks.spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(path) = paths.get(i) else {
                    return Ok::<_, anyhow::Error>(times);
                };
                times.push(rotate_once(&client, path).await?);
            }
        });
    }
    let mut times = Vec::new();
    while let Some(done) = tasks.join_next().await {
        times.extend(done??);
    }
    Ok((started.elapsed(), times))
}

struct RotationRow {
    conc: usize,
    rotations: usize,
    elapsed: Duration,
    latency: Samples,
    cpu: Duration,
}

#[derive(Default)]
struct ReadRow {
    other: Samples,
    rotating: Samples,
    background: usize,
}

struct Rotations {
    rows: Vec<RotationRow>,
    quiet: ReadRow,
    busy: ReadRow,
    busy_secs: f64,
    check: String,
}

/// Paced reads of `other` and `rotating` until `until`, one pair per `interval`.
async fn paced_reads(
    client: &Client,
    other: &str,
    rotating: &str,
    interval: Duration,
    duration: Duration,
    row: &mut ReadRow,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + duration;
    while Instant::now() < until {
        tick.tick().await;
        for (path, samples) in [(other, &mut row.other), (rotating, &mut row.rotating)] {
            let started = Instant::now();
            let reply = client.get(&format!("/v1/secrets/{path}")).await?;
            samples.0.push(started.elapsed());
            if reply.status != 200 {
                bail!("GET {path}: {}", reply.status);
            }
        }
    }
    Ok(())
}

/// Rotations back to back until `stop`: worker 0 on `paths[0]` only, the others
/// cycling through the rest.
async fn background_rotations(
    dir: &Path,
    paths: &Arc<Vec<String>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<usize>>> {
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    let rest = paths.len() - 1;
    for worker in 0..BACKGROUND_ROTATORS {
        let client = admin_client(dir)?;
        let (paths, stop, next) = (paths.clone(), stop.clone(), next.clone());
        tasks.spawn(async move {
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) {
                let i = if worker == 0 {
                    0
                } else {
                    1 + next.fetch_add(1, Ordering::SeqCst) % rest
                };
                // Two workers may pick the same secret when there are few: a 409 (busy)
                // is then expected and not counted.
                let reply = client
                    .request(Method::POST, &format!("/v1/rotate/{}", paths[i]), None)
                    .await?;
                match reply.status {
                    200 => done += 1,
                    409 => {}
                    other => bail!(
                        "background rotate {}: {other} {}",
                        paths[i],
                        String::from_utf8_lossy(reply.body.expose())
                    ),
                }
            }
            Ok(done)
        });
    }
    Ok(tasks)
}

async fn rotations(opts: &Opts, root: &Path, wasm: &Path, sha: &str) -> anyhow::Result<Rotations> {
    let roles = Roles {
        url: opts.pg_url.clone(),
        n: opts.roles,
    };
    roles.create().await?;
    let result = rotations_on(opts, root, wasm, sha, &roles).await;
    let dropped = roles.drop_all().await;
    let out = result?;
    dropped.context("drop the bench roles")?;
    Ok(out)
}

async fn rotations_on(
    opts: &Opts,
    root: &Path,
    wasm: &Path,
    sha: &str,
    roles: &Roles,
) -> anyhow::Result<Rotations> {
    let dir = root.join("rotate");
    let mut text = agent::init(&opts.agent_bin, &dir)?;
    let pool = opts
        .conc
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(BACKGROUND_ROTATORS);
    text.push_str(&provider_toml(opts, wasm, sha, pool));
    // One rule per secret: the two roles of the alternate strategy are per rule.
    for i in 0..opts.roles {
        text.push_str(&format!(
            "\n[[lifecycle]]\npaths = [{:?}]\nplugin = \"postgres\"\n\
             config = {{ connection = \"postgres\", strategy = \"alternate\", roles = \"{},{}\" }}\n\
             rotate_every = \"30d\"\n",
            rotated_path(i),
            role(i, "a"),
            role(i, "b"),
        ));
    }
    let config = dir.join("latchkey.toml");
    std::fs::write(&config, text)?;
    let log = dir.join("agent.log");
    let mut agent = spawn_agent(opts, &config, &log)?;
    wait_ready(&dir, &mut agent, &log).await?;
    let admin = admin_client(&dir)?;
    for i in 0..opts.roles {
        put(
            &admin,
            &rotated_path(i),
            &json!({"kind": "postgres-password",
                    "fields": {"username": role(i, "a"), "password": format!("bench-initial-{i:03}")}}),
        )
        .await?;
    }
    put(
        &admin,
        "bench/read/other",
        &json!({"kind": "database", "fields": {"username": "svc_other", "password": "Zq7!pR2vxK9mWc4T", "host": "db.internal:5432"}}),
    )
    .await?;
    let paths = Arc::new((0..opts.roles).map(rotated_path).collect::<Vec<_>>());

    // Warm-up: one rotation of each secret (first calls, SQL pool, page cache).
    rotate_all(&dir, &paths, *opts.conc.iter().max().unwrap_or(&1)).await?;

    let hz = procfs::clock_ticks();
    let mut rows: Vec<RotationRow> = opts
        .conc
        .iter()
        .map(|&conc| RotationRow {
            conc,
            rotations: 0,
            elapsed: Duration::ZERO,
            latency: Samples::default(),
            cpu: Duration::ZERO,
        })
        .collect();
    for round in 0..opts.rounds {
        for row in &mut rows {
            let cpu0 = procfs::cpu_ticks(agent.pid())?;
            let (elapsed, times) = rotate_all(&dir, &paths, row.conc).await?;
            let cpu1 = procfs::cpu_ticks(agent.pid())?;
            eprintln!(
                "round {}: concurrency {}: {} rotations in {}",
                round + 1,
                row.conc,
                times.len(),
                ms(elapsed)
            );
            row.rotations += times.len();
            row.elapsed += elapsed;
            row.latency.0.extend(times);
            row.cpu += procfs::ticks_to_duration(cpu1 - cpu0, hz);
        }
    }

    // Reads with and without rotations running, interleaved.
    let reader = admin_client(&dir)?;
    let rotating = paths[0].clone();
    let mut quiet = ReadRow::default();
    let mut busy = ReadRow::default();
    let mut busy_secs = 0.0;
    for round in 0..opts.read_rounds {
        paced_reads(
            &reader,
            "bench/read/other",
            &rotating,
            opts.read_interval,
            opts.read,
            &mut quiet,
        )
        .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut background = background_rotations(&dir, &paths, &stop).await?;
        // Let the first rotations start before sampling.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let reads = paced_reads(
            &reader,
            "bench/read/other",
            &rotating,
            opts.read_interval,
            opts.read,
            &mut busy,
        )
        .await;
        busy_secs += started.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        while let Some(done) = background.join_next().await {
            busy.background += done??;
        }
        reads?;
        eprintln!(
            "read round {}: {} background rotations so far",
            round + 1,
            busy.background
        );
    }

    // The rotations really took turns: the current role logs in, the other does not.
    let current = admin
        .get(&format!("/v1/secrets/{}", paths[0]))
        .await?
        .json()?;
    let user = current["fields"]["username"]
        .as_str()
        .ok_or_else(|| anyhow!("no username in {}", paths[0]))?
        .to_owned();
    let other_role = if user == role(0, "a") {
        role(0, "b")
    } else {
        role(0, "a")
    };
    let (on, off) = (
        roles.can_login(&user).await?,
        roles.can_login(&other_role).await?,
    );
    if !on || off {
        bail!("after the rotations {user} LOGIN = {on}, {other_role} LOGIN = {off}");
    }
    let check = format!(
        "after the run `{}` is `{user}` (LOGIN) and `{other_role}` is NOLOGIN",
        paths[0]
    );
    agent.stop()?;
    Ok(Rotations {
        rows,
        quiet,
        busy,
        busy_secs,
        check,
    })
}

/// Summed run time of every thread of `pid` (`/proc/PID/task/*/schedstat`, ns).
fn run_time_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("{}: unexpected format", path.display()))?;
    }
    Ok(total)
}

struct IdleRun {
    start_cpu: Duration,
    idle_cpu: Duration,
    idle_ticks_cpu: Duration,
    rss_kib: u64,
    hwm_kib: u64,
    threads: usize,
    looked_after: Option<usize>,
}

/// Starts the agent on `config`, lets it settle, then measures `idle` of idling.
async fn idle_run(
    opts: &Opts,
    dir: &Path,
    config: &Path,
    count_policies: bool,
) -> anyhow::Result<IdleRun> {
    let log = dir.join("agent.log");
    let mut agent = spawn_agent(opts, config, &log)?;
    wait_ready(dir, &mut agent, &log).await?;
    // Planning every policy happens right after start; let it finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hz = procfs::clock_ticks();
    let start_cpu = Duration::from_nanos(run_time_ns(agent.pid())?);
    let (ns0, t0) = (run_time_ns(agent.pid())?, procfs::cpu_ticks(agent.pid())?);
    tokio::time::sleep(opts.idle).await;
    let (ns1, t1) = (run_time_ns(agent.pid())?, procfs::cpu_ticks(agent.pid())?);
    let mem = procfs::memory(agent.pid())?;
    let threads = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))?.count();
    let looked_after = if count_policies {
        let reply = admin_client(dir)?
            .get("/v1/status?prefix=bench/idle/")
            .await?;
        if reply.status != 200 {
            bail!("GET /v1/status: {}", reply.status);
        }
        Some(reply.json()?["credentials"].as_array().map_or(0, Vec::len))
    } else {
        None
    };
    agent.stop()?;
    Ok(IdleRun {
        start_cpu,
        idle_cpu: Duration::from_nanos(ns1.saturating_sub(ns0)),
        idle_ticks_cpu: procfs::ticks_to_duration(t1.saturating_sub(t0), hz),
        rss_kib: mem.rss_kib,
        hwm_kib: mem.hwm_kib,
        threads,
        looked_after,
    })
}

struct Idle {
    with_rule: IdleRun,
    without: IdleRun,
}

async fn idle(opts: &Opts, root: &Path, wasm: &Path, sha: &str) -> anyhow::Result<Idle> {
    let dir = root.join("idle");
    let mut text = agent::init(&opts.agent_bin, &dir)?;
    // Seeded with the plain config (the store is the same for both configs below).
    let with_cfg = dir.join("latchkey.toml");
    let started = Instant::now();
    common::seed::store(
        &with_cfg,
        "bench/idle/",
        opts.idle_secrets,
        "postgres-password",
        None,
    )
    .await?;
    eprintln!(
        "seeded {} idle secrets in {}",
        opts.idle_secrets,
        ms(started.elapsed())
    );
    text.push_str(&provider_toml(opts, wasm, sha, 2));
    let without_cfg = dir.join("latchkey-no-rule.toml");
    std::fs::write(&without_cfg, &text)?;
    text.push_str(
        "\n[[lifecycle]]\npaths = [\"bench/idle/**\"]\nplugin = \"postgres\"\n\
         config = { connection = \"postgres\", strategy = \"single\" }\nrotate_every = \"30d\"\n",
    );
    std::fs::write(&with_cfg, &text)?;
    // A first start compiles the plugin into the artifact cache; not measured.
    let log = dir.join("agent.log");
    let mut warm = spawn_agent(opts, &with_cfg, &log)?;
    wait_ready(&dir, &mut warm, &log).await?;
    warm.stop()?;
    let without = idle_run(opts, &dir, &without_cfg, false).await?;
    let with_rule = idle_run(opts, &dir, &with_cfg, true).await?;
    if with_rule.looked_after != Some(opts.idle_secrets) {
        bail!(
            "the agent looks after {:?} secrets, expected {}",
            with_rule.looked_after,
            opts.idle_secrets
        );
    }
    Ok(Idle { with_rule, without })
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    if !opts.agent_bin.exists() {
        bail!("{} does not exist", opts.agent_bin.display());
    }
    let machine = common::machine::summary();
    let pg = postgres::version(&opts.pg_url)
        .await
        .with_context(|| format!("PostgreSQL at {} (set --pg-url)", opts.pg_url))?;
    let root = tempfile::Builder::new()
        .prefix("latchkey-lifecycle-bench-")
        .tempdir()?;
    let (wasm, sha) = postgres::install_plugin(&root.path().join("plugins"))?;
    let rot = rotations(&opts, root.path(), &wasm, &sha).await?;
    let idle = idle(&opts, root.path(), &wasm, &sha).await?;
    let date = common::machine::date();
    report(&opts, &machine, &pg, &date, &rot, &idle);
    Ok(())
}

fn report(opts: &Opts, machine: &str, pg: &str, date: &str, rot: &Rotations, idle: &Idle) {
    println!("## Lifecycle\n");
    println!(
        "Measured {date} with `cargo bench -p latchkey-agent --bench lifecycle` \
         (`agent/benches/lifecycle.rs`) on {machine}. The release `latchkey` binary, the \
         first-party `postgres` provider (wasm32-wasip2, opt-level s) and PostgreSQL {pg} \
         on loopback (trust auth), all on the same machine.\n"
    );
    println!(
        "### Rotations\n\n{} secrets, each its own pair of PostgreSQL roles and its own \
         `[[lifecycle]]` rule (`strategy = \"alternate\"`, no grace window, so each \
         rotation also retires the previous role: create-pending (`ALTER ROLE … LOGIN \
         PASSWORD`), publish, test (a real login), promote, retire (`ALTER ROLE … \
         NOLOGIN`), each step journalled in the store). All {} are rotated with \
         `POST /v1/rotate/{{path}}` by a client with at most *concurrency* requests in \
         flight (one mTLS connection each); {} round(s) per level after one warm-up \
         pass, levels interleaved. `[scheduler] concurrency = {}` (it bounds scheduled \
         and operator rotations alike), `[[sql]] \
         max_connections = {}`.\n",
        opts.roles,
        opts.roles,
        opts.rounds,
        opts.scheduler_concurrency,
        opts.conc
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(BACKGROUND_ROTATORS)
    );
    println!("| client concurrency | rotations | rotations/s | p50 | p99 | max | agent CPU per rotation |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rot.rows {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} |",
            row.conc,
            row.rotations,
            row.rotations as f64 / row.elapsed.as_secs_f64(),
            ms(row.latency.quantile(0.5)),
            ms(row.latency.quantile(0.99)),
            ms(row.latency.quantile(1.0)),
            ms(row.cpu / row.rotations.max(1) as u32),
        );
    }
    if let (Some(first), Some(last)) = (rot.rows.first(), rot.rows.last()) {
        if first.conc != last.conc {
            let rate = |r: &RotationRow| r.rotations as f64 / r.elapsed.as_secs_f64();
            println!(
                "\nConcurrency {} vs {}: {:.2}× the rotations per second, p50 latency {}.",
                last.conc,
                first.conc,
                rate(last) / rate(first),
                ratio(last.latency.quantile(0.5), first.latency.quantile(0.5)),
            );
        }
    }
    println!("\nCheck: {}.\n", rot.check);

    println!(
        "### Reads during rotations\n\nPaced `GET /v1/secrets/{{path}}` (admin \
         certificate, one keep-alive connection, a pair of reads every {} ms, \
         `audit.reads = true`) of `bench/read/other` (no rule covers it) and of \
         `bench/rot/s000`, {} round(s) of {:.0} s each with nothing running and with \
         {BACKGROUND_ROTATORS} rotations running back to back (one on `bench/rot/s000` \
         itself, three cycling through the other secrets; {} rotations in {:.0} s, {:.1}/s), \
         interleaved.\n",
        opts.read_interval.as_millis(),
        opts.read_rounds,
        opts.read.as_secs_f64(),
        rot.busy.background,
        rot.busy_secs,
        rot.busy.background as f64 / rot.busy_secs.max(f64::EPSILON),
    );
    println!(
        "| read | reads | p50 quiet | p50 rotating | ratio | p99 quiet | p99 rotating | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, quiet, busy) in [
        ("another secret", &rot.quiet.other, &rot.busy.other),
        (
            "the secret being rotated",
            &rot.quiet.rotating,
            &rot.busy.rotating,
        ),
    ] {
        let (q50, b50, q99, b99) = (
            quiet.quantile(0.5),
            busy.quantile(0.5),
            quiet.quantile(0.99),
            busy.quantile(0.99),
        );
        println!(
            "| {name} | {} / {} | {} | {} | {} | {} | {} | {} |",
            quiet.0.len(),
            busy.0.len(),
            ms(q50),
            ms(b50),
            ratio(b50, q50),
            ms(q99),
            ms(b99),
            ratio(b99, q99),
        );
    }

    let (w, n) = (&idle.with_rule, &idle.without);
    let per_s = |d: Duration| d.as_secs_f64() * 1000.0 / opts.idle.as_secs_f64();
    println!(
        "\n### Idle policies\n\n{} secrets (stored with the library while the agent was \
         stopped), covered by one rule with `rotate_every = \"30d\"` (nothing due; no \
         `validate_every`), against the same agent, store, plugin and SQL connection \
         with no `[[lifecycle]]` rule. Each agent: start, wait for `/v1/health`, 3 s to \
         settle (the rule's agent plans every policy at start), then {:.0} s idle. CPU \
         from `/proc/PID/task/*/schedstat` (ns), utime+stime in brackets (10 ms ticks).\n",
        opts.idle_secrets,
        opts.idle.as_secs_f64(),
    );
    println!(
        "| measure | with {} idle policies | no rule | ratio |",
        opts.idle_secrets
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| CPU while idle, per second | {:.3} ms ({:.0} ms) | {:.3} ms ({:.0} ms) | {} |",
        per_s(w.idle_cpu),
        w.idle_ticks_cpu.as_secs_f64() * 1000.0,
        per_s(n.idle_cpu),
        n.idle_ticks_cpu.as_secs_f64() * 1000.0,
        ratio(w.idle_cpu, n.idle_cpu),
    );
    println!(
        "| CPU from spawn to settled (start, planning) | {} | {} | {} |",
        ms(w.start_cpu),
        ms(n.start_cpu),
        ratio(w.start_cpu, n.start_cpu),
    );
    println!(
        "| RSS after the idle window | {:.1} MiB | {:.1} MiB | {:.2}× |",
        w.rss_kib as f64 / 1024.0,
        n.rss_kib as f64 / 1024.0,
        w.rss_kib as f64 / n.rss_kib.max(1) as f64,
    );
    println!(
        "| RSS peak (VmHWM) | {:.1} MiB | {:.1} MiB | {:.2}× |",
        w.hwm_kib as f64 / 1024.0,
        n.hwm_kib as f64 / 1024.0,
        w.hwm_kib as f64 / n.hwm_kib.max(1) as f64,
    );
    println!("| threads | {} | {} | |", w.threads, n.threads);
    println!(
        "\n`GET /v1/status` listed {} looked-after credentials on the rule's agent.",
        w.looked_after.unwrap_or(0)
    );
}
