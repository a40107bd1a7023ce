package acicache

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/aci-cache/aci-cache/go/policy"
)

// The bundled policies, copied here by go/setup.sh from the list in guest/policies.txt. The
// README keeps the directory (and so the embed pattern) valid before setup has run.
//
//go:embed policies
var bundled embed.FS

// BundledPolicy returns the embedded component of a bundled policy ("adaptive", "fixed").
func BundledPolicy(name string) ([]byte, error) {
	b, err := fs.ReadFile(bundled, "policies/"+name+".wasm")
	if err != nil {
		return nil, fmt.Errorf("acicache: bundled policy %q not embedded (run go/setup.sh, which copies target/policies/*.wasm listed in guest/policies.txt): %w", name, err)
	}
	return b, nil
}

// Compiling a component takes milliseconds; caches in one process share the compiled code
// (each gets its own instance).
var compiled struct {
	sync.Mutex
	byName map[string]*policy.Module
}

func bundledModule(name string) (*policy.Module, error) {
	compiled.Lock()
	defer compiled.Unlock()
	if m := compiled.byName[name]; m != nil {
		return m, nil
	}
	wasm, err := BundledPolicy(name)
	if err != nil {
		return nil, err
	}
	m, err := policy.Compile(wasm)
	if err != nil {
		return nil, err
	}
	if compiled.byName == nil {
		compiled.byName = map[string]*policy.Module{}
	}
	compiled.byName[name] = m
	return m, nil
}

// bundledHashes maps the SHA-256 of each embedded component to its name.
var bundledHashes = sync.OnceValue(func() map[string]string {
	out := map[string]string{}
	entries, _ := fs.ReadDir(bundled, "policies")
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".wasm")
		if !ok {
			continue
		}
		if b, err := fs.ReadFile(bundled, "policies/"+e.Name()); err == nil {
			sum := sha256.Sum256(b)
			out[hex.EncodeToString(sum[:])] = name
		}
	}
	return out
})

// bundledModuleByHash returns the shared compiled module of a bundled policy whose component
// has this SHA-256 (a push of a bundled policy then compiles nothing), or nil.
func bundledModuleByHash(hash string) *policy.Module {
	name, ok := bundledHashes()[hash]
	if !ok {
		return nil
	}
	m, err := bundledModule(name)
	if err != nil {
		return nil
	}
	return m
}
