//! Builds the policy crates in `guest/` and encodes each as a WebAssembly component.
//!
//! Why not `wasm-tools component new` in a shell script: installing wasm-tools costs about five
//! minutes in every fresh CI run, while the `wit-component` crate does the same encoding in-process.
//! Why `wasm32-unknown-unknown` and not `wasm32-wasip2`: the latter makes even a pure policy import
//! 13 WASI interfaces, which hosts without WASI (wasmtime-py, a hand-written Go ABI) cannot provide.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The policies shipped with aci-cache: (component file stem, crate name).
pub const POLICIES: &[(&str, &str)] = &[
    ("adaptive", "policy_adaptive"),
    ("fixed", "policy_fixed"),
    // Test-only, never embedded: they misbehave on purpose.
    ("hostile", "policy_hostile"),
    ("trap-on-load", "policy_trap_on_load"),
];

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
}

/// Compiles the guest workspace for wasm32 and writes `<policy_dir>/<name>.wasm` for each
/// policy. Returns the written paths.
pub fn build(layout: &Layout) -> Result<Vec<PathBuf>, String> {
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
    for (stem, krate) in POLICIES {
        let core = layout.guest_target_dir().join(WASM_TARGET).join("release").join(format!("{krate}.wasm"));
        let component = componentize(&core)?;
        let dest = out_dir.join(format!("{stem}.wasm"));
        write_if_changed(&dest, &component)?;
        written.push(dest);
    }
    Ok(written)
}

/// Encodes a core module that carries wit-bindgen's `component-type` section as a component.
pub fn componentize(core_module: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(core_module).map_err(|e| format!("cannot read {}: {e}", core_module.display()))?;
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|enc| enc.validate(true).encode())
        .map_err(|e| format!("cannot encode {} as a component: {e:#}", core_module.display()))
}

// Rewriting identical bytes would bump the mtime and make every consumer rebuild.
fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(dest).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    std::fs::write(dest, bytes).map_err(|e| format!("cannot write {}: {e}", dest.display()))
}
