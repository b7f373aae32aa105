// Package noopwasm is a proxy-wasm module that does nothing, written out
// byte by byte: the benchmarks' reference for what any wasm filter costs
// Envoy. It exports the callbacks the llmcanary filter takes on a request
// (headers and body, each answering "continue"), plus what Envoy requires
// to load a module (memory, the ABI version, proxy_on_memory_allocate),
// and no code beyond constants. It is a few hundred bytes, so it also
// shows Envoy's start-up cost for a module that needs no compiling.
// HoldingModule is its variant that holds each request until its body has
// arrived, as a filter that routes by the body must.
package noopwasm

import (
	"os"
	"path/filepath"
)

// Write writes the module to dir/noop.wasm and returns its path.
func Write(dir string) (string, error) {
	p := filepath.Join(dir, "noop.wasm")
	return p, os.WriteFile(p, Module(), 0o644)
}

// WriteHolding writes HoldingModule to dir/holdnoop.wasm and returns its
// path.
func WriteHolding(dir string) (string, error) {
	p := filepath.Join(dir, "holdnoop.wasm")
	return p, os.WriteFile(p, HoldingModule(), 0o644)
}

// Module assembles the no-op module in the WebAssembly binary format
// (core spec 1.0, section 5): a type, function, memory, export and code
// section. Every function body is at most one i32.const (HoldingModule's
// request callbacks: two instructions).
func Module() []byte { return module(false) }

// HoldingModule is Module whose request callbacks hold the request until
// its end: headers and body answer "pause" (stop iteration; the body is
// buffered) until the end of stream, then "continue". It reads nothing, so
// it is the reference for what Envoy itself spends on any filter that
// routes by the body: holding the headers, buffering the body, resuming.
func HoldingModule() []byte { return module(true) }

func module(hold bool) []byte {
	const i32 = 0x7f
	types := [][2][]byte{
		{nil, nil},               // 0: () → ()
		{{i32}, {i32}},           // 1: (i32) → i32
		{{i32, i32}, {i32}},      // 2: (i32, i32) → i32
		{{i32, i32}, nil},        // 3: (i32, i32) → ()
		{{i32, i32, i32}, {i32}}, // 4: (i32, i32, i32) → i32
		{{i32}, nil},             // 5: (i32) → ()
	}
	type fn struct {
		name   string
		typ    byte
		result int32 // returned constant; -1: no result
		// untilEnd: the function returns Pause (1) while its third
		// argument, end_of_stream, is 0, and Continue (0) after.
		untilEnd bool
	}
	fns := []fn{
		{"proxy_abi_version_0_2_1", 0, -1, false},
		{"proxy_on_memory_allocate", 1, 1024, false}, // never used: the module reads nothing
		{"proxy_on_vm_start", 2, 1, false},
		{"proxy_on_configure", 2, 1, false},
		{"proxy_on_context_create", 3, -1, false},
		{"proxy_on_request_headers", 4, 0, hold}, // Continue, or Pause until the end
		{"proxy_on_request_body", 4, 0, hold},    // the same
		{"proxy_on_done", 1, 1, false},
		{"proxy_on_log", 5, -1, false},
		{"proxy_on_delete", 5, -1, false},
	}
	section := func(id byte, content []byte) []byte {
		return append(append([]byte{id}, uleb(uint32(len(content)))...), content...)
	}
	vec := func(items [][]byte) []byte {
		out := uleb(uint32(len(items)))
		for _, it := range items {
			out = append(out, it...)
		}
		return out
	}
	var typeEntries, funcEntries, exportEntries, codeEntries [][]byte
	for _, t := range types {
		e := []byte{0x60}
		e = append(append(e, uleb(uint32(len(t[0])))...), t[0]...)
		e = append(append(e, uleb(uint32(len(t[1])))...), t[1]...)
		typeEntries = append(typeEntries, e)
	}
	exportEntries = append(exportEntries, append(append(uleb(6), "memory"...), 0x02, 0x00))
	for i, f := range fns {
		funcEntries = append(funcEntries, []byte{f.typ})
		exportEntries = append(exportEntries, append(append(uleb(uint32(len(f.name))), f.name...), 0x00, byte(i)))
		body := []byte{0x00} // no locals
		switch {
		case f.untilEnd:
			body = append(body, 0x20, 0x02, 0x45) // local.get 2; i32.eqz
		case f.result >= 0:
			body = append(append(body, 0x41), sleb(f.result)...) // i32.const
		}
		body = append(body, 0x0b) // end
		codeEntries = append(codeEntries, append(uleb(uint32(len(body))), body...))
	}
	m := []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}
	m = append(m, section(1, vec(typeEntries))...)
	m = append(m, section(3, vec(funcEntries))...)
	m = append(m, section(5, vec([][]byte{{0x00, 0x01}}))...) // one memory, min 1 page
	m = append(m, section(7, vec(exportEntries))...)
	m = append(m, section(10, vec(codeEntries))...)
	return m
}

func uleb(v uint32) []byte {
	var out []byte
	for {
		b := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			out = append(out, b|0x80)
			continue
		}
		return append(out, b)
	}
}

func sleb(v int32) []byte {
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
