//! One supervised child process: start it with its environment, signal it, stop it
//! gracefully (SIGTERM, a grace period, then SIGKILL), and read its exit the way a
//! shell reports it (the exit code, or 128 + the signal that killed it).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};

use crate::secret::SecretString;

/// Signals received by `latchkey exec` and passed on to the child.
pub const FORWARDED: [(Signal, SignalKind); 6] = [
    (Signal::TERM, SignalKind::terminate()),
    (Signal::INT, SignalKind::interrupt()),
    (Signal::HUP, SignalKind::hangup()),
    (Signal::QUIT, SignalKind::quit()),
    (Signal::USR1, SignalKind::user_defined1()),
    (Signal::USR2, SignalKind::user_defined2()),
];

/// The program to run and its arguments.
#[derive(Debug, Clone)]
pub struct Program {
    /// argv\[0\], looked up in `PATH`.
    pub program: OsString,
    /// The rest of argv.
    pub args: Vec<OsString>,
}

/// A running child.
pub struct Child {
    inner: tokio::process::Child,
    pid: i32,
}

impl Child {
    /// Starts `program` with the agent's environment plus `env` (which wins).
    pub fn spawn(program: &Program, env: &BTreeMap<String, SecretString>) -> io::Result<Child> {
        let mut cmd = tokio::process::Command::new(&program.program);
        cmd.args(&program.args);
        for (name, value) in env {
            // The child's environment is one of the places a value leaves on purpose.
            cmd.env(name, value.expose());
        }
        let inner = cmd.spawn()?;
        let pid = inner
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("the child has no pid"))?;
        Ok(Child { inner, pid })
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.inner.wait().await
    }

    /// SIGTERM, then up to `grace` to exit, then SIGKILL. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        send(self.pid, Signal::TERM);
        match tokio::time::timeout(grace, self.inner.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    ?grace,
                    "child ignored SIGTERM; sending SIGKILL"
                );
                send(self.pid, Signal::KILL);
                self.inner.wait().await
            }
        }
    }
}

/// Sends a signal to a pid; a process that is already gone is not an error.
pub fn send(pid: i32, sig: Signal) {
    let Some(target) = Pid::from_raw(pid) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(target, sig) {
        if e != rustix::io::Errno::SRCH {
            tracing::warn!(pid, signal = ?sig, error = %e, "cannot signal the child");
        }
    }
}

/// The exit code a shell would report: the code, or 128 + the killing signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Listens for the forwarded signals.
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers (from now on these signals no longer kill latchkey).
    pub fn install() -> io::Result<Signals> {
        let mut streams = Vec::with_capacity(FORWARDED.len());
        for (sig, kind) in FORWARDED {
            streams.push((sig, signal(kind)?));
        }
        Ok(Signals { streams })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            for (sig, stream) in self.streams.iter_mut() {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_pass_through_and_signals_map_to_128_plus() {
        let sh = |script: &str| Program {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        let mut env = BTreeMap::new();
        env.insert("LK_TEST".to_owned(), SecretString::from("v"));
        let mut c = Child::spawn(&sh("test \"$LK_TEST\" = v && exit 7"), &env).expect("spawn");
        assert_eq!(exit_code(c.wait().await.expect("wait")), 7);
        // `exec`, so no forked `sleep` outlives the shell holding the test's output.
        let mut c = Child::spawn(&sh("exec sleep 30"), &env).expect("spawn");
        let status = c.stop(Duration::from_secs(5)).await.expect("stop");
        assert_eq!(exit_code(status), 128 + 15);
        // `exec`: the ignored SIGTERM carries over, and no grandchild outlives the test.
        let mut c = Child::spawn(&sh("trap '' TERM; exec sleep 30"), &env).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ignores_sigterm(c.pid()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not start ignoring SIGTERM within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = c.stop(Duration::from_millis(200)).await.expect("stop");
        assert_eq!(exit_code(status), 128 + 9);
    }

    /// Whether process `pid` ignores SIGTERM: bit 15 of `SigIgn` in its `/proc` status.
    fn ignores_sigterm(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
    }
}
