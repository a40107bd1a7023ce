"""Build hook: the bundled policy components go into every wheel and install.

The list is ../guest/policies.txt (one name per line, # comments), the one list every build
reads; the files are ../target/policies/<name>.wasm (built by `cargo xtask policies`) or, when the
source tree has no target/ (an sdist), the copies already in src/aci_cache/policies/. A build
without them fails with the command that makes them, rather than shipping a package that cannot
load a policy.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEST = os.path.join(HERE, "src", "aci_cache", "policies")


def bundled() -> list:
    listing = os.path.join(ROOT, "guest", "policies.txt")
    if not os.path.isfile(listing):  # an sdist: ship what it carries
        return sorted(f[:-5] for f in os.listdir(DEST) if f.endswith(".wasm")) if os.path.isdir(DEST) else []
    names = []
    with open(listing, encoding="utf-8") as f:
        for line in f:
            name = line.split("#", 1)[0].strip()
            if name:
                names.append(name)
    return names


class BuildPy(build_py):
    def run(self) -> None:
        names = bundled()
        src = os.environ.get("ACI_POLICY_SRC") or os.path.join(ROOT, "target", "policies")
        os.makedirs(DEST, exist_ok=True)
        missing = []
        for name in names:
            built = os.path.join(src, f"{name}.wasm")
            here = os.path.join(DEST, f"{name}.wasm")
            if os.path.isfile(built):
                shutil.copyfile(built, here)
            elif not os.path.isfile(here):
                missing.append(name)
        if not names or missing:
            raise SystemExit(f"aci-cache: policy components missing: {missing or 'none listed'} "
                             f"(build them first: cd {ROOT} && cargo xtask policies)")
        super().run()


setup(cmdclass={"build_py": BuildPy})
