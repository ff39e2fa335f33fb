//! Results and the markdown report.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::common::procfs::Memory;

/// The heading `--write` replaces.
pub const SECTION: &str = "## Serving (issue 2)";

pub use crate::common::machine::Machine;

/// One server at one connection count (merged over rounds).
pub struct Measured {
    pub server: &'static str,
    pub conns: usize,
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub elapsed: Duration,
    pub server_cpu: Duration,
    pub client_cpu: Duration,
    pub mem: Memory,
    /// Measured with the server on CPU 0 and the client on CPU 1.
    pub pinned: bool,
    /// Bytes the server appended to its audit trail while measured.
    pub audit_bytes: u64,
}

impl Measured {
    pub fn merge(&mut self, other: Measured) {
        let _ = self.hist.add(&other.hist);
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        self.audit_bytes += other.audit_bytes;
        self.mem.rss_kib = self.mem.rss_kib.max(other.mem.rss_kib);
        self.mem.hwm_kib = self.mem.hwm_kib.max(other.mem.hwm_kib);
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    fn cpu_per_req_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// Agent starts with many secrets.
pub struct Startup {
    pub secrets: usize,
    pub runs: Vec<(Duration, Memory)>,
    pub seed_took: Duration,
}

impl Startup {
    fn median_ms(&self) -> f64 {
        let mut t: Vec<f64> = self
            .runs
            .iter()
            .map(|(d, _)| d.as_secs_f64() * 1e3)
            .collect();
        median(&mut t)
    }

    fn median_rss_mib(&self) -> f64 {
        let mut r: Vec<f64> = self
            .runs
            .iter()
            .map(|(_, m)| m.rss_kib as f64 / 1024.0)
            .collect();
        median(&mut r)
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub client_threads: usize,
    pub quick: bool,
    /// `--pin` as given (`off`, `on`, `both`).
    pub pin: &'static str,
}

pub struct Report {
    pub machine: Machine,
    pub opts: Settings,
    pub body_len: usize,
    pub results: Vec<Measured>,
    pub startup: Option<Startup>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

impl Report {
    /// The unpinned row of `server` at `conns`.
    fn get(&self, server: &str, conns: usize) -> Option<&Measured> {
        self.results
            .iter()
            .find(|m| m.server == server && m.conns == conns && !m.pinned)
    }

    /// The pinned row of `server` at `conns`.
    fn get_pinned(&self, server: &str, conns: usize) -> Option<&Measured> {
        self.results
            .iter()
            .find(|m| m.server == server && m.conns == conns && m.pinned)
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(s, "{SECTION}\n");
        let _ = writeln!(
            s,
            "Measured {} on {} × {} (`nproc` {}), Linux {}; load average at the start {}.",
            m.date, m.nproc, m.cpu, m.nproc, m.kernel, m.loadavg
        );
        let _ = writeln!(
            s,
            "Command: `cargo bench -p latchkey-agent --bench serve{}` ({} round(s) of {:.1} s per row after {:.1} s of warm-up, \
             agent and baseline interleaved; client: {} tokio runtime). \
             Cached-secret `GET /v1/secrets/apps/bench/db` with an app certificate, over the Unix socket with mTLS \
             (TLS 1.3, rustls + ring), HTTP/1.1 keep-alive, closed loop; answer body {} bytes. \
             Server CPU is utime+stime from /proc/PID/stat over the measured interval divided by requests; \
             client CPU likewise for the load generator (it shares the machine; rows marked pinned had the server's \
             threads on CPU 0 and the client on CPU 1, with `taskset`). Audit bytes are what the agent appended to \
             `audit.log` while measured (plus one window of counted reads).\n",
            match (o.quick, o.pin) {
                (true, "off") => " -- --quick".to_owned(),
                (true, pin) => format!(" -- --quick --pin {pin}"),
                (false, "off") => String::new(),
                (false, pin) => format!(" -- --pin {pin}"),
            },
            o.rounds,
            o.duration.as_secs_f64(),
            o.warmup.as_secs_f64(),
            match o.client_threads {
                0 => "multi-thread (default workers)".to_owned(),
                1 => "current-thread".to_owned(),
                n => format!("{n}-worker multi-thread"),
            },
            self.body_len
        );
        let _ = writeln!(
            s,
            "| server | conns | pinned | req/s | p50 µs | p99 µs | p99.9 µs | max µs | server CPU/req µs | client CPU/req µs | audit bytes/1k req | RSS / HWM MiB |"
        );
        let _ = writeln!(
            s,
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let mut rows: Vec<&Measured> = self.results.iter().collect();
        rows.sort_by_key(|r| (r.pinned, r.conns, r.server == "baseline", r.server));
        for r in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} / {:.1} |",
                r.server,
                r.conns,
                if r.pinned { "yes" } else { "no" },
                r.rps(),
                r.us(0.5),
                r.us(0.99),
                r.us(0.999),
                r.hist.max() as f64 / 1e3,
                r.cpu_per_req_us(r.server_cpu),
                r.cpu_per_req_us(r.client_cpu),
                r.audit_bytes as f64 * 1000.0 / r.requests.max(1) as f64,
                mib(r.mem.rss_kib),
                mib(r.mem.hwm_kib),
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "| goal (issue 2) | target | result | |");
        let _ = writeln!(s, "| --- | --- | --- | --- |");
        let conns_hi = self.results.iter().map(|r| r.conns).max().unwrap_or(32);
        if let (Some(a), Some(b)) = (self.get("agent", conns_hi), self.get("baseline", conns_hi)) {
            let ratio = a.rps() / b.rps();
            let _ = writeln!(
                s,
                "| throughput at {conns_hi} connections vs baseline | ≥ 0.85× | {ratio:.2}× ({:.0} vs {:.0} req/s) | {} |",
                a.rps(),
                b.rps(),
                yes(ratio >= 0.85)
            );
        }
        if let (Some(a), Some(b)) = (self.get("agent", conns_hi), self.get("baseline", conns_hi)) {
            // On a CPU-bound machine, throughput is inversely proportional to the CPU the
            // client and the server spend per request; unlike req/s, this is not skewed
            // by other processes taking CPU time from one server more than the other.
            let per =
                |m: &Measured| m.cpu_per_req_us(m.server_cpu) + m.cpu_per_req_us(m.client_cpu);
            let projected = per(b) / per(a);
            let _ = writeln!(
                s,
                "| same, projected from CPU per request (client + server), for an otherwise idle machine | ≥ 0.85× | {projected:.2}× (server {:.1} vs {:.1} µs/req) | {} |",
                a.cpu_per_req_us(a.server_cpu),
                b.cpu_per_req_us(b.server_cpu),
                yes(projected >= 0.85)
            );
        }
        let pairs = [
            (
                "unpinned",
                self.get("agent", conns_hi),
                self.get("baseline", conns_hi),
            ),
            (
                "pinned (server on CPU 0, client on CPU 1)",
                self.get_pinned("agent", conns_hi),
                self.get_pinned("baseline", conns_hi),
            ),
        ];
        for (label, a, b) in pairs {
            let (Some(a), Some(b)) = (a, b) else { continue };
            // Server CPU per request does not depend on who saturates the machine.
            let _ = writeln!(
                s,
                "| server CPU per request at {conns_hi} connections vs baseline, {label} | — | {:.2}× ({:.1} vs {:.1} µs; client {:.1} vs {:.1} µs) | |",
                a.cpu_per_req_us(a.server_cpu) / b.cpu_per_req_us(b.server_cpu),
                a.cpu_per_req_us(a.server_cpu),
                b.cpu_per_req_us(b.server_cpu),
                a.cpu_per_req_us(a.client_cpu),
                b.cpu_per_req_us(b.client_cpu),
            );
            if a.pinned {
                let _ = writeln!(
                    s,
                    "| throughput at {conns_hi} connections vs baseline, {label} | — | {:.2}× ({:.0} vs {:.0} req/s) | |",
                    a.rps() / b.rps(),
                    a.rps(),
                    b.rps(),
                );
            }
        }
        if let (Some(a), Some(b)) = (self.get("agent", 1), self.get("baseline", 1)) {
            let ratio = a.us(0.5) / b.us(0.5);
            let _ = writeln!(
                s,
                "| p50 at 1 connection vs baseline | ≤ 1.25× | {ratio:.2}× ({:.1} vs {:.1} µs) | {} |",
                a.us(0.5),
                b.us(0.5),
                yes(ratio <= 1.25)
            );
            let _ = writeln!(
                s,
                "| p99 at 1 connection | < 150 µs | {:.1} µs ({:.2}× baseline's {:.1} µs) | {} |",
                a.us(0.99),
                a.us(0.99) / b.us(0.99),
                b.us(0.99),
                yes(a.us(0.99) < 150.0)
            );
        }
        for (variant, label) in [
            ("agent, audit.reads=each", "`audit.reads = \"each\"`"),
            ("agent, audit.reads=false", "`audit.reads = false`"),
        ] {
            for conns in [1, conns_hi] {
                if let (Some(v), Some(b)) = (self.get(variant, conns), self.get("baseline", conns))
                {
                    let _ = writeln!(
                        s,
                        "| (for comparison) agent with {label}, {conns} conn. | — | {:.2}× baseline req/s, p50 {:.2}×, p99 {:.1} µs, server CPU {:.1} µs/req, audit {:.0} bytes/1k req | |",
                        v.rps() / b.rps(),
                        v.us(0.5) / b.us(0.5),
                        v.us(0.99),
                        v.cpu_per_req_us(v.server_cpu),
                        v.audit_bytes as f64 * 1000.0 / v.requests.max(1) as f64,
                    );
                }
            }
        }
        let serve_hwm = self
            .results
            .iter()
            .filter(|r| r.server != "baseline")
            .map(|r| r.mem.hwm_kib)
            .max()
            .unwrap_or(0);
        if let Some(st) = &self.startup {
            let ms = st.median_ms();
            let _ = writeln!(
                s,
                "| start with {} secrets (spawn → first mTLS `/v1/health` 200), median of {} | < 100 ms | {ms:.1} ms | {} |",
                st.secrets,
                st.runs.len(),
                yes(ms < 100.0)
            );
            let rss = st.median_rss_mib();
            let _ = writeln!(
                s,
                "| RSS at that moment, median | < 30 MiB | {rss:.1} MiB | {} |",
                yes(rss < 30.0)
            );
        }
        if serve_hwm > 0 {
            let _ = writeln!(
                s,
                "| RSS peak (VmHWM) while serving | < 30 MiB | {:.1} MiB | {} |",
                mib(serve_hwm),
                yes(mib(serve_hwm) < 30.0)
            );
        }
        if let Some(st) = &self.startup {
            let mut times: Vec<f64> = st.runs.iter().map(|(d, _)| d.as_secs_f64() * 1e3).collect();
            times.sort_by(|a, b| a.total_cmp(b));
            let list: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
            let _ = writeln!(
                s,
                "\nStarts (ms, sorted): {}. The {} secrets were stored beforehand with `latchkey::store::Store` while the agent was stopped ({:.1} s).",
                list.join(", "),
                st.secrets,
                st.seed_took.as_secs_f64()
            );
        }
        s
    }
}

/// Writes the report into a markdown file: between the markers if they are there,
/// else as a new section at the end.
pub fn write_section(path: &Path, report: &str) -> anyhow::Result<()> {
    crate::common::markdown::write_section(path, SECTION, "serve", report)
}
