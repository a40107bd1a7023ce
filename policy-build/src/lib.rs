//! Builds the policy crates in `guest/` and encodes each as a WebAssembly component.
//!
//! Why not `wasm-tools component new` in a shell script: installing wasm-tools costs about five
//! minutes in every fresh CI run, while the `wit-component` crate does the same encoding in-process.
//! Why `wasm32-unknown-unknown` and not `wasm32-wasip2`: the latter makes even a pure policy import
//! 13 WASI interfaces, which hosts without WASI (wasmtime-py, a hand-written Go ABI) cannot provide.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Test-only policies: built into `target/policies/` like the bundled ones, never embedded or
/// shipped (they misbehave on purpose). The bundled ones are listed in `guest/policies.txt`.
pub const TEST_POLICIES: &[&str] = &["hostile", "trap-on-load"];

/// Parses a policy list: one name per line, `#` starts a comment, blank lines ignored.
pub fn parse_policy_list(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(format!("guest/policies.txt line {}: `{name}` is not a policy crate name ([a-z0-9-])", i + 1));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The crate `guest/<name>` is named `policy-<name>`; its wasm file `policy_<name>.wasm`.
fn crate_file_stem(name: &str) -> String {
    format!("policy_{}", name.replace('-', "_"))
}

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Where things go, relative to the repository root.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    pub fn guest_manifest(&self) -> PathBuf {
        self.root.join("guest").join("Cargo.toml")
    }
    pub fn guest_target_dir(&self) -> PathBuf {
        self.root.join("target").join("guest")
    }
    /// Components land here; every host (Rust, Python, JS, Go) loads them from this folder.
    pub fn policy_dir(&self) -> PathBuf {
        self.root.join("target").join("policies")
    }
    /// The one list of bundled policies.
    pub fn policy_list(&self) -> PathBuf {
        self.root.join("guest").join("policies.txt")
    }
    /// The bundled policies' names, from `guest/policies.txt`.
    pub fn bundled(&self) -> Result<Vec<String>, String> {
        let path = self.policy_list();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let names = parse_policy_list(&text)?;
        if names.is_empty() {
            return Err(format!("{} lists no policy", path.display()));
        }
        Ok(names)
    }
}

/// Compiles the guest workspace for wasm32 and writes `<policy_dir>/<name>.wasm` for each
/// bundled policy (`guest/policies.txt`) and each test policy. Returns the bundled policies'
/// (name, path) pairs, in list order.
pub fn build(layout: &Layout) -> Result<Vec<(String, PathBuf)>, String> {
    let bundled = layout.bundled()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--manifest-path")
        .arg(layout.guest_manifest())
        .env("CARGO_TARGET_DIR", layout.guest_target_dir());
    // A build script inherits flags meant for the host crate; none of them fit a wasm build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER", "CARGO_PROFILE_RELEASE_DEBUG", "CARGO_BUILD_RUSTFLAGS"]
    {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo to build the policies: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed") || stderr.contains("can't find crate for `core`") {
            format!("\nhint: run `rustup target add {WASM_TARGET}`")
        } else {
            String::new()
        };
        return Err(format!("building the policy crates failed:\n{stderr}{hint}"));
    }
    let out_dir = layout.policy_dir();
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    let all = bundled.iter().map(String::as_str).chain(TEST_POLICIES.iter().copied());
    for (i, name) in all.enumerate() {
        let core = layout.guest_target_dir().join(WASM_TARGET).join("release").join(format!("{}.wasm", crate_file_stem(name)));
        let component = componentize(&core)?;
        let dest = out_dir.join(format!("{name}.wasm"));
        write_if_changed(&dest, &component)?;
        if i < bundled.len() {
            written.push((name.to_string(), dest));
        }
    }
    // Last: whoever waits for the build's components (scripts/test.sh sets the hosts up while
    // cargo still builds the workspace) waits for this file.
    let stamp = out_dir.join(BUILT_STAMP);
    std::fs::write(&stamp, b"").map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(written)
}

/// Written into the policy folder once every component of a build is in place.
pub const BUILT_STAMP: &str = ".built";

/// Encodes a core module that carries wit-bindgen's `component-type` section as a component.
pub fn componentize(core_module: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(core_module).map_err(|e| format!("cannot read {}: {e}", core_module.display()))?;
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|enc| enc.validate(true).encode())
        .map_err(|e| format!("cannot encode {} as a component: {e:#}", core_module.display()))
}

// Rewriting identical bytes would bump the mtime and make every consumer rebuild. A new file is
// renamed into place: a host's setup copying the folder meanwhile never sees half a component.
fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(dest).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let tmp = dest.with_extension(format!("wasm.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dest).map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_list_format() {
        assert_eq!(parse_policy_list("# c\nadaptive\n\n fixed # why\n").unwrap(), vec!["adaptive", "fixed"]);
        assert!(parse_policy_list("bad name\n").is_err());
        assert_eq!(crate_file_stem("trap-on-load"), "policy_trap_on_load");
    }

    #[test]
    fn the_repository_list_names_existing_crates() {
        let layout = Layout::new(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
        for name in layout.bundled().unwrap() {
            assert!(layout.root.join("guest").join(&name).join("Cargo.toml").exists(), "guest/{name} missing");
        }
    }
}
