package policy_test

// A minimal WebAssembly binary writer, enough to build by hand the broken or hostile modules
// and components that the load and failure tests need: no toolchain is needed to make them,
// and each byte is there on purpose.

const (
	tI32 byte = 0x7f
	tI64 byte = 0x7e
	tF64 byte = 0x7c
)

// Instructions used in function bodies.
const (
	opUnreachable byte = 0x00
	opI32Const    byte = 0x41
	opF64Const    byte = 0x44
)

// endlessLoop is a body that never returns: `loop br 0 end` (then `unreachable`, which is
// never reached but gives the body any result type).
var endlessLoop = []byte{0x03, 0x40, 0x0c, 0x00, 0x0b, opUnreachable}

type wasmFunc struct {
	params, results []byte
	body            []byte // instructions, without locals or the final end
}

type wasmExport struct {
	name string
	kind byte   // 0 function, 2 memory
	idx  uint32 // for a function, its index in coreModule.funcs (imports are skipped)
}

type wasmImport struct {
	module, name string
	params       []byte // a function import of type (params) -> ()
}

type wasmData struct {
	offset uint32
	bytes  []byte
}

type coreModule struct {
	imports []wasmImport
	funcs   []wasmFunc
	memory  bool // one page, exported as "memory" by the caller if wanted
	exports []wasmExport
	data    []wasmData
}

func uleb(v uint64) []byte {
	var out []byte
	for {
		b := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}

func sleb(v int64) []byte {
	var out []byte
	for {
		b := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && b&0x40 == 0) || (v == -1 && b&0x40 != 0) {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}

func vec(items ...[]byte) []byte {
	out := uleb(uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func name(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func section(id byte, body []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(body)))...), body...)
}

func i32Const(v int32) []byte { return append([]byte{opI32Const}, sleb(int64(v))...) }

func (m coreModule) bytes() []byte {
	out := []byte("\x00asm\x01\x00\x00\x00")
	var types [][]byte
	funcType := func(params, results []byte) uint32 {
		types = append(types, append(append([]byte{0x60}, vec(bytesOf(params)...)...), vec(bytesOf(results)...)...))
		return uint32(len(types) - 1)
	}
	var imports, funcs, code [][]byte
	for _, im := range m.imports {
		t := funcType(im.params, nil)
		imports = append(imports, append(append(name(im.module), name(im.name)...), append([]byte{0x00}, uleb(uint64(t))...)...))
	}
	for _, f := range m.funcs {
		funcs = append(funcs, uleb(uint64(funcType(f.params, f.results))))
		body := append(append([]byte{0x00}, f.body...), 0x0b) // no locals; end
		code = append(code, append(uleb(uint64(len(body))), body...))
	}
	out = append(out, section(1, vec(types...))...)
	if len(imports) > 0 {
		out = append(out, section(2, vec(imports...))...)
	}
	out = append(out, section(3, vec(funcs...))...)
	if m.memory {
		out = append(out, section(5, vec([]byte{0x00, 0x01}))...) // min 1 page, no max
	}
	var exports [][]byte
	for _, e := range m.exports {
		idx := uint64(e.idx)
		if e.kind == 0 {
			idx += uint64(len(m.imports)) // imported functions come first in the index space
		}
		exports = append(exports, append(append(name(e.name), e.kind), uleb(idx)...))
	}
	out = append(out, section(7, vec(exports...))...)
	out = append(out, section(10, vec(code...))...)
	var data [][]byte
	for _, d := range m.data {
		seg := append([]byte{0x00}, i32Const(int32(d.offset))...)
		seg = append(append(seg, 0x0b), append(uleb(uint64(len(d.bytes))), d.bytes...)...)
		data = append(data, seg)
	}
	if len(data) > 0 {
		out = append(out, section(11, vec(data...))...)
	}
	return out
}

// bytesOf splits a value-type list into one-byte items for vec.
func bytesOf(ts []byte) [][]byte {
	out := make([][]byte, len(ts))
	for i := range ts {
		out[i] = ts[i : i+1]
	}
	return out
}

// component wraps core modules in a component binary: the preamble of layer 1 and one core
// module section (id 1) each. Nothing instantiates or exports them; the host reads only the
// module sections, so that is all a test component needs.
func component(mods ...[]byte) []byte {
	out := []byte("\x00asm\x0d\x00\x01\x00")
	for _, m := range mods {
		out = append(out, section(1, m)...)
	}
	return out
}

// policyShape is the interface's core exports with their canonical-ABI signatures; bodies
// maps an export name to the instructions of its body (default: unreachable).
func policyShape(bodies map[string][]byte) coreModule {
	type sig struct {
		name            string
		params, results []byte
	}
	const iface = "aci:cache/policy@0.1.0#"
	sigs := []sig{
		{"cabi_realloc", []byte{tI32, tI32, tI32, tI32}, []byte{tI32}},
		{iface + "describe", nil, []byte{tI32}},
		{iface + "default-config", nil, []byte{tI32}},
		{iface + "configure", []byte{tF64, tF64, tI32, tI32, tI32, tI32, tI32, tI32, tI64}, []byte{tI32}},
		{iface + "record-write", []byte{tI32, tI32, tI64}, []byte{tI32}},
		{iface + "record-writes", []byte{tI32, tI32, tI64}, []byte{tI32}},
		{iface + "record-remote-writes", []byte{tI32, tI64}, []byte{tI32}},
		{iface + "current-strategy", []byte{tI64}, []byte{tI32}},
		{iface + "write-rate", []byte{tI64}, []byte{tF64}},
		{iface + "pending-batch", []byte{tI64}, []byte{tI32}},
		{iface + "status", []byte{tI64}, []byte{tI32}},
		{iface + "follow", []byte{tI32, tI64}, nil},
		{iface + "lead", []byte{tI64}, nil},
		{"cabi_post_" + iface + "pending-batch", []byte{tI32}, nil},
	}
	m := coreModule{memory: true, exports: []wasmExport{{name: "memory", kind: 2}}}
	for i, s := range sigs {
		body, ok := bodies[s.name]
		if !ok {
			body = []byte{opUnreachable}
		}
		m.funcs = append(m.funcs, wasmFunc{params: s.params, results: s.results, body: body})
		m.exports = append(m.exports, wasmExport{name: s.name, kind: 0, idx: uint32(i)})
	}
	return m
}
