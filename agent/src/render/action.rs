//! What happens around a template's write: the `validate` command that checks a new
//! file before the swap, and the `on_change` action after it (a command, or a signal
//! to the process named by a pid file).
//!
//! Commands are run directly (argv, no shell) with a deadline; a command that outlives
//! it is killed. Their output goes where the agent's goes; nothing about them that is
//! logged here carries a secret (argv is the user's, the rendered text is never in it).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// How often a running command is checked for exit.
const POLL: Duration = Duration::from_millis(5);

/// Why a command or signal failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program:?} exited with {status}")]
    Failed {
        /// argv\[0\].
        program: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// It ran past its deadline and was killed.
    #[error("{program:?} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// argv\[0\].
        program: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The pid file could not be read or held no pid.
    #[error("cannot read a pid from {path}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
    },
    /// The signal could not be sent.
    #[error("cannot send {signal} to pid {pid}")]
    Kill {
        /// Signal name.
        signal: &'static str,
        /// Target.
        pid: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    /// From an argv list; refuses an empty one.
    pub fn new(argv: Vec<String>) -> Result<Self, String> {
        match argv.first() {
            Some(p) if !p.is_empty() => Ok(Self(argv)),
            _ => Err("the command is empty".to_owned()),
        }
    }

    /// Splits a line on whitespace; `'...'` and `"..."` group words (no escapes, no
    /// variables, no globbing: this is not a shell).
    pub fn split(line: &str) -> Result<Self, String> {
        let mut argv = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, c) if c.is_whitespace() => {
                    if in_word {
                        argv.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if quote.is_some() {
            return Err(format!("unclosed quote in {line:?}"));
        }
        if in_word {
            argv.push(word);
        }
        Self::new(argv)
    }

    /// The words.
    pub fn argv(&self) -> &[String] {
        &self.0
    }

    /// The program name (for messages).
    pub fn program(&self) -> &str {
        &self.0[0]
    }

    /// Runs it with `{{path}}` in any argument replaced by `path`, waits at most
    /// `timeout`. Blocking: call from a blocking thread.
    pub fn run_blocking(&self, path: Option<&Path>, timeout: Duration) -> Result<(), Error> {
        let program = self.program().to_owned();
        let args = self.0[1..].iter().map(|a| match path {
            Some(p) => a.replace("{{path}}", &p.to_string_lossy()),
            None => a.clone(),
        });
        let mut child = Command::new(&self.0[0])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(Error::Failed { program, status }),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout { program, timeout });
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(source) => return Err(Error::Spawn { program, source }),
            }
        }
    }
}

/// A signal given by name in the config or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalName(Signal);

impl SignalName {
    /// `SIGHUP`, `HUP`, `sighup`, … (HUP, INT, QUIT, USR1, USR2, TERM, WINCH, ALRM, KILL).
    pub fn parse(text: &str) -> Result<Self, String> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        let signal = match bare {
            "HUP" => Signal::HUP,
            "INT" => Signal::INT,
            "QUIT" => Signal::QUIT,
            "USR1" => Signal::USR1,
            "USR2" => Signal::USR2,
            "TERM" => Signal::TERM,
            "WINCH" => Signal::WINCH,
            "ALRM" => Signal::ALARM,
            "KILL" => Signal::KILL,
            _ => return Err(format!("{text:?} is not a signal name like SIGHUP")),
        };
        Ok(Self(signal))
    }

    /// The signal.
    pub fn signal(self) -> Signal {
        self.0
    }

    /// Its name, e.g. `SIGHUP`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Signal::HUP => "SIGHUP",
            Signal::INT => "SIGINT",
            Signal::QUIT => "SIGQUIT",
            Signal::USR1 => "SIGUSR1",
            Signal::USR2 => "SIGUSR2",
            Signal::TERM => "SIGTERM",
            Signal::WINCH => "SIGWINCH",
            Signal::ALARM => "SIGALRM",
            Signal::KILL => "SIGKILL",
            _ => "signal",
        }
    }

    /// Sends it to `pid`.
    pub fn send(self, pid: i32) -> Result<(), Error> {
        let target = rustix::process::Pid::from_raw(pid).ok_or(Error::Kill {
            signal: self.name(),
            pid,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        rustix::process::kill_process(target, self.0).map_err(|e| Error::Kill {
            signal: self.name(),
            pid,
            source: e.into(),
        })
    }
}

/// What to do after a template's file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command.
    Command(CommandLine),
    /// Signal the process whose pid is in a file.
    Signal {
        /// Which signal.
        signal: SignalName,
        /// Where the pid is.
        pid_file: PathBuf,
    },
}

impl Action {
    /// Carries the action out. Blocking: call from a blocking thread.
    pub fn run_blocking(&self, timeout: Duration) -> Result<(), Error> {
        match self {
            Action::Command(cmd) => cmd.run_blocking(None, timeout),
            Action::Signal { signal, pid_file } => {
                let pid = std::fs::read_to_string(pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Error::PidFile {
                        path: pid_file.clone(),
                    })?;
                signal.send(pid)
            }
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Action::Command(cmd) => format!("command {:?}", cmd.program()),
            Action::Signal { signal, pid_file } => {
                format!("{} to the pid in {}", signal.name(), pid_file.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_words_with_quotes() {
        let c = CommandLine::split(r#"sh -c 'echo "a b" > x'  y"#).expect("ok");
        assert_eq!(c.argv(), ["sh", "-c", "echo \"a b\" > x", "y"]);
        assert!(CommandLine::split("  ").is_err());
        assert!(CommandLine::split("a 'b").is_err());
        assert_eq!(CommandLine::split("a ''").expect("ok").argv(), ["a", ""]);
    }

    #[test]
    fn commands_run_with_path_and_deadline() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("f");
        std::fs::write(&f, "x").expect("write");
        let ok = CommandLine::split("test -s {{path}}").expect("ok");
        ok.run_blocking(Some(&f), Duration::from_secs(5))
            .expect("passes");
        let empty = dir.path().join("e");
        std::fs::write(&empty, "").expect("write");
        assert!(matches!(
            ok.run_blocking(Some(&empty), Duration::from_secs(5)),
            Err(Error::Failed { .. })
        ));
        // Stopped at its timeout, long before it would have ended by itself.
        let slow = CommandLine::split("sleep 60").expect("ok");
        let started = Instant::now();
        assert!(matches!(
            slow.run_blocking(None, Duration::from_millis(100)),
            Err(Error::Timeout { .. })
        ));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "the timeout waited {took:?}"
        );
    }

    #[test]
    fn signal_names_parse() {
        assert_eq!(SignalName::parse("hup").expect("ok").name(), "SIGHUP");
        assert_eq!(SignalName::parse("SIGUSR1").expect("ok").name(), "SIGUSR1");
        assert!(SignalName::parse("SIGFOO").is_err());
    }
}
