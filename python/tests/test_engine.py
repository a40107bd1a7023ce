"""The engine wrapper: loading, refusing wrong files, typed errors, the sandbox."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from aci_cache.engine import (
    ConfigError,
    Engine,
    EngineFault,
    PolicyLoadError,
    Snapshot,
    packaged_policies,
    policy_path,
)

REPO = Path(__file__).resolve().parents[2]
TEST_POLICY_DIR = Path(os.environ.get("ACI_POLICY_DIR") or REPO / "target" / "policies")


def _fixture_policy(name: str) -> Path:
    p = TEST_POLICY_DIR / f"{name}.wasm"
    if not p.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"test policy {p} missing (build it with: cargo xtask policies)")
        pytest.skip(f"test policy {p} missing (build it with: cargo xtask policies)")
    return p


def test_packaged_policies_present():
    assert {"adaptive", "fixed"} <= set(packaged_policies())
    assert Engine().describe().name == "adaptive"
    assert Engine("fixed").describe().name == "fixed"


def test_load_from_path_and_bytes():
    p = policy_path("adaptive")
    a = Engine(p)
    b = Engine(p.read_bytes())
    assert a.describe() == b.describe()
    assert a.default_config() == b.default_config()
    # fresh instance each time: state is not shared
    a.record_remote_writes(1000, 0)
    assert a.current_strategy(0) == "eager"
    assert b.current_strategy(0) == "ttl"


def test_not_wasm(tmp_path):
    f = tmp_path / "x.wasm"
    f.write_text("(module)")  # WAT text: wasmtime would compile it; we refuse it
    with pytest.raises(PolicyLoadError, match="not a WebAssembly file"):
        Engine(f)
    with pytest.raises(PolicyLoadError, match="not a WebAssembly file"):
        Engine(b"hello world")
    with pytest.raises(PolicyLoadError, match="cannot read"):
        Engine(tmp_path / "missing.wasm")


def test_core_module_refused():
    with pytest.raises(PolicyLoadError, match="core WebAssembly module, not a component"):
        Engine(wasmtime.wat2wasm("(module)"))


def test_truncated_component_refused():
    data = policy_path("adaptive").read_bytes()[:200]
    with pytest.raises(PolicyLoadError, match="invalid component"):
        Engine(data)


def test_other_interface_refused():
    empty = wasmtime.wat2wasm("(component)")
    with pytest.raises(PolicyLoadError, match="does not export aci:cache/policy@0.1.0"):
        Engine(empty)
    other = wasmtime.wat2wasm(
        """(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (instance $x (export "f" (func $f)))
             (export "other:thing/api@1.0.0" (instance $x)))"""
    )
    with pytest.raises(PolicyLoadError, match="exports \\['other:thing/api@1.0.0'\\]"):
        Engine(other)


def test_component_with_imports_refused():
    imp = wasmtime.wat2wasm('(component (import "host" (func)))')
    with pytest.raises(PolicyLoadError, match="must import nothing"):
        Engine(imp)


def test_unknown_packaged_name():
    with pytest.raises(PolicyLoadError, match="not shipped"):
        Engine("nosuchpolicy")


def test_configure_errors_are_typed():
    e = Engine()
    with pytest.raises(ConfigError) as ei:
        e.configure({"low-threshold": 60.0}, 0)  # partial config: the rest from defaults
    assert ei.value.field == "low-threshold"
    assert "must be less than high-threshold" in ei.value.message
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ConfigError) as ei:
        e.configure({"window-ms": 0}, 0)
    assert ei.value.field == "window-ms"
    with pytest.raises(ConfigError) as ei:
        e.configure({"window-ms": 1 << 40}, 0)
    assert ei.value.field == "window-ms"
    with pytest.raises(ConfigError) as ei:
        e.configure({"initial-strategy": "sometimes"}, 0)
    assert ei.value.field == "initial-strategy"
    with pytest.raises(TypeError, match="unknown config fields"):
        e.configure({"low_threshold": 1.0}, 0)
    e.configure({"initial-strategy": "batched"}, 0)
    assert e.current_strategy(0) == "batched"


def test_argument_checks():
    e = Engine()
    with pytest.raises(TypeError):
        e.status(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        e.status(-1)
    with pytest.raises(ValueError):
        e.record_remote_writes(-1, 0)
    with pytest.raises(ValueError):
        e.follow("fast", 0)


def test_status_and_batches():
    e = Engine("fixed")
    e.configure({"initial-strategy": "batched", "batch-interval-ms": 100}, 0)
    assert e.record_writes(["a", "b", "a"], 10) == "batched"
    s = e.status(10)
    assert isinstance(s, Snapshot) and s.buffered_keys == 2 and not s.batch_due
    assert e.pending_batch(50).keys == []
    b = e.pending_batch(110)
    assert b.keys == ["a", "b"] and b.flush_all is False
    assert e.write_rate(110) > 0


def test_thread_safety():
    e = Engine()
    errors = []

    def worker(n):
        try:
            for i in range(200):
                e.record_write(f"k{n}:{i}", i)
                e.status(i)
        except Exception as x:  # pragma: no cover
            errors.append(x)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_trap_on_load():
    with pytest.raises(PolicyLoadError, match="instantiation failed"):
        Engine(_fixture_policy("trap-on-load"))


@pytest.mark.parametrize("key", ["hostile:loop", "hostile:trap", "hostile:grow"])
def test_hostile_policy_faults_and_dies(key):
    e = Engine(_fixture_policy("hostile"))
    t = time.monotonic()
    with pytest.raises(EngineFault):
        for i in range(100):  # grow leaks 4 MiB per write: the 64 MiB cap stops it
            e.record_write(key, i)
    assert time.monotonic() - t < 10
    assert e.dead
    with pytest.raises(EngineFault, match="dead"):
        e.status(0)


def test_hostile_huge_batch_is_returned():
    # The wrapper returns what the policy gives; the cache refuses oversized batches (flush).
    e = Engine(_fixture_policy("hostile"))
    e.configure({"initial-strategy": "batched"}, 0)
    e.record_write("hostile:huge", 1)
    # 200,000 keys cost more than a call's fuel (20,000,000, as in every host): a fault
    with pytest.raises(EngineFault):
        e.pending_batch(10_000)
    assert e.dead


def test_policies_load_under_an_address_space_limit(tmp_path):
    """Issue 8 item 4: each instance reserves address space in proportion to its 32 MiB cap (not
    wasmtime's 4 GiB + guard default), so a process limited to 1 GiB loads several, and a cache
    runs (before: PolicyLoadError, mmap failed to reserve)."""
    import shutil
    import subprocess
    import sys

    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit not installed")
    code = (
        "from aci_cache.engine import Engine, DEFAULT_MEMORY_BYTES\n"
        "es = [Engine(n) for n in ('adaptive', 'fixed', 'adaptive', 'fixed')]\n"
        "es[0].record_remote_writes(1000, 0)\n"
        "assert es[0].current_strategy(0) == 'eager'\n"
        "print('ok', DEFAULT_MEMORY_BYTES)\n"
    )
    p = subprocess.run([prlimit, f"--as={1 << 30}", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["ok", str(32 << 20)]


def test_sandbox_bounds_are_the_specs():
    from aci_cache import engine

    assert engine.DEFAULT_FUEL == 20_000_000 and engine.DEFAULT_MEMORY_BYTES == 32 << 20
