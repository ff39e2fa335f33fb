//! What happens around a template's write: the `validate` command that checks a new
//! file before the swap, and the `on_change` action after it (a command, or a signal
//! to the process named by a pid file).
//!
//! Commands are run directly (argv, no shell) with a deadline; a command that outlives
//! it is killed. Their output goes where the agent's goes; nothing about them that is
//! logged here carries a secret (argv is the user's, the rendered text is never in it).
//! They start with a cleared environment: only [`BASE_ENV`] and the names the
//! template lists in `command_env` are passed on from the agent's own, so nothing
//! the agent was given (its key, a database URL) reaches them by inheritance.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// Variables every command gets from the agent's environment, when they are set.
pub const BASE_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// Clears `cmd`'s environment, then passes on [`BASE_ENV`] and `extra` from the
/// agent's.
pub fn clear_env(cmd: &mut Command, extra: &[String]) {
    cmd.env_clear();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
}

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
    /// The pid file could not be read, was not a regular file, or held no pid.
    #[error("cannot read a pid from {path}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
    },
    /// The pid file belongs to a user other than root and the process's.
    #[error("pid file {path} names pid {pid}, which runs as another user than the file's owner")]
    PidOwner {
        /// The pid file.
        path: PathBuf,
        /// The pid it names.
        pid: i32,
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
    /// `timeout`; the environment is [`BASE_ENV`] plus `env` (see [`clear_env`]).
    /// Blocking: call from a blocking thread.
    pub fn run_blocking(
        &self,
        path: Option<&Path>,
        timeout: Duration,
        env: &[String],
    ) -> Result<(), Error> {
        let program = self.program().to_owned();
        let args = self.0[1..].iter().map(|a| match path {
            Some(p) => a.replace("{{path}}", &p.to_string_lossy()),
            None => a.clone(),
        });
        let mut cmd = Command::new(&self.0[0]);
        clear_env(&mut cmd, env);
        let mut child = cmd
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

/// Reads the pid in `pid_file`, which the signalled app usually writes itself. The
/// file is opened without blocking and must be a regular file; a file that does not
/// belong to root must belong to the user the process runs as, so an app cannot
/// point the agent's signal at someone else's process (pid 1, say).
fn read_pid(pid_file: &Path) -> Result<i32, Error> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    let refused = || Error::PidFile {
        path: pid_file.to_owned(),
    };
    let fd = rustix::fs::open(
        pid_file,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| refused())?;
    let st = rustix::fs::fstat(&fd).map_err(|_| refused())?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refused());
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(32)
        .read_to_string(&mut text)
        .map_err(|_| refused())?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(refused)?;
    if st.st_uid != 0 {
        // /proc/<pid> belongs to the process's user.
        let proc_uid = rustix::fs::stat(format!("/proc/{pid}"))
            .map(|p| p.st_uid)
            .map_err(|_| refused())?;
        if proc_uid != st.st_uid {
            return Err(Error::PidOwner {
                path: pid_file.to_owned(),
                pid,
            });
        }
    }
    Ok(pid)
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
    /// Carries the action out; a command gets [`BASE_ENV`] plus `env`. Blocking:
    /// call from a blocking thread.
    pub fn run_blocking(&self, timeout: Duration, env: &[String]) -> Result<(), Error> {
        match self {
            Action::Command(cmd) => cmd.run_blocking(None, timeout, env),
            Action::Signal { signal, pid_file } => {
                let pid = read_pid(pid_file)?;
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
        ok.run_blocking(Some(&f), Duration::from_secs(5), &[])
            .expect("passes");
        let empty = dir.path().join("e");
        std::fs::write(&empty, "").expect("write");
        assert!(matches!(
            ok.run_blocking(Some(&empty), Duration::from_secs(5), &[]),
            Err(Error::Failed { .. })
        ));
        // Stopped at its timeout, long before it would have ended by itself.
        let slow = CommandLine::split("sleep 60").expect("ok");
        let started = Instant::now();
        assert!(matches!(
            slow.run_blocking(None, Duration::from_millis(100), &[]),
            Err(Error::Timeout { .. })
        ));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "the timeout waited {took:?}"
        );
    }

    #[test]
    fn r2_commands_get_only_the_base_environment_and_what_is_listed() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("env");
        let dump = CommandLine::new(vec![
            "sh".into(),
            "-c".into(),
            format!("env > {}", out.display()),
        ])
        .expect("cmd");
        // The test process has CARGO_* variables; the command must not see them.
        let listed = std::env::vars()
            .map(|(k, _)| k)
            .find(|k| k.starts_with("CARGO_"))
            .expect("cargo sets CARGO_* for tests");
        dump.run_blocking(None, Duration::from_secs(10), std::slice::from_ref(&listed))
            .expect("runs");
        let text = std::fs::read_to_string(&out).expect("read");
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        assert!(names.contains(&listed.as_str()), "{names:?}");
        for name in names {
            // sh adds PWD, SHLVL and `_` by itself.
            assert!(
                BASE_ENV.contains(&name)
                    || name == listed
                    || ["PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
                "the command saw {name}"
            );
        }
    }

    #[test]
    fn pid_files_that_are_not_regular_or_name_others_processes_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo.pid");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        assert!(
            matches!(read_pid(&fifo), Err(Error::PidFile { .. })),
            "no blocking on a FIFO"
        );
        let own = dir.path().join("own.pid");
        std::fs::write(&own, format!("{}\n", std::process::id())).expect("write");
        assert_eq!(read_pid(&own).ok(), i32::try_from(std::process::id()).ok());
        if rustix::process::geteuid().is_root() {
            // A file of another user naming a root process (this one).
            std::os::unix::fs::chown(&own, Some(4242), None).expect("chown");
            assert!(matches!(read_pid(&own), Err(Error::PidOwner { .. })));
            let one = dir.path().join("one.pid");
            std::fs::write(&one, "1\n").expect("write");
            std::os::unix::fs::chown(&one, Some(4242), None).expect("chown");
            assert!(matches!(read_pid(&one), Err(Error::PidOwner { .. })));
        }
    }

    #[test]
    fn signal_names_parse() {
        assert_eq!(SignalName::parse("hup").expect("ok").name(), "SIGHUP");
        assert_eq!(SignalName::parse("SIGUSR1").expect("ok").name(), "SIGUSR1");
        assert!(SignalName::parse("SIGFOO").is_err());
    }
}
