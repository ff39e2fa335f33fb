//! Serving benchmark (issue 2, "Performance").
//!
//! `cargo bench -p latchkey-agent --bench serve [-- --quick] [-- --write docs/BENCHMARKS.md]`
//!
//! In one run, on a temp folder made with `latchkey init`:
//! 1. starts the real `latchkey` binary (`latchkey run`, the release build cargo made
//!    for this bench: `CARGO_BIN_EXE_latchkey`) and stores one secret of a realistic size;
//! 2. starts the baseline, a minimal hyper + rustls mTLS server on the same transport
//!    answering that secret's bytes (this binary re-executed with `--baseline-server`);
//! 3. drives both with the same closed-loop client (keep-alive connections over the
//!    Unix socket, mTLS with an app certificate, an HDR histogram per connection) at
//!    1 and at 32 connections, interleaved round by round, and reads each server's CPU
//!    time and RSS from /proc;
//! 4. seeds 10,000 secrets, then times agent starts: spawn to the first successful
//!    mTLS `/v1/health` answer, and RSS at that moment;
//! 5. prints a markdown report (and with `--write FILE` replaces the section
//!    "Serving (issue 2)" of FILE with it).
//!
//! Options: `--quick`, `--duration S`, `--warmup S`, `--rounds N`, `--conns 1,32`,
//! `--client-threads N` (1: current-thread runtime, the default; 0: tokio's default
//! multi-thread), `--starts N`, `--secrets N`, `--no-startup`, `--no-variant` (skip the
//! `audit.reads = "each"` and `audit.reads = false` agent rows), `--pin off|on|both`
//! (`on`: the server's threads on CPU 0 and the client on CPU 1 while measuring, with
//! `taskset`; `both`: every row both ways), `--write FILE`,
//! `--keep` (keep the temp folder), `--agent-bin PATH`.

#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[path = "serve/baseline.rs"]
mod baseline;
#[allow(dead_code)]
mod common;
#[path = "serve/load.rs"]
mod load;
#[path = "serve/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use http::{Method, StatusCode};

use common::process::Proc;
use common::{agent, procfs};
use load::Target;
use report::{Measured, Report, Startup};

/// Options.
#[derive(Debug, Clone)]
struct Opts {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    conns: Vec<usize>,
    client_threads: usize,
    starts: usize,
    secrets: usize,
    startup: bool,
    write: Option<PathBuf>,
    variant: bool,
    keep: bool,
    agent_bin: PathBuf,
    quick: bool,
    pin: Vec<bool>,
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        rounds: 3,
        conns: vec![1, 32],
        client_threads: 1,
        starts: 9,
        secrets: 10_000,
        startup: true,
        write: None,
        variant: true,
        keep: false,
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_latchkey")),
        quick: false,
        pin: vec![false],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => {
                o.quick = true;
                o.duration = Duration::from_secs(1);
                o.warmup = Duration::from_millis(300);
                o.rounds = 1;
                o.starts = 3;
            }
            "--duration" => o.duration = common::args::seconds(val()?)?,
            "--warmup" => o.warmup = common::args::seconds(val()?)?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--conns" => o.conns = common::args::counts(val()?)?,
            "--client-threads" => o.client_threads = val()?.parse()?,
            "--starts" => o.starts = val()?.parse()?,
            "--secrets" => o.secrets = val()?.parse()?,
            "--no-startup" => o.startup = false,
            "--no-variant" => o.variant = false,
            "--write" => {
                o.write = Some(common::markdown::from_workspace(val()?));
            }
            "--keep" => o.keep = true,
            "--pin" => {
                o.pin = match val()?.as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    "both" => vec![false, true],
                    other => bail!("--pin {other:?}: expected off, on or both"),
                }
            }
            "--agent-bin" => o.agent_bin = PathBuf::from(val()?),
            other => bail!("unknown option {other:?} (see the top of agent/benches/serve.rs)"),
        }
    }
    if o.rounds == 0 || o.conns.is_empty() || o.conns.contains(&0) {
        bail!("--rounds and --conns must be at least 1");
    }
    Ok(o)
}

fn main() {
    let args = common::runtime::args();
    let result = if args.first().map(String::as_str) == Some("--baseline-server") {
        baseline::main(&args[1..])
    } else if args.first().map(String::as_str) == Some("--probe") {
        probe(&args[1..])
    } else {
        parse_opts(&args).and_then(run)
    };
    common::runtime::exit_on_error("serve bench", result);
}

/// How long a server has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts a server with stdout and stderr appended to `log`.
fn spawn(name: &'static str, cmd: Command, log: &Path) -> anyhow::Result<Proc> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    Proc::spawn(name, cmd, log.try_clone()?.into(), log.into())
}

fn agent_command(opts: &Opts, dir: &Path) -> Command {
    config_command(opts, &dir.join("latchkey.toml"))
}

fn config_command(opts: &Opts, config: &Path) -> Command {
    agent::run_command(&opts.agent_bin, config)
}

/// Row names.
const AGENT: &str = "agent";
const BASELINE: &str = "baseline";
const AGENT_NO_READ_AUDIT: &str = "agent, audit.reads=false";
const AGENT_EACH_READ: &str = "agent, audit.reads=each";

/// The benchmark secret: three fields, like a database credential.
const SECRET_PATH: &str = "apps/bench/db";

fn secret_body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "database",
        "fields": {
            "username": format!("svc_bench_{i:05}"),
            "password": format!("Zq7!pR2v{i:05}xK9mWc4T"),
            "host": "db.internal:5432",
        }
    }))
    .expect("json")
}

fn run(opts: Opts) -> anyhow::Result<()> {
    if !opts.agent_bin.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release --bin latchkey` or pass --agent-bin",
            opts.agent_bin.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("lk-bench-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    let root = tmp.path().to_owned();
    let dir = root.join("agent");
    eprintln!("serve bench: folder {}", root.display());
    agent::init(&opts.agent_bin, &dir)?;
    agent::latchkey(
        &opts.agent_bin,
        &[
            "cert",
            "issue",
            "--app",
            "bench",
            "--dir",
            dir.to_str().context("utf-8 path")?,
        ],
    )?;

    let runtime = common::runtime::build(opts.client_threads)?;
    let result = runtime.block_on(bench(&opts, &root, &dir));
    drop(runtime);
    if opts.keep {
        let kept = tmp.keep();
        eprintln!("serve bench: kept {}", kept.display());
    }
    let report = result?;
    let text = report.markdown();
    println!("{text}");
    if let Some(path) = &opts.write {
        report::write_section(path, &text)?;
        eprintln!("serve bench: wrote the section to {}", path.display());
    }
    Ok(())
}

async fn bench(opts: &Opts, root: &Path, dir: &Path) -> anyhow::Result<Report> {
    let hz = procfs::clock_ticks();
    let machine = report::Machine::probe();
    let socket = dir.join("run/latchkey.sock");
    let admin = Target {
        socket: socket.clone(),
        tls: load::client_config(
            &dir.join("ca/ca.pem"),
            &dir.join("clients/admin.pem"),
            &dir.join("clients/admin.key"),
        )?,
    };
    let app_tls = load::client_config(
        &dir.join("ca/ca.pem"),
        &dir.join("clients/bench.pem"),
        &dir.join("clients/bench.key"),
    )?;
    let agent_target = Target {
        socket: socket.clone(),
        tls: app_tls.clone(),
    };
    let baseline_target = Target {
        socket: root.join("baseline.sock"),
        tls: app_tls,
    };

    // The agent, with one secret.
    let mut agent = spawn("agent", agent_command(opts, dir), &root.join("agent.log"))?;
    load::wait_healthy(&admin, Duration::from_millis(5), Duration::from_secs(30))
        .await
        .context("the agent did not answer (see agent.log in the folder; --keep keeps it)")?;
    let mut conn = load::connect(&admin).await?;
    let uri = format!("/v1/secrets/{SECRET_PATH}");
    let (status, answer) =
        load::request(&mut conn, Method::PUT, &uri, Some(secret_body(1))).await?;
    if status != StatusCode::OK {
        bail!(
            "storing the bench secret: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(conn);
    let mut conn = load::connect(&agent_target).await?;
    let (status, body) = load::request(&mut conn, Method::GET, &uri, None).await?;
    if status != StatusCode::OK {
        bail!(
            "reading the bench secret as app bench: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    drop(conn);
    let body_file = root.join("body.json");
    std::fs::write(&body_file, &body)?;

    // The baseline, answering the same bytes.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--baseline-server")
        .arg(&baseline_target.socket)
        .arg(dir.join("server/server.pem"))
        .arg(dir.join("server/server.key"))
        .arg(dir.join("ca/ca.pem"))
        .arg(&body_file);
    let mut base = spawn("baseline server", cmd, &root.join("baseline.log"))?;
    load::wait_healthy(
        &baseline_target,
        Duration::from_millis(5),
        Duration::from_secs(30),
    )
    .await
    .context("the baseline server did not answer")?;
    let mut conn = load::connect(&baseline_target).await?;
    let (_, same) = load::request(&mut conn, Method::GET, &uri, None).await?;
    if same != body {
        bail!("the baseline does not answer the agent's bytes");
    }
    drop(conn);

    // Serving: interleaved rounds, same client for both.
    let uri: http::Uri = uri.parse()?;
    let mut results: Vec<Measured> = Vec::new();
    // Other agent configurations (same store, socket and certificates), measured by
    // restarting the agent with them: `audit.reads = "each"` (a record per read, as
    // before reads were counted) and `audit.reads = false`, to show what the trail
    // costs in CPU and in bytes.
    let each_config = dir.join("latchkey.each-read.toml");
    let off_config = dir.join("latchkey.no-read-audit.toml");
    let default_config = dir.join("latchkey.toml");
    let variant = if opts.variant {
        let text = std::fs::read_to_string(&default_config)?;
        if text.contains("reads = true") {
            std::fs::write(
                &each_config,
                text.replacen("reads = true", "reads = \"each\"", 1),
            )?;
            std::fs::write(
                &off_config,
                text.replacen("reads = true", "reads = false", 1),
            )?;
            true
        } else {
            eprintln!("serve bench: latchkey.toml has no `reads = true`; skipping the audit.reads variants");
            false
        }
    } else {
        false
    };
    let audit_log = dir.join("audit/audit.log");
    let mut agent_config = default_config.clone();
    let mut kinds: Vec<&'static str> = vec![AGENT, BASELINE];
    if variant {
        kinds.extend([AGENT_EACH_READ, AGENT_NO_READ_AUDIT]);
    }
    for round in 0..opts.rounds {
        for &conns in &opts.conns {
            for &pinned in &opts.pin {
                let mut order = kinds.clone();
                order.rotate_left(round % kinds.len());
                for name in order {
                    let m = if name == BASELINE {
                        base.check_alive(None)?;
                        measure(
                            opts,
                            &baseline_target,
                            &uri,
                            body.len(),
                            conns,
                            base.pid(),
                            hz,
                            pinned,
                            None,
                        )
                        .await?
                    } else {
                        let want = match name {
                            AGENT => &default_config,
                            AGENT_EACH_READ => &each_config,
                            _ => &off_config,
                        };
                        if *want != agent_config {
                            agent.stop_within(STOP_TIMEOUT)?;
                            agent = spawn(
                                "agent",
                                config_command(opts, want),
                                &root.join("agent.log"),
                            )?;
                            load::wait_healthy(
                                &agent_target,
                                Duration::from_millis(1),
                                Duration::from_secs(30),
                            )
                            .await
                            .context("the agent did not restart")?;
                            agent_config = want.clone();
                        }
                        agent.check_alive(None)?;
                        measure(
                            opts,
                            &agent_target,
                            &uri,
                            body.len(),
                            conns,
                            agent.pid(),
                            hz,
                            pinned,
                            Some(&audit_log),
                        )
                        .await?
                    };
                    eprintln!(
                    "serve bench: round {} {:24} c={conns:<3}{} {:>9.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  server CPU/req {:>5.1} µs  client CPU/req {:>5.1} µs",
                    round + 1,
                    name,
                    if pinned { " pinned" } else { "" },
                    m.requests as f64 / m.elapsed.as_secs_f64(),
                    m.hist.value_at_quantile(0.5) as f64 / 1e3,
                    m.hist.value_at_quantile(0.99) as f64 / 1e3,
                    m.server_cpu.as_secs_f64() * 1e6 / m.requests.max(1) as f64,
                    m.client_cpu.as_secs_f64() * 1e6 / m.requests.max(1) as f64,
                );
                    match results
                        .iter_mut()
                        .find(|r| r.server == name && r.conns == conns && r.pinned == pinned)
                    {
                        Some(r) => r.merge(m),
                        None => results.push(Measured { server: name, ..m }),
                    }
                }
            }
        }
    }
    base.stop_within(STOP_TIMEOUT)?;

    // Startup with many secrets.
    let startup = if opts.startup {
        agent.stop_within(STOP_TIMEOUT)?;
        let seed_start = Instant::now();
        seed_store(dir, opts.secrets).await?;
        let seed_took = seed_start.elapsed();
        eprintln!(
            "serve bench: seeded {} secrets in {:.1} s",
            opts.secrets,
            seed_took.as_secs_f64()
        );
        let mut runs = Vec::new();
        for i in 0..opts.starts {
            let started = Instant::now();
            let p = spawn("agent", agent_command(opts, dir), &root.join("agent.log"))?;
            let ready = load::wait_healthy(
                &agent_target,
                Duration::from_micros(250),
                Duration::from_secs(30),
            )
            .await
            .context("the agent did not start")?;
            let took = ready - started;
            let mem = procfs::memory(p.pid())?;
            // Sanity: a seeded secret is served.
            if i == 0 {
                let mut conn = load::connect(&admin).await?;
                let (status, _) = load::request(
                    &mut conn,
                    Method::GET,
                    "/v1/secrets/bench/seed/s00000",
                    None,
                )
                .await?;
                if status != StatusCode::OK {
                    bail!("a seeded secret is not served after a restart: {status}");
                }
            }
            p.stop_within(STOP_TIMEOUT)?;
            eprintln!(
                "serve bench: start {} with {} secrets: {:.1} ms, RSS {:.1} MiB",
                i + 1,
                opts.secrets + 1,
                took.as_secs_f64() * 1e3,
                mem.rss_kib as f64 / 1024.0
            );
            runs.push((took, mem));
        }
        Some(Startup {
            secrets: opts.secrets + 1,
            runs,
            seed_took,
        })
    } else {
        agent.stop_within(STOP_TIMEOUT)?;
        None
    };

    Ok(Report {
        machine,
        opts: report::Settings {
            duration: opts.duration,
            warmup: opts.warmup,
            rounds: opts.rounds,
            client_threads: opts.client_threads,
            quick: opts.quick,
            pin: match opts.pin.as_slice() {
                [false] => "off",
                [true] => "on",
                _ => "both",
            },
        },
        body_len: body.len(),
        results,
        startup,
    })
}

/// Pins every thread of process `pid` to `cpus` (a `taskset` list, e.g. `0` or `0-1`).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("run taskset (util-linux) for --pin")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed");
    }
    Ok(())
}

/// Puts processes back on every CPU when dropped.
struct Pinned {
    pids: [u32; 2],
    all: String,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for pid in self.pids {
            if let Err(e) = pin(pid, &self.all) {
                eprintln!("serve bench: {e:#}");
            }
        }
    }
}

/// One measurement: `conns` closed-loop connections for warm-up + duration; with
/// `pinned`, the server on CPU 0 and this client on CPU 1 throughout; with `audit`,
/// what the server appended to that file while measuring.
#[allow(clippy::too_many_arguments)]
async fn measure(
    opts: &Opts,
    target: &Target,
    uri: &http::Uri,
    expect_len: usize,
    conns: usize,
    pid: u32,
    hz: u64,
    pinned: bool,
    audit: Option<&Path>,
) -> anyhow::Result<Measured> {
    let _pinned = if pinned {
        pin(pid, "0")?;
        pin(std::process::id(), "1")?;
        Some(Pinned {
            pids: [pid, std::process::id()],
            all: format!(
                "0-{}",
                std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
            ),
        })
    } else {
        None
    };
    let audit_size = || audit.map_or(0, |p| std::fs::metadata(p).map_or(0, |m| m.len()));
    let phase = Arc::new(AtomicU8::new(load::WARMUP));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        tasks.spawn(load::conn_loop(
            target.clone(),
            uri.clone(),
            expect_len,
            phase.clone(),
        ));
    }
    tokio::time::sleep(opts.warmup).await;
    if let Some(done) = tasks.try_join_next() {
        done??;
        bail!("a connection ended during warm-up");
    }
    let me = std::process::id();
    let audit0 = audit_size();
    let server0 = procfs::cpu_ticks(pid)?;
    let client0 = procfs::cpu_ticks(me)?;
    let t0 = Instant::now();
    phase.store(load::MEASURE, Ordering::Relaxed);
    tokio::time::sleep(opts.duration).await;
    phase.store(load::STOP, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let server1 = procfs::cpu_ticks(pid)?;
    let client1 = procfs::cpu_ticks(me)?;
    let mem = procfs::memory(pid)?;
    // Counted reads are written when their window closes: wait one out.
    if audit.is_some() {
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let audit_bytes = audit_size().saturating_sub(audit0);
    let mut hist: Histogram<u64> = load::histogram();
    let (mut requests, mut bad) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let r = done??;
        hist.add(&r.hist)?;
        requests += r.requests;
        bad += r.bad;
    }
    if bad > 0 {
        bail!("{bad} of {requests} answers were not 200 with the expected body");
    }
    Ok(Measured {
        server: "",
        conns,
        hist,
        requests,
        elapsed,
        server_cpu: procfs::ticks_to_duration(server1 - server0, hz),
        client_cpu: procfs::ticks_to_duration(client1 - client0, hz),
        mem,
        pinned,
        audit_bytes,
    })
}

/// `--probe SOCKET CA CERT KEY URI PID CONNS [SECS] [CLIENT_THREADS]`: one measurement
/// against a server that is already running (for tuning and profiling by hand).
fn probe(args: &[String]) -> anyhow::Result<()> {
    let [socket, ca, cert, key, uri, pid, conns, rest @ ..] = args else {
        bail!("usage: --probe SOCKET CA CERT KEY URI PID CONNS [SECS] [CLIENT_THREADS]");
    };
    let mut opts = parse_opts(&[])?;
    if let Some(secs) = rest.first() {
        opts.duration = Duration::from_secs_f64(secs.parse()?);
    }
    let threads: usize = rest.get(1).map(|t| t.parse()).transpose()?.unwrap_or(0);
    let target = Target {
        socket: socket.into(),
        tls: load::client_config(Path::new(ca), Path::new(cert), Path::new(key))?,
    };
    let runtime = common::runtime::build(threads)?;
    runtime.block_on(async {
        let mut conn = load::connect(&target).await?;
        let (status, body) = load::request(&mut conn, Method::GET, uri, None).await?;
        if status != StatusCode::OK {
            bail!("{uri}: {status}");
        }
        drop(conn);
        let m = measure(&opts, &target, &uri.parse()?, body.len(), conns.parse()?, pid.parse()?, procfs::clock_ticks(), false, None).await?;
        println!(
            "c={} threads={threads} {:.0} req/s p50 {:.1} p99 {:.1} p99.9 {:.1} µs; server CPU/req {:.1} µs, client CPU/req {:.1} µs; RSS {} KiB HWM {} KiB",
            m.conns,
            m.rps(),
            m.us(0.5),
            m.us(0.99),
            m.us(0.999),
            m.server_cpu.as_secs_f64() * 1e6 / m.requests as f64,
            m.client_cpu.as_secs_f64() * 1e6 / m.requests as f64,
            m.mem.rss_kib,
            m.mem.hwm_kib
        );
        Ok(())
    })
}

/// Stores `n` secrets (three fields each) with the library's store while the agent
/// is stopped. (Seeding through the API with concurrent PUTs is not used: it exposes
/// a sled 0.34 `flush_async` lock-up.)
async fn seed_store(dir: &Path, n: usize) -> anyhow::Result<()> {
    common::seed::store(
        &dir.join("latchkey.toml"),
        "bench/seed/",
        n,
        "database",
        Some("db.internal:5432"),
    )
    .await
}
