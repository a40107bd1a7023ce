package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// TestBundledPoliciesAreInstrumented: the real policies must take the cheap bound (the
// watchdog over instrumented code), not fall back to wazero's per-call deadline.
func TestBundledPoliciesAreInstrumented(t *testing.T) {
	dir := os.Getenv("ACI_POLICY_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "target", "policies")
	}
	for _, name := range []string{"adaptive", "fixed", "hostile"} {
		wasm, err := os.ReadFile(filepath.Join(dir, name+".wasm"))
		if err != nil {
			t.Fatal(err)
		}
		mods, err := coreModules(wasm)
		if err != nil {
			t.Fatal(err)
		}
		for _, mod := range mods {
			if _, err := instrument(mod); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		m, err := Compile(wasm)
		if err != nil {
			t.Fatal(err)
		}
		if m.watchdog == nil {
			t.Errorf("%s: compiled without the watchdog", name)
		}
		_ = m.Close()
	}
}
