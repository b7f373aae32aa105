//go:build integration

package envoytest

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
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

// noopModule writes a byte-built reference module into dir with write
// (noopwasm.Write: what any wasm filter costs Envoy; noopwasm.WriteHolding:
// what Envoy spends holding a request until its body is in, as any filter
// that routes by the body does) and returns its path.
func noopModule(t testing.TB, write func(dir string) (string, error), dir string) string {
	t.Helper()
	p, err := write(dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHoldingNoopModuleBuffersTheWholeBody checks that the holding
// reference does what the filter does to Envoy: a body within the buffer
// limit reaches the upstream whole, and one beyond it is refused with 413
// (Envoy buffers what a filter holds), while the plain no-op module streams
// the same large body through.
func TestHoldingNoopModuleBuffersTheWholeBody(t *testing.T) {
	e := startEnvoyWith(t, testConfig(), "filtered", "noop", "holdnoop")
	e.writeListeners(t, testConfig()) // the holding listener's buffer limit
	routed := map[string]string{wire.HeaderModel: model, wire.HeaderBucket: "1"}
	small := chatBody(model, "")
	r := do(t, "POST", e.holdURL+"/v1/chat/completions", routed, small)
	if r.status != http.StatusOK || r.echo.BodyLen != len(small) {
		t.Fatalf("small body through the holding module: status %d, upstream got %d of %d bytes", r.status, r.echo.BodyLen, len(small))
	}
	large := strings.Repeat("x", 2*int(testConfig().MaxBodyBytes)+256<<10)
	if r := do(t, "POST", e.holdURL+"/v1/chat/completions", routed, large); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("body over the buffer limit through the holding module: status %d, want 413 (the body was not buffered)", r.status)
	}
	if r := do(t, "POST", e.noopURL+"/v1/chat/completions", routed, large); r.status != http.StatusOK || r.echo.BodyLen != len(large) {
		t.Errorf("the same body through the no-op module: status %d, upstream got %d bytes; want it streamed through", r.status, r.echo.BodyLen)
	}
}
