// Command noop is a proxy-wasm module built like the llmcanary filter
// (upstream Go, wasip1 reactor, the wasm/abi binding) whose streams do
// nothing. It is a benchmark reference, never deployed: what the Go runtime
// and the ABI binding cost Envoy per request and at start-up, apart from
// the filter's own work.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o noop.wasm ./wasm/cmd/noop
package main

import "github.com/llmcanary/llmcanary/wasm/abi"

// init runs from _initialize, before the host calls any export.
func init() { abi.SetVMContext(abi.DefaultVMContext{}) }

// main is never called in a reactor; the exports are the entry points.
func main() {}
