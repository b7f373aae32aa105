package extproc

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// memSink collects records for tests.
type memSink struct{ ch chan Record }

func (m *memSink) Write(r Record) {
	select {
	case m.ch <- r:
	default:
	}
}

var _ Sink = (*memSink)(nil)

// tickClock advances by step on every reading, so arrivals are exact.
type tickClock struct {
	mu   sync.Mutex
	base time.Time
	step time.Duration
	n    int
}

func (c *tickClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.base.Add(time.Duration(c.n) * c.step)
}

// clockBase is the harness clock's base, and the request.time Envoy sends
// with every request's headers (reqHeaders).
var clockBase = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	client extprocv3.ExternalProcessorClient
	sink   *memSink
	clock  *tickClock
	reg    *prometheus.Registry
}

func startHarness(t *testing.T, capture CaptureOptions) *harness {
	t.Helper()
	h := &harness{
		sink:  &memSink{ch: make(chan Record, 16)},
		clock: &tickClock{base: clockBase, step: 10 * time.Millisecond},
		reg:   prometheus.NewRegistry(),
	}
	srv, err := NewServer(Options{Sink: h.sink, Registerer: h.reg, Capture: capture, Now: h.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	_, h.client = serve(t, srv)
	return h
}

// serve runs srv on a loopback gRPC server, stopped when the test ends,
// and returns the server and a client of it.
func serve(t *testing.T, srv *Server) (*grpc.Server, extprocv3.ExternalProcessorClient) {
	t.Helper()
	g, addr := serveAt(t, srv)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return g, extprocv3.NewExternalProcessorClient(conn)
}

// serveAt runs srv on a loopback gRPC server, stopped when the test ends,
// and returns the server and its address.
func serveAt(t *testing.T, srv *Server) (*grpc.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(ServerOptions()...)
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return g, lis.Addr().String()
}

// How the simulated Envoy ends a stream after its messages.
type ending int

const (
	endNormally  ending = iota // last message carries end_of_stream; the service closes
	endHalfClose               // Envoy's deferred close before the response ended
	endCancel                  // Envoy resets the stream
)

// play sends msgs as Envoy would and returns the one record produced.
func (h *harness) play(t *testing.T, msgs []*extprocv3.ProcessingRequest, how ending) Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sctx, scancel := context.WithCancel(served(ctx))
	defer scancel()
	stream, err := h.client.Process(sctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	switch how {
	case endNormally:
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("service must close the stream after the response ends, got %v", err)
		}
	case endHalfClose:
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("recv after half-close: %v", err)
		}
	case endCancel:
		// Let the messages reach the service before the reset, as they do
		// from Envoy (they were sent long before the client left).
		time.Sleep(50 * time.Millisecond)
		scancel()
	}
	return h.received(t, ctx)
}

// received returns the next record the sink gets, failing when ctx ends
// first.
func (h *harness) received(t *testing.T, ctx context.Context) Record {
	t.Helper()
	select {
	case r := <-h.sink.ch:
		return r
	case <-ctx.Done():
		t.Fatal("no record reached the sink")
	}
	return Record{}
}

func hdrs(kv ...string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return m
}

// served opens a stream as a route to version v2-meta of model llama on
// cluster llama-v2 does (envoyconfig.PerRoute): with what it serves and
// its prices as gRPC metadata.
func served(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx,
		wire.MetadataCluster, "llama-v2", wire.MetadataModel, "llama", wire.MetadataVersion, "v2-meta",
		wire.MetadataPriceInputPer1K, "0.5", wire.MetadataPriceOutputPer1K, "2")
}

func reqHeaders(extra ...string) *extprocv3.ProcessingRequest {
	kv := append([]string{
		":method", "POST", ":path", "/v1/chat/completions?trace=1",
		wire.HeaderRequestID, "req-1", wire.HeaderModel, "llama", wire.HeaderBucket, "12345",
	}, extra...)
	start, err := structpb.NewStruct(map[string]any{envoyconfig.AttrRequestTime: clockBase.Format(time.RFC3339Nano)})
	if err != nil {
		panic(err) // constant input
	}
	return &extprocv3.ProcessingRequest{
		ObservabilityMode: true,
		Attributes:        map[string]*structpb.Struct{envoyconfig.FilterName: start},
		Request:           &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hdrs(kv...), EndOfStream: false}},
	}
}

func reqBody(body string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: true}}}
}

func respHeaders(status, contentType string, end bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: hdrs(":status", status, "content-type", contentType, wire.HeaderVersion, "v2"), EndOfStream: end}}}
}

func respBody(body string, end bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: end}}}
}

func delta(s string) string {
	return `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"` + s + `"}}]}` + "\n\n"
}

const finishStop = `data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n"

func TestServerRecordsStreamedRequests(t *testing.T) {
	const step = 10 * time.Millisecond
	split := delta("b")
	tests := []struct {
		name  string
		msgs  func(start time.Time) []*extprocv3.ProcessingRequest
		how   ending
		check func(t *testing.T, r Record)
	}{
		{
			name: "streamed ok counts one token per content event",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("200", "text/event-stream; charset=utf-8", false),
					respBody(`data: {"choices":[{"delta":{"role":"assistant","content":""}}]}`+"\n\n"+delta("a"), false), // msg 3
					respBody(split[:20], false), // msg 4: half an event
					respBody(split[20:], false), // msg 5: completes "b"
					respBody(delta("c"), false),
					respBody(finishStop+"data: [DONE]\n\n", true),
				}
			},
			check: func(t *testing.T, r Record) {
				// Clock reading n is base + n×step; request.time is base.
				// Readings: 1 stream start, 2..8 messages, 9 finish. Tokens
				// arrive with messages 3, 5 and 6: gaps of 2 and 1 steps.
				want := Record{
					RequestID: "req-1", Model: "llama", Version: "v2", Cluster: "llama-v2",
					Path: "/v1/chat/completions", Bucket: 12345, Streamed: true, SampleRate: 1, Status: 200,
					TTFTMs: ms(4 * step), TotalMs: ms(9 * step),
					ITLMeanMs: ms(3 * step / 2), ITLP50Ms: ms(step), ITLP95Ms: ms(2 * step), ITLMaxMs: ms(2 * step),
					CompletionTokens: 3, FinishReason: "stop", CostUSD: 3.0 / 1000 * 2, Chunks: 5,
					ResponseBytes: r.ResponseBytes,
				}
				if r.ResponseBytes < 300 {
					t.Errorf("response bytes = %d, want the whole body", r.ResponseBytes)
				}
				compare(t, r, want)
			},
		},
		{
			name: "usage chunk supplies the token counts and the price",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("200", "text/event-stream", false),
					respBody(delta("a")+delta("b")+finishStop, false),
					respBody(`data: {"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":7}}`+"\n\ndata: [DONE]\n\n", true),
				}
			},
			check: func(t *testing.T, r Record) {
				if r.PromptTokens != 1000 || r.CompletionTokens != 7 || !r.TokensFromUsage {
					t.Fatalf("tokens = %d/%d fromUsage=%v, want 1000/7 from usage", r.PromptTokens, r.CompletionTokens, r.TokensFromUsage)
				}
				if want := 1.0*0.5 + 7.0/1000*2; math.Abs(r.CostUSD-want) > 1e-12 {
					t.Fatalf("cost = %v, want %v", r.CostUSD, want)
				}
				if r.Failure != "" || r.ITLMaxMs != 0 {
					t.Fatalf("failure %q, ITL max %v: two tokens in one chunk have a zero gap", r.Failure, r.ITLMaxMs)
				}
			},
		},
		{
			name: "stream cut after some tokens is upstream_reset with the tokens seen",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("200", "text/event-stream", false),
					respBody(delta("a")+delta("b"), false),
				}
			},
			how: endHalfClose,
			check: func(t *testing.T, r Record) {
				if r.Failure != FailureUpstreamReset || r.CompletionTokens != 2 || r.TTFTMs == 0 {
					t.Fatalf("got failure %q tokens %d ttft %v, want upstream_reset, 2 tokens, a TTFT", r.Failure, r.CompletionTokens, r.TTFTMs)
				}
			},
		},
		{
			name: "500 with an error body is http_5xx",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("500", "application/json", false),
					respBody(`{"error":{"message":"boom"}}`, true),
				}
			},
			check: func(t *testing.T, r Record) {
				if r.Status != 500 || r.Failure != FailureHTTP5xx || r.CompletionTokens != 0 || r.Streamed {
					t.Fatalf("got status %d failure %q tokens %d streamed %v", r.Status, r.Failure, r.CompletionTokens, r.Streamed)
				}
			},
		},
		{
			name: "local reply without body ends at the response headers",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{reqHeaders(), respHeaders("429", "text/plain", true)}
			},
			check: func(t *testing.T, r Record) {
				if r.Failure != FailureHTTP429 {
					t.Fatalf("failure = %q, want http_429", r.Failure)
				}
			},
		},
		{
			name: "client gone before the response is client_cancel",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{reqHeaders()}
			},
			how: endCancel,
			check: func(t *testing.T, r Record) {
				if r.Failure != FailureClientCancel || r.Status != 0 || r.RequestID != "req-1" || r.Version != "v2-meta" {
					t.Fatalf("got failure %q status %d id %q version %q, want client_cancel, no status, the request's id, the metadata version",
						r.Failure, r.Status, r.RequestID, r.Version)
				}
			},
		},
		{
			name: "stream that ends without DONE or finish reason is truncated",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("200", "text/event-stream", false),
					respBody(delta("a"), true),
				}
			},
			check: func(t *testing.T, r Record) {
				if r.Failure != FailureTruncated {
					t.Fatalf("failure = %q, want truncated", r.Failure)
				}
			},
		},
		{
			name: "non-streamed JSON with an empty answer is empty",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(),
					respHeaders("200", "application/json", false),
					respBody(`{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":""},"finish_reason":"stop"}],`, false),
					respBody(`"usage":{"prompt_tokens":9,"completion_tokens":0}}`, true),
				}
			},
			check: func(t *testing.T, r Record) {
				if r.Failure != FailureEmpty || r.Streamed || r.PromptTokens != 9 {
					t.Fatalf("got failure %q streamed %v prompt %d, want empty, not streamed, 9", r.Failure, r.Streamed, r.PromptTokens)
				}
			},
		},
		{
			name: "forced and categorised requests are labelled and refusals detected",
			msgs: func(start time.Time) []*extprocv3.ProcessingRequest {
				return []*extprocv3.ProcessingRequest{
					reqHeaders(wire.HeaderForce, "v2", wire.HeaderCategory, "code", wire.HeaderAssigned, wire.AssignedExcluded),
					respHeaders("200", "text/event-stream", false),
					respBody(delta("I'm sorry, but I can't")+delta(" help with that.")+finishStop+"data: [DONE]\n\n", true),
				}
			},
			check: func(t *testing.T, r Record) {
				if !r.Forced || r.Category != "code" || r.Cohort != wire.AssignedExcluded || !r.Refusal || r.Captured {
					t.Fatalf("forced %v category %q cohort %q refusal %v captured %v", r.Forced, r.Category, r.Cohort, r.Refusal, r.Captured)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHarness(t, CaptureOptions{})
			r := h.play(t, tt.msgs(h.clock.base), tt.how)
			tt.check(t, r)
		})
	}
}

// compare checks the fields a test states; Time must be the request.time.
func compare(t *testing.T, got, want Record) {
	t.Helper()
	got.Time = time.Time{}
	if got != want {
		t.Fatalf("record\n got %+v\nwant %+v", got, want)
	}
}

func TestServerRecordsTheSampleRateTheStreamOpensWith(t *testing.T) {
	tests := []struct {
		name      string
		metadata  []string // values of wire.MetadataSampleRate; none: absent
		want      float64
		wantBadly float64 // llmcanary_extproc_sample_rate_invalid_total after the stream
	}{
		{"a measured arm's rate is kept", []string{"0.25"}, 0.25, 0},
		{"the whole arm measured", []string{"1"}, 1, 0},
		{"no rate means every request is measured", nil, 1, 0},
		{"a malformed rate counts as 1 and is counted", []string{"quarter"}, 1, 1},
		{"zero is no measured rate", []string{"0"}, 1, 1},
		{"above 1 is out of range", []string{"1.5"}, 1, 1},
		{"NaN is out of range", []string{"NaN"}, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHarness(t, CaptureOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, v := range tt.metadata {
				ctx = metadata.AppendToOutgoingContext(ctx, wire.MetadataSampleRate, v)
			}
			stream, err := h.client.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []*extprocv3.ProcessingRequest{
				reqHeaders(),
				respHeaders("200", "text/event-stream", false),
				respBody(delta("a")+finishStop+"data: [DONE]\n\n", true),
			} {
				if err := stream.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			var r Record
			select {
			case r = <-h.sink.ch:
			case <-ctx.Done():
				t.Fatal("no record reached the sink")
			}
			if r.SampleRate != tt.want {
				t.Errorf("sample rate = %v, want %v", r.SampleRate, tt.want)
			}
			if got := counterValue(t, h.reg, "llmcanary_extproc_sample_rate_invalid_total"); got != tt.wantBadly {
				t.Errorf("invalid sample rates counted = %v, want %v", got, tt.wantBadly)
			}
		})
	}
}

// counterValue reads an unlabelled counter from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestServerCapturesSampledTextRedacted(t *testing.T) {
	h := startHarness(t, CaptureOptions{Rate: 1, MaxBytes: 64})
	r := h.play(t, []*extprocv3.ProcessingRequest{
		reqHeaders(),
		reqBody(`{"model":"llama","stream":true,"messages":[{"role":"user","content":"mail bob@example.com"}]}`),
		respHeaders("200", "text/event-stream", false),
		respBody(delta("call 555 123 4567")+finishStop+"data: [DONE]\n\n", true),
	}, endNormally)
	if !r.Captured || r.Prompt != "user: mail [email]\n" || r.Completion != "call [number]" {
		t.Fatalf("captured %v prompt %q completion %q", r.Captured, r.Prompt, r.Completion)
	}
}

func TestServerAnswersWhenEnvoyWaits(t *testing.T) {
	h := startHarness(t, CaptureOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := h.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := reqHeaders()
	m.ObservabilityMode = false
	if err := stream.Send(m); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetRequestHeaders() == nil {
		t.Fatalf("a filter outside observability mode must get a headers answer, got %v, %v", resp, err)
	}
}

func TestServerExportsMetrics(t *testing.T) {
	h := startHarness(t, CaptureOptions{})
	h.play(t, []*extprocv3.ProcessingRequest{
		reqHeaders(),
		respHeaders("503", "text/plain", true),
	}, endNormally)
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			found[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	for _, k := range []string{
		"llmcanary_extproc_requests_total{model=llama,version=v2}",
		"llmcanary_extproc_failures_total{kind=http_5xx,model=llama,version=v2}",
	} {
		if found[k] != 1 {
			t.Errorf("%s = %v, want 1 (have %v)", k, found[k], found)
		}
	}
}

func TestDrainLetsOpenStreamsFinishAndRecordsThoseItCuts(t *testing.T) {
	tests := []struct {
		name       string
		endsInTime bool
		wantCut    int
		wantFail   string
		wantTokens uint32
	}{
		{"a stream that ends within the bound is recorded complete", true, 0, "", 2},
		{"a stream still open at the bound is cut and recorded as client_cancel with what was seen", false, 1, FailureClientCancel, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sink := &memSink{ch: make(chan Record, 4)}
			srv, err := NewServer(Options{Sink: sink, ResetWait: -1})
			if err != nil {
				t.Fatal(err)
			}
			g, client := serve(t, srv)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := client.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []*extprocv3.ProcessingRequest{reqHeaders(), respHeaders("200", "text/event-stream", false), respBody(delta("a"), false)} {
				if err := stream.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(50 * time.Millisecond) // the messages reach the service

			// The shutdown: no new streams, then Drain with a 500 ms bound.
			go g.GracefulStop()
			drained := make(chan int)
			go func() {
				dctx, dcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				defer dcancel()
				drained <- srv.Drain(dctx, g.Stop)
			}()
			start := time.Now()
			if tc.endsInTime {
				time.Sleep(100 * time.Millisecond)
				if err := stream.Send(respBody(delta("b")+finishStop, true)); err != nil {
					t.Fatalf("an open stream must still be served while draining: %v", err)
				}
			}
			cut := <-drained
			took := time.Since(start)
			var r Record
			select {
			case r = <-sink.ch:
			default:
				t.Fatal("Drain returned before the stream's record reached the sink")
			}
			if cut != tc.wantCut || r.Failure != tc.wantFail || r.CompletionTokens != tc.wantTokens || r.Status != 200 {
				t.Fatalf("cut %d, record failure %q tokens %d status %d; want cut %d, failure %q, tokens %d, status 200",
					cut, r.Failure, r.CompletionTokens, r.Status, tc.wantCut, tc.wantFail, tc.wantTokens)
			}
			if tc.endsInTime && took >= 500*time.Millisecond {
				t.Fatalf("Drain took %v: it must return once the streams ended, not at its bound", took)
			}
		})
	}
}

func TestServerDoesNotRecordRequestsTheGatewayAnswered(t *testing.T) {
	noCluster := func(kv ...string) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extprocv3.HttpHeaders{Headers: hdrs(kv...), EndOfStream: true}}}
	}
	gatewayResp := func(status string) *extprocv3.ProcessingRequest {
		return &extprocv3.ProcessingRequest{ObservabilityMode: true, Request: &extprocv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &extprocv3.HttpHeaders{Headers: hdrs(":status", status, "content-type", "application/json"), EndOfStream: false}}}
	}
	h := startHarness(t, CaptureOptions{})
	for _, c := range []struct {
		name string
		msgs []*extprocv3.ProcessingRequest
	}{
		// GET /v1/models: a direct response, no cluster.
		{"models listing", []*extprocv3.ProcessingRequest{noCluster(":method", "GET", ":path", "/v1/models", wire.HeaderRequestID, "r1"), gatewayResp("200"), respBody(`{"object":"list","data":[]}`, true)}},
		// The wasm filter's 400: ext_proc sees only the response.
		{"filter's local reply", []*extprocv3.ProcessingRequest{gatewayResp("400"), respBody(`{"error":{}}`, true)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stream, err := h.client.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range c.msgs {
				if err := stream.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("the service must close the stream when the response ends: %v", err)
			}
			select {
			case r := <-h.sink.ch:
				t.Fatalf("a request no version served was recorded: %+v", r)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "llmcanary_extproc_gateway_answers_total" {
			for _, m := range mf.GetMetric() {
				got += m.GetCounter().GetValue()
			}
		}
	}
	if got != 2 {
		t.Fatalf("llmcanary_extproc_gateway_answers_total = %v, want 2", got)
	}
}

func TestServerLabelsAndPricesARowFromWhatTheStreamOpensWith(t *testing.T) {
	msgs := func() []*extprocv3.ProcessingRequest {
		return []*extprocv3.ProcessingRequest{
			reqHeaders(),
			respHeaders("200", "text/event-stream", false),
			respBody(delta("a")+finishStop+`data: {"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":1000}}`+"\n\n"+"data: [DONE]\n\n", true),
		}
	}
	tests := []struct {
		name        string
		md          []string
		wantCluster string
		wantCost    float64
		wantBad     float64 // llmcanary_extproc_price_invalid_total after the stream
	}{
		{"cluster and prices come from the stream's metadata", []string{
			wire.MetadataCluster, "llama_v3", wire.MetadataModel, "llama", wire.MetadataVersion, "v3",
			wire.MetadataPriceInputPer1K, "0.25", wire.MetadataPriceOutputPer1K, "1",
		}, "llama_v3", 1.25, 0},
		{"a stream without them is labelled from the headers and costs nothing", nil, "", 0, 0},
		{"a price that is not a number is counted and taken as zero", []string{
			wire.MetadataCluster, "llama_v3", wire.MetadataVersion, "v3",
			wire.MetadataPriceInputPer1K, "cheap", wire.MetadataPriceOutputPer1K, "-1",
		}, "llama_v3", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHarness(t, CaptureOptions{})
			r := h.playWith(t, tt.md, msgs()...)
			if r.Cluster != tt.wantCluster || math.Abs(r.CostUSD-tt.wantCost) > 1e-12 || r.Model != "llama" || r.Version != "v2" || r.Status != 200 {
				t.Fatalf("cluster %q cost %v model %q version %q status %d; want cluster %q cost %v, llama v2 (the headers) 200",
					r.Cluster, r.CostUSD, r.Model, r.Version, r.Status, tt.wantCluster, tt.wantCost)
			}
			if !r.Time.Equal(clockBase) {
				t.Errorf("time %v, want Envoy's request.time %v", r.Time, clockBase)
			}
			if got := counterValue(t, h.reg, "llmcanary_extproc_price_invalid_total"); got != tt.wantBad {
				t.Errorf("invalid prices counted = %v, want %v", got, tt.wantBad)
			}
		})
	}
}
