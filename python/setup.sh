#!/usr/bin/env bash
# Sets up the Python host: a venv at python/.venv with aci-cache installed (editable, with the
# test extra) and the policy components copied into the package. Idempotent; needs only python3
# (>= 3.10) and pip, plus the policies listed in guest/policies.txt, built in target/policies (with
# `cargo xtask policies` when cargo is there and they are missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
py="${PYTHON:-python3}"
src="${ACI_POLICY_SRC:-$root/target/policies}"
dest="$here/src/aci_cache/policies"

"$py" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"aci-cache needs Python >= 3.10, found {sys.version.split()[0]}")
PY

# The bundled policies: guest/policies.txt, one name per line (# comments), the one list every
# build and setup script reads.
mapfile -t policies < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$root/guest/policies.txt" | grep -v '^$')
[ "${#policies[@]}" -gt 0 ] || { echo "setup.sh: no policy listed in guest/policies.txt" >&2; exit 1; }
missing=0
for name in "${policies[@]}"; do [ -f "$src/$name.wasm" ] || missing=1; done
if [ "$missing" = 1 ]; then
    if command -v cargo >/dev/null 2>&1 && [ -z "${ACI_POLICY_SRC:-}" ]; then
        echo "setup.sh: building the policy components (cargo xtask policies)"
        (cd "$root" && cargo xtask policies)
    else
        echo "setup.sh: policy components missing in $src (build them with: cargo xtask policies)" >&2
        exit 1
    fi
fi
mkdir -p "$dest"
# Ship the listed policies only (hostile/trap-on-load are test fixtures read from $src), and
# nothing left over from an older list.
for f in "$dest"/*.wasm; do
    [ -e "$f" ] || continue
    keep=0
    for name in "${policies[@]}"; do [ "$(basename "$f")" = "$name.wasm" ] && keep=1; done
    [ "$keep" = 1 ] || rm -f "$f"
done
for name in "${policies[@]}"; do
    if ! cmp -s "$src/$name.wasm" "$dest/$name.wasm" 2>/dev/null; then
        cp "$src/$name.wasm" "$dest/$name.wasm"
    fi
done

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    if ! "$py" -m venv "$venv" 2>/dev/null; then
        # Debian/Ubuntu without python3-venv: ensurepip is missing; fall back to virtualenv.
        rm -rf "$venv"
        "$py" -m pip install --user --quiet virtualenv 2>/dev/null \
            || "$py" -m pip install --user --quiet --break-system-packages virtualenv
        "$py" -m virtualenv --quiet "$venv"
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[test]"
"$venv/bin/python" - <<'PY'
from importlib.metadata import version
import aci_cache
from aci_cache.engine import packaged_policies
print(f"setup.sh: aci-cache {aci_cache.__version__}, wasmtime {version('wasmtime')}, redis {version('redis')}, "
      f"policies {', '.join(packaged_policies())}")
PY
