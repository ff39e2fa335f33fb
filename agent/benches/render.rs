//! Template rendering benchmark (issue 7, "Performance").
//!
//! `cargo bench -p latchkey-agent --bench render [-- --quick] [-- --templates N] [-- --changes N]`
//!
//! In one process, on a temp folder, with the real store (sled, sealed records) and
//! the daemon's renderer (the same code `latchkey run` starts for `[[template]]`):
//! 1. stores N secrets (default 1,000; two fields each) and writes N template files,
//!    template i reading secret i (a `.pgpass` line, a URL with an encoded password);
//! 2. times full passes over all N templates: the first (every file created: render,
//!    temp file, fsync, rename, fsync folder), then passes where nothing changed (what a
//!    restart costs: render and compare, no write);
//! 3. starts the renderer task on the event bus and, for M changes (default 200), puts
//!    a new version of a random secret into the store, publishes the event the API
//!    would, and measures the time until the destination file holds the new value
//!    (polled every 50 µs), as a distribution.
//!
//! Prints a markdown report for `docs/BENCHMARKS.md`.

#![allow(clippy::print_stdout, clippy::print_stderr, unreachable_pub)]

#[allow(dead_code)]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::crypto::LocalKek;
use latchkey::events::{Event, Events, Kind};
use latchkey::path::SecretPath;
use latchkey::render::source::StoreSource;
use latchkey::render::{Mode, Outcome, Runner, Template};
use latchkey::secret::{Fields, SecretString};
use latchkey::store::{Store, StoreConfig, Write};

const TEMPLATE: &str = "{% set db = secret('bench/db-IDX') -%}
# rendered by latchkey
127.0.0.1:5432:app:{{ db.username | pgpass }}:{{ db.password | pgpass }}
DATABASE_URL=postgresql://{{ db.username | urlencode }}:{{ db.password | urlencode }}@127.0.0.1:5432/app
";

struct Options {
    templates: usize,
    changes: usize,
    passes: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    Options {
        templates: value("--templates").unwrap_or(if quick { 200 } else { 1000 }),
        changes: value("--changes").unwrap_or(if quick { 50 } else { 200 }),
        passes: if quick { 3 } else { 5 },
    }
}

fn fields(i: usize, generation: usize) -> Fields {
    let mut f = Fields::new();
    f.insert("username", SecretString::from(format!("app_{i}")));
    f.insert(
        "password",
        SecretString::from(format!("pw:{i}/{generation}-k3y@x")),
    );
    f
}

fn path(i: usize) -> SecretPath {
    SecretPath::parse(&format!("bench/db-{i}")).expect("valid path")
}

fn put(store: &Store, i: usize, generation: usize) {
    store
        .put(
            &path(i),
            Write {
                fields: fields(i, generation),
                kind: None,
                expires_at: None,
                cas: None,
            },
        )
        .expect("put");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let opts = options();
    let runtime = common::runtime::build(2).expect("runtime");
    runtime.block_on(run(opts));
}

async fn run(opts: Options) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let kek = LocalKek::generate_file(root.join("kek")).expect("kek");
    let store = Store::open(&StoreConfig::new(root.join("data")), &kek)
        .await
        .expect("store");
    let n = opts.templates;
    for i in 0..n {
        put(&store, i, 0);
    }
    store.flush().await.expect("flush");
    let tdir = root.join("templates");
    let out = root.join("out");
    std::fs::create_dir_all(&tdir).expect("mkdir");
    let templates: Vec<Template> = (0..n)
        .map(|i| {
            let src = tdir.join(format!("db-{i}.tmpl"));
            std::fs::write(&src, TEMPLATE.replace("IDX", &i.to_string())).expect("write");
            let mut t = Template::simple(src, out.join(format!("db-{i}.conf")));
            t.name = format!("db-{i}");
            t
        })
        .collect();
    let source = Arc::new(StoreSource::new(store.clone()));

    // Full passes.
    let mut runner = Runner::new(templates.clone(), source.clone());
    let started = Instant::now();
    let reports = runner.pass_all(Mode::Write).await;
    let first = started.elapsed();
    let written = reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Changed))
        .count();
    assert_eq!(written, n, "every file is written on the first pass");
    let mut unchanged = Vec::new();
    for _ in 0..opts.passes {
        let started = Instant::now();
        let reports = runner.pass_all(Mode::Write).await;
        unchanged.push(started.elapsed());
        assert!(reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Unchanged)));
    }
    unchanged.sort();
    let fresh = Runner::new(templates.clone(), source.clone());
    let mut fresh = fresh;
    let started = Instant::now();
    fresh.pass_all(Mode::Write).await;
    let restart = started.elapsed();

    // Change -> rewrite latency, through the daemon's renderer task.
    let events = Events::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = latchkey::render::spawn(
        templates.clone(),
        store.clone(),
        &events,
        latchkey::metrics::TemplateRenders::default(),
        stop,
    );
    // The task renders everything first (all unchanged); wait for it to settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::with_capacity(opts.changes);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for generation in 1..=opts.changes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % n as u64) as usize;
        let dest = out.join(format!("db-{i}.conf"));
        let expected = format!("pw\\:{i}/{generation}-k3y@x");
        let s = store.clone();
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || put(&s, i, generation))
            .await
            .expect("put");
        events.publish(Event::now(Kind::Updated, path(i), None));
        loop {
            if contains(&dest, &expected) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("db-{i} was not rewritten within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        latencies.push(t0.elapsed());
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    latencies.sort();

    let per = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / n as f64);
    println!("## Templates (issue 7)\n");
    println!(
        "`cargo bench -p latchkey-agent --bench render` — {n} templates, each reading one of {n} secrets \
         from the real store (sled, sealed records), written to one folder; {} changes.\n",
        opts.changes
    );
    println!("| measure | total | per template |");
    println!("| --- | --- | --- |");
    println!(
        "| first pass: render + create {n} files (temp file, fsync, rename, fsync folder) | {} | {} |",
        ms(first),
        per(first)
    );
    println!(
        "| pass with nothing changed (render + compare, no write), median of {} | {} | {} |",
        opts.passes,
        ms(percentile(&unchanged, 0.5)),
        per(percentile(&unchanged, 0.5))
    );
    println!(
        "| restart: new renderer (compiles every template), nothing changed | {} | {} |",
        ms(restart),
        per(restart)
    );
    println!();
    println!("| change → file rewritten (store put + event → new content on disk) | value |");
    println!("| --- | --- |");
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        println!("| {label} | {} |", ms(percentile(&latencies, p)));
    }
}

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}
