//go:build integration

package bench

import (
	"os"
	"testing"

	"github.com/llmcanary/llmcanary/internal/procs"
)

// TestMain removes the binaries the benchmarks built for themselves.
func TestMain(m *testing.M) {
	code := m.Run()
	procs.RemoveBuiltLlmcanaryBinary()
	procs.RemoveBuiltWasmModule()
	os.Exit(code)
}
