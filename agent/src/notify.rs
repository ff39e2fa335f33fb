//! systemd's service notification protocol (`sd_notify(3)`), spoken without
//! libsystemd: datagrams of `KEY=value` lines to the socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` in the abstract namespace).
//!
//! The agent says `READY=1` once the store is open, the listeners are bound and the
//! first poll of its upstream has either succeeded or failed (so a unit ordered
//! after it starts against a decided cache, served fresh or stale), `STATUS=` with
//! what it is doing, `WATCHDOG=1` at half of `WATCHDOG_USEC` from a task on the
//! runtime (so a wedged event loop stops the pings and systemd restarts the agent),
//! `RELOADING=1` … `READY=1` around a SIGHUP reload, and `STOPPING=1` when it begins
//! to stop. Without `NOTIFY_SOCKET` every call does
//! nothing. A message that cannot be sent is logged at debug: notification never
//! stops the agent.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go, when the agent runs under a service manager.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the process
    /// environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok(), std::process::id())
    }

    /// Like [`Notifier::from_env`] with the variables from `var` and this process's
    /// id `pid` (a `WATCHDOG_PID` naming another process turns the watchdog off).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, pid: u32) -> Self {
        let target =
            var("NOTIFY_SOCKET")
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix('@') {
                    Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                    None => Target::Path(PathBuf::from(s)),
                });
        let for_us = var("WATCHDOG_PID").is_none_or(|p| p.trim() == pid.to_string());
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && target.is_some())
            .map(|usec| Duration::from_micros(usec / 2));
        Notifier { target, watchdog }
    }

    /// A notifier that says nothing.
    pub fn none() -> Self {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), when asked to.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`KEY=value` lines). Newlines in a value are not allowed by
    /// the protocol; callers pass fixed keys and single-line values.
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|socket| match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
        });
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=` only.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// Sends `WATCHDOG=1` every [`Notifier::watchdog_interval`] until `stop` turns
    /// true; a no-op task without a watchdog.
    pub async fn keep_alive(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(every) = self.watchdog else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.send("WATCHDOG=1"),
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let socket = path.to_str().expect("utf-8");
        let notifier = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", socket)]), 1);
        notifier.ready("serving\non two lines");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving on two lines");
        assert_eq!(notifier.watchdog_interval(), None);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("latchkey-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::from_vars(vars(&[("NOTIFY_SOCKET", &format!("@{name}"))]), 1);
        notifier.stopping();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn the_watchdog_runs_at_half_its_timeout_and_only_for_this_process() {
        let on = [
            ("NOTIFY_SOCKET", "/run/x"),
            ("WATCHDOG_USEC", "3000000"),
            ("WATCHDOG_PID", "42"),
        ];
        assert_eq!(
            Notifier::from_vars(vars(&on), 42).watchdog_interval(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(Notifier::from_vars(vars(&on), 43).watchdog_interval(), None);
        let no_socket = [("WATCHDOG_USEC", "3000000")];
        assert_eq!(
            Notifier::from_vars(vars(&no_socket), 42).watchdog_interval(),
            None
        );
        // Without NOTIFY_SOCKET nothing is sent, and nothing fails.
        Notifier::from_vars(vars(&[]), 1).ready("x");
        Notifier::none().send("READY=1");
    }
}
