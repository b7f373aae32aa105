package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

var (
	wasmOnce sync.Once
	wasmPath string
	wasmErr  error
)

// WasmModule returns the proxy-wasm filter module: $LLMCANARY_WASM when it
// names a file (make builds bin/llmcanary-filter.wasm and sets it), else a
// module built once per process with upstream Go for wasip1.
func WasmModule() (string, error) {
	wasmOnce.Do(func() {
		if p := os.Getenv("LLMCANARY_WASM"); p != "" {
			if _, err := os.Stat(p); err == nil {
				wasmPath = p
				return
			}
		}
		dir, err := os.MkdirTemp("", "llmcanary-wasm-")
		if err != nil {
			wasmErr = err
			return
		}
		wasmPath = filepath.Join(dir, "llmcanary-filter.wasm")
		cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", wasmPath, "github.com/llmcanary/llmcanary/wasm/cmd/filter")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if out, err := cmd.CombinedOutput(); err != nil {
			wasmErr = fmt.Errorf("build the wasm filter: %v\n%s", err, out)
		}
	})
	return wasmPath, wasmErr
}

// RemoveBuiltWasmModule deletes a module WasmModule built (not one given by
// $LLMCANARY_WASM). Call it from TestMain after the tests.
func RemoveBuiltWasmModule() {
	if wasmPath != "" && os.Getenv("LLMCANARY_WASM") != wasmPath {
		os.RemoveAll(filepath.Dir(wasmPath))
	}
}
