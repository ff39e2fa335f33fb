//! What the soak bench measured, the verdicts against its bounds, and the markdown
//! section for `docs/BENCHMARKS.md` ("Soak (issue 13)").

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

pub use crate::common::machine::Machine;
use crate::ops::Kind;

/// The shortest run whose RSS drift is held to the bound.
const DRIFT_MIN_RUN: Duration = Duration::from_secs(120);

/// The heading `--write` replaces.
pub const SECTION: &str = "## Soak (issue 13)";

/// Where a read started, relative to the planned operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Outside every window.
    Steady = 0,
    Reload = 1,
    Rotate = 2,
    Renew = 3,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Steady, Class::Reload, Class::Rotate, Class::Renew];

    fn label(self) -> &'static str {
        match self {
            Class::Steady => "steady (outside every window)",
            Class::Reload => "±500 ms around a reload",
            Class::Rotate => "±500 ms around a rotation",
            Class::Renew => "±500 ms around a renewal (and server reissue)",
        }
    }
}

/// One kind of operation over the run.
pub struct OpRow {
    pub kind: Kind,
    pub took: Vec<Duration>,
    pub failed: usize,
    /// The latest any run started after its planned time.
    pub max_lag: Duration,
}

impl OpRow {
    pub fn new(kind: Kind) -> OpRow {
        OpRow {
            kind,
            took: Vec::new(),
            failed: 0,
            max_lag: Duration::ZERO,
        }
    }

    pub fn record(&mut self, took: Duration, lag: Duration, ok: bool) {
        self.took.push(took);
        self.max_lag = self.max_lag.max(lag);
        if !ok {
            self.failed += 1;
        }
    }

    fn median(&self) -> Duration {
        let mut v = self.took.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

/// One sample of the agent, `at` after the measured start.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: usize,
    pub threads: usize,
    /// Reads measured so far.
    pub reads: u64,
}

/// What a run measured.
pub struct Measured {
    pub samples: Vec<Sample>,
    /// Open fds 1 s after the warm-up and 1 s after the last operation, with only
    /// the load's connections open.
    pub fds_start: usize,
    pub fds_end: usize,
    pub reads: u64,
    pub elapsed: Duration,
    pub bad_reads: u64,
    pub conn_errors: u64,
    pub churn_ok: u64,
    pub churn_errors: u64,
    pub churn_hist: Histogram<u64>,
    pub warm_failures: usize,
    pub ops: Vec<OpRow>,
    /// Read latency per [`Class`], in that order.
    pub classes: Vec<Histogram<u64>>,
    pub client_cpu: Duration,
    pub agent_cpu: Duration,
    pub log_errors: usize,
    pub log_warnings: usize,
    pub messages: Vec<String>,
    /// The rotated secret's version at the end.
    pub version: u64,
}

/// The run's settings and what it measured.
pub struct Report {
    pub machine: Machine,
    pub pg: String,
    pub command: String,
    pub measured: Duration,
    pub warmup: Duration,
    pub every: Duration,
    pub server_every: usize,
    pub conns: usize,
    pub churn: Option<Duration>,
    pub max_drift: f64,
    pub max_fd_growth: usize,
    pub seeded: usize,
    pub m: Measured,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl Report {
    fn op(&self, kind: Kind) -> Option<&OpRow> {
        self.m.ops.iter().find(|r| r.kind == kind)
    }

    /// Every error of the run.
    pub fn errors(&self) -> u64 {
        let ops: usize = self.m.ops.iter().map(|r| r.failed).sum();
        self.m.bad_reads
            + self.m.conn_errors
            + self.m.churn_errors
            + (self.m.warm_failures + ops + self.m.log_errors) as u64
    }

    /// Least-squares slope of RSS over the second half of the run, MiB per minute.
    pub fn drift(&self) -> f64 {
        let half = self.measured / 2;
        let pts: Vec<(f64, f64)> = self
            .m
            .samples
            .iter()
            .filter(|s| s.at >= half)
            .map(|s| (s.at.as_secs_f64() / 60.0, mib(s.rss_kib)))
            .collect();
        let n = pts.len() as f64;
        if pts.len() < 2 {
            return 0.0;
        }
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx == 0.0 {
            0.0
        } else {
            sxy / sxx
        }
    }

    /// Whether the run is long enough for the drift bound: in the first two minutes
    /// RSS still grows as the agent warms up (threads, caches), leak or not.
    pub fn judges_drift(&self) -> bool {
        self.measured >= DRIFT_MIN_RUN
    }

    fn fd_growth(&self) -> i64 {
        self.m.fds_end as i64 - self.m.fds_start as i64
    }

    /// What makes the run fail, in words (empty: it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.errors() > 0 {
            out.push(format!("{} error(s)", self.errors()));
        }
        if self.fd_growth() > self.max_fd_growth as i64 {
            out.push(format!(
                "open fds grew by {} (bound {})",
                self.fd_growth(),
                self.max_fd_growth
            ));
        }
        if self.judges_drift() && self.drift() > self.max_drift {
            out.push(format!(
                "RSS drifted by {:.2} MiB/min over the second half (bound {:.2})",
                self.drift(),
                self.max_drift
            ));
        }
        out
    }

    fn verdict(ok: bool) -> &'static str {
        if ok {
            "ok"
        } else {
            "**failed**"
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.m;
        let machine = &self.machine;
        let _ = writeln!(s, "{SECTION}\n");
        let _ = writeln!(
            s,
            "Measured {} on {} × {} (`nproc` {}), Linux {}; load average at the start {}.\n\
             Command: `{}`.\n",
            machine.date,
            machine.nproc,
            machine.cpu,
            machine.nproc,
            machine.kernel,
            machine.loadavg,
            self.command
        );
        let churn = match self.churn {
            Some(c) => format!(
                ", and one new connection (handshake, one read, close) every {} ms",
                c.as_millis()
            ),
            None => String::new(),
        };
        let third = self.every.as_secs_f64() / 3.0;
        let _ = writeln!(
            s,
            "The release agent on a fresh `latchkey init` folder, {} s measured after {} s of \
             warm-up (each operation once). Load: {} closed-loop mTLS keep-alive connections \
             with an app certificate reading {} secrets in turn{churn}. Every {} s, {:.0} s \
             apart: a **SIGHUP reload** alternating between two policies (checked: the audit \
             record says `ok` and names the policy, and the app's connection opened before \
             the first reload is answered 200 or 403 on `shared/toggle` as the new policy \
             says); a **rotation** of `apps/soak/rotated` (`POST /v1/rotate/{{path}}` as \
             admin; the `postgres` provider, `strategy = \"single\"`, PostgreSQL {} on \
             loopback; the answer's version must grow); an **app certificate renewal** \
             (`POST /v1/cert/renew` with the last renewed pair, then a read with the new \
             pair on a new connection); and at every {}th renewal a **server certificate \
             reissue** (`latchkey cert issue --server`, checked on a new handshake). The \
             agent's RSS, open fds (`/proc/PID/fd`) and threads are sampled every second.\n",
            self.measured.as_secs(),
            self.warmup.as_secs(),
            self.conns,
            self.seeded + 2,
            self.every.as_secs_f64(),
            third,
            self.pg,
            self.server_every,
        );

        let failed = |k: Kind| self.op(k).map_or(0, |r| r.failed);
        let runs = |k: Kind| self.op(k).map_or(0, |r| r.took.len());
        let first = m.samples.first().copied();
        let last = m.samples.last().copied();
        let max_rss = m.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let (fd_min, fd_max) = (
            m.samples.iter().map(|s| s.fds).min().unwrap_or(0),
            m.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        );
        let th_max = m.samples.iter().map(|s| s.threads).max().unwrap_or(0);
        let secs = m.elapsed.as_secs_f64();
        let drift = self.drift();
        let ops_total: usize = m.ops.iter().map(|r| r.took.len()).sum();
        let _ = writeln!(s, "| measure | value | bound | verdict |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        let _ = writeln!(
            s,
            "| errors | {} (reads not 200: {}; load connections lost: {}; new connections failed: {} of {}; \
             failed reloads {} of {}, rotations {} of {}, renewals {} of {}, server reissues {} of {}; \
             warm-up failures {}; agent log lines at ERROR {}) | 0 | {} |",
            self.errors(),
            m.bad_reads,
            m.conn_errors,
            m.churn_errors,
            m.churn_ok + m.churn_errors,
            failed(Kind::Reload),
            runs(Kind::Reload),
            failed(Kind::Rotate),
            runs(Kind::Rotate),
            failed(Kind::Renew),
            runs(Kind::Renew),
            failed(Kind::ServerReissue),
            runs(Kind::ServerReissue),
            m.warm_failures,
            m.log_errors,
            Self::verdict(self.errors() == 0),
        );
        if let (Some(f), Some(l)) = (first, last) {
            let _ = writeln!(
                s,
                "| RSS first / last / max (MiB) | {:.1} / {:.1} / {:.1} | | |",
                mib(f.rss_kib),
                mib(l.rss_kib),
                mib(max_rss)
            );
            // What the bound means at this run's rates.
            let per_read = self.max_drift * 1024.0 * 1024.0 / (m.reads as f64 / secs * 60.0);
            let per_op = self.max_drift * 1024.0 / (ops_total as f64 / secs * 60.0);
            let _ = writeln!(
                s,
                "| RSS drift: least-squares slope over the second half | {drift:+.2} MiB/min | ≤ {:.2} MiB/min \
                 (at this run's rates: a leak of {per_read:.1} bytes per read or {per_op:.0} KiB per operation) | {} |",
                self.max_drift,
                if self.judges_drift() {
                    Self::verdict(drift <= self.max_drift)
                } else {
                    "not judged: runs under 2 min are still warming up"
                },
            );
            let _ = writeln!(
                s,
                "| open fds: quiet before / quiet after (load connections only) | {} / {} (min {fd_min}, max {fd_max} while running) | growth ≤ {} | {} |",
                m.fds_start,
                m.fds_end,
                self.max_fd_growth,
                Self::verdict(self.fd_growth() <= self.max_fd_growth as i64),
            );
            let _ = writeln!(
                s,
                "| threads first / last / max | {} / {} / {th_max} | | |",
                f.threads, l.threads
            );
        }
        let _ = writeln!(
            s,
            "| reads measured | {} in {:.0} s ({:.0}/s) | | |",
            m.reads,
            secs,
            m.reads as f64 / secs
        );
        let per_read = |d: Duration| d.as_secs_f64() * 1e6 / m.reads.max(1) as f64;
        let _ = writeln!(
            s,
            "| client CPU per read (the bench process: load, new connections, operations) | {:.1} µs | | |",
            per_read(m.client_cpu)
        );
        let _ = writeln!(
            s,
            "| agent CPU per read (everything the agent did, over the reads) | {:.1} µs | | |",
            per_read(m.agent_cpu)
        );
        let _ = writeln!(s, "| agent log lines at WARN | {} | | |\n", m.log_warnings);

        let _ = writeln!(
            s,
            "Read latency by when the read started (windows of ±500 ms around each planned operation):\n"
        );
        let _ = writeln!(
            s,
            "| reads started | reads | p50 µs | p99 µs | p99.9 µs | max µs | p50 / p99 vs steady |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        let steady = &m.classes[Class::Steady as usize];
        for class in Class::ALL {
            let h = &m.classes[class as usize];
            let vs = if class == Class::Steady || h.is_empty() {
                "—".to_owned()
            } else {
                format!(
                    "{:.2}× / {:.2}×",
                    us(h, 0.5) / us(steady, 0.5).max(f64::EPSILON),
                    us(h, 0.99) / us(steady, 0.99).max(f64::EPSILON)
                )
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {vs} |",
                class.label(),
                h.len(),
                us(h, 0.5),
                us(h, 0.99),
                us(h, 0.999),
                h.max() as f64 / 1e3,
            );
        }

        let _ = writeln!(
            s,
            "\n| operation | runs | failed | median | max | latest start after plan |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for row in &m.ops {
            let what = match row.kind {
                Kind::Reload => "reload: SIGHUP → audit record → policy checked",
                Kind::Rotate => "rotation: `POST /v1/rotate/{path}`",
                Kind::Renew => "app renewal: renew + a read with the new pair",
                Kind::ServerReissue => "server reissue: `cert issue --server` → served",
            };
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {} | {} |",
                row.took.len(),
                row.failed,
                ms(row.median()),
                ms(row.took.iter().max().copied().unwrap_or_default()),
                ms(row.max_lag),
            );
        }
        if self.churn.is_some() {
            let h = &m.churn_hist;
            let _ = writeln!(
                s,
                "| new connection: connect, handshake, one read | {} | {} | {:.1} ms | {:.1} ms | — |",
                m.churn_ok + m.churn_errors,
                m.churn_errors,
                us(h, 0.5) / 1e3,
                h.max() as f64 / 1e6,
            );
        }
        let _ = writeln!(s, "\nThe rotated secret ended at version {}.\n", m.version);

        // The time series, about a dozen rows.
        let step = (self.measured.as_secs() / 12).max(1) as usize;
        let _ = writeln!(
            s,
            "| t (s) | RSS MiB | VmHWM MiB | open fds | threads | reads/s since the row before |"
        );
        let _ = writeln!(s, "| ---: | ---: | ---: | ---: | ---: | ---: |");
        let mut prev: Option<Sample> = None;
        for (i, sample) in m.samples.iter().enumerate() {
            if i % step != 0 && i + 1 != m.samples.len() {
                continue;
            }
            let rate = match prev {
                Some(p) if sample.at > p.at => format!(
                    "{:.0}",
                    (sample.reads - p.reads) as f64 / (sample.at - p.at).as_secs_f64()
                ),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {:.0} | {:.1} | {:.1} | {} | {} | {rate} |",
                sample.at.as_secs_f64(),
                mib(sample.rss_kib),
                mib(sample.hwm_kib),
                sample.fds,
                sample.threads,
            );
            prev = Some(*sample);
        }
        if !m.messages.is_empty() {
            let _ = writeln!(s, "\nFirst errors:\n");
            for msg in &m.messages {
                let _ = writeln!(s, "- {msg}");
            }
        }
        s
    }
}
