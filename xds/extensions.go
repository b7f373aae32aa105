package xds

import "errors"

// WasmOptions configure the proxy-wasm filter on the gateway.
type WasmOptions struct {
	// Path of the filter module on the Envoy hosts.
	Path string `json:"path"`
}

// ExtProcOptions configure the ext_proc telemetry filter on the gateway.
type ExtProcOptions struct {
	// Address of the llmcanary extproc gRPC service, host:port.
	Address string `json:"address"`
}

// Extensions builds the gateway's optional filters, wasm first.
func Extensions(w *WasmOptions, e *ExtProcOptions) ([]Extension, error) {
	if w != nil || e != nil {
		return nil, errors.New("extensions: not built yet")
	}
	return nil, nil
}
