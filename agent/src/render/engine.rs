//! The template engine: minijinja (Jinja syntax, sandboxed) with latchkey's
//! functions and filters, rendering into a zeroizing buffer and recording which
//! secrets each render read.
//!
//! In templates:
//!
//! | name | what it does |
//! | --- | --- |
//! | `secret("path")` | the current fields of a secret, as a map (`secret("db").password`) |
//! | `secret("path", "field")` | one field; a missing secret or field is an error naming both |
//! | `env("NAME")`, `env("NAME", "default")` | an environment variable of the renderer, if the template lists it in `allow_env` (others read as unset) |
//! | `\| b64encode`, `\| b64decode` | standard base64 |
//! | `\| tojson` | JSON (strings quoted and escaped; maps as objects) |
//! | `\| toyaml` | YAML (strings double-quoted, maps as block mappings) |
//! | `\| totoml` | TOML (a string as a basic string; a map as `key = "value"` lines) |
//! | `\| urlencode` | percent-encoding for URLs (a password in `postgresql://user:pw@host`) |
//! | `\| pgpass` | escapes `\` and `:` for a `.pgpass` line; refuses CR and LF |
//! | `\| shell_quote` | single-quotes for POSIX `sh` and `.env` files it reads; refuses CR and LF |
//! | `\| default(x)` | minijinja's builtin, with every other builtin filter and test |
//!
//! Undefined values are strict: printing a missing variable or field is an error
//! carrying the template's name and line, never an empty string in a config file.
//! Auto-escaping is off (these are config files, not HTML). minijinja's `debug`
//! feature is off because its error reports print the values in scope.
//!
//! Values pass through minijinja's reference-counted strings while a template runs;
//! the output is written into a buffer that is zeroized on drop and on growth.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use zeroize::Zeroizing;

use super::source::Source;
use super::spec::{Template, TemplateText};
use super::Error;
use crate::path::SecretPath;
use crate::secret::Fields;

/// The context variable that carries the render session to the functions.
const SESSION: &str = "__latchkey_session";

/// One render pass over many templates: the secret source and what was fetched,
/// so a secret used by many templates is read once per pass.
pub struct Pass {
    source: Arc<dyn Source>,
    fetched: Mutex<HashMap<SecretPath, Option<Arc<Fields>>>>,
}

impl Pass {
    /// A new pass reading from `source`.
    pub fn new(source: Arc<dyn Source>) -> Arc<Pass> {
        Arc::new(Pass {
            source,
            fetched: Mutex::new(HashMap::new()),
        })
    }

    fn fetch(&self, path: &SecretPath) -> Result<Option<Arc<Fields>>, super::source::Error> {
        if let Some(hit) = self.fetched.lock().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(hit);
        }
        let got = self.source.fetch(path)?.map(Arc::new);
        if let Ok(mut m) = self.fetched.lock() {
            m.insert(path.clone(), got.clone());
        }
        Ok(got)
    }
}

/// What one template's render produced.
pub struct Rendered {
    /// The output, or why there is none.
    pub result: Result<Zeroizing<Vec<u8>>, Error>,
    /// Every secret path the template read (or tried to), including on failure, so
    /// a template waiting for a missing secret re-renders when it appears.
    pub paths: BTreeSet<SecretPath>,
}

#[derive(Debug)]
struct Session {
    pass: Arc<PassHandle>,
    touched: Mutex<BTreeSet<SecretPath>>,
    /// The variables this template may read with `env()`.
    allow_env: Vec<String>,
}

/// `Debug` for the pass without its contents.
struct PassHandle(Arc<Pass>);

impl std::fmt::Debug for PassHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pass")
    }
}

impl Object for Session {}

/// A secret's fields as a template value; values are copied out only when used.
#[derive(Debug)]
struct FieldsValue(Arc<Fields>);

impl Object for FieldsValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        field_value(&self.0, key.as_str()?)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.names().map(Value::from).collect())
    }
}

/// One field as a template value, with its JSON type: a number is a number, `false`
/// is falsy, an object has attributes. (Printed, each renders as its JSON text.)
fn field_value(fields: &Fields, name: &str) -> Option<Value> {
    let text = fields.get(name)?;
    if !fields.is_json(name) {
        return Some(Value::from(text.expose()));
    }
    let parsed: serde_json::Value = serde_json::from_str(text.expose()).ok()?;
    Some(Value::from_serialize(&parsed))
}

/// Compiled templates and the configured environment.
pub struct Engine {
    /// Swapped whole when a template is added, never held while one renders: a
    /// render blocked in a read must not keep another template from loading.
    env: RwLock<Arc<Environment<'static>>>,
    /// The source text each loaded template was compiled from.
    loaded: Mutex<HashMap<String, Arc<str>>>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An engine with latchkey's functions and filters.
    pub fn new() -> Engine {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env.set_recursion_limit(64);
        env.add_function("secret", secret);
        env.add_function("env", env_var);
        env.add_filter("b64encode", b64encode);
        env.add_filter("b64decode", b64decode);
        env.add_filter("tojson", tojson);
        env.add_filter("toyaml", toyaml);
        env.add_filter("totoml", totoml);
        env.add_filter("urlencode", urlencode);
        env.add_filter("pgpass", pgpass);
        env.add_filter("shell_quote", shell_quote);
        Engine {
            env: RwLock::new(Arc::new(env)),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Renders one template. Reads the template file (if it has one) each time, so a
    /// fixed template is picked up on the next retry; compiles only when it changed.
    /// Blocking: call from a blocking thread.
    pub fn render(&self, template: &Template, pass: &Arc<Pass>) -> Rendered {
        let session = Arc::new(Session {
            pass: Arc::new(PassHandle(pass.clone())),
            touched: Mutex::new(BTreeSet::new()),
            allow_env: template.allow_env.clone(),
        });
        let result = self.render_inner(template, &session);
        let paths = session
            .touched
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        Rendered { result, paths }
    }

    fn render_inner(
        &self,
        template: &Template,
        session: &Arc<Session>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let text: Arc<str> = match &template.text {
            TemplateText::Inline(t) => Arc::from(t.as_str()),
            TemplateText::File(path) => {
                read_template(path)
                    .map(Arc::from)
                    .map_err(|source| Error::ReadTemplate {
                        template: template.name.clone(),
                        path: path.clone(),
                        source,
                    })?
            }
        };
        self.load(template, &text)?;
        let env = self.env.read().map_err(|_| Error::Poisoned)?.clone();
        let compiled = env
            .get_template(&template.name)
            .map_err(|e| template_error(template, &e, None))?;
        let ctx =
            minijinja::context! { __latchkey_session => Value::from_dyn_object(session.clone()) };
        let mut out = SecretWriter::with_capacity(text.len() * 2 + 256);
        compiled
            .render_captured_to(ctx, &mut out)
            .map_err(|e| template_error(template, &e, Some(session)))?;
        Ok(out.0)
    }

    fn load(&self, template: &Template, text: &Arc<str>) -> Result<(), Error> {
        let current = self
            .loaded
            .lock()
            .map_err(|_| Error::Poisoned)?
            .get(&template.name)
            .cloned();
        if current.as_deref() == Some(&**text) {
            return Ok(());
        }
        let mut env = self.env.write().map_err(|_| Error::Poisoned)?;
        let mut next = Environment::clone(&env);
        next.add_template_owned(template.name.clone(), text.to_string())
            .map_err(|e| template_error(template, &e, None))?;
        *env = Arc::new(next);
        self.loaded
            .lock()
            .map_err(|_| Error::Poisoned)?
            .insert(template.name.clone(), text.clone());
        Ok(())
    }
}

/// Reads a template file; refuses anything but a regular file, without blocking on
/// a FIFO put in its place.
fn read_template(path: &std::path::Path) -> io::Result<String> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    io::read_to_string(std::fs::File::from(fd))
}

/// Marks the messages of latchkey's own functions and filters, which name paths and
/// fields but never carry a value.
const OURS: char = '\u{1}';

/// An error from one of our functions or filters.
fn ours(message: impl Into<String>) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{OURS}{}", message.into()),
    )
}

/// Turns a minijinja error into ours: template name, line, and what kind of error it
/// was. A message from one of our functions is kept (it names paths and fields, never
/// a value). minijinja's own messages for errors met while rendering quote operands
/// (`unable to calculate 7345 * 9`, from a secret `007345` passed through `int`),
/// and no scrubbing can know every value derived from a secret, so those keep only
/// their kind. Compile errors (`session` is `None`) keep their message: it quotes the
/// template's text, which is configuration, not a secret.
fn template_error(template: &Template, e: &minijinja::Error, session: Option<&Session>) -> Error {
    let message = match (e.kind(), e.detail()) {
        (ErrorKind::UndefinedError, _) => {
            "undefined value (a missing secret field or variable)".to_owned()
        }
        (_, Some(detail)) if detail.starts_with(OURS) => detail[OURS.len_utf8()..].to_owned(),
        (kind, Some(detail)) if session.is_none() || names_only(kind) => {
            format!("{kind}: {detail}")
        }
        (kind, _) => format!("{kind} (details withheld: they may quote a secret)"),
    };
    Error::Template {
        template: template.name.clone(),
        line: e.line(),
        message,
    }
}

/// Error kinds whose message names only what the template's text names (a filter,
/// function, test or method), never a value.
fn names_only(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::SyntaxError
            | ErrorKind::UnknownFilter
            | ErrorKind::UnknownFunction
            | ErrorKind::UnknownTest
            | ErrorKind::UnknownMethod
            | ErrorKind::TemplateNotFound
    )
}

/// A `Write` sink that keeps its bytes in zeroizing memory, also when it grows.
struct SecretWriter(Zeroizing<Vec<u8>>);

impl SecretWriter {
    fn with_capacity(n: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(n)))
    }
}

impl io::Write for SecretWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let need = self.0.len() + buf.len();
        if need > self.0.capacity() {
            // Grow by moving into a new zeroizing buffer; the old one is wiped on drop
            // (a plain `Vec` reallocation would leave the old bytes behind).
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(self.0.capacity() * 2)));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn session(state: &State) -> Result<Arc<Session>, minijinja::Error> {
    state
        .lookup(SESSION)
        .and_then(|v| v.downcast_object::<Session>())
        .ok_or_else(|| ours("no render session"))
}

/// `secret("path")` → fields; `secret("path", "field")` → one value.
fn secret(state: &State, path: String, field: Option<String>) -> Result<Value, minijinja::Error> {
    let session = session(state)?;
    let path = SecretPath::parse(&path).map_err(|e| ours(format!("secret({path:?}): {e}")))?;
    if let Ok(mut t) = session.touched.lock() {
        t.insert(path.clone());
    }
    let fields = session
        .pass
        .0
        .fetch(&path)
        .map_err(|e| ours(format!("cannot read secret {path}: {e}")))?;
    let Some(fields) = fields else {
        return Err(ours(format!("secret {path} not found")));
    };
    match field {
        None => Ok(Value::from_object(FieldsValue(fields))),
        Some(name) => match field_value(&fields, &name) {
            Some(v) => Ok(v),
            None => Err(ours(format!(
                "secret {path} has no field {name:?} (it has: {})",
                fields.names().collect::<Vec<_>>().join(", ")
            ))),
        },
    }
}

/// `env("NAME")` or `env("NAME", "default")`. Only the names in the template's
/// `allow_env` are read; any other reads as unset, so a template cannot reach what
/// the agent was started with (its key, database URLs).
fn env_var(
    state: &State,
    name: String,
    default: Option<String>,
) -> Result<Value, minijinja::Error> {
    let allowed = session(state)?.allow_env.contains(&name);
    let value = if allowed {
        std::env::var(&name).ok()
    } else {
        None
    };
    match (value, default) {
        (Some(v), _) => Ok(Value::from(v)),
        (None, Some(d)) => Ok(Value::from(d)),
        (None, None) if allowed => Err(ours(format!(
            "environment variable {name} is not set (give a default: env({name:?}, \"...\"))"
        ))),
        (None, None) => Err(ours(format!(
            "env({name:?}): {name} is not in this template's allow_env"
        ))),
    }
}

fn text(value: &Value, filter: &str) -> Result<String, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    match value.as_str() {
        Some(s) => Ok(s.to_owned()),
        None if matches!(value.kind(), ValueKind::Number | ValueKind::Bool) => {
            Ok(value.to_string())
        }
        None => Err(ours(format!(
            "{filter} expects a string, got {}",
            value.kind()
        ))),
    }
}

fn b64encode(value: Value) -> Result<String, minijinja::Error> {
    let s = Zeroizing::new(text(&value, "b64encode")?);
    Ok(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
}

fn b64decode(value: Value) -> Result<String, minijinja::Error> {
    let s = Zeroizing::new(text(&value, "b64decode")?);
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| ours("b64decode: not base64"))?,
    );
    String::from_utf8(bytes.to_vec()).map_err(|_| ours("b64decode: not UTF-8 text"))
}

fn tojson(value: Value) -> Result<String, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::from(ErrorKind::UndefinedError));
    }
    serde_json::to_string(&value).map_err(|_| ours("tojson: cannot encode"))
}

/// A YAML/TOML/JSON double-quoted string (the three agree on these escapes).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scalar(value: &Value, filter: &str) -> Result<String, minijinja::Error> {
    match value.kind() {
        ValueKind::String => Ok(quoted(value.as_str().unwrap_or_default())),
        ValueKind::Number | ValueKind::Bool => Ok(value.to_string()),
        ValueKind::Undefined => Err(minijinja::Error::from(ErrorKind::UndefinedError)),
        other => Err(ours(format!("{filter}: cannot encode a {other} here"))),
    }
}

fn bare_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn map_entries(value: &Value) -> Result<Vec<(String, Value)>, minijinja::Error> {
    let mut out = Vec::new();
    for key in value.try_iter()? {
        let v = value.get_item(&key)?;
        out.push((key.to_string(), v));
    }
    Ok(out)
}

fn yaml_into(value: &Value, indent: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let pad = " ".repeat(indent);
    match value.kind() {
        ValueKind::Map => {
            for (k, v) in map_entries(value)? {
                let key = if bare_key_ok(&k) { k } else { quoted(&k) };
                if matches!(v.kind(), ValueKind::Map | ValueKind::Seq) && v.len() != Some(0) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    yaml_into(&v, indent + 2, out)?;
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", yaml_inline(&v)?));
                }
            }
        }
        ValueKind::Seq => {
            for v in value.try_iter()? {
                if matches!(v.kind(), ValueKind::Map | ValueKind::Seq) && v.len() != Some(0) {
                    out.push_str(&format!("{pad}-\n"));
                    yaml_into(&v, indent + 2, out)?;
                } else {
                    out.push_str(&format!("{pad}- {}\n", yaml_inline(&v)?));
                }
            }
        }
        _ => out.push_str(&yaml_inline(value)?),
    }
    Ok(())
}

fn yaml_inline(value: &Value) -> Result<String, minijinja::Error> {
    match value.kind() {
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Map if value.len() == Some(0) => Ok("{}".to_owned()),
        ValueKind::Seq if value.len() == Some(0) => Ok("[]".to_owned()),
        _ => scalar(value, "toyaml"),
    }
}

/// `| toyaml`: a scalar inline; a map or list as a block (ends with a newline).
fn toyaml(value: Value) -> Result<String, minijinja::Error> {
    let mut out = String::new();
    yaml_into(&value, 0, &mut out)?;
    Ok(out)
}

fn toml_inline(value: &Value) -> Result<String, minijinja::Error> {
    match value.kind() {
        ValueKind::Map => {
            let parts = map_entries(value)?
                .into_iter()
                .map(|(k, v)| {
                    let key = if bare_key_ok(&k) { k } else { quoted(&k) };
                    Ok(format!("{key} = {}", toml_inline(&v)?))
                })
                .collect::<Result<Vec<_>, minijinja::Error>>()?;
            Ok(format!("{{ {} }}", parts.join(", ")))
        }
        ValueKind::Seq => {
            let parts = value
                .try_iter()?
                .map(|v| toml_inline(&v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("[{}]", parts.join(", ")))
        }
        _ => scalar(value, "totoml"),
    }
}

/// `| totoml`: a scalar as a TOML value; a map as `key = value` lines.
fn totoml(value: Value) -> Result<String, minijinja::Error> {
    if value.kind() == ValueKind::Map {
        let mut out = String::new();
        for (k, v) in map_entries(&value)? {
            let key = if bare_key_ok(&k) { k } else { quoted(&k) };
            out.push_str(&format!("{key} = {}\n", toml_inline(&v)?));
        }
        return Ok(out);
    }
    toml_inline(&value)
}

fn urlencode(value: Value) -> Result<String, minijinja::Error> {
    let s = Zeroizing::new(text(&value, "urlencode")?);
    Ok(crate::client::encode_query_value(&s))
}

/// Refuses a value with a line break: one line of a `.pgpass` file or an `.env`
/// assignment must stay one line, or a value could add entries of its own.
fn single_line(s: &str, filter: &str) -> Result<(), minijinja::Error> {
    if s.contains(['\n', '\r']) {
        return Err(ours(format!(
            "{filter}: the value contains a line break (CR or LF), which this format cannot hold"
        )));
    }
    Ok(())
}

fn pgpass(value: Value) -> Result<String, minijinja::Error> {
    let s = Zeroizing::new(text(&value, "pgpass")?);
    single_line(&s, "pgpass")?;
    Ok(s.replace('\\', "\\\\").replace(':', "\\:"))
}

/// Single quotes for POSIX `sh` (and `.env` files read by it). Not for other shells'
/// syntax (fish, PowerShell, cmd) nor for `.env` parsers that do not follow `sh`.
fn shell_quote(value: Value) -> Result<String, minijinja::Error> {
    let s = Zeroizing::new(text(&value, "shell_quote")?);
    single_line(&s, "shell_quote")?;
    Ok(format!("'{}'", s.replace('\'', "'\\''")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::source::MemorySource;
    use crate::secret::SecretString;

    fn source() -> Arc<MemorySource> {
        let src = MemorySource::new();
        let mut f = Fields::new();
        f.insert("username", SecretString::from("app"));
        f.insert("password", SecretString::from("p@ss:w\"rd"));
        src.put(SecretPath::parse("apps/db").expect("path"), f);
        let mut typed = Fields::new();
        for (name, json) in [
            ("port", "5432"),
            ("enabled", "false"),
            ("nested", r#"{"a":[1,2]}"#),
        ] {
            typed
                .insert_json(name, SecretString::from(json))
                .expect("json");
        }
        src.put(SecretPath::parse("apps/typed").expect("path"), typed);
        Arc::new(src)
    }

    #[test]
    fn typed_fields_keep_their_type_in_templates() {
        let out = render(
            "{% set t = secret('apps/typed') %}{{ t.port + 1 }} \
             {% if t.enabled %}on{% else %}off{% endif %} {{ t.nested.a[1] }} \
             {{ t.nested | tojson }} {{ secret('apps/typed', 'port') }}",
        )
        .expect("renders");
        assert_eq!(out, r#"5433 off 2 {"a":[1,2]} 5432"#);
    }

    fn inline(name: &str, text: &str) -> Template {
        let mut t = Template::simple("unused".into(), format!("/tmp/{name}").into());
        t.name = name.to_owned();
        t.text = TemplateText::Inline(text.to_owned());
        t
    }

    fn render(text: &str) -> Result<String, Error> {
        let engine = Engine::new();
        let pass = Pass::new(source());
        let r = engine.render(&inline("t", text), &pass);
        r.result
            .map(|b| String::from_utf8(b.to_vec()).expect("utf8"))
    }

    fn failure(r: &Rendered) -> String {
        match &r.result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected a failure"),
        }
    }

    #[test]
    fn secrets_fields_and_filters() {
        let out = render(
            "{% set db = secret('apps/db') %}postgresql://{{ db.username }}:{{ db.password | urlencode }}@h/d\n\
             {{ secret('apps/db', 'username') | b64encode }}\n\
             {{ db.password | tojson }} {{ db.password | pgpass }} {{ db.password | shell_quote }}\n\
             {{ db.missing | default('dflt') }}\n",
        )
        .expect("renders");
        assert_eq!(
            out,
            "postgresql://app:p%40ss%3Aw%22rd@h/d\nYXBw\n\"p@ss:w\\\"rd\" p@ss\\:w\"rd 'p@ss:w\"rd'\ndflt\n"
        );
    }

    #[test]
    fn structured_encoders() {
        let out = render("{{ secret('apps/db') | toyaml }}---\n{{ secret('apps/db') | totoml }}{{ secret('apps/db') | tojson }}").expect("renders");
        assert_eq!(
            out,
            "password: \"p@ss:w\\\"rd\"\nusername: \"app\"\n---\npassword = \"p@ss:w\\\"rd\"\nusername = \"app\"\n{\"password\":\"p@ss:w\\\"rd\",\"username\":\"app\"}"
        );
    }

    #[test]
    fn errors_name_template_line_and_path_never_value() {
        let engine = Engine::new();
        let pass = Pass::new(source());
        let r = engine.render(
            &inline("db.conf", "a\nb\n{{ secret('apps/nope').x }}\n"),
            &pass,
        );
        let e = failure(&r);
        assert_eq!(e, "template db.conf line 3: secret apps/nope not found");
        assert!(r
            .paths
            .contains(&SecretPath::parse("apps/nope").expect("p")));

        let r = engine.render(&inline("f", "x\n{{ secret('apps/db', 'pw') }}"), &pass);
        let e = failure(&r);
        assert!(
            e.starts_with("template f line 2: secret apps/db has no field \"pw\""),
            "{e}"
        );
        assert!(!e.contains("p@ss"), "{e}");

        let r = engine.render(&inline("g", "{{ secret('apps/db').passwd }}"), &pass);
        let e = failure(&r);
        assert!(e.starts_with("template g line 1: undefined value"), "{e}");

        let r = engine.render(&inline("s", "ok\n{% if %}"), &pass);
        let e = failure(&r);
        assert!(e.starts_with("template s line 2:"), "{e}");
    }

    #[test]
    fn builtin_errors_never_quote_a_value() {
        let src = MemorySource::new();
        let mut f = Fields::new();
        f.insert("pin", SecretString::from("987654321987654321"));
        src.put(SecretPath::parse("apps/pin").expect("path"), f);
        let engine = Engine::new();
        let pass = Pass::new(Arc::new(src));
        let r = engine.render(
            &inline(
                "p",
                "{% set n = secret('apps/pin').pin | int %}{{ n * n * n }}",
            ),
            &pass,
        );
        let e = failure(&r);
        assert!(e.starts_with("template p line 1:"), "{e}");
        assert!(!e.contains("987654321987654321"), "{e}");
    }

    #[test]
    fn r9_errors_on_values_derived_from_a_secret_quote_no_operand() {
        let src = MemorySource::new();
        let mut f = Fields::new();
        f.insert("pin", SecretString::from("007345"));
        src.put(SecretPath::parse("apps/pin").expect("path"), f);
        let engine = Engine::new();
        let pass = Pass::new(Arc::new(src));
        for expr in [
            "n * n * n * n * n * n * n * n * n * n * n",
            "n // 0",
            "n % 0",
            "n ** 100000",
        ] {
            let text = format!("{{% set n = secret('apps/pin').pin | int %}}\n{{{{ {expr} }}}}");
            let r = engine.render(&inline("pin", &text), &pass);
            let e = failure(&r);
            assert!(e.starts_with("template pin line 2: "), "{expr}: {e}");
            assert!(!e.contains("7345"), "{expr}: {e}");
        }
    }

    #[test]
    fn r10_line_filters_refuse_line_breaks_without_quoting_the_value() {
        let src = MemorySource::new();
        let mut f = Fields::new();
        f.insert("lf", SecretString::from("first-half\nwild:*:*:*:second"));
        f.insert("cr", SecretString::from("first-half\rsecond"));
        f.insert("crlf", SecretString::from("first-half\r\nsecond"));
        src.put(SecretPath::parse("apps/nl").expect("path"), f);
        let engine = Engine::new();
        let pass = Pass::new(Arc::new(src));
        for filter in ["pgpass", "shell_quote"] {
            for field in ["lf", "cr", "crlf"] {
                let text = format!("ok\n{{{{ secret('apps/nl').{field} | {filter} }}}}\n");
                let r = engine.render(&inline("nl", &text), &pass);
                let e = failure(&r);
                assert!(
                    e.starts_with(&format!(
                        "template nl line 2: {filter}: the value contains a line break"
                    )),
                    "{filter} {field}: {e}"
                );
                assert!(!e.contains("first-half") && !e.contains("second"), "{e}");
            }
        }
        // One-line values are unchanged.
        assert_eq!(
            render("{{ 'a:b' | pgpass }} {{ \"it's\" | shell_quote }}").expect("renders"),
            "a\\:b 'it'\\''s'"
        );
    }

    #[test]
    fn env_function_with_default() {
        assert_eq!(
            render("{{ env('LATCHKEY_TEST_SURELY_UNSET', 'd') }}").expect("ok"),
            "d"
        );
        assert!(render("{{ env('LATCHKEY_TEST_SURELY_UNSET') }}").is_err());
    }

    #[test]
    fn r2_env_reads_only_what_the_template_allows() {
        // Cargo sets CARGO_PKG_NAME for the tests.
        let engine = Engine::new();
        let pass = Pass::new(source());
        let mut t = inline("e", "{{ env('CARGO_PKG_NAME') }}");
        let e = failure(&engine.render(&t, &pass));
        assert!(e.contains("not in this template's allow_env"), "{e}");
        assert!(!e.contains("latchkey"), "{e}");
        let mut dflt = inline("e2", "{{ env('CARGO_PKG_NAME', 'd') }}");
        let out = engine.render(&dflt, &pass).result.expect("renders");
        assert_eq!(&out[..], b"d", "a name not allowed reads as unset");
        t.allow_env = vec!["CARGO_PKG_NAME".to_owned()];
        dflt.allow_env = t.allow_env.clone();
        let out = engine.render(&t, &pass).result.expect("renders");
        assert_eq!(&out[..], b"latchkey-agent");
    }

    #[test]
    fn changed_template_text_is_recompiled() {
        let engine = Engine::new();
        let pass = Pass::new(source());
        let a = engine
            .render(&inline("t", "one"), &pass)
            .result
            .expect("ok");
        let b = engine
            .render(&inline("t", "two"), &pass)
            .result
            .expect("ok");
        assert_eq!((&a[..], &b[..]), (&b"one"[..], &b"two"[..]));
    }
}
