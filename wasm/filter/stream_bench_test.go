package filter

import (
	"strconv"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/wasm/filterconfig"
)

// countingHost is a Host that serves fixed headers and body and only
// counts the edits, so that a benchmark measures the filter's own work.
type countingHost struct {
	headers [][2]string
	body    []byte
	sets    int
}

func (h *countingHost) RequestHeaders() ([][2]string, error)  { return h.headers, nil }
func (h *countingHost) SetRequestHeader(string, string) error { h.sets++; return nil }
func (h *countingHost) RemoveRequestHeader(string) error      { h.sets++; return nil }
func (h *countingHost) RequestBody(size int) ([]byte, error)  { return h.body[:size], nil }
func (h *countingHost) SendLocalResponse(int, [][2]string, []byte) error {
	panic("the benchmark's request must be routed")
}
func (h *countingHost) Warn(string) {}

// BenchmarkStreamRoutesAChatRequest is the filter's work for one
// body-routed chat request as Envoy presents it (headers as curl and the
// OpenAI clients send them, a small JSON body naming the model and the
// user), without the host calls' own cost.
func BenchmarkStreamRoutesAChatRequest(b *testing.B) {
	benchStream(b, filterconfig.Config{HashKey: string(testKey), ForceKeys: []string{filterconfig.ForceKeyDigest("op-key")}, Models: []string{"m1"}})
}

// BenchmarkStreamRoutesAChatRequestWithCohorts is the same request when
// its model has cohorts of 10000 members (the most a model may have) and
// the user is in none: the cost of looking the request up.
func BenchmarkStreamRoutesAChatRequestWithCohorts(b *testing.B) {
	var optIn, excluded filterconfig.Members
	for i := range filterconfig.MaxCohortMembers / 2 {
		optIn.Identities = append(optIn.Identities, "beta-"+strconv.Itoa(i))
		excluded.Identities = append(excluded.Identities, "vip-"+strconv.Itoa(i))
	}
	benchStream(b, filterconfig.Config{HashKey: string(testKey), ForceKeys: []string{filterconfig.ForceKeyDigest("op-key")}, Models: []string{"m1"},
		Cohorts: []filterconfig.ModelCohorts{{Model: "m1", OptIn: optIn, Excluded: excluded}}, TenantHeader: "x-tenant-id"})
}

func benchStream(b *testing.B, cfg filterconfig.Config) {
	p, err := NewPlugin(cfg)
	if err != nil {
		b.Fatal(err)
	}
	h := chatHost()
	b.ReportAllocs()
	for b.Loop() {
		s := p.NewStream(h)
		if s.OnRequestHeaders(false) != Pause || s.OnRequestBody(len(h.body), true) != Continue {
			b.Fatal("request not routed")
		}
	}
}

// chatHost serves a chat request's headers as curl and the OpenAI clients
// send them and a small JSON body naming the model and the user.
func chatHost() *countingHost {
	body := []byte(`{"model":"m1","messages":[{"role":"user","content":"Say hello in five words."}],"stream":true,"max_tokens":16,"user":"user-1234"}`)
	return &countingHost{headers: [][2]string{
		{":authority", "127.0.0.1:10000"}, {":path", "/v1/chat/completions"}, {":method", "POST"}, {":scheme", "http"},
		{"user-agent", "OpenAI/Python 1.50.0"}, {"accept", "application/json"}, {"content-type", "application/json"},
		{"content-length", "120"}, {"authorization", "Bearer sk-0123456789abcdef0123456789abcdef"},
		{wire.HeaderUserID, "user-1234"}, {"x-forwarded-proto", "http"}, {wire.HeaderRequestID, "3f0c2a9e-8b1d-4c55-9a4e-1b2c3d4e5f60"},
	}, body: body}
}

// TestRoutingARequestAllocatesNothingInAReusedStream: the wasm module
// reuses a deleted stream's memory for the next one, so the filter's own
// work for a routed chat request must allocate nothing (an allocation
// costs about half a microsecond in the VM).
func TestRoutingARequestAllocatesNothingInAReusedStream(t *testing.T) {
	p, err := NewPlugin(filterconfig.Config{HashKey: string(testKey), ForceKeys: []string{filterconfig.ForceKeyDigest("op-key")}, Models: []string{"m1"}})
	if err != nil {
		t.Fatal(err)
	}
	h := chatHost()
	var s Stream
	if n := testing.AllocsPerRun(100, func() {
		s.Reset(p, h)
		if s.OnRequestHeaders(false) != Pause || s.OnRequestBody(len(h.body), true) != Continue {
			t.Fatal("request not routed")
		}
	}); n != 0 {
		t.Errorf("%v allocations per routed request, want 0", n)
	}
}
