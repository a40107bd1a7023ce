//! The figures of `aci bench workload --svg/--html` and `aci simulate --svg` open in a browser:
//! headless Chromium (Debian's `chromium`, installed by scripts/setup.sh) renders each file to
//! a PNG, which must be a real image with the plot's colours in it, not a blank page.
//!
//! Without chromium the test fails under CI (setup installs it) and is skipped with a message
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn aci() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aci"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("aci-plots-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn chromium() -> Option<PathBuf> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh").arg("-c").arg(format!("command -v {c}")).output() {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
    }
    None
}

/// Renders `file` to `png` with a fresh profile and no network.
fn screenshot(browser: &Path, file: &Path, png: &Path, size: (u32, u32)) {
    let profile = tmp(&format!("profile-{}", png.file_stem().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(png);
    let url = format!("file://{}", file.canonicalize().unwrap().display());
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status} rendering {}", file.display());
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium still rendering {} after 60 s", file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
}

/// Decodes the PNG with Python's zlib (no image crate in this workspace) and returns
/// (width, height, distinct colours, share of non-white pixels, has the given colour).
const PNG_STATS: &str = r#"
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, idat, ihdr = 8, b'', None
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR': ihdr = struct.unpack('>IIBBBBB', body)
    if kind == b'IDAT': idat += body
    pos += 12 + n
w, h, depth, ctype = ihdr[:4]
assert depth == 8 and ctype in (2, 6), f'unexpected PNG format {depth} {ctype}'
bpp = 3 if ctype == 2 else 4
raw, stride = zlib.decompress(idat), w * bpp
prev, colours, ink, wanted = bytearray(stride), set(), 0, [tuple(int(c[i:i+2], 16) for i in (0, 2, 4)) for c in sys.argv[2:]]
found = [False] * len(wanted)
for y in range(h):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp):
        px = tuple(line[x:x + 3])
        colours.add(px)
        if px != (255, 255, 255): ink += 1
        for k, t in enumerate(wanted):
            if all(abs(px[j] - t[j]) <= 8 for j in range(3)): found[k] = True
    prev = line
print(w, h, len(colours), ink / (w * h), ''.join('1' if f else '0' for f in found))
"#;

struct PngStats {
    width: u32,
    height: u32,
    colours: usize,
    ink: f64,
    found: Vec<bool>,
}

fn png_stats(png: &Path, colours: &[&str]) -> PngStats {
    let out = Command::new("python3").arg("-c").arg(PNG_STATS).arg(png).args(colours).output().expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "decoding {}: {}", png.display(), String::from_utf8_lossy(&out.stderr));
    let f: Vec<&str> = text.split_whitespace().collect();
    PngStats {
        width: f[0].parse().unwrap(),
        height: f[1].parse().unwrap(),
        colours: f[2].parse().unwrap(),
        ink: f[3].parse().unwrap(),
        found: f.get(4).map_or(vec![], |s| s.chars().map(|c| c == '1').collect()),
    }
}

// The strategy colours of aci_cache::plot: ttl, batched, eager.
const TTL: &str = "9e9e9e";
const BATCHED: &str = "f0a030";
const EAGER: &str = "d83a3a";

fn check_image(browser: &Path, file: &Path, size: (u32, u32), must_show: &[&str]) {
    let png = file.with_extension(format!("{}.png", file.extension().unwrap().to_string_lossy()));
    screenshot(browser, file, &png, size);
    let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "{}: {len} bytes", png.display());
    let s = png_stats(&png, must_show);
    println!("{}: {}x{} px, {} colours, {:.1}% non-white, {len} bytes", png.display(), s.width, s.height, s.colours, 100.0 * s.ink);
    assert_eq!((s.width, s.height), size);
    assert!(s.colours >= 8, "{}: {} colours: a blank page?", png.display(), s.colours);
    assert!(s.ink > 0.02, "{}: only {:.2}% of the pixels are not white", png.display(), 100.0 * s.ink);
    for (c, f) in must_show.iter().zip(&s.found) {
        assert!(f, "{}: colour #{c} not rendered", png.display());
    }
}

#[test]
fn workload_and_simulate_figures_render_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: scripts/setup.sh installs it (apt-get install chromium)");
        }
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium; scripts/setup.sh does it), and CI is not set");
        return;
    };
    // A short trace through all three tiers, two policies: the figures, not the figures' numbers.
    let trace = tmp("short.trace");
    std::fs::write(&trace, "2/s for 1s\n30/s for 1s\n300/s for 0.5s\n2/s for 0.5s\n").unwrap();
    let (svg, html) = (tmp("workload.svg"), tmp("workload.html"));
    let out = aci()
        .args(["bench", "workload", "--trace"]).arg(&trace)
        .args(["--only", "ttl,eager", "--keys", "100", "--reads-per-sec", "200", "--window-ms", "500", "--hold-ms", "300", "--svg"])
        .arg(&svg).arg("--html").arg(&html)
        .output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "aci bench workload: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("frontier") && stdout.lines().any(|l| l.starts_with("eager ")), "{stdout}");
    let sim_svg = tmp("simulate.svg");
    let ramp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../traces/ramp.trace");
    let out = aci().args(["simulate", "--trace"]).arg(&ramp).arg("--svg").arg(&sim_svg).output().unwrap();
    assert!(out.status.success(), "aci simulate --svg: {}", String::from_utf8_lossy(&out.stderr));

    check_image(&browser, &svg, (760, 900), &[TTL, EAGER]);
    check_image(&browser, &html, (900, 1400), &[TTL, EAGER]);
    check_image(&browser, &sim_svg, (760, 330), &[TTL, BATCHED, EAGER]);
    if std::env::var_os("ACI_KEEP_PLOTS").is_none() {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("aci-plots-{}", std::process::id())));
    }
}
