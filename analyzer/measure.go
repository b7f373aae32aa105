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

	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/xds"
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

// ErrNoData reports that a rollout has no request at all yet, in either
// arm, since it began (Window.RolloutFrom). One empty arm is data: the
// sample-ratio check reads it.
var ErrNoData = errors.New("no data")

// Arm is what was measured for one version over a stage's window.
// Forced requests (x-llmcanary-force) and requests routed by a category
// override are never included: they did not reach the version by the
// random split.
type Arm struct {
	Version string `json:"version"`
	// Users counts the distinct users (sticky buckets) with a request in
	// the window: the count the sample-ratio check compares with the
	// configured split, since routing assigns users, not requests.
	Users int `json:"users"`
	// Requests counts every request of the window, failed or not.
	Requests int `json:"requests"`
	// Failures counts failed requests (5xx, 429, upstream reset, truncated
	// or empty answers); client cancellations are not the version's fault
	// and are not counted.
	Failures int `json:"failures"`
	// SampleRate is the share of the arm's users whose requests are
	// measured, as its latest request in the source carried it: 1 for a
	// canary, the stable sample's rate for stable (see xds.Measure). NaN
	// or 0: unknown, taken as 1.
	SampleRate float64 `json:"sample_rate,omitempty"`
	// Successes counts requests that completed; Refusals is how many of
	// those were refusals, Judged how many have a quality score.
	Successes int `json:"successes"`
	Refusals  int `json:"refusals"`
	Judged    int `json:"judged"`
	// Sums holds, per metric, each user's observations and their sum,
	// summed over users (see stats.Clustered): enough for every estimate
	// and its user-clustered variance. A tail metric counts successes
	// after calibration and, as the sum, those above its threshold.
	Sums map[Metric]stats.Clustered `json:"sums,omitempty"`
	// Raw values of successful requests, in no particular order, kept only
	// when the source is asked to (TallyOptions.KeepValues): A/B reports
	// use them for win rates.
	LatencyMs        []float64 `json:"latency_ms,omitempty"`
	TTFTMs           []float64 `json:"ttft_ms,omitempty"`
	ITLMs            []float64 `json:"itl_ms,omitempty"`
	CostUSD          []float64 `json:"cost_usd,omitempty"`
	CompletionTokens []float64 `json:"completion_tokens,omitempty"`
	Quality          []float64 `json:"quality,omitempty"`
}

// UserEvent is one user's first event of one kind since the rollout began:
// a failure (MetricErrorRate), a refusal, an answer judged bad
// (MetricQuality), or a request beyond a tail threshold (the tail
// metrics).
type UserEvent struct {
	Metric Metric    `json:"metric"`
	At     time.Time `json:"at"`
	Canary bool      `json:"canary"`
	// Ratio is the canary's exposure per request over stable's for this
	// kind of event: 1 where every request can have it, the ratio of the
	// arms' judging rates for quality events.
	Ratio float64 `json:"ratio"`
	// Print fingerprints the metric's events up to this one (a running
	// sum, see Tally): a look checks that the events it folded before are
	// still the same prefix in O(1).
	Print int64 `json:"print"`
}

// Measurements compare a canary with the stable version: both arms over
// the stage's window, and the events of the whole rollout.
type Measurements struct {
	Model  string    `json:"model"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Stable Arm       `json:"stable"`
	Canary Arm       `json:"canary"`
	// Events are, per event metric, each user's first event since the
	// rollout began, in time order (see Tally).
	Events map[Metric][]UserEvent `json:"events,omitempty"`
	// Baseline is stable's rate of each event metric over the rollout so
	// far, per request (per judged answer for quality): what turns an
	// event test's risk ratio into the metric's units.
	Baseline map[Metric]Rate `json:"baseline,omitempty"`
	// Thresholds are the tail metrics' thresholds, fixed by the first
	// requests of the rollout; nil before.
	Thresholds map[Metric]float64 `json:"thresholds,omitempty"`
	// TailPerUser says the thresholds are ratios to each user's usual
	// level (a baseline from before the rollout), not milliseconds.
	TailPerUser bool `json:"tail_per_user,omitempty"`
}

// Rate counts events among observations.
type Rate struct {
	N      int `json:"n"`
	Events int `json:"events"`
}

// Value is the rate, smoothed by half an event so that none is not zero.
func (r Rate) Value() float64 { return (float64(r.Events) + 0.5) / (float64(r.N) + 1) }

// Window asks a MetricsSource for one comparison: the rollout's requests
// from RolloutFrom to To, the stage's window from From.
type Window struct {
	Model       string
	Stable      string // version names
	Canary      string
	RolloutFrom time.Time
	From        time.Time
	To          time.Time
	// TailQuantile is the quantile of the tail thresholds (Policy).
	TailQuantile float64
	// BaselineFrom, when before RolloutFrom, asks for each user's stable
	// latencies from then to RolloutFrom: the tail metrics then compare
	// requests with their user's usual level (Tally.AddBaseline).
	BaselineFrom time.Time
}

// MetricsSource reads measurements. The ClickHouse implementation
// (chsource.Source) queries the telemetry table; tests use a hand-written
// fake. Measure returns, with a nil error, both arms over the stage's
// window and the rollout's events since RolloutFrom. When the rollout has
// no request at all it returns what it measured (nothing) with an error
// wrapping ErrNoData, and the runner decides on that, which holds; any
// other error means the query failed, and the runner holds without
// deciding on a partial measurement. Implementations that can tell
// cheaply whether a window has new rows also implement Watermarker.
type MetricsSource interface {
	Measure(ctx context.Context, w Window) (Measurements, error)
}

// TrafficSetter moves traffic. The control plane client implements it.
// SetWeights must be atomic: either all weights change or none.
type TrafficSetter interface {
	SetWeights(ctx context.Context, model string, weights map[string]float64, stable string) error
}

// CausedTrafficSetter is a TrafficSetter that can say why traffic moves:
// the control plane keeps the cause (the rollout, the decision's sentence,
// the actor) in the model's history when the stable version changes.
type CausedTrafficSetter interface {
	SetWeightsBecause(ctx context.Context, model string, weights map[string]float64, stable string, cause xds.Cause) error
}
