//! Builds providers written in Python and JavaScript — the examples in
//! `examples/plugins`, and bench guests — with the SDKs in `plugin-sdk/python` and
//! `plugin-sdk/js`, the way the READMEs say: `componentize-py … componentize app -p .
//! -p plugin-sdk/python` and `node plugin-sdk/js/build.mjs app.js`.
//!
//! The tools are the ones `.ci/install-tools.sh` installs, found through
//! `LATCHKEY_TOOLS_DIR`, else `<workspace>/target/tools`. Each output is named by a
//! hash of everything it is built from (the example, the SDK, the WIT), so a second
//! test run, or a second suite in the same run, builds nothing; two processes building
//! the same example at once each write a file of their own and rename it into place.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Guests;

/// A language with an example provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// `examples/plugins/python`, built with componentize-py.
    Python,
    /// `examples/plugins/js`, built with componentize-js.
    Js,
}

impl Lang {
    /// The folder name under `examples/plugins`.
    pub fn dir(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// The plugin toolchain folder (`LATCHKEY_TOOLS_DIR`, else `<workspace>/target/tools`).
pub fn tools_dir(workspace: &Path) -> Result<PathBuf, String> {
    let dir = std::env::var_os("LATCHKEY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/tools"));
    if !dir.join("env.sh").is_file() {
        return Err(format!(
            "plugin toolchain not found in {} — run .ci/install-tools.sh (or set LATCHKEY_TOOLS_DIR)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The files of `dir` (not recursive) whose names end with `ext`, sorted.
fn files_in(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(ext))
        .collect();
    files.sort();
    Ok(files)
}

/// 64-bit FNV-1a over the names and contents of `files`: a stable cache key.
fn tree_hash(files: &[PathBuf]) -> Result<String, String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for b in name.bytes().chain([0]).chain(bytes) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

impl Guests {
    /// What a `lang` provider in `src` is built from: its source, the SDK, the contract.
    fn source_inputs(&self, lang: Lang, src: &Path) -> Result<Vec<PathBuf>, String> {
        let root = &self.workspace;
        let mut inputs = files_in(&root.join("wit"), ".wit")?;
        match lang {
            Lang::Python => {
                inputs.push(src.join("app.py"));
                inputs.extend(files_in(
                    &root.join("plugin-sdk/python/latchkey_sdk"),
                    ".py",
                )?);
            }
            Lang::Js => {
                inputs.push(src.join("app.js"));
                inputs.push(root.join("plugin-sdk/js/build.mjs"));
                inputs.extend(files_in(&root.join("plugin-sdk/js/src"), ".js")?);
            }
        }
        Ok(inputs)
    }

    /// Builds the `lang` example provider in `examples/plugins` (a no-op when its
    /// sources are unchanged) and returns its `.wasm`.
    pub fn build_example(&self, lang: Lang) -> Result<PathBuf, String> {
        let src = self.workspace.join("examples/plugins").join(lang.dir());
        self.build_source(lang, &src, &format!("example-{}", lang.dir()))
    }

    /// Builds the provider in folder `src` (`app.py` with `class Provider`, or
    /// `app.js` exporting `provider`) with the SDK for `lang`, as `name`; a no-op when
    /// its sources are unchanged. Returns its `.wasm`.
    pub fn build_source(&self, lang: Lang, src: &Path, name: &str) -> Result<PathBuf, String> {
        let tools = tools_dir(&self.workspace)?;
        let root = &self.workspace;
        let out_dir = self.target.join("sdk-guests").join(name);
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| format!("create {}: {e}", out_dir.display()))?;
        let out = out_dir.join(format!(
            "{name}-{}.wasm",
            tree_hash(&self.source_inputs(lang, src)?)?
        ));
        if out.is_file() {
            return Ok(out);
        }
        let path = format!(
            "{}:{}:{}",
            tools.join("venv/bin").display(),
            tools.join("node/node_modules/.bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let tmp = out.with_extension(format!("{}.partial", std::process::id()));
        let mut cmd = match lang {
            Lang::Python => {
                let mut c = Command::new(tools.join("venv/bin/componentize-py"));
                c.arg("-d")
                    .arg(root.join("wit"))
                    .args([
                        "-w",
                        "provider-plugin",
                        "componentize",
                        "app",
                        "-p",
                        ".",
                        "-p",
                    ])
                    .arg(root.join("plugin-sdk/python"))
                    .arg("-o");
                c
            }
            Lang::Js => {
                let mut c = Command::new("node");
                c.arg(root.join("plugin-sdk/js/build.mjs"))
                    .arg("app.js")
                    .arg("--wit")
                    .arg(root.join("wit"));
                c
            }
        };
        let status = cmd
            .arg(&tmp)
            .current_dir(src)
            .env("PATH", &path)
            .env("LATCHKEY_TOOLS_DIR", &tools)
            .status()
            .map_err(|e| format!("cannot run the {} build of {name}: {e}", lang.dir()))?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("building {name} ({}) failed", lang.dir()));
        }
        std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_follows_names_and_contents() {
        let dir = std::env::temp_dir().join(format!("guest-build-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch files");
        let (a, b) = (dir.join("a.py"), dir.join("b.py"));
        std::fs::write(&a, "x = 1").expect("scratch files");
        std::fs::write(&b, "x = 1").expect("scratch files");
        let first = tree_hash(std::slice::from_ref(&a)).expect("scratch files");
        assert_eq!(
            first,
            tree_hash(std::slice::from_ref(&a)).expect("scratch files")
        );
        assert_ne!(
            first,
            tree_hash(std::slice::from_ref(&b)).expect("scratch files"),
            "the name counts"
        );
        std::fs::write(&a, "x = 2").expect("scratch files");
        assert_ne!(
            first,
            tree_hash(&[a]).expect("scratch files"),
            "the content counts"
        );
        std::fs::remove_dir_all(&dir).expect("scratch files");
    }
}
