//! Sync benchmark (issue 3, "Performance").
//!
//! `cargo bench -p latchkey-agent --bench sync [-- --quick] [-- --secrets N] [-- --rounds N]`
//!
//! In one run, against a real OpenBao (`bao server -dev` on a loopback port, from
//! `.ci/install-tools.sh`):
//! 1. seeds N secrets (default 10,000; 100 folders) through OpenBao's HTTP API with a
//!    bounded concurrent client;
//! 2. **initial sync**, interleaved round by round with the baseline: the real
//!    `latchkey` binary (the release build cargo made for this bench) on a fresh
//!    folder, timed from spawn to the moment its first full poll is on record
//!    (`<storage.path>.sync.json` appears; checked every 2 ms), then checked to hold
//!    all N secrets through its mTLS list API; the agent's CPU time from /proc;
//! 3. **baseline**: a plain sequential client (one keep-alive connection) reading the
//!    same N secrets one after another from OpenBao;
//! 4. **steady state**: an agent polling every second through a counting HTTP proxy;
//!    after its initial sync, for `--cycles` polls where nothing changed, the
//!    upstream requests per cycle and the agent's CPU time per cycle (from /proc).
//!
//! Prints a markdown section for `docs/BENCHMARKS.md`. Options: `--quick` (1,000
//! secrets, 1 round, 5 cycles), `--secrets N`, `--rounds N`, `--cycles N`,
//! `--agent-bin PATH`.

#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[allow(dead_code)]
mod common;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use common::process::Proc;
use common::{agent, procfs};

const ROOT_TOKEN: &str = "latchkey-bench-root";
/// Concurrent writes while seeding.
const SEED_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
struct Opts {
    secrets: usize,
    rounds: usize,
    cycles: usize,
    agent_bin: PathBuf,
}

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        secrets: 10_000,
        rounds: 3,
        cycles: 10,
        agent_bin: PathBuf::from(env!("CARGO_BIN_EXE_latchkey")),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{name} needs a value"))
        };
        match arg.as_str() {
            "--quick" => {
                o.secrets = 1_000;
                o.rounds = 1;
                o.cycles = 5;
            }
            "--secrets" => o.secrets = value("--secrets")?.parse()?,
            "--rounds" => o.rounds = value("--rounds")?.parse()?,
            "--cycles" => o.cycles = value("--cycles")?.parse()?,
            "--agent-bin" => o.agent_bin = PathBuf::from(value("--agent-bin")?),
            // cargo bench passes --bench; ignore anything else it adds.
            _ => {}
        }
    }
    if o.secrets == 0 || o.rounds == 0 || o.cycles == 0 {
        bail!("--secrets, --rounds and --cycles must be at least 1");
    }
    Ok(o)
}

fn main() {
    common::runtime::main("sync bench failed", parse_opts, run);
}

fn tool(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("LATCHKEY_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools"));
    for dir in dirs {
        let candidate = dir.join("venv/bin").join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(name)
}

fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = StdListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && StdListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free pair of loopback ports")
}

// A third-party client of OpenBao (seeding, baseline, proxy), not the agent's.
#[allow(clippy::disallowed_methods)]
async fn start_bao(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let port = free_port_pair()?;
    let child = Command::new(tool("bao"))
        .arg("server")
        .arg("-dev")
        .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg("-dev-no-store-token")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start `bao` (run .ci/install-tools.sh, or set LATCHKEY_TOOLS_DIR)")?;
    let bao = Proc::new("bao", child);
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{address}/v1/sys/health")).send().await {
            if r.status().is_success() {
                return Ok((bao, address));
            }
        }
        if Instant::now() > deadline {
            bail!("openbao did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secret_path(i: usize) -> String {
    format!("bench/g{:03}/s{i:05}", i / 100)
}

/// Writes every secret with at most [`SEED_CONCURRENCY`] requests in flight.
// A third-party client of OpenBao (seeding, baseline, proxy), not the agent's.
#[allow(clippy::disallowed_methods)]
async fn seed(address: &str, n: usize) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(SEED_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let client = client.clone();
        let url = format!("{address}/v1/secret/data/{}", secret_path(i));
        tasks.spawn(async move {
            let _permit = permit;
            let body = json!({"data": {"user": format!("svc-{i}"),
                "password": format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15))}});
            let r = client
                .post(url)
                .header("X-Vault-Token", ROOT_TOKEN)
                .json(&body)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("seed write answered {}", r.status());
            }
            Ok(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// The baseline: one client, one keep-alive connection, one secret after another.
// A third-party client of OpenBao (seeding, baseline, proxy), not the agent's.
#[allow(clippy::disallowed_methods)]
async fn sequential_read(address: &str, n: usize) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let started = Instant::now();
    for i in 0..n {
        let r = client
            .get(format!("{address}/v1/secret/data/{}", secret_path(i)))
            .header("X-Vault-Token", ROOT_TOKEN)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("sequential read answered {}", r.status());
        }
        let body: Value = r.json().await?;
        if body["data"]["data"]["user"].as_str().is_none() {
            bail!("sequential read: no value");
        }
    }
    Ok(started.elapsed())
}

/// `latchkey init` in `dir`, with an `[upstream]` at `address` and `[sync]`.
fn init_agent(opts: &Opts, dir: &Path, address: &str, poll: &str) -> anyhow::Result<()> {
    let mut text = agent::init(&opts.agent_bin, dir)?;
    let config = dir.join("latchkey.toml");
    text.push_str(&format!(
        "\n[upstream]\nkind = \"openbao\"\naddresses = [{address:?}]\n\
         auth = {{ method = \"token\", token = {ROOT_TOKEN:?} }}\n\n\
         [sync]\nprefixes = [\"bench/\"]\npoll_interval = {poll:?}\n"
    ));
    // Reads are not what is measured; keep the audit trail out of the way.
    text = text.replace("reads = true ", "reads = false ");
    std::fs::write(&config, text)?;
    Ok(())
}

fn spawn_agent(opts: &Opts, dir: &Path) -> anyhow::Result<Proc> {
    Proc::spawn(
        "agent",
        agent::run_command(&opts.agent_bin, &dir.join("latchkey.toml")),
        Stdio::null(),
        std::fs::File::create(dir.join("agent.log"))?.into(),
    )
}

/// Waits until the first full poll is on record; returns when that happened.
async fn wait_synced(dir: &Path, agent: &mut Proc, deadline: Duration) -> anyhow::Result<()> {
    let state = dir.join("data.sync.json");
    let started = Instant::now();
    while !state.exists() {
        agent.check_alive(Some(&dir.join("agent.log")))?;
        if started.elapsed() > deadline {
            bail!("no full sync within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// How many secrets the agent lists under `bench/`, over mTLS with the admin cert.
async fn agent_count(dir: &Path) -> anyhow::Result<usize> {
    let client = agent::admin_client(dir)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = client
            .request(http::Method::GET, "/v1/secrets?prefix=bench/", None)
            .await
        {
            if reply.status == 200 {
                let body: Value = serde_json::from_slice(reply.body.expose())?;
                return Ok(body["secrets"].as_array().map_or(0, Vec::len));
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not answer its list API");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct InitialSync {
    elapsed: Duration,
    cpu: Duration,
}

async fn agent_initial_sync(
    opts: &Opts,
    root: &Path,
    round: usize,
    address: &str,
) -> anyhow::Result<InitialSync> {
    let dir = root.join(format!("agent-{round}"));
    init_agent(opts, &dir, address, "1h")?;
    let hz = procfs::clock_ticks();
    let started = Instant::now();
    let mut agent = spawn_agent(opts, &dir)?;
    wait_synced(&dir, &mut agent, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    let cpu = procfs::ticks_to_duration(procfs::cpu_ticks(agent.pid())?, hz);
    let count = agent_count(&dir).await?;
    if count != opts.secrets {
        bail!("the agent holds {count} secrets, expected {}", opts.secrets);
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(InitialSync { elapsed, cpu })
}

/// A counting HTTP/1.1 proxy (keep-alive, Content-Length bodies: what the agent's
/// client sends to OpenBao).
struct Proxy {
    address: String,
    requests: Arc<AtomicUsize>,
    lists: Arc<Mutex<usize>>,
}

// A third-party client of OpenBao (seeding, baseline, proxy), not the agent's.
#[allow(clippy::disallowed_methods)]
async fn start_proxy(upstream: String) -> anyhow::Result<Proxy> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let requests = Arc::new(AtomicUsize::new(0));
    let lists = Arc::new(Mutex::new(0));
    let client = reqwest::Client::new();
    let (req, lst) = (requests.clone(), lists.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (req, lst, client, upstream) =
                (req.clone(), lst.clone(), client.clone(), upstream.clone());
            tokio::spawn(async move {
                let _ = proxy_conn(stream, &req, &lst, &client, &upstream).await;
            });
        }
    });
    Ok(Proxy {
        address,
        requests,
        lists,
    })
}

async fn proxy_conn(
    stream: tokio::net::TcpStream,
    requests: &AtomicUsize,
    lists: &Mutex<usize>,
    client: &reqwest::Client,
    upstream: &str,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("GET").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                match name.as_str() {
                    "content-length" => length = value.trim().parse()?,
                    "host" | "connection" | "transfer-encoding" => {}
                    _ => headers.push((name, value.trim().to_owned())),
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        requests.fetch_add(1, Ordering::SeqCst);
        // One poll lists the root of the prefix once: count cycles by it.
        if target.starts_with("/v1/secret/detailed-metadata/bench/?")
            || target.starts_with("/v1/secret/metadata/bench/?")
        {
            *lists.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
        let mut request = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes())?,
                format!("{upstream}{target}"),
            )
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let reply = response.bytes().await?;
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(&reply).await?;
    }
}

struct Steady {
    cycles: usize,
    requests_per_cycle: f64,
    cpu_per_cycle: Duration,
    rss_kib: u64,
}

/// Poll cycles where nothing changed. `restarted`: measured on an agent started
/// again on its already complete store (nothing to catch up on); otherwise on the
/// agent that just did the initial sync, right after it.
async fn steady_state(
    opts: &Opts,
    root: &Path,
    address: &str,
    restarted: bool,
) -> anyhow::Result<Steady> {
    let proxy = start_proxy(address.to_owned()).await?;
    let dir = root.join(format!("agent-steady-{restarted}"));
    init_agent(opts, &dir, &proxy.address, "1s")?;
    let mut agent = spawn_agent(opts, &dir)?;
    wait_synced(&dir, &mut agent, Duration::from_secs(600)).await?;
    if restarted {
        agent.stop()?;
        agent = spawn_agent(opts, &dir)?;
    }
    let hz = procfs::clock_ticks();
    // Let the first quiet poll start from a settled agent.
    let lists_now = || *proxy.lists.lock().unwrap_or_else(|e| e.into_inner());
    let settle = lists_now() + 1;
    while lists_now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (lists0, requests0) = (lists_now(), proxy.requests.load(Ordering::SeqCst));
    let cpu0 = procfs::cpu_ticks(agent.pid())?;
    while lists_now() < lists0 + opts.cycles {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu1 = procfs::cpu_ticks(agent.pid())?;
    let (lists1, requests1) = (lists_now(), proxy.requests.load(Ordering::SeqCst));
    let cycles = lists1 - lists0;
    let rss_kib = procfs::status_kib(agent.pid(), "VmRSS").unwrap_or(0);
    drop(agent);
    Ok(Steady {
        cycles,
        requests_per_cycle: (requests1 - requests0) as f64 / cycles as f64,
        cpu_per_cycle: procfs::ticks_to_duration(cpu1 - cpu0, hz) / cycles as u32,
        rss_kib,
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn machine() -> String {
    let cpu = common::machine::cpu_model().unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores (nproc), {cpu}")
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let root = tempfile::Builder::new()
        .prefix("latchkey-sync-bench-")
        .tempdir()?;
    let (bao, address) = start_bao(root.path()).await?;
    let hz = procfs::clock_ticks();
    let bao_cpu = || {
        procfs::cpu_ticks(bao.pid())
            .map(|t| procfs::ticks_to_duration(t, hz))
            .unwrap_or_default()
    };
    eprintln!("seeding {} secrets into {address} ...", opts.secrets);
    let seeded = seed(&address, opts.secrets).await?;
    eprintln!("seeded in {}", ms(seeded));

    let mut agent_runs = Vec::new();
    let mut cpu_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let mut bao_for_baseline = Vec::new();
    let mut bao_for_agent = Vec::new();
    for round in 0..opts.rounds {
        let before = bao_cpu();
        let base = sequential_read(&address, opts.secrets).await?;
        let between = bao_cpu();
        let synced = agent_initial_sync(&opts, root.path(), round, &address).await?;
        bao_for_baseline.push(between.saturating_sub(before));
        bao_for_agent.push(bao_cpu().saturating_sub(between));
        eprintln!(
            "round {}: sequential {} | agent {} (cpu {})",
            round + 1,
            ms(base),
            ms(synced.elapsed),
            ms(synced.cpu)
        );
        baseline_runs.push(base);
        agent_runs.push(synced.elapsed);
        cpu_runs.push(synced.cpu);
    }
    let after_sync = steady_state(&opts, root.path(), &address, false).await?;
    let steady = steady_state(&opts, root.path(), &address, true).await?;

    let (agent, base, cpu) = (
        median(agent_runs.clone()),
        median(baseline_runs.clone()),
        median(cpu_runs),
    );
    let speedup = base.as_secs_f64() / agent.as_secs_f64();
    let (bao_base, bao_agent) = (median(bao_for_baseline), median(bao_for_agent));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // However the reads are spread, OpenBao must spend `bao_base` of CPU on them, and
    // it has at most every core: no client can beat `bao_base / cores`.
    let ceiling = base.as_secs_f64() / (bao_base.as_secs_f64() / cores).max(f64::EPSILON);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!("## Sync (issue 3)\n");
    println!(
        "`cargo bench -p latchkey-agent --bench sync` — {} secrets in {} folders of a \
         real OpenBao {} dev server on loopback, seeded in {} with {SEED_CONCURRENCY} \
         concurrent writes. Median of {} interleaved rounds. Machine: {}. Date: {date}.\n",
        opts.secrets,
        opts.secrets.div_ceil(100),
        bao_version(),
        ms(seeded),
        opts.rounds,
        machine()
    );
    println!("| measure | value |\n| --- | --- |");
    println!(
        "| initial sync, agent (spawn → all {} in the encrypted store, `sync.concurrency` = 16) | {} |",
        opts.secrets,
        ms(agent)
    );
    println!(
        "| same secrets, plain sequential client (one keep-alive connection) | {} |",
        ms(base)
    );
    println!("| speed-up (goal ≥ 3x) | {speedup:.1}x |");
    println!(
        "| OpenBao's CPU time serving the sequential client / the agent's sync | {} / {} |",
        ms(bao_base),
        ms(bao_agent)
    );
    println!(
        "| ceiling on this machine: sequential time ÷ (OpenBao CPU ÷ {cores} cores) | {ceiling:.1}x |"
    );
    println!("| agent CPU time for the initial sync | {} |", ms(cpu));
    println!(
        "| steady-state poll, nothing changed: upstream requests per cycle | {:.1} (over {} cycles) |",
        steady.requests_per_cycle, steady.cycles
    );
    println!(
        "| steady-state poll: agent CPU time per cycle (agent restarted on a current store) | {:.1} ms |",
        steady.cpu_per_cycle.as_secs_f64() * 1000.0
    );
    println!(
        "| the first {} poll cycles right after the initial sync: requests / agent CPU per cycle | {:.1} / {:.1} ms |",
        after_sync.cycles,
        after_sync.requests_per_cycle,
        after_sync.cpu_per_cycle.as_secs_f64() * 1000.0
    );
    println!(
        "| agent RSS after the steady-state cycles | {} MiB |",
        steady.rss_kib / 1024
    );
    println!(
        "\nRounds (sequential / agent): {}",
        baseline_runs
            .iter()
            .zip(&agent_runs)
            .map(|(b, a)| format!("{} / {}", ms(*b), ms(*a)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn bao_version() -> String {
    Command::new(tool("bao"))
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "(unknown version)".to_owned())
}
