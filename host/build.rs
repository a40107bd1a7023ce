// Builds the policy components so that the library can embed the bundled ones and `cargo build`
// on a fresh clone needs no separate step. The bundled policies are the names listed in
// guest/policies.txt: each is copied into OUT_DIR as <name>.wasm, and OUT_DIR/bundled.rs lists
// them (name, bytes) for `aci_cache::policy::bundled`.
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().expect("host/ lives in the repository root").to_path_buf();
    println!("cargo:rerun-if-changed={}", root.join("guest").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    let layout = policy_build::Layout::new(&root);
    let written = match policy_build::build(&layout) {
        Ok(w) => w,
        Err(e) => {
            // A panic here would print a backtrace; the message is what the user needs.
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut table = String::from("&[\n");
    for (name, path) in &written {
        let dest = out.join(format!("{name}.wasm"));
        std::fs::copy(path, &dest).unwrap();
        writeln!(table, "    ({name:?}, include_bytes!({:?}) as &[u8]),", dest.display().to_string()).unwrap();
    }
    table.push(']');
    std::fs::write(out.join("bundled.rs"), table).unwrap();
}
