//! `[[template]]` blocks: the TOML as written ([`TemplateSection`]) and the validated,
//! typed form the renderer uses ([`Template`]).
//!
//! The same section is read by the daemon (from `latchkey.toml`) and by
//! `latchkey render --config FILE` (from any TOML file with `[[template]]` blocks).
//! Validation collects every problem, each naming its key (`template[2].mode: ...`),
//! the way [`crate::config`] does. Relative paths are resolved against the config
//! file's folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::action::{Action, CommandLine, SignalName};

/// Default deadline for a `validate` or `on_change` command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline for one template's whole render.
pub const DEFAULT_RENDER_TIMEOUT: Duration = Duration::from_secs(60);

/// One `[[template]]` block as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    /// Name used in logs and errors [default: the destination's file name].
    pub name: Option<String>,
    /// Template file (Jinja syntax). Give `source` or `contents`.
    pub source: Option<PathBuf>,
    /// Inline template text, instead of `source`.
    pub contents: Option<String>,
    /// The file to write.
    pub destination: PathBuf,
    /// Octal mode of the written file [default: "0600"].
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Owner (user name or numeric uid) of the written file [default: unchanged].
    pub owner: Option<String>,
    /// Group (name or numeric gid) of the written file [default: unchanged].
    pub group: Option<String>,
    /// Command run on the new file before it replaces the old one; `{{path}}` is
    /// replaced by the new file's path. A string is split on spaces (quotes group);
    /// no shell is involved unless you write `sh -c '...'`.
    pub validate: Option<CommandSpec>,
    /// What to do after the file changed: `{ command = "..." }` or
    /// `{ signal = "SIGHUP", pid_file = "/run/app.pid" }`.
    pub on_change: Option<ActionSection>,
    /// Deadline for `validate` and an `on_change` command [default: "30s"].
    pub timeout: Option<String>,
    /// Deadline for the whole render of this template (reading secrets, writing,
    /// `validate`); past it the template counts as failed and the others go on
    /// [default: "60s"].
    pub render_timeout: Option<String>,
    /// Write into a folder that a user other than root, the agent and the file's
    /// owner may change (e.g. group-writable, or `/tmp`). Off: such a user could
    /// swap the file for a link between two steps of a write [default: false].
    #[serde(default)]
    pub allow_shared_folder: bool,
    /// Environment variables this template may read with `env()`; any other name
    /// reads as unset [default: none].
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// Environment variables passed to `validate` and `on_change` commands besides
    /// `PATH`, `HOME`, `LANG`, `LC_ALL` and `TZ`; commands get nothing else of the
    /// agent's environment [default: none].
    #[serde(default)]
    pub command_env: Vec<String>,
}

/// A command as a string (split on spaces, quotes group) or as an argv array.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    /// `"nginx -s reload"`.
    Line(String),
    /// `["nginx", "-s", "reload"]`.
    Argv(Vec<String>),
}

/// `on_change = { ... }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSection {
    /// Command to run.
    pub command: Option<CommandSpec>,
    /// Signal to send (`SIGHUP`, `HUP`, `SIGUSR1`, …).
    pub signal: Option<String>,
    /// File holding the pid to signal.
    pub pid_file: Option<PathBuf>,
}

/// Where a template's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateText {
    /// A file, re-read at each render (so a fixed template is picked up on retry).
    File(PathBuf),
    /// Inline text from the config.
    Inline(String),
}

/// A validated template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Name used in logs and errors.
    pub name: String,
    /// The template text.
    pub text: TemplateText,
    /// The file written.
    pub destination: PathBuf,
    /// Mode bits of the written file.
    pub mode: u32,
    /// Owner uid to set, if any.
    pub uid: Option<u32>,
    /// Group gid to set, if any.
    pub gid: Option<u32>,
    /// Check run on the new file before the swap.
    pub validate: Option<CommandLine>,
    /// What to do after a change.
    pub on_change: Option<Action>,
    /// Deadline for `validate` and a command action.
    pub timeout: Duration,
    /// Deadline for the whole render (secrets, write, validate).
    pub render_timeout: Duration,
    /// Whether a folder others may write is accepted.
    pub allow_shared_folder: bool,
    /// What `env()` may read.
    pub allow_env: Vec<String>,
    /// What commands get from the agent's environment besides the base set.
    pub command_env: Vec<String>,
}

impl Template {
    /// A template file rendered to a destination with mode 0600 and no actions
    /// (`latchkey exec --template SRC:DEST`).
    pub fn simple(source: PathBuf, destination: PathBuf) -> Template {
        let name = file_name(&destination);
        Template {
            name,
            text: TemplateText::File(source),
            destination,
            mode: 0o600,
            uid: None,
            gid: None,
            validate: None,
            on_change: None,
            timeout: DEFAULT_TIMEOUT,
            render_timeout: DEFAULT_RENDER_TIMEOUT,
            allow_shared_folder: false,
            allow_env: Vec::new(),
            command_env: Vec::new(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn default_mode() -> String {
    "0600".to_owned()
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Validates `[[template]]` blocks; pushes one line per problem, naming its key.
pub fn validate(
    base: &Path,
    sections: &[TemplateSection],
    problems: &mut Vec<String>,
) -> Vec<Template> {
    let mut out = Vec::with_capacity(sections.len());
    let mut names = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    for (i, s) in sections.iter().enumerate() {
        let key = format!("template[{i}]");
        let before = problems.len();
        let destination = resolve(base, &s.destination);
        let name = s.name.clone().unwrap_or_else(|| file_name(&destination));
        if name.is_empty() || name.chars().any(char::is_control) {
            problems.push(format!("{key}.name: must be non-empty printable text"));
        }
        if !names.insert(name.clone()) {
            problems.push(format!(
                "{key}.name: {name:?} is used by another template (set distinct names)"
            ));
        }
        if !destinations.insert(destination.clone()) {
            problems.push(format!(
                "{key}.destination: {} is written by another template",
                destination.display()
            ));
        }
        if destination.file_name().is_none() {
            problems.push(format!("{key}.destination: must name a file"));
        }
        let text = match (&s.source, &s.contents) {
            (Some(src), None) => TemplateText::File(resolve(base, src)),
            (None, Some(text)) => TemplateText::Inline(text.clone()),
            _ => {
                problems.push(format!("{key}: set exactly one of source or contents"));
                TemplateText::Inline(String::new())
            }
        };
        let mode = match u32::from_str_radix(s.mode.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => m,
            Ok(m) if m <= 0o7777 => {
                problems.push(format!(
                    "{key}.mode: {:?} sets setuid, setgid or sticky bits, which a rendered file must not have",
                    s.mode
                ));
                0o600
            }
            _ => {
                problems.push(format!(
                    "{key}.mode: {:?} is not an octal mode like \"0640\"",
                    s.mode
                ));
                0o600
            }
        };
        let uid = s
            .owner
            .as_deref()
            .and_then(|o| match lookup_id("/etc/passwd", o) {
                Some(id) => Some(id),
                None => {
                    problems.push(format!("{key}.owner: no user {o:?}"));
                    None
                }
            });
        let gid = s
            .group
            .as_deref()
            .and_then(|g| match lookup_id("/etc/group", g) {
                Some(id) => Some(id),
                None => {
                    problems.push(format!("{key}.group: no group {g:?}"));
                    None
                }
            });
        let validate = s.validate.as_ref().and_then(|c| match command(c) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("{key}.validate: {e}"));
                None
            }
        });
        let on_change = s.on_change.as_ref().and_then(|a| match action(base, a) {
            Ok(a) => Some(a),
            Err(e) => {
                problems.push(format!("{key}.on_change: {e}"));
                None
            }
        });
        let timeout = deadline(
            &key,
            "timeout",
            s.timeout.as_deref(),
            DEFAULT_TIMEOUT,
            problems,
        );
        let render_timeout = deadline(
            &key,
            "render_timeout",
            s.render_timeout.as_deref(),
            DEFAULT_RENDER_TIMEOUT,
            problems,
        );
        for (field, names) in [("allow_env", &s.allow_env), ("command_env", &s.command_env)] {
            for name in names.iter() {
                if name.is_empty() || name.contains(['=', '\0']) {
                    problems.push(format!(
                        "{key}.{field}: {name:?} is not an environment variable name"
                    ));
                }
            }
        }
        if problems.len() == before {
            out.push(Template {
                name,
                text,
                destination,
                mode,
                uid,
                gid,
                validate,
                on_change,
                timeout,
                render_timeout,
                allow_shared_folder: s.allow_shared_folder,
                allow_env: s.allow_env.clone(),
                command_env: s.command_env.clone(),
            });
        }
    }
    out
}

/// A `timeout`-like key: a positive duration, or `default` when not given.
fn deadline(
    key: &str,
    field: &str,
    text: Option<&str>,
    default: Duration,
    problems: &mut Vec<String>,
) -> Duration {
    match text {
        None => default,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                problems.push(format!(
                    "{key}.{field}: {t:?} is not a duration like \"30s\""
                ));
                default
            }
        },
    }
}

fn command(spec: &CommandSpec) -> Result<CommandLine, String> {
    match spec {
        CommandSpec::Line(line) => CommandLine::split(line),
        CommandSpec::Argv(argv) => CommandLine::new(argv.clone()),
    }
}

fn action(base: &Path, a: &ActionSection) -> Result<Action, String> {
    match (&a.command, &a.signal, &a.pid_file) {
        (Some(c), None, None) => Ok(Action::Command(command(c)?)),
        (None, Some(sig), Some(pid_file)) => Ok(Action::Signal {
            signal: SignalName::parse(sig)?,
            pid_file: resolve(base, pid_file),
        }),
        (None, Some(_), None) => Err("signal needs pid_file".to_owned()),
        _ => Err("set either command, or signal with pid_file".to_owned()),
    }
}

/// Resolves a user or group name (or a number) through `/etc/passwd` / `/etc/group`.
pub(crate) fn lookup_id(db: &str, name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    let text = std::fs::read_to_string(db).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        let entry = parts.next()?;
        let _password = parts.next()?;
        let id = parts.next()?;
        (entry == name).then(|| id.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Template>, Vec<String>) {
        #[derive(Deserialize)]
        struct F {
            template: Vec<TemplateSection>,
        }
        let f: F = toml::from_str(text).expect("toml");
        let mut problems = Vec::new();
        let t = validate(Path::new("/etc/lk"), &f.template, &mut problems);
        (t, problems)
    }

    #[test]
    fn a_full_block_validates() {
        let (t, problems) = parse(
            r#"
[[template]]
source = "t/db.tmpl"
destination = "/run/app/db.conf"
mode = "0640"
owner = "root"
group = "0"
validate = "sh -c 'test -s {{path}}'"
on_change = { command = ["systemctl", "reload", "app"] }
timeout = "5s"

[[template]]
name = "env"
contents = "A={{ secret('a').x }}"
destination = "out/.env"
on_change = { signal = "HUP", pid_file = "run/app.pid" }
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "db.conf");
        assert_eq!(t[0].mode, 0o640);
        assert_eq!(t[0].uid, Some(0));
        assert_eq!(t[0].text, TemplateText::File("/etc/lk/t/db.tmpl".into()));
        assert_eq!(
            t[0].validate.as_ref().map(|c| c.argv().to_vec()),
            Some(vec!["sh".into(), "-c".into(), "test -s {{path}}".into()])
        );
        assert_eq!(t[1].destination, Path::new("/etc/lk/out/.env"));
        assert!(matches!(t[1].on_change, Some(Action::Signal { .. })));
    }

    #[test]
    fn every_problem_names_its_key() {
        let (_, problems) = parse(
            r#"
[[template]]
destination = "a"
mode = "rw"
[[template]]
source = "x"
destination = "a"
on_change = { signal = "SIGNOPE", pid_file = "p" }
timeout = "soon"
[[template]]
contents = "x"
destination = "setuid"
mode = "4755"
[[template]]
contents = "x"
destination = "sticky"
mode = "1600"
allow_env = ["A=B"]
"#,
        );
        let all = problems.join("\n");
        assert!(
            all.contains("template[0]: set exactly one of source or contents"),
            "{all}"
        );
        assert!(all.contains("template[0].mode"), "{all}");
        assert!(all.contains("template[1].name"), "{all}");
        assert!(all.contains("template[1].destination"), "{all}");
        assert!(all.contains("template[1].on_change"), "{all}");
        assert!(all.contains("template[1].timeout"), "{all}");
        assert!(
            all.contains("template[2].mode: \"4755\" sets setuid, setgid or sticky bits"),
            "{all}"
        );
        assert!(all.contains("template[3].mode"), "{all}");
        assert!(all.contains("template[3].allow_env"), "{all}");
    }
}
