package noopwasm

import (
	"bytes"
	"testing"
)

// Envoy loading the module is tested in wasm/envoytest; this checks its
// header and that it exports what Envoy looks up by name.
func TestModuleIsWasmOneExportingTheABIVersionAndTheRequestCallbacks(t *testing.T) {
	for name, m := range map[string][]byte{"Module": Module(), "HoldingModule": HoldingModule()} {
		t.Run(name, func(t *testing.T) { checkModule(t, m) })
	}
}

// TestHoldingModuleAnswersByEndOfStream checks the holding module's two
// request callbacks: "local.get 2; i32.eqz" (pause while end_of_stream is
// 0), where the plain module answers the constant 0 (continue).
func TestHoldingModuleAnswersByEndOfStream(t *testing.T) {
	byEnd := []byte{0x05, 0x00, 0x20, 0x02, 0x45, 0x0b} // size, no locals, local.get 2, i32.eqz, end
	if n := bytes.Count(HoldingModule(), byEnd); n != 2 {
		t.Errorf("holding module has %d functions answering by end of stream, want 2 (headers and body)", n)
	}
	if bytes.Contains(Module(), byEnd) {
		t.Error("the plain no-op module holds requests")
	}
}

func checkModule(t *testing.T, m []byte) {
	if !bytes.HasPrefix(m, []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}) {
		t.Fatalf("module starts % x, want the wasm magic and version 1", m[:min(8, len(m))])
	}
	for _, name := range []string{"memory", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_context_create",
		"proxy_on_request_headers", "proxy_on_request_body", "proxy_on_done", "proxy_on_delete"} {
		if !bytes.Contains(m, append([]byte{byte(len(name))}, name...)) {
			t.Errorf("no export named %s", name)
		}
	}
	if len(m) > 1024 {
		t.Errorf("module is %d bytes; it should need no compiling", len(m))
	}
}
