//! Secrets the agent is handed through its environment, taken out of it at start.
//!
//! The key-encryption key (`kek = { source = "env" }`, by convention
//! `LATCHKEY_KEK`), the database URLs of `[[sql]] url_env` and the variables of
//! `[[env_fallback]]` arrive as environment variables. Left there, every command
//! the agent starts would inherit them, and any code that prints or forwards the
//! environment could reach them. So `main` calls [`take_at_start`] before any thread
//! exists: each named variable's value moves into zeroizing memory here, its bytes
//! in the process's initial environment block (what `/proc/<pid>/environ` shows)
//! are overwritten, and the variable is removed. The parts that need a value ask
//! [`var`], which answers from what was taken, or else from the environment (for
//! the CLI's one-shot commands, which take nothing).
//!
//! Child commands get a cleared environment on top of that (see
//! `render::action::clear_env`); templates read only what they list in `allow_env`.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::sync::{Mutex, OnceLock};

use zeroize::Zeroizing;

/// The variable the key-encryption key is given in by convention; taken at the
/// start of every command that opens the store, whatever the config names.
pub const DEFAULT_KEK_VAR: &str = "LATCHKEY_KEK";

static TAKEN: OnceLock<Mutex<HashMap<String, Zeroizing<Vec<u8>>>>> = OnceLock::new();

/// Moves `names` out of the process environment into this module (see the module
/// docs). Call once, at the top of `main`, before any thread starts: changing the
/// environment while another thread reads it is undefined behaviour in C.
pub fn take_at_start(names: &[String]) {
    let mut taken = HashMap::new();
    for name in names {
        if name.is_empty() || name.contains(['=', '\0']) || taken.contains_key(name) {
            continue;
        }
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        taken.insert(name.clone(), Zeroizing::new(value.into_encoded_bytes()));
        wipe_initial_value(name);
        std::env::remove_var(name);
    }
    let _ = TAKEN.set(Mutex::new(taken));
}

/// A variable's value: the one taken at start, or else the environment's.
pub fn var(name: &str) -> Option<Zeroizing<Vec<u8>>> {
    if let Some(taken) = TAKEN.get() {
        if let Some(v) = taken.lock().ok().and_then(|t| t.get(name).cloned()) {
            return Some(v);
        }
    }
    std::env::var_os(name).map(|v| Zeroizing::new(v.into_encoded_bytes()))
}

/// [`var`] as text; `None` when unset or not UTF-8.
pub fn var_string(name: &str) -> Option<Zeroizing<String>> {
    let bytes = var(name)?;
    std::str::from_utf8(&bytes)
        .ok()
        .map(|s| Zeroizing::new(s.to_owned()))
}

extern "C" {
    /// The C library's environment: a NULL-terminated array of `NAME=value` strings.
    static mut environ: *mut *mut c_char;
}

/// Overwrites with zeros the value bytes of `name` in the strings `environ` points
/// to. The kernel's initial copy (what `/proc/<pid>/environ` shows) is among them
/// until something changes the variable, so the value leaves that copy too;
/// removing the variable afterwards only drops the pointer.
#[allow(unsafe_code)]
fn wipe_initial_value(name: &str) {
    let name = name.as_bytes();
    // SAFETY: called only from `take_at_start`, before any thread exists, so
    // nothing reads or changes the environment meanwhile. `environ` is the C
    // library's array, NULL-terminated; each entry is a NUL-terminated string in
    // writable memory the process owns (the initial block on the stack, or the C
    // library's own copies). Only bytes between the `=` and the terminating NUL of
    // a matching entry are written, and the NUL stays, so every entry remains a
    // valid C string.
    unsafe {
        let mut entry = std::ptr::addr_of!(environ).read();
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            let text = *entry;
            let len = CStr::from_ptr(text).to_bytes().len();
            let matches = len > name.len()
                && std::slice::from_raw_parts(text.cast::<u8>(), name.len() + 1)
                    .split_last()
                    .is_some_and(|(eq, head)| *eq == b'=' && head == name);
            if matches {
                std::ptr::write_bytes(text.add(name.len() + 1), 0, len - name.len() - 1);
            }
            entry = entry.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untaken_names_read_from_the_environment() {
        // Cargo sets CARGO_PKG_NAME for the tests; nothing was taken in a test binary.
        assert_eq!(
            var_string("CARGO_PKG_NAME").as_deref().map(String::as_str),
            Some("latchkey-agent")
        );
        assert!(var("LATCHKEY_TEST_SURELY_UNSET_81c2").is_none());
    }
}
