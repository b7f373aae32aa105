package analyzer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/llmcanary/llmcanary/internal/config"
)

// MetricLatencyP99 is the latency tail check: the share of canary requests
// slower than the stable version's p99 over the same window. Stable has 1 %
// of its requests above its own p99 by construction; a canary with the same
// distribution has about 1 % too, and a slower tail shows as more. Its
// tolerance is in absolute points of that share (0.01: at most 2 % of canary
// requests above stable's p99).
const MetricLatencyP99 Metric = "latency_p99"

// MetricTTFTP99 and MetricITLP99 are the same tail check for the time to
// the first token and the mean inter-token latency of streamed answers.
const (
	MetricTTFTP99 Metric = "ttft_p99"
	MetricITLP99  Metric = "itl_p99"
)

// Kind says how a metric's effect and tolerance are expressed.
type Kind string

const (
	// KindRelative metrics compare means as a ratio: the effect is
	// canary/stable - 1 and a tolerance of 0.10 allows the canary's mean to
	// be 10 % higher.
	KindRelative Kind = "relative"
	// KindPoints metrics compare rates: the effect is the canary's rate
	// minus stable's and a tolerance of 0.01 allows one point more.
	KindPoints Kind = "points"
	// KindScore metrics compare mean scores where higher is better: the
	// effect is canary minus stable and a tolerance of 0.05 allows the
	// canary's mean to be 0.05 lower.
	KindScore Kind = "score"
)

// MetricKind returns how m is compared, and false for an unknown metric.
func MetricKind(m Metric) (Kind, bool) {
	switch m {
	case MetricLatency, MetricTTFT, MetricITL, MetricCostPerRequest, MetricTokensPerAnswer:
		return KindRelative, true
	case MetricErrorRate, MetricRefusalRate, MetricLatencyP99, MetricTTFTP99, MetricITLP99:
		return KindPoints, true
	case MetricQuality:
		return KindScore, true
	}
	return "", false
}

// AllMetrics lists every metric a policy can name, in the order decisions
// report them.
var AllMetrics = []Metric{
	MetricErrorRate, MetricQuality, MetricLatency, MetricLatencyP99, MetricTTFT, MetricTTFTP99,
	MetricITL, MetricITLP99, MetricRefusalRate, MetricCostPerRequest, MetricTokensPerAnswer,
}

// IsEventMetric reports whether m is tested for harm by counting events
// (stats.EventTest over each user's first event): failures, refusals, bad
// answers and requests beyond a tail threshold. The other metrics compare
// means.
func IsEventMetric(m Metric) bool {
	switch m {
	case MetricErrorRate, MetricRefusalRate, MetricQuality, MetricLatencyP99, MetricTTFTP99, MetricITLP99:
		return true
	}
	return false
}

// DefaultAlphaWeights share the false-rollback budget among the metrics:
// errors and bad answers, the harms users notice first and the ones a bad
// checkpoint shows, weigh most; the tails next; means and costs least. A
// policy's weights are normalised over the metrics it tests.
func DefaultAlphaWeights() map[Metric]float64 {
	return map[Metric]float64{
		MetricErrorRate:       0.35,
		MetricQuality:         0.35,
		MetricLatencyP99:      0.08,
		MetricTTFTP99:         0.04,
		MetricITLP99:          0.02,
		MetricLatency:         0.04,
		MetricTTFT:            0.04,
		MetricITL:             0.02,
		MetricRefusalRate:     0.03,
		MetricCostPerRequest:  0.015,
		MetricTokensPerAnswer: 0.015,
	}
}

// Inconclusive is what a stage does when its maximum time passes without a
// decision.
type Inconclusive string

const (
	// InconclusiveExtend keeps the stage running and keeps holding.
	InconclusiveExtend Inconclusive = "extend"
	// InconclusivePause pauses the rollout for a human; traffic stays.
	InconclusivePause Inconclusive = "pause"
	// InconclusiveRollback rolls back. It is the only rollback without
	// evidence of harm, and only when the operator chose it.
	InconclusiveRollback Inconclusive = "rollback"
)

// Stage is one step of a rollout: the canary's share of traffic and how
// much evidence the stage needs before it may advance.
type Stage struct {
	// Weight is the canary's share in percent. A stage of 100 is the
	// promotion itself: it is reached, not evaluated.
	Weight float64 `json:"weight"`
	// MinDuration is the shortest time the stage runs, so that a stage
	// sees a full cycle of the traffic mix even when requests are many.
	MinDuration config.Duration `json:"min_duration"`
	// MinSamples is the number of canary requests the stage needs.
	MinSamples int `json:"min_samples"`
}

// Policy is how a canary is judged. Load it from YAML (snake_case names);
// Models holds per-model overrides of any field, applied by For.
type Policy struct {
	Stages []Stage `json:"stages"`
	// MaxStageDuration bounds a stage; past it the stage is inconclusive
	// and OnInconclusive applies.
	MaxStageDuration config.Duration `json:"max_stage_duration"`
	OnInconclusive   Inconclusive    `json:"on_inconclusive"`
	// Alpha is the chance, over a whole rollout of a harmless canary, of a
	// false rollback. It is shared among the metrics by AlphaWeights. An
	// event metric's test runs across the whole rollout and uses its share
	// whole; a mean metric's test restarts with each stage's window, so its
	// share is split evenly among the evaluated stages. Promotion tests
	// non-inferiority at the last stage, each metric at the full Alpha
	// (every metric must pass, so no correction is needed).
	Alpha float64 `json:"alpha"`
	// AlphaWeights are the metrics' relative shares of Alpha; metrics
	// without a weight get the smallest one given. Default
	// DefaultAlphaWeights.
	AlphaWeights map[Metric]float64 `json:"alpha_weights,omitempty"`
	// SRMAlpha is the level of the sample-ratio-mismatch check. Strict,
	// because it runs at every look and a false mismatch halts a rollout.
	SRMAlpha float64 `json:"srm_alpha"`
	// MinTestSamples is the number of observations each arm needs before a
	// mean or share is tested at all, and MinTestUsers the number of
	// distinct users: the plug-in variances of the sequential tests are
	// unreliable below them. The event tests are exact and need neither.
	MinTestSamples int `json:"min_test_samples"`
	MinTestUsers   int `json:"min_test_users"`
	// HarmMargin places the event metrics' harm null at this fraction of
	// the tolerance: a canary worse by less is never rolled back for it,
	// however much data shows it. 0 tests "no worse at all", the fastest
	// at catching a bad checkpoint, but with the size rule alone (the
	// shrunk estimate must exceed the tolerance) a canary worse by half
	// its tolerance is rolled back in about one rollout in eight; the
	// default 0.15 brings that to about one in thirteen and catches the
	// documented incident (bad answers 3 % to 14 %) a dozen canary
	// requests later (simulated: make bench).
	HarmMargin float64 `json:"harm_margin"`
	// Tolerances per metric (see Kind for the units). Only metrics listed
	// here are tested.
	Tolerances map[Metric]float64 `json:"tolerances"`
	// Required metrics must have data to advance; the others are tested
	// when they have data and reported as not measured otherwise (quality
	// has data only where a judge or users rate answers).
	Required []Metric `json:"required"`
	// TailQuantile is the quantile of the tail thresholds. Default 0.99.
	TailQuantile float64 `json:"tail_quantile"`
	// Baseline is how much of stable's traffic before the rollout gives
	// each user's usual latency, TTFT and inter-token latency, so that the
	// tail metrics compare a request with its own user's level (users
	// differ far more than versions do). Default 1h; 0 turns it off.
	Baseline config.Duration `json:"baseline"`
	// Power is the power the A/B mode plans samples for. Default 0.8.
	Power float64 `json:"power"`
	// Models overrides fields for one model: only the fields given change
	// (a tolerances map merges key by key; stages replace the list).
	Models map[string]json.RawMessage `json:"models,omitempty"`
}

// DefaultPolicy returns the policy used when none is configured.
func DefaultPolicy() Policy {
	dur := func(d string) config.Duration {
		var c config.Duration
		_ = c.Set(d)
		return c
	}
	return Policy{
		// Early stages only guard against harm, which the event tests
		// catch within tens of canary requests; they need enough users and
		// time to see the traffic mix. The last stage shows
		// non-inferiority and runs as long as that takes.
		Stages: []Stage{
			{Weight: 2, MinDuration: dur("10m"), MinSamples: 200},
			{Weight: 5, MinDuration: dur("10m"), MinSamples: 300},
			{Weight: 10, MinDuration: dur("10m"), MinSamples: 500},
			{Weight: 25, MinDuration: dur("15m"), MinSamples: 1000},
			{Weight: 50, MinDuration: dur("15m"), MinSamples: 1000},
			{Weight: 100},
		},
		MaxStageDuration: dur("2h"),
		OnInconclusive:   InconclusivePause,
		Alpha:            0.05,
		AlphaWeights:     DefaultAlphaWeights(),
		SRMAlpha:         0.001,
		MinTestSamples:   100,
		MinTestUsers:     20,
		HarmMargin:       0.15,
		Tolerances: map[Metric]float64{
			MetricErrorRate:       0.01,
			MetricLatency:         0.10,
			MetricLatencyP99:      0.0075,
			MetricTTFTP99:         0.0075,
			MetricTTFT:            0.10,
			MetricITL:             0.10,
			MetricRefusalRate:     0.01,
			MetricQuality:         0.05,
			MetricCostPerRequest:  0.10,
			MetricTokensPerAnswer: 0.20,
		},
		Required:     []Metric{MetricErrorRate, MetricLatency},
		TailQuantile: 0.99,
		Baseline:     dur("1h"),
		Power:        0.8,
	}
}

// ParsePolicy reads a YAML policy on top of the defaults: fields the file
// leaves out keep their default values. The result is validated.
func ParsePolicy(b []byte) (Policy, error) {
	p := DefaultPolicy()
	// A tolerances map in the file replaces the default one, so that a
	// policy lists exactly the metrics it tests.
	var probe struct {
		Tolerances map[Metric]float64 `json:"tolerances"`
	}
	if err := yaml.Unmarshal(b, &probe); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	if probe.Tolerances != nil {
		p.Tolerances = nil
	}
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

// LoadPolicy reads and validates a YAML policy file.
func LoadPolicy(path string) (Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	return ParsePolicy(b)
}

// For returns the policy for one model: the base with the model's
// overrides applied, without the override table.
func (p Policy) For(model string) (Policy, error) {
	out := p.clone()
	out.Models = nil
	raw, ok := p.Models[model]
	if !ok {
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		return Policy{}, fmt.Errorf("policy for model %q: %w", model, err)
	}
	out.Models = nil
	if err := out.Validate(); err != nil {
		return Policy{}, fmt.Errorf("policy for model %q: %w", model, err)
	}
	return out, nil
}

func (p Policy) clone() Policy {
	out := p
	out.Stages = slices.Clone(p.Stages)
	out.Required = slices.Clone(p.Required)
	out.Tolerances = maps.Clone(p.Tolerances)
	out.AlphaWeights = maps.Clone(p.AlphaWeights)
	return out
}

// Validate checks the policy and returns every problem joined.
func (p Policy) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("policy: "+format, a...)) }
	if len(p.EvaluatedStages()) == 0 {
		bad("needs at least one stage with a weight below 100")
	}
	prev := 0.0
	for i, s := range p.Stages {
		switch {
		case !(s.Weight > 0) || s.Weight > 100:
			bad("stage %d: weight %v must be in (0, 100]", i+1, s.Weight)
		case s.Weight <= prev:
			bad("stage %d: weight %v must be above the previous stage's %v", i+1, s.Weight, prev)
		case s.Weight == 100 && i != len(p.Stages)-1:
			bad("stage %d: weight 100 is the promotion and must come last", i+1)
		case math.Round(s.Weight*100) != s.Weight*100:
			bad("stage %d: weight %v has more than two decimals", i+1, s.Weight)
		}
		if s.Weight < 100 {
			if s.MinDuration < 0 {
				bad("stage %d: min_duration %v is negative", i+1, s.MinDuration.D())
			}
			if s.MinSamples < 0 {
				bad("stage %d: min_samples %d is negative", i+1, s.MinSamples)
			}
			if p.MaxStageDuration > 0 && s.MinDuration > p.MaxStageDuration {
				bad("stage %d: min_duration %v exceeds max_stage_duration %v", i+1, s.MinDuration.D(), p.MaxStageDuration.D())
			}
		}
		prev = s.Weight
	}
	if p.MaxStageDuration <= 0 {
		bad("max_stage_duration %v must be positive", p.MaxStageDuration.D())
	}
	switch p.OnInconclusive {
	case InconclusiveExtend, InconclusivePause, InconclusiveRollback:
	default:
		bad("on_inconclusive %q must be extend, pause or rollback", p.OnInconclusive)
	}
	if !(p.Alpha > 0 && p.Alpha < 0.5) {
		bad("alpha %v must be in (0, 0.5)", p.Alpha)
	}
	for _, m := range sortedMetrics(p.AlphaWeights) {
		if _, ok := MetricKind(m); !ok {
			bad("alpha_weights: unknown metric %q", m)
		} else if w := p.AlphaWeights[m]; !(w > 0) || math.IsInf(w, 0) {
			bad("alpha_weights: %s weight %v must be positive", m, w)
		}
	}
	if !(p.HarmMargin >= 0 && p.HarmMargin < 1) {
		bad("harm_margin %v must be in [0, 1)", p.HarmMargin)
	}
	if p.MinTestUsers < 2 {
		bad("min_test_users %d must be at least 2", p.MinTestUsers)
	}
	if !(p.SRMAlpha > 0 && p.SRMAlpha < 0.5) {
		bad("srm_alpha %v must be in (0, 0.5)", p.SRMAlpha)
	}
	if p.MinTestSamples < 10 {
		bad("min_test_samples %d must be at least 10", p.MinTestSamples)
	}
	if len(p.Tolerances) == 0 {
		bad("tolerances must name at least one metric")
	}
	for _, m := range sortedMetrics(p.Tolerances) {
		kind, ok := MetricKind(m)
		tol := p.Tolerances[m]
		switch {
		case !ok:
			bad("tolerances: unknown metric %q", m)
		case !(tol > 0) || math.IsInf(tol, 0):
			bad("tolerances: %s tolerance %v must be positive", m, tol)
		case kind != KindRelative && tol >= 1:
			bad("tolerances: %s tolerance %v must be below 1 (it is in absolute units of a rate or score)", m, tol)
		}
	}
	for _, m := range p.Required {
		if _, ok := p.Tolerances[m]; !ok {
			bad("required metric %q has no tolerance", m)
		}
	}
	if p.Baseline < 0 {
		bad("baseline %v must not be negative", p.Baseline.D())
	}
	if !(p.TailQuantile >= 0.5 && p.TailQuantile < 1) {
		bad("tail_quantile %v must be in [0.5, 1)", p.TailQuantile)
	}
	if !(p.Power > 0 && p.Power < 1) {
		bad("power %v must be in (0, 1)", p.Power)
	}
	for name, raw := range p.Models {
		base := p
		base.Models = nil
		o := base.clone()
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&o); err != nil {
			bad("models.%s: %v", name, err)
			continue
		}
		if _, ok := o.Models[name]; ok || len(o.Models) > 0 {
			bad("models.%s: overrides cannot nest models", name)
		}
	}
	return errors.Join(errs...)
}

// EvaluatedStages returns the stages that are evaluated: every stage below
// 100 %. Passing the last one promotes.
func (p Policy) EvaluatedStages() []Stage {
	out := make([]Stage, 0, len(p.Stages))
	for _, s := range p.Stages {
		if s.Weight < 100 {
			out = append(out, s)
		}
	}
	return out
}

// MetricAlpha returns m's share of Alpha for its harm test over the whole
// rollout: Alpha times m's weight over the sum of the weights of the
// metrics the policy tests. A metric without a weight gets the smallest
// weight given.
func (p Policy) MetricAlpha(m Metric) float64 {
	weights := p.AlphaWeights
	if len(weights) == 0 {
		weights = DefaultAlphaWeights()
	}
	floor := math.Inf(1)
	for _, w := range weights {
		floor = math.Min(floor, w)
	}
	weight := func(k Metric) float64 {
		if w, ok := weights[k]; ok {
			return w
		}
		return floor
	}
	var sum float64
	for _, k := range sortedMetrics(p.Tolerances) { // in order: the same sum every time
		sum += weight(k)
	}
	if sum <= 0 {
		return p.Alpha
	}
	return p.Alpha * weight(m) / sum
}

// HarmAlpha is the level of m's harm test at one stage: MetricAlpha for
// an event metric, whose test spans the rollout, and MetricAlpha split
// evenly among the evaluated stages for a mean metric, whose test restarts
// with each stage's window.
func (p Policy) HarmAlpha(m Metric) float64 {
	a := p.MetricAlpha(m)
	if IsEventMetric(m) {
		return a
	}
	if n := len(p.EvaluatedStages()); n > 0 {
		return a / float64(n)
	}
	return a
}

// sortedMetrics returns the metrics of m in AllMetrics' order, unknown
// ones last in name order.
func sortedMetrics[V any](m map[Metric]V) []Metric {
	out := make([]Metric, 0, len(m))
	for _, k := range AllMetrics {
		if _, ok := m[k]; ok {
			out = append(out, k)
		}
	}
	var rest []Metric
	for k := range m {
		if !slices.Contains(AllMetrics, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	return append(out, rest...)
}
