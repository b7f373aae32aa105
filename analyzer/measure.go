// Package analyzer decides, continuously and with always-valid statistics,
// whether a canary version advances, is promoted or is rolled back, and
// pushes the decision to the control plane.
//
// The decision itself is a pure function (see Decide) of the policy, the
// stage's state and the measurements; the runner around it queries
// ClickHouse through a MetricsSource and moves traffic through a
// TrafficSetter.
package analyzer

import (
	"context"
	"errors"
	"time"
)

// Metric names one measured quantity the policy can hold a canary to.
type Metric string

// The metrics a canary is compared on. Latencies are in milliseconds, cost
// in US dollars, quality in [0, 1] (1 = good).
const (
	MetricLatency         Metric = "latency"           // total_ms of successful requests
	MetricTTFT            Metric = "ttft"              // ttft_ms of successful streamed requests
	MetricITL             Metric = "itl"               // itl_mean_ms of successful streamed requests
	MetricErrorRate       Metric = "error_rate"        // failed requests / requests
	MetricRefusalRate     Metric = "refusal_rate"      // refusals / successful requests
	MetricCostPerRequest  Metric = "cost_per_request"  // cost_usd of successful requests
	MetricTokensPerAnswer Metric = "tokens_per_answer" // completion_tokens of successful requests
	MetricQuality         Metric = "quality"           // judge and user-feedback scores
)

// ErrNoData reports that a window holds no usable requests for an arm.
var ErrNoData = errors.New("no data")

// Arm is what was measured for one version over a window. Forced requests
// (x-llmcanary-force) and requests routed by a category override are never
// included: they did not reach the version by the random split.
type Arm struct {
	Version string `json:"version"`
	// Requests counts every request of the window, failed or not; it is the
	// count the sample-ratio check compares with the configured split.
	Requests int `json:"requests"`
	// Failures counts failed requests (5xx, 429, upstream reset, truncated
	// or empty answers); client cancellations are not the version's fault
	// and are not counted.
	Failures int `json:"failures"`
	// Successes counts requests that completed; Refusals is how many of
	// those were refusals.
	Successes int `json:"successes"`
	Refusals  int `json:"refusals"`
	// Per-request values of successful requests, in no particular order.
	LatencyMs        []float64 `json:"latency_ms,omitempty"`
	TTFTMs           []float64 `json:"ttft_ms,omitempty"`
	ITLMs            []float64 `json:"itl_ms,omitempty"`
	CostUSD          []float64 `json:"cost_usd,omitempty"`
	CompletionTokens []float64 `json:"completion_tokens,omitempty"`
	// Quality scores of the window's judged or rated requests.
	Quality []float64 `json:"quality,omitempty"`
}

// Measurements compare a canary with the stable version over the same
// window of time.
type Measurements struct {
	Model  string    `json:"model"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Stable Arm       `json:"stable"`
	Canary Arm       `json:"canary"`
}

// Window asks a MetricsSource for one comparison.
type Window struct {
	Model  string
	Stable string // version names
	Canary string
	From   time.Time
	To     time.Time
}

// MetricsSource reads measurements. The ClickHouse implementation queries
// the telemetry table; tests use a hand-written fake. Implementations must
// return an error wrapping ErrNoData when a window has no requests at all,
// and any other error when the query failed: both make the decision hold.
type MetricsSource interface {
	Measure(ctx context.Context, w Window) (Measurements, error)
}

// TrafficSetter moves traffic. The control plane client implements it.
// SetWeights must be atomic: either all weights change or none.
type TrafficSetter interface {
	SetWeights(ctx context.Context, model string, weights map[string]float64, stable string) error
}
