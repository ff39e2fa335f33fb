//! Child processes (the agent, servers the benches start) that cannot outlive a bench.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A child process killed on drop, so a bench that stops early leaves none behind.
pub struct Proc {
    child: Child,
    /// What errors call it ("agent", "baseline server").
    name: &'static str,
}

impl Proc {
    /// Starts `cmd` with stdin closed, `stdout` and `stderr` as given, and without
    /// `RUST_LOG` / `LATCHKEY_LOG` (the agent logs at its default level).
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("RUST_LOG")
            .env_remove("LATCHKEY_LOG")
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        Ok(Proc::new(name, child))
    }

    /// Takes charge of a child started elsewhere.
    pub fn new(name: &'static str, child: Child) -> Proc {
        Proc { child, name }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited; with `log`, the error holds that file's text.
    pub fn check_alive(&mut self, log: Option<&Path>) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            match log {
                Some(log) => bail!(
                    "the {} exited ({status}): {}",
                    self.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                ),
                None => bail!("the {} exited: {status}", self.name),
            }
        }
        Ok(())
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait; SIGKILL and an error once `timeout` has passed.
    pub fn stop_within(mut self, timeout: Duration) -> anyhow::Result<()> {
        let _ = self.terminate();
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                // Drop kills and reaps it.
                bail!(
                    "the {} did not stop within {} s of SIGTERM",
                    self.name,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn terminate(&self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
