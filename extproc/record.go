package extproc

import (
	"time"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Failure kinds. A Record's Failure is empty for a response that completed
// normally (whatever its finish reason).
const (
	FailureHTTP5xx       = "http_5xx"               // upstream answered 5xx
	FailureHTTP429       = "http_429"               // rate limited
	FailureHTTP4xx       = "http_4xx"               // other client errors (bad request, unknown model)
	FailureUpstreamReset = "upstream_reset"         // the upstream cut the stream
	FailureClientCancel  = wire.FailureClientCancel // the client went away first, or the service's shutdown cut the stream (not the version's doing)
	FailureTruncated     = "truncated"              // a stream that ended without [DONE] or a finish reason
	FailureEmpty         = "empty"                  // a successful response with no completion tokens
)

// Record is what llmcanary measures for one request through Envoy: one row
// of the ClickHouse table wire.TableRequests. The ext_proc handler builds it
// while the response streams and hands it to a Sink once the stream ends.
type Record struct {
	Time      time.Time // when Envoy received the request
	RequestID string
	Model     string
	Version   string // served version (x-llmcanary-version, else cluster metadata)
	Cluster   string
	Path      string
	Bucket    uint64
	Forced    bool   // pinned with x-llmcanary-force: excluded from statistics
	Category  string // x-llmcanary-category, if any
	// Cohort is the cohort rule that chose the version (wire.AssignedOptIn
	// or wire.AssignedExcluded), "" when the bucket did: such requests
	// are not randomised and stay out of the comparison.
	Cohort string
	// Shadow marks the answer of a mirrored request (see xds.Shadow): the
	// user never saw it; it is stored apart (wire.TableShadow), always
	// with its text, paired by RequestID with the user's answer.
	Shadow   bool
	Streamed bool
	// SampleRate is the share of its arm's users whose requests are
	// measured, in (0, 1]: the route opens the ext_proc stream with it
	// (wire.MetadataSampleRate), so each row stands for 1/SampleRate
	// requests of its arm. 1 when every request is measured.
	SampleRate float64

	Status  int
	Failure string // one of the Failure* kinds, or ""

	TTFTMs    float64 // request start → first content token
	TotalMs   float64 // request start → end of response
	ITLMeanMs float64 // inter-token latency between content chunks
	ITLP50Ms  float64
	ITLP95Ms  float64
	ITLMaxMs  float64

	PromptTokens     uint32
	CompletionTokens uint32
	TokensFromUsage  bool // false: completion tokens were counted from chunks
	FinishReason     string
	Refusal          bool
	CostUSD          float64
	ResponseBytes    uint32
	Chunks           uint32

	// Captured text, only for sampled requests (capture is off by default).
	Captured   bool
	Prompt     string
	Completion string
}

// Sink receives finished records. Write must never block the caller: an
// implementation buffers, spools or drops (and counts what it drops). Safe
// for concurrent use.
type Sink interface {
	Write(r Record)
}

// LogEntry is Envoy's access-log record of one request, measured or not:
// one row of the ClickHouse table wire.TableRequestLog. Every request gets
// one, so per-version request counts and error rates are complete while
// only a sample is measured (Record).
type LogEntry struct {
	Time       time.Time // when Envoy received the request
	RequestID  string
	Model      string // x-llmcanary-model
	Version    string // served version (x-llmcanary-version); "" when none served it
	Cluster    string // the upstream cluster the route picked; "" when none
	Path       string // without the query
	Status     int    // 0 when no response was sent
	DurationMs float64
	BytesIn    uint64 // request body
	BytesOut   uint64 // response body
	// Flags are Envoy's response flags in their short form, comma
	// separated ("UF", "DC,UR"); "" when none.
	Flags string
	// Details is Envoy's response code details ("via_upstream",
	// "direct_response", wire.DetailsFilterReply, …).
	Details string
	Bucket  uint64
	Forced  bool
	// Cohort: as Record.Cohort.
	Cohort string
	// SampleRate is the rate the request was measured at (the route's
	// x-llmcanary-sample-rate); 0 when it was not measured.
	SampleRate float64
	// Gateway marks an answer of the gateway itself — a route's direct
	// response, the wasm filter's reply, no route at all: no version
	// served the request and no version's error rate counts it.
	Gateway bool
}

// LogSink receives the access-log entries of every request. WriteLog must
// never block the caller: an implementation buffers, spools or drops (and
// counts what it drops). Safe for concurrent use.
type LogSink interface {
	WriteLog(e LogEntry)
}
