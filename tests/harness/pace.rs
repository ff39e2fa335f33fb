//! How much slower than the reference machine this one runs the tests: the factor
//! every deadline of the tests is multiplied by.
//!
//! Deadlines and timing bounds in the tests are written for the reference machine: 2
//! idle cores running the suite. A slower machine, or one busy with other work (a
//! release build beside the suite), takes longer for the same steps, and a fixed
//! deadline would fail there for no fault of the code. [`scaled`] stretches a deadline
//! by [`factor`], which comes from, in this order:
//!
//! - `LATCHKEY_TEST_PACE`: a number, for a machine known to be slow;
//! - the file named by `LATCHKEY_TEST_PACE_FILE`: `.ci/test.sh` sets it to a fresh
//!   path for each run, so the first test process of the run measures (under a file
//!   lock) and every later one reads the same measurement, made at the start of the run;
//! - a measurement made now, once per process: a fixed CPU-bound loop, run three times;
//!   the median wall time divided by the loop's time on the reference machine.
//!
//! The factor is never below 1 (a fast machine keeps the written deadlines) and never
//! above [`MAX_FACTOR`]. Timeouts built from it say what they waited for and how the
//! deadline was scaled ([`describe`]).
//!
//! Std only: the plugin host's tests include this file too.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The loop's wall time on the reference machine (2 idle cores, debug build).
const REFERENCE: Duration = Duration::from_millis(100);
/// Iterations of the loop that take [`REFERENCE`] there.
const ITERATIONS: u32 = 13_000_000;
/// The most a deadline is stretched: past this, the machine is too busy to test on.
const MAX_FACTOR: f64 = 10.0;

/// The factor and where it came from.
#[derive(Debug, Clone)]
struct Pace {
    factor: f64,
    source: String,
}

/// How much slower than the reference machine this one is (1.0 to [`MAX_FACTOR`]).
pub(crate) fn factor() -> f64 {
    pace().factor
}

/// `deadline` stretched by [`factor`].
pub(crate) fn scaled(deadline: Duration) -> Duration {
    deadline.mul_f64(factor())
}

/// `deadline` stretched by [`factor`] as a config duration, rounded up to whole
/// seconds (`"6s"`): for windows the agent itself waits out, such as a grace window
/// the test must act within.
pub(crate) fn scaled_setting(deadline: Duration) -> String {
    format!("{}s", scaled(deadline).as_secs_f64().ceil())
}

/// The factor and its source, for failure messages: `×1.0 (measured: …)`.
pub(crate) fn describe() -> String {
    let pace = pace();
    format!("×{:.1} ({})", pace.factor, pace.source)
}

fn pace() -> &'static Pace {
    static PACE: OnceLock<Pace> = OnceLock::new();
    PACE.get_or_init(|| {
        if let Some(value) = std::env::var_os("LATCHKEY_TEST_PACE") {
            let text = value.to_string_lossy().into_owned();
            let factor = text.trim().parse::<f64>().unwrap_or(1.0);
            return Pace {
                factor: clamp(factor),
                source: format!("LATCHKEY_TEST_PACE={text}"),
            };
        }
        if let Some(file) = std::env::var_os("LATCHKEY_TEST_PACE_FILE") {
            if let Ok(pace) = shared(Path::new(&file)) {
                return pace;
            }
        }
        measure()
    })
}

/// The run's measurement from `file`, made now by this process if none is there yet.
fn shared(file: &Path) -> std::io::Result<Pace> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file.with_extension("lock"))?;
    lock.lock()?;
    let mut text = String::new();
    if let Ok(mut existing) = std::fs::File::open(file) {
        existing.read_to_string(&mut text)?;
    }
    if let Some(pace) = parse(&text) {
        return Ok(pace);
    }
    let pace = measure();
    let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
    let mut out = std::fs::File::create(&tmp)?;
    writeln!(out, "{} {}", pace.factor, pace.source)?;
    drop(out);
    std::fs::rename(&tmp, file)?;
    Ok(Pace {
        factor: pace.factor,
        source: format!("{}, at the start of this run", pace.source),
    })
}

/// `FACTOR SOURCE…` as [`shared`] writes it.
fn parse(text: &str) -> Option<Pace> {
    let (factor, source) = text.trim().split_once(' ')?;
    Some(Pace {
        factor: clamp(factor.parse().ok()?),
        source: format!("{source}, at the start of this run"),
    })
}

fn measure() -> Pace {
    let mut runs = [spin(), spin(), spin()];
    runs.sort();
    let median = runs[1];
    let factor = median.as_secs_f64() / REFERENCE.as_secs_f64();
    Pace {
        factor: clamp(factor),
        source: format!(
            "calibration loop took {} ms, {} ms on the reference machine",
            median.as_millis(),
            REFERENCE.as_millis()
        ),
    }
}

fn clamp(factor: f64) -> f64 {
    if factor.is_finite() {
        factor.clamp(1.0, MAX_FACTOR)
    } else {
        1.0
    }
}

/// A fixed amount of integer work (xorshift), timed by the wall clock.
fn spin() -> Duration {
    let started = Instant::now();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum: u64 = 0;
    for _ in 0..ITERATIONS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sum = sum.wrapping_add(state);
    }
    std::hint::black_box(sum);
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_measurement_is_read_back_as_written() {
        let pace = parse("2.5 calibration loop took 250 ms, 100 ms on the reference machine")
            .expect("parses");
        assert_eq!(pace.factor, 2.5);
        assert!(
            pace.source.ends_with("at the start of this run"),
            "{pace:?}"
        );
        assert_eq!(parse("").map(|p| p.factor), None);
        assert_eq!(parse("0.2 fast").map(|p| p.factor), Some(1.0));
        assert_eq!(parse("99 slow").map(|p| p.factor), Some(MAX_FACTOR));
    }
}
