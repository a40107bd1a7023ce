package policy

import (
	"errors"
	"fmt"
)

// This file makes a policy's core module stoppable without wazero's per-call machinery.
//
// wazero stops a guest at a deadline only with WithCloseOnContextDone, which starts a
// goroutine per call and leaves compiled code for Go at every loop iteration: 18x the cost of
// a call (README). Instead, the module gets two more globals, a budget and a stop flag
// (exported as stopGlobalName), and every loop head and function entry gets
//
//	global.get $budget  i32.eqz
//	if
//	  (global.set $budget (i32.const budgetIterations))
//	  (drop (memory.grow (i32.const 0)))
//	  global.get $stop  if  unreachable  end
//	end
//	(global.set $budget (i32.sub (global.get $budget) (i32.const 1)))
//
// that is, a decrement and a branch per iteration, and every budgetIterations iterations a
// memory.grow of 0 pages, which wazero runs in Go: that is where the goroutine can be
// preempted (Go cannot stop it inside compiled wasm, so without such exits a looping guest
// would also hold up every stop-the-world of the garbage collector), and where the stop flag
// is read. A single watchdog goroutine per Module sets the flag of an engine whose call has
// run past its deadline. Every way a guest can run for long passes a loop head or a function
// entry. Anything this rewriter does not know (imports, SIMD, atomics, exception handling, a
// module without memory) makes it refuse, and the Module falls back to wazero's deadline.

// budgetIterations is how many loop iterations or calls the guest runs between exits to Go:
// some tens of microseconds of guest work, so a stop or a stop-the-world waits that long.
const budgetIterations = 1 << 14

const stopGlobalName = "aci_watchdog_stop"

var errUninstrumentable = errors.New("cannot instrument")

type wasmReader struct {
	b   []byte
	pos int
}

func (r *wasmReader) byte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, fmt.Errorf("%w: unexpected end at %d", errUninstrumentable, r.pos)
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

// leb skips (and returns, if it fits) one LEB128 number, signed or not, of at most 10 bytes.
func (r *wasmReader) leb() (uint64, error) {
	var v uint64
	for i := 0; i < 10; i++ {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if i < 9 {
			v |= uint64(c&0x7f) << (7 * i)
		}
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: LEB128 too long at %d", errUninstrumentable, r.pos)
}

func (r *wasmReader) skip(n int) error {
	if r.pos+n > len(r.b) {
		return fmt.Errorf("%w: unexpected end at %d", errUninstrumentable, r.pos)
	}
	r.pos += n
	return nil
}

// appendSLEB appends a non-negative v as a signed LEB128 (the sign bit of the last byte clear).
func appendSLEB(b []byte, v uint64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 || c&0x40 != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func appendLEB(b []byte, v uint64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

type section struct {
	id   byte
	body []byte
}

// sectionOrder is the binary format's order of known sections (custom sections anywhere).
var sectionOrder = map[byte]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}

// instrument returns mod with the stop global and its checks added.
func instrument(mod []byte) ([]byte, error) {
	if len(mod) < 8 || string(mod[:4]) != wasmMagic {
		return nil, fmt.Errorf("%w: not a core module", errUninstrumentable)
	}
	r := &wasmReader{b: mod, pos: 8}
	var secs []section
	for r.pos < len(mod) {
		id, err := r.byte()
		if err != nil {
			return nil, err
		}
		n, err := r.leb()
		if err != nil {
			return nil, err
		}
		start := r.pos
		if err := r.skip(int(n)); err != nil {
			return nil, err
		}
		secs = append(secs, section{id, mod[start:r.pos]})
	}
	var globalCount uint64
	hasGlobal, hasMemory := false, false
	for _, s := range secs {
		switch s.id {
		case 2:
			return nil, fmt.Errorf("%w: the module imports", errUninstrumentable)
		case 5:
			hasMemory = true
		case 6:
			n, err := (&wasmReader{b: s.body}).leb()
			if err != nil {
				return nil, err
			}
			globalCount, hasGlobal = n, true
		}
	}
	if !hasMemory {
		return nil, fmt.Errorf("%w: the module has no memory", errUninstrumentable)
	}
	budget, stop := globalCount, globalCount+1
	check := appendLEB([]byte{0x23}, budget)
	check = append(check, 0x45, 0x04, 0x40, 0x41)
	check = appendSLEB(check, budgetIterations)
	check = appendLEB(append(check, 0x24), budget)
	check = append(check, 0x41, 0x00, 0x40, 0x00, 0x1a)
	check = appendLEB(append(check, 0x23), stop)
	check = append(check, 0x04, 0x40, 0x00, 0x0b, 0x0b)
	check = appendLEB(append(check, 0x23), budget)
	check = append(check, 0x41, 0x01, 0x6b, 0x24)
	check = appendLEB(check, budget)

	out := append([]byte(nil), mod[:8]...)
	emit := func(id byte, body []byte) {
		out = append(out, id)
		out = appendLEB(out, uint64(len(body)))
		out = append(out, body...)
	}
	// (mut i32) (i32.const budgetIterations), then (mut i32) (i32.const 0)
	newGlobals := append(appendSLEB([]byte{0x7f, 0x01, 0x41}, budgetIterations), 0x0b, 0x7f, 0x01, 0x41, 0x00, 0x0b)
	inserted := false
	for _, s := range secs {
		if !hasGlobal && !inserted && s.id != 0 && sectionOrder[s.id] > sectionOrder[6] {
			emit(6, append(appendLEB(nil, 2), newGlobals...))
			inserted = true
		}
		switch s.id {
		case 6:
			rr := &wasmReader{b: s.body}
			n, _ := rr.leb()
			body := appendLEB(nil, n+2)
			body = append(body, s.body[rr.pos:]...)
			emit(6, append(body, newGlobals...))
		case 7:
			rr := &wasmReader{b: s.body}
			n, err := rr.leb()
			if err != nil {
				return nil, err
			}
			body := appendLEB(nil, n+1)
			body = append(body, s.body[rr.pos:]...)
			body = appendLEB(body, uint64(len(stopGlobalName)))
			body = append(body, stopGlobalName...)
			body = append(body, 0x03)
			emit(7, appendLEB(body, stop))
		case 10:
			code, err := instrumentCode(s.body, check)
			if err != nil {
				return nil, err
			}
			emit(10, code)
		default:
			emit(s.id, s.body)
		}
	}
	return out, nil
}

func instrumentCode(sec []byte, check []byte) ([]byte, error) {
	r := &wasmReader{b: sec}
	n, err := r.leb()
	if err != nil {
		return nil, err
	}
	out := appendLEB(nil, n)
	for range n {
		size, err := r.leb()
		if err != nil {
			return nil, err
		}
		start := r.pos
		if err := r.skip(int(size)); err != nil {
			return nil, err
		}
		body, err := instrumentBody(sec[start:r.pos], check)
		if err != nil {
			return nil, err
		}
		out = appendLEB(out, uint64(len(body)))
		out = append(out, body...)
	}
	return out, nil
}

func instrumentBody(fn []byte, check []byte) ([]byte, error) {
	r := &wasmReader{b: fn}
	groups, err := r.leb()
	if err != nil {
		return nil, err
	}
	for range groups {
		if _, err := r.leb(); err != nil {
			return nil, err
		}
		if _, err := r.leb(); err != nil { // a value type (one byte, or a typed reference)
			return nil, err
		}
	}
	out := make([]byte, 0, len(fn)+len(check)*4)
	out = append(out, fn[:r.pos]...)
	out = append(out, check...)
	last := r.pos
	for r.pos < len(fn) {
		op, _ := r.byte()
		isLoop := op == 0x03
		if err := skipImmediates(r, op); err != nil {
			return nil, err
		}
		if isLoop {
			out = append(out, fn[last:r.pos]...)
			out = append(out, check...)
			last = r.pos
		}
	}
	return append(out, fn[last:]...), nil
}

func skipImmediates(r *wasmReader, op byte) error {
	lebs := func(n int) error {
		for range n {
			if _, err := r.leb(); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case op == 0x00, op == 0x01, op == 0x05, op == 0x0b, op == 0x0f, op == 0x1a, op == 0x1b, op == 0xd1:
		return nil
	case op >= 0x02 && op <= 0x04: // block, loop, if: a block type (0x40, a value type, or s33)
		return lebs(1)
	case op == 0x0c, op == 0x0d, op == 0x10, op == 0x12, op == 0x14, op == 0x15, op == 0xd2:
		return lebs(1)
	case op == 0x11, op == 0x13: // call_indirect: type, table
		return lebs(2)
	case op == 0x0e: // br_table
		n, err := r.leb()
		if err != nil {
			return err
		}
		return lebs(int(n) + 1)
	case op == 0x1c: // select t*
		n, err := r.leb()
		if err != nil {
			return err
		}
		return lebs(int(n))
	case op >= 0x20 && op <= 0x26:
		return lebs(1)
	case op >= 0x28 && op <= 0x3e: // memarg: align (bit 6: a memory index follows), offset
		align, err := r.leb()
		if err != nil {
			return err
		}
		if align&0x40 != 0 {
			if err := lebs(1); err != nil {
				return err
			}
		}
		return lebs(1)
	case op == 0x3f, op == 0x40, op == 0x41, op == 0x42, op == 0xd0:
		return lebs(1)
	case op == 0x43:
		return r.skip(4)
	case op == 0x44:
		return r.skip(8)
	case op >= 0x45 && op <= 0xc4:
		return nil
	case op == 0xfc:
		sub, err := r.leb()
		if err != nil {
			return err
		}
		switch {
		case sub <= 7:
			return nil
		case sub == 8, sub == 10, sub == 12, sub == 14:
			return lebs(2)
		case sub == 9, sub == 11, sub == 13, sub == 15, sub == 16, sub == 17:
			return lebs(1)
		}
		return fmt.Errorf("%w: opcode 0xfc %d", errUninstrumentable, sub)
	}
	return fmt.Errorf("%w: opcode %#x at %d", errUninstrumentable, op, r.pos-1)
}
