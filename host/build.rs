// Builds the bundled policy components so that `include_bytes!` can embed the default one and
// `cargo build` on a fresh clone needs no separate step.
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
    for path in written {
        std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
    }
}
