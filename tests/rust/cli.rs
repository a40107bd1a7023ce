//! The `aci` command line, run as a user would: the demo, and the node driver (docs/NODE.md).

#[test]
fn demo_starts_its_own_redis_shows_all_three_strategies_and_exits() {
    // No --redis: the demo starts (and stops) a private redis-server. No terminal: plain lines.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aci"))
        .args(["demo", "--speed", "0.6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("strategies seen: batched, eager, ttl"), "{stdout}\n{stderr}");
    assert!(!stdout.contains('\x1b'), "escape codes without a terminal");
    assert!(stdout.lines().filter(|l| l.starts_with("t=")).count() >= 10, "{stdout}");
}

