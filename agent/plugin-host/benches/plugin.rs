//! Plugin host benchmark behind the "plugin host" section of `docs/BENCHMARKS.md`.
//!
//! `cargo bench -p latchkey-plugin-host` builds the Rust test guest and the Python and
//! JavaScript example providers (like the tests do), then measures for each:
//! loading with compilation (no cache), loading from the compiled-artifact cache (the
//! second start), instantiation from the pre-instantiated template with and without
//! the pooling allocator (fresh store with all limits each time), a warm trivial call
//! (`info` on one instance), and a full fresh-instance `validate` round trip. The
//! Python and JavaScript examples are built with their SDKs and validate against the
//! loopback token service, as does a Python provider written against wasi:http by
//! hand (`benches/guests/python-raw`): the last line compares the two Python
//! validates, the SDK's overhead. Prints a markdown table. Set
//! `LATCHKEY_BENCH_QUICK=1` for fewer iterations.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::print_stderr)]

#[path = "../../../tests/harness/fixture.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixture;
#[path = "../tests/plugins/support.rs"]
#[allow(dead_code, unreachable_pub)]
mod support;
#[path = "../tests/plugins/token_service.rs"]
#[allow(dead_code, unreachable_pub)]
mod token_service;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use latchkey_plugin_host::{Credential, Plugin, SecretString};

struct Guest {
    name: &'static str,
    wasm: PathBuf,
    manifest: PathBuf,
    config: Vec<(String, String)>,
    cred: Credential,
    /// A plaintext HTTP authority to grant (the token service).
    grant: Option<String>,
    instantiations: usize,
    calls: usize,
}

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    (median, p99)
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.2} µs")
    }
}

fn load(pooling: bool, cache: Option<&Path>, g: &Guest) -> (Plugin, Duration) {
    let t = support::host_with(|c| {
        c.pooling = pooling;
        c.cache_dir = cache.map(Path::to_owned);
    });
    let mut spec = support::spec(&g.wasm, &g.manifest);
    if let Some(authority) = &g.grant {
        support::grant_http(&mut spec, authority);
    }
    let start = Instant::now();
    let plugin = t.host.load_blocking(spec).unwrap();
    (plugin, start.elapsed())
}

fn time_instantiate(plugin: &Plugin, n: usize) -> (Duration, Duration) {
    for _ in 0..n / 10 + 1 {
        plugin.instantiate_blocking().unwrap();
    }
    let times = (0..n)
        .map(|_| {
            let start = Instant::now();
            plugin.instantiate_blocking().unwrap();
            start.elapsed()
        })
        .collect();
    quantiles(times)
}

fn time_validate(plugin: &Plugin, g: &Guest, n: usize) -> (Duration, Duration) {
    let times = (0..n)
        .map(|_| {
            let start = Instant::now();
            let answer = plugin
                .validate_blocking(&g.config, &g.cred)
                .unwrap()
                .unwrap();
            let elapsed = start.elapsed();
            assert!(answer.valid);
            elapsed
        })
        .collect();
    quantiles(times)
}

fn main() {
    let quick = std::env::var_os("LATCHKEY_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(10) } else { n };
    let root = support::workspace_root();
    let examples = root.join("examples/plugins");
    let key = |v: &str| Credential::new("api-key", [("key", SecretString::from(v))]);
    // The Python and JavaScript examples validate against the loopback token service.
    let service = token_service::start().unwrap();
    let token = Credential::new(
        "access-token",
        [("access-token", SecretString::from("good"))],
    );
    let mut guests = vec![Guest {
        name: "Rust",
        wasm: support::rust_guest().to_owned(),
        manifest: Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/basic/plugin.toml"),
        config: vec![("mode".into(), "key".into())],
        cred: key("good"),
        grant: None,
        instantiations: scale(5000),
        calls: scale(50_000),
    }];
    let raw_python = || {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests/python-raw");
        latchkey_guest_build::Guests::new(root.clone(), env!("CARGO_TARGET_TMPDIR"))
            .build_source(latchkey_guest_build::Lang::Python, &dir, "bench-python-raw")
            .map(|wasm| (wasm, dir.join("plugin.toml")))
            .map_err(anyhow::Error::msg)
    };
    type Build<'a> = Box<dyn Fn() -> anyhow::Result<(PathBuf, PathBuf)> + 'a>;
    let example = |lang: &'static str, build: fn() -> anyhow::Result<PathBuf>| -> Build<'_> {
        let manifest = examples.join(lang).join("plugin.toml");
        Box::new(move || build().map(|wasm| (wasm, manifest.clone())))
    };
    let sdk_guests: [(&'static str, Build<'_>); 3] = [
        ("Python", example("python", support::python_guest)),
        ("Python, hand-written wasi:http", Box::new(raw_python)),
        ("JavaScript", example("js", support::js_guest)),
    ];
    for (name, build) in sdk_guests {
        let started = Instant::now();
        match build() {
            Ok((wasm, manifest)) => {
                eprintln!(
                    "{name}: built (or found) in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                guests.push(Guest {
                    name,
                    wasm,
                    manifest,
                    config: vec![("base-url".into(), service.url())],
                    cred: token.clone(),
                    grant: Some(service.authority()),
                    instantiations: scale(300),
                    calls: scale(5000),
                });
            }
            Err(e) => eprintln!("skipping {name}: {e:#}"),
        }
    }

    println!("| guest | .wasm size | load, compiling | load, cached artifact | instantiate, pooling (median / p99) | instantiate, on-demand (median / p99) | warm trivial call (median / p99) | fresh-instance validate (median / p99) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut validate_medians = Vec::new();
    for g in &guests {
        let size = std::fs::metadata(&g.wasm).map(|m| m.len()).unwrap_or(0);
        let cache = tempfile::tempdir().unwrap();
        let (_, compile) = load(true, Some(cache.path()), g);
        let (pooled, cached) = load(true, Some(cache.path()), g);
        assert!(pooled.loaded_from_cache());
        let (on_demand, _) = load(false, Some(cache.path()), g);

        let (ip_med, ip_p99) = time_instantiate(&pooled, g.instantiations);
        let (io_med, io_p99) = time_instantiate(&on_demand, g.instantiations);
        let warm = pooled.time_warm_info_calls(g.calls).unwrap();
        let (w_med, w_p99) = quantiles(warm[g.calls / 10..].to_vec());
        let (v_med, v_p99) = time_validate(&pooled, g, g.instantiations);
        validate_medians.push((g.name, v_med));
        println!(
            "| {} | {:.1} MB | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} |",
            g.name,
            size as f64 / 1e6,
            fmt(compile),
            fmt(cached),
            fmt(ip_med),
            fmt(ip_p99),
            fmt(io_med),
            fmt(io_p99),
            fmt(w_med),
            fmt(w_p99),
            fmt(v_med),
            fmt(v_p99),
        );
    }
    let median = |name: &str| {
        validate_medians
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    };
    if let (Some(sdk), Some(raw)) = (median("Python"), median("Python, hand-written wasi:http")) {
        let overhead = (sdk.as_secs_f64() / raw.as_secs_f64() - 1.0) * 100.0;
        println!(
            "\nPython SDK validate {} vs hand-written wasi:http {}: {overhead:+.1}%",
            fmt(sdk),
            fmt(raw)
        );
    }
}
