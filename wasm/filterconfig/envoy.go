//go:build !wasip1

package filterconfig

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names used in the Envoy configuration of the filter.
const (
	// FilterName is the HTTP filter's name in the filter chain.
	FilterName = "envoy.filters.http.wasm"
	// PluginName names the plugin in Envoy's logs and stats.
	PluginName = "llmcanary"
	// VMID is shared by every listener's filter so that one VM per worker
	// serves them all, and a configuration change over xDS reuses the VM
	// and only calls proxy_on_configure again.
	VMID = "llmcanary"
	// RuntimeV8 is the Wasm runtime of Envoy's release builds.
	RuntimeV8 = "envoy.wasm.runtime.v8"
)

// HTTPFilter returns the envoy.filters.http.wasm filter running the module
// at wasmPath (a file on the Envoy host) with cfg as its configuration.
// It must come before the router. The filter fails closed: if the VM
// breaks, requests get 503 rather than unrouted or unlabelled traffic.
// Envoy's headers-stop-iteration is allowed because the filter holds the
// request headers until the body has named the model.
func HTTPFilter(cfg Config, wasmPath string) (*hcmv3.HttpFilter, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("wasm filter config: %w", err)
	}
	if wasmPath == "" {
		return nil, fmt.Errorf("wasm filter: empty module path")
	}
	js, err := cfg.Marshal()
	if err != nil {
		return nil, fmt.Errorf("wasm filter config: %w", err)
	}
	conf, err := anypb.New(wrapperspb.String(string(js)))
	if err != nil {
		return nil, fmt.Errorf("wasm filter config: %w", err)
	}
	w := &wasmhttpv3.Wasm{Config: &wasmv3.PluginConfig{
		Name:   PluginName,
		RootId: PluginName,
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:    VMID,
			Runtime: RuntimeV8,
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{
				Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: wasmPath}},
			}},
		}},
		Configuration:               conf,
		FailurePolicy:               wasmv3.FailurePolicy_FAIL_CLOSED,
		AllowOnHeadersStopIteration: wrapperspb.Bool(true),
	}}
	if err := w.ValidateAll(); err != nil {
		return nil, fmt.Errorf("wasm filter: %w", err)
	}
	typed, err := anypb.New(w)
	if err != nil {
		return nil, fmt.Errorf("wasm filter: %w", err)
	}
	return &hcmv3.HttpFilter{
		Name:       FilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed},
	}, nil
}
