package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// wasmBuild is a proxy-wasm module built once per process with upstream Go
// for wasip1, unless the environment variable env names a file.
type wasmBuild struct {
	env  string // "" : always build
	pkg  string
	file string

	once  sync.Once
	path  string
	built bool
	err   error
}

var (
	filterBuild = &wasmBuild{env: "LLMCANARY_WASM", pkg: "github.com/llmcanary/llmcanary/wasm/cmd/filter", file: "llmcanary-filter.wasm"}
	goNoopBuild = &wasmBuild{pkg: "github.com/llmcanary/llmcanary/wasm/cmd/noop", file: "noop.wasm"}
)

func (w *wasmBuild) get() (string, error) {
	w.once.Do(func() {
		if p := os.Getenv(w.env); w.env != "" && p != "" {
			if _, err := os.Stat(p); err == nil {
				w.path = p
				return
			}
		}
		dir, err := os.MkdirTemp("", "llmcanary-wasm-")
		if err != nil {
			w.err = err
			return
		}
		w.path, w.built = filepath.Join(dir, w.file), true
		cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", w.path, w.pkg)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if out, err := cmd.CombinedOutput(); err != nil {
			w.err = fmt.Errorf("build %s: %v\n%s", w.pkg, err, out)
		}
	})
	return w.path, w.err
}

func (w *wasmBuild) remove() {
	if w.built {
		os.RemoveAll(filepath.Dir(w.path))
	}
}

// WasmModule returns the proxy-wasm filter module: $LLMCANARY_WASM when it
// names a file (make builds bin/llmcanary-filter.wasm and sets it), else a
// module built once per process with upstream Go for wasip1.
func WasmModule() (string, error) { return filterBuild.get() }

// GoNoopModule returns wasm/cmd/noop built once per process: a module
// built like the filter (upstream Go, the wasm/abi binding) whose streams
// do nothing, the reference for what the Go runtime and the binding cost
// apart from the filter's logic.
func GoNoopModule() (string, error) { return goNoopBuild.get() }

// RemoveBuiltWasmModule deletes the modules WasmModule and GoNoopModule
// built (not one given by $LLMCANARY_WASM). Call it from TestMain after
// the tests.
func RemoveBuiltWasmModule() {
	filterBuild.remove()
	goNoopBuild.remove()
}
