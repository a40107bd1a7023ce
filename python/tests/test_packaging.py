"""Packaging: `pip install ./python` and a wheel built from python/ work in a fresh venv, with the
bundled policies (guest/policies.txt) inside, py.typed, and version metadata.

Slow (two venvs, ~30 s): ACI_SKIP_PACKAGING=1 skips it for quick local runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent

SMOKE = """
import importlib.metadata as md, os, sys, redis
import aci_cache
from aci_cache import AdaptiveCache, CacheStats
from aci_cache.engine import packaged_policies
assert aci_cache.__version__ == md.version("aci-cache"), (aci_cache.__version__, md.version("aci-cache"))
want = sys.argv[2].split(",")
assert packaged_policies() == sorted(want), packaged_policies()
assert os.path.isfile(os.path.join(os.path.dirname(aci_cache.__file__), "py.typed"))
assert not aci_cache.__file__.startswith(sys.argv[3]), aci_cache.__file__  # not the source tree
with AdaptiveCache(redis.Redis.from_url(sys.argv[1]), namespace="pkgsmoke") as c:
    c.set("k", "v")
    assert c.get("k") == b"v" and isinstance(c.stats, CacheStats)
print("ok", aci_cache.__version__)
"""


def _bundled():
    names = []
    for line in (ROOT / "guest" / "policies.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _source_copy(tmp_path: Path) -> Path:
    """python/ as a fresh clone has it, under a private root. A setuptools build writes into the
    tree it builds (build/, *.egg-info, the policy copies in src/aci_cache/policies): two builds
    of the shared checkout at once (two suites, or a suite next to setup.sh) tore each other's
    files and failed with "Failed building wheel". The copy keeps ../guest/policies.txt, and the
    policies come from the real target/policies as in the checkout."""
    root = tmp_path / "tree"
    shutil.copytree(HERE, root / "python", ignore=shutil.ignore_patterns(
        ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    (root / "guest").mkdir()
    shutil.copyfile(ROOT / "guest" / "policies.txt", root / "guest" / "policies.txt")
    return root / "python"


@pytest.mark.skipif(bool(os.environ.get("ACI_SKIP_PACKAGING")), reason="ACI_SKIP_PACKAGING set")
def test_wheel_and_pip_install_in_fresh_venvs(tmp_path, redis_server, monkeypatch):
    names = _bundled()
    if not os.environ.get("ACI_POLICY_SRC") and (ROOT / "target" / "policies").is_dir():
        monkeypatch.setenv("ACI_POLICY_SRC", str(ROOT / "target" / "policies"))
    here = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(here), "-w", str(dist)],
                   check=True, timeout=300, cwd=tmp_path)
    wheel = next(dist.glob("aci_cache-*.whl"))
    listing = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in listing if n.endswith(".wasm")) == sorted(f"aci_cache/policies/{n}.wasm" for n in names)
    assert "aci_cache/py.typed" in listing
    assert not any("hostile" in n or "trap" in n for n in listing)  # test fixtures stay out
    for how, target in (("wheel", str(wheel)), ("dir", str(here))):
        py = _venv(tmp_path / f"venv-{how}")
        subprocess.run([str(py), "-m", "pip", "install", "-q", target], check=True, timeout=600, cwd=tmp_path)
        out = subprocess.run([str(py), "-c", SMOKE, redis_server.url, ",".join(names), str(here / "src")],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert out.returncode == 0, f"{how}: {out.stderr[-2000:]}"
        assert out.stdout.split()[0] == "ok"
