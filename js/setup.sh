#!/usr/bin/env bash
# Sets up the JavaScript host: js/node_modules exactly as package-lock.json says (`npm ci`, which
# pins jco), then the bundled policy components (guest/policies.txt) transpiled by jco into js/gen/<policy>/ (`npm run build`;
# a policy whose js/gen copy already matches its component is skipped). Idempotent. Needs node
# >= 20 and npm, plus the built policies in target/policies (or $ACI_POLICY_DIR), built here with
# `cargo xtask policies` when cargo is there and they are missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
src="${ACI_POLICY_DIR:-$root/target/policies}"

command -v node >/dev/null 2>&1 || { echo "setup.sh: node not found (need Node.js >= 20)" >&2; exit 1; }
node -e 'const [M] = process.versions.node.split(".").map(Number);
  if (M < 20) { console.error(`setup.sh: need Node.js >= 20, found ${process.version}`); process.exit(1); }'

# The bundled policies: guest/policies.txt, one name per line, # comments.
mapfile -t policies < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$root/guest/policies.txt" | grep -v '^$')
missing=0
# hostile: the test-only policy of the sandbox tests (cargo xtask policies builds it too).
for p in "${policies[@]}" hostile; do [ -f "$src/$p.wasm" ] || missing=1; done
if [ "$missing" = 1 ]; then
    if command -v cargo >/dev/null 2>&1 && [ -z "${ACI_POLICY_DIR:-}" ]; then
        echo "setup.sh: building the policy components (cargo xtask policies)"
        (cd "$root" && cargo xtask policies)
    else
        echo "setup.sh: no policy components in $src (build them with: cargo xtask policies)" >&2
        exit 1
    fi
fi

cd "$here"
npm ci --no-audit --no-fund
npm run --silent build
node -e 'import("./src/policy.js").then(async ({ loadPolicy, bundledPolicies }) => {
  for (const name of bundledPolicies()) {
    const p = await loadPolicy(name, { transpile: false });
    const { name: n, version } = p.describe();
    console.log(`setup.sh: ${n} ${version} loads from ${p.source.genDir}`);
  }
})'
