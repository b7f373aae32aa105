package extproc

import (
	"context"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/metadata"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// playWith sends msgs on a stream opened with the metadata pairs kv and
// returns the record the sink got.
func (h *harness) playWith(t *testing.T, kv []string, msgs ...*extprocv3.ProcessingRequest) Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	stream, err := h.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	return h.received(t, ctx)
}

func TestServerRecordsAMirroredAnswerAsTheShadowVersionsWithItsText(t *testing.T) {
	// Capture is off: a mirrored answer is recorded with its text anyway.
	h := startHarness(t, CaptureOptions{})
	r := h.playWith(t, []string{wire.MetadataShadowModel, "llama", wire.MetadataShadowVersion, "v2"},
		// The copied request says it was forced to stable and the upstream
		// answer names another version: the stream's marker decides.
		reqHeaders(wire.HeaderForce, "v1"),
		reqBody(`{"model":"llama","stream":true,"messages":[{"role":"user","content":"hello"}]}`),
		respHeaders("200", "text/event-stream", false),
		respBody(delta("hi there")+finishStop+"data: [DONE]\n\n", true),
	)
	if !r.Shadow || r.Model != "llama" || r.Version != "v2" || r.Forced || r.RequestID != "req-1" {
		t.Fatalf("shadow %v model %q version %q forced %v request id %q; want a shadow answer of llama v2 for req-1", r.Shadow, r.Model, r.Version, r.Forced, r.RequestID)
	}
	if !r.Captured || r.Prompt != "user: hello\n" || r.Completion != "hi there" {
		t.Fatalf("captured %v prompt %q completion %q", r.Captured, r.Prompt, r.Completion)
	}
}

func TestServerTreatsAStreamWithoutTheShadowMarkerAsUserTraffic(t *testing.T) {
	h := startHarness(t, CaptureOptions{})
	for _, kv := range [][]string{
		{wire.MetadataSampleRate, "1"},
		{wire.MetadataShadowModel, "llama"}, // half a marker is none
	} {
		r := h.playWith(t, kv,
			reqHeaders(),
			respHeaders("200", "text/event-stream", false),
			respBody(delta("a")+finishStop+"data: [DONE]\n\n", true),
		)
		if r.Shadow || r.Captured {
			t.Fatalf("metadata %v: shadow %v captured %v; want a user request's row", kv, r.Shadow, r.Captured)
		}
	}
}
