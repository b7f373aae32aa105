//go:build !wasip1

package filterconfig

import (
	"strings"
	"testing"

	wasmhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestHTTPFilter(t *testing.T) {
	cfg := Config{HashKey: key16, Models: []string{"m1"}, ForceKeys: []string{ForceKeyDigest("k")}}
	f, err := HTTPFilter(cfg, "/opt/llmcanary/filter.wasm")
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != FilterName {
		t.Errorf("name %q, want %q", f.Name, FilterName)
	}
	var w wasmhttpv3.Wasm
	if err := f.GetTypedConfig().UnmarshalTo(&w); err != nil {
		t.Fatalf("typed config is not envoy.extensions.filters.http.wasm.v3.Wasm: %v", err)
	}
	vm := w.GetConfig().GetVmConfig()
	if vm.GetRuntime() != RuntimeV8 || vm.GetCode().GetLocal().GetFilename() != "/opt/llmcanary/filter.wasm" {
		t.Errorf("vm config %v", vm)
	}
	if w.GetConfig().GetFailurePolicy() != wasmv3.FailurePolicy_FAIL_CLOSED || w.GetConfig().GetFailOpen() {
		t.Errorf("filter does not fail closed: %v", w.GetConfig())
	}
	if !w.GetConfig().GetAllowOnHeadersStopIteration().GetValue() {
		t.Error("headers stop-iteration not allowed: the body could never route")
	}
	var s wrapperspb.StringValue
	if err := w.GetConfig().GetConfiguration().UnmarshalTo(&s); err != nil {
		t.Fatalf("configuration is not a StringValue: %v", err)
	}
	back, err := Parse([]byte(s.GetValue()))
	if err != nil {
		t.Fatalf("configuration does not parse back: %v", err)
	}
	if back.HashKey != cfg.HashKey || back.Models[0] != "m1" || back.ForceKeys[0] != cfg.ForceKeys[0] {
		t.Errorf("configuration round trip: %+v", back)
	}
	if strings.Contains(s.GetValue(), `"k"`) {
		t.Error("a clear force key reached the Envoy config")
	}
}

func TestHTTPFilterRejects(t *testing.T) {
	if _, err := HTTPFilter(Config{HashKey: "short"}, "/f.wasm"); err == nil {
		t.Error("accepted an invalid config")
	}
	if _, err := HTTPFilter(Config{HashKey: key16}, ""); err == nil {
		t.Error("accepted an empty module path")
	}
}
