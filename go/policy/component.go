package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Errors from loading a policy. Load wraps them with details, so test with errors.Is.
var (
	// ErrNotWasm: the bytes are not a WebAssembly binary at all.
	ErrNotWasm = errors.New("not a WebAssembly binary")
	// ErrNotComponent: a WebAssembly binary, but not a component (e.g. a plain core module).
	ErrNotComponent = errors.New("not a WebAssembly component")
	// ErrMalformed: a component whose binary encoding is broken (e.g. truncated).
	ErrMalformed = errors.New("malformed WebAssembly component")
	// ErrNotPolicy: a component that does not implement the aci:cache/policy@0.1.0 exports
	// this host lowers and lifts.
	ErrNotPolicy = errors.New("not an " + interfaceName + " policy")
)

const (
	wasmMagic = "\x00asm"
	// The preamble's last four bytes are a 16-bit version and a 16-bit layer. Core modules
	// are layer 0 (version 1); components are layer 1.
	layerCore      = 0
	layerComponent = 1

	// Component-level section ids (component model binary format).
	sectionCoreModule = 1
)

// coreModules returns the core modules embedded at the top level of a component binary.
//
// Only the preamble and the section framing are decoded: a component built by wit-component
// for a world that imports nothing holds the guest's whole code in one core module section,
// and the instances, aliases and canonical function definitions around it restate what the
// canonical ABI already fixes for this interface. Nested components (section 4) are not
// searched: wit-component does not put the main module there.
func coreModules(b []byte) ([][]byte, error) {
	if len(b) < 8 || string(b[:4]) != wasmMagic {
		return nil, ErrNotWasm
	}
	version := binary.LittleEndian.Uint16(b[4:6])
	switch layer := binary.LittleEndian.Uint16(b[6:8]); layer {
	case layerComponent:
	case layerCore:
		return nil, fmt.Errorf("%w: this is a core module (version %d); build the policy into a component "+
			"(wasm-tools component new, or cargo xtask policies)", ErrNotComponent, version)
	default:
		return nil, fmt.Errorf("%w: unknown layer %d (version %d)", ErrNotComponent, layer, version)
	}

	var mods [][]byte
	for rest := b[8:]; len(rest) > 0; {
		id := rest[0]
		size, n, err := readU32(rest[1:])
		if err != nil {
			return nil, fmt.Errorf("%w: section %d size at offset %d: %v", ErrMalformed, id, len(b)-len(rest)+1, err)
		}
		body := rest[1+n:]
		if uint64(size) > uint64(len(body)) {
			return nil, fmt.Errorf("%w: section %d at offset %d claims %d bytes, %d remain",
				ErrMalformed, id, len(b)-len(rest), size, len(body))
		}
		if id == sectionCoreModule {
			mods = append(mods, body[:size])
		}
		rest = body[size:]
	}
	return mods, nil
}

// readU32 decodes an unsigned LEB128 number of at most 32 bits, as the binary format requires
// for sizes, and returns it with the number of bytes it took.
func readU32(b []byte) (uint32, int, error) {
	var v uint64
	for i := 0; i < 5; i++ {
		if i >= len(b) {
			return 0, 0, errors.New("unexpected end of data")
		}
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if v > 0xffff_ffff {
				return 0, 0, errors.New("LEB128 value exceeds 32 bits")
			}
			return uint32(v), i + 1, nil
		}
	}
	return 0, 0, errors.New("LEB128 value longer than 5 bytes")
}
