//! A bench's `main`: the tokio runtime it runs on, and how it fails.

use std::future::Future;

use anyhow::Context as _;

/// A runtime with `threads` workers: 1, current-thread; 0, tokio's default
/// multi-thread.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// The arguments after the program name (`cargo bench` adds `--bench`).
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Parses the arguments and runs `run` on a 2-worker runtime; on an error, prints
/// `{failed}: {error}` and exits with 1.
pub fn main<O, F>(
    failed: &str,
    parse: impl FnOnce(&[String]) -> anyhow::Result<O>,
    run: impl FnOnce(O) -> F,
) where
    F: Future<Output = anyhow::Result<()>>,
{
    let result =
        parse(&args()).and_then(|opts| build(2).context("tokio runtime")?.block_on(run(opts)));
    exit_on_error(failed, result);
}

/// Prints `{failed}: {error}` (with its causes) and exits with 1 if `result` failed.
pub fn exit_on_error(failed: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("{failed}: {e:#}");
        std::process::exit(1);
    }
}
