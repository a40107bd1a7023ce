package policy

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/tetratelabs/wazero/api"
)

// This file is the canonical ABI for exactly the types of aci:cache/policy@0.1.0, written out
// by hand because no Go runtime for components exists. Layouts follow the canonical ABI's
// size/alignment rules; each is spelled out where it is read so that it can be checked
// against the WIT.

const interfaceName = "aci:cache/policy@0.1.0"

type fnIndex int

// The interface's functions, in WIT order.
const (
	fnDescribe fnIndex = iota
	fnDefaultConfig
	fnConfigure
	fnRecordWrite
	fnRecordWrites
	fnRecordRemoteWrites
	fnCurrentStrategy
	fnWriteRate
	fnPendingBatch
	fnStatus
	fnFollow
	fnLead
	numFuncs
)

var (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
	f64 = api.ValueTypeF64
)

// coreFunc is one interface function as the core module exports it: the WIT signature
// flattened by the canonical ABI. Parameters flatten in full (at most 9 here, under the limit
// of 16); a result that flattens to more than one value is returned as an i32 pointer to a
// return area in linear memory instead.
type coreFunc struct {
	name            string
	params, results []api.ValueType
}

var coreFuncs = [numFuncs]coreFunc{
	// describe: func() -> policy-info; two strings flatten to 4 values: return area.
	fnDescribe: {"describe", nil, []api.ValueType{i32}},
	// default-config: func() -> config; 8 flat values: return area.
	fnDefaultConfig: {"default-config", nil, []api.ValueType{i32}},
	// configure: func(cfg: config, now-ms: u64) -> result<_, config-error>; the record
	// flattens to f64 f64 s32*5 enum, then the u64; the result (discriminant + 2 strings)
	// goes through a return area.
	fnConfigure: {"configure", []api.ValueType{f64, f64, i32, i32, i32, i32, i32, i32, i64}, []api.ValueType{i32}},
	// record-write: func(key: string, now-ms: u64) -> strategy
	fnRecordWrite: {"record-write", []api.ValueType{i32, i32, i64}, []api.ValueType{i32}},
	// record-writes: func(keys: list<string>, now-ms: u64) -> strategy
	fnRecordWrites: {"record-writes", []api.ValueType{i32, i32, i64}, []api.ValueType{i32}},
	// record-remote-writes: func(count: u32, now-ms: u64) -> strategy
	fnRecordRemoteWrites: {"record-remote-writes", []api.ValueType{i32, i64}, []api.ValueType{i32}},
	// current-strategy: func(now-ms: u64) -> strategy
	fnCurrentStrategy: {"current-strategy", []api.ValueType{i64}, []api.ValueType{i32}},
	// write-rate: func(now-ms: u64) -> f64
	fnWriteRate: {"write-rate", []api.ValueType{i64}, []api.ValueType{f64}},
	// pending-batch: func(now-ms: u64) -> batch; list + bool = 3 flat values: return area.
	fnPendingBatch: {"pending-batch", []api.ValueType{i64}, []api.ValueType{i32}},
	// status: func(now-ms: u64) -> snapshot; 6 flat values: return area.
	fnStatus: {"status", []api.ValueType{i64}, []api.ValueType{i32}},
	// follow: func(strategy: strategy, now-ms: u64)
	fnFollow: {"follow", []api.ValueType{i32, i64}, nil},
	// lead: func(now-ms: u64)
	fnLead: {"lead", []api.ValueType{i64}, nil},
}

// exportName is the core export wit-component lifts as the component's function.
func (f coreFunc) exportName() string { return interfaceName + "#" + f.name }

// postReturnName is the optional export the component calls after the host has lifted the
// results, so that the guest can free what it allocated for them.
func (f coreFunc) postReturnName() string { return "cabi_post_" + f.exportName() }

// Core exports besides the interface's functions that the canonical ABI options use.
const (
	exportMemory  = "memory"
	exportRealloc = "cabi_realloc"
)

var reallocParams = []api.ValueType{i32, i32, i32, i32} // (old-ptr, old-size, align, new-size)

// Sizes and alignments of the records read from return areas.
const (
	// policy-info: name string @0 (ptr u32, len u32), version string @8.
	policyInfoSize, policyInfoAlign = 16, 4
	// config: low f64 @0, high f64 @8, window s32 @16, hold s32 @20, interval s32 @24,
	// max-keys s32 @28, max-bytes s32 @32, initial-strategy u8 @36; 37 rounded up to 8.
	configSize, configAlign = 40, 8
	// result<_, config-error>: discriminant u8 @0; the payload is aligned to its largest
	// member (4): field string @4, message string @12.
	configResultSize, configResultAlign = 20, 4
	// batch: keys list @0 (ptr u32, len u32), flush-all bool @8; 9 rounded up to 4.
	batchSize, batchAlign = 12, 4
	// snapshot: strategy u8 @0, write-rate f64 @8, buffered-keys u32 @16, batch-due bool
	// @20, switches u64 @24, following bool @32; 33 rounded up to 8.
	snapshotSize, snapshotAlign = 40, 8
	// A string, as an element of list<string>: ptr u32, len u32.
	stringSize, stringAlign = 8, 4
)

// region returns size bytes of linear memory m at ptr, trapping (as an error) where the
// canonical ABI traps: on a misaligned pointer or a range outside memory. The guest is not
// trusted to hand back sane pointers; a bad one must not panic the host.
func region(m []byte, ptr, size, align uint32) ([]byte, error) {
	if ptr%align != 0 {
		return nil, fmt.Errorf("pointer %#x is not %d-byte aligned", ptr, align)
	}
	end := uint64(ptr) + uint64(size)
	if end > uint64(len(m)) {
		return nil, fmt.Errorf("%d bytes at %#x are outside linear memory (%d bytes)", size, ptr, len(m))
	}
	return m[ptr:end:end], nil
}

func u32At(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

func u64At(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

func f64At(b []byte, off int) float64 {
	return liftF64(u64At(b, off))
}

// liftF64 passes every float through except NaN, which is made the one canonical NaN: the
// canonical ABI does not promise a NaN's payload across the boundary, so no host should
// depend on it.
func liftF64(bits uint64) float64 {
	f := math.Float64frombits(bits)
	if f != f {
		return math.NaN()
	}
	return f
}

// liftString copies a utf8 string out of linear memory; invalid UTF-8 traps in the
// canonical ABI, so it is an error here.
func liftString(m []byte, ptr, n uint32) (string, error) {
	b, err := region(m, ptr, n, 1)
	if err != nil {
		return "", fmt.Errorf("string: %w", err)
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("string at %#x is not valid UTF-8", ptr)
	}
	return string(b), nil
}

// liftStringAt lifts the (ptr, len) pair stored at off in b.
func liftStringAt(m, b []byte, off int) (string, error) {
	return liftString(m, u32At(b, off), u32At(b, off+4))
}

// liftStrings copies a list<string> out of linear memory.
func liftStrings(m []byte, ptr, n uint32) ([]string, error) {
	if n == 0 {
		return nil, nil
	}
	if uint64(n)*stringSize > math.MaxUint32 {
		return nil, fmt.Errorf("list<string> of %d elements exceeds 32-bit memory", n)
	}
	elems, err := region(m, ptr, n*stringSize, stringAlign)
	if err != nil {
		return nil, fmt.Errorf("list<string>: %w", err)
	}
	out := make([]string, n)
	for i := range out {
		if out[i], err = liftStringAt(m, elems, i*stringSize); err != nil {
			return nil, fmt.Errorf("list<string>[%d]: %w", i, err)
		}
	}
	return out, nil
}

// liftStrategy checks an enum discriminant: a value outside the cases traps.
func liftStrategy(v uint32) (Strategy, error) {
	if v >= uint32(len(strategyNames)) {
		return 0, fmt.Errorf("strategy discriminant %d out of range", v)
	}
	return Strategy(v), nil
}

// liftBool follows the canonical ABI: any non-zero byte is true.
func liftBool(b byte) bool { return b != 0 }

// validUTF8 returns s unchanged when it is valid UTF-8, which a WIT string must be, and
// otherwise replaces each invalid byte with U+FFFD, as encoding/json does when the host
// publishes the same key on the wire, so that a key gets the same name either way.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	out := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, s[i:i+size]...)
		}
		i += size
	}
	return string(out)
}
