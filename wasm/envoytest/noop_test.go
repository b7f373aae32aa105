//go:build integration

package envoytest

import (
	"testing"

	"github.com/llmcanary/llmcanary/internal/noopwasm"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// goNoopModule returns wasm/cmd/noop built for wasip1 (procs.GoNoopModule),
// the reference for what the Go runtime and the ABI binding cost apart
// from the filter's logic.
func goNoopModule(t testing.TB) string {
	t.Helper()
	p, err := procs.GoNoopModule()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// noopModule writes the proxy-wasm module that does nothing (noopwasm)
// into dir and returns its path: the benchmarks' reference for what any
// wasm filter costs Envoy.
func noopModule(t testing.TB, dir string) string {
	t.Helper()
	p, err := noopwasm.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
