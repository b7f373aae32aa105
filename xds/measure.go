package xds

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/llmcanary/llmcanary/extproc/envoyconfig"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Measure says which requests the gateway's telemetry filter times. Timing a
// request (one ext_proc stream, a message per response chunk) costs far more
// than routing it, and the analysis needs only part of the traffic: every
// canary request, and a stable sample of comparable size drawn by user. So:
//
//   - every request to a canary is measured, and so is every forced or
//     category-routed request;
//   - during a rollout, a stable user is measured when their sample key is
//     below the stable rate, sized so that stable's measured traffic is
//     StableRatio times the canaries', and never below StableMin of
//     stable's users (the first stages' canaries are small, and a test
//     against a few hundred stable users learns stable's rates slowly);
//   - with no rollout running, a user is measured when their background key
//     is below Background;
//   - All measures every request;
//   - while a shadow stage mirrors a share of the model's requests, at
//     least that share of stable's users is measured: the mirrored requests
//     are drawn from the measured users (see weightedRoutes), so the user's
//     answer of every pair is timed and its text kept.
//
// The keys come from the wasm filter; without it every request is
// measured. Every request, measured or not, is also recorded by Envoy's
// access log (status, duration, bytes, version), so counts stay complete.
type Measure struct {
	// StableRatio is stable's measured traffic over the canaries' during
	// a rollout. Zero means DefaultStableRatio; the stable rate is capped
	// at 1.
	StableRatio float64 `json:"stable_ratio,omitempty"`
	// StableMin is the least share of stable's users measured during a
	// rollout. Zero means DefaultStableMin; negative means none.
	StableMin float64 `json:"stable_min,omitempty"`
	// Background is the share of users measured on a model without a
	// rollout. Zero means DefaultBackground; negative turns it off.
	Background float64 `json:"background,omitempty"`
	// All measures every request, as if every rate were 1.
	All bool `json:"all,omitempty"`
}

// Defaults of Measure.
const (
	DefaultStableRatio = 2
	DefaultStableMin   = 0.2
	DefaultBackground  = 0.01
)

// WithDefaults fills the zero fields.
func (p Measure) WithDefaults() Measure {
	if p.StableRatio == 0 {
		p.StableRatio = DefaultStableRatio
	}
	if p.StableMin == 0 {
		p.StableMin = DefaultStableMin
	}
	if p.Background == 0 {
		p.Background = DefaultBackground
	}
	return p
}

// Validate rejects rates that are not rates.
func (p Measure) Validate() error {
	var errs []error
	if !(p.StableRatio >= 0) || math.IsInf(p.StableRatio, 0) {
		errs = append(errs, fmt.Errorf("measure: stable ratio %v must be a non-negative number", p.StableRatio))
	}
	if !(p.Background <= 1) || math.IsNaN(p.Background) {
		errs = append(errs, fmt.Errorf("measure: background %v must be at most 1", p.Background))
	}
	if !(p.StableMin <= 1) || math.IsNaN(p.StableMin) {
		errs = append(errs, fmt.Errorf("measure: stable minimum %v must be at most 1", p.StableMin))
	}
	return errors.Join(errs...)
}

// Sampling is how one model's traffic is measured under the current
// weights: the control plane publishes it in the routes, and the analyzer
// reads it to know each arm's share of measured users.
type Sampling struct {
	// StableRate is the share of stable's users that are measured, in
	// [0, 1], a multiple of 1/wire.SampleScale.
	StableRate float64 `json:"stable_rate"`
	// Key is the request header whose key selects the measured stable
	// users (wire.HeaderSample during a rollout, wire.HeaderBackground
	// without one); empty when the rate is 0 or 1 and no key is needed.
	Key string `json:"key,omitempty"`
	// CanaryRate is the share of every other version's users that are
	// measured: always 1 while any request is measured.
	CanaryRate float64 `json:"canary_rate"`
}

// threshold is the number of sample keys, of wire.SampleScale, that
// StableRate measures.
func (s Sampling) threshold() int64 { return int64(math.Round(s.StableRate * wire.SampleScale)) }

// SamplingOf returns how m's traffic is measured under policy p. keyed says
// whether a filter sets the sampling keys; without them only "all" or
// "nothing" can be chosen per version, and all is chosen. It is pure: the
// translator and the management API both call it.
func SamplingOf(m *Model, p Measure, keyed bool) Sampling {
	all := Sampling{StableRate: 1, CanaryRate: 1}
	if p.All || !keyed {
		return all
	}
	p = p.WithDefaults()
	bps := m.BasisPoints()
	var stable, canary float64
	for i, w := range bps {
		if i == 0 {
			stable = float64(w)
		} else {
			canary += float64(w)
		}
	}
	var rate float64
	key := wire.HeaderSample
	switch {
	case stable == 0:
		return all
	case canary == 0:
		rate, key = max(p.Background, 0), wire.HeaderBackground
	default:
		rate = max(p.StableRatio*canary/stable, p.StableMin)
		if rate > 0 {
			// Never round a wanted sample down to nothing.
			rate = max(rate, 1.0/wire.SampleScale)
		}
	}
	if m.Shadow.Mirrors() {
		rate = max(rate, m.Shadow.Percent/100)
	}
	rate = math.Round(min(rate, 1)*wire.SampleScale) / wire.SampleScale
	s := Sampling{StableRate: rate, CanaryRate: 1}
	if rate > 0 && rate < 1 {
		s.Key = key
	}
	return s
}

// Measurer is an Extension that can be switched on and off per route and per
// weighted cluster: the telemetry filter. The translator decides which
// traffic is measured (SamplingOf) and asks the Measurer for the settings.
type Measurer interface {
	Extension
	// MeasurePolicy is the policy the translator applies.
	MeasurePolicy() Measure
	// PerRoute returns the filter's name and its per-route settings for
	// traffic to served measured at rate in [0, 1]; 0 switches it off.
	// captureAll keeps the text of every request measured there.
	PerRoute(rate float64, served envoyconfig.Served, captureAll bool) (filter string, config *anypb.Any, err error)
}

// KeySetter is an Extension that sets the sampling keys (wire.HeaderSample,
// wire.HeaderBackground) on every routed request: the wasm filter.
type KeySetter interface {
	Extension
	SetsSamplingKeys() bool
}

// measuring is what the translator needs from the gateway's extensions.
type measuring struct {
	m     Measurer // nil: no telemetry filter, nothing to switch
	keyed bool
}

func measuringOf(g Gateway) measuring {
	var ms measuring
	for _, ext := range g.Extensions {
		if m, ok := ext.(Measurer); ok {
			ms.m = m
		}
		if k, ok := ext.(KeySetter); ok && k.SetsSamplingKeys() {
			ms.keyed = true
		}
	}
	return ms
}

// perRoute returns the typed_per_filter_config for traffic to served
// measured at rate, or nil when there is no telemetry filter.
func (ms measuring) perRoute(rate float64, served envoyconfig.Served, captureAll bool) (map[string]*anypb.Any, error) {
	if ms.m == nil {
		return nil, nil
	}
	name, cfg, err := ms.m.PerRoute(rate, served, captureAll)
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{name: cfg}, nil
}

// sampling returns m's sampling, or nil when there is no telemetry filter.
func (ms measuring) sampling(m *Model) *Sampling {
	if ms.m == nil {
		return nil
	}
	s := SamplingOf(m, ms.m.MeasurePolicy(), ms.keyed)
	return &s
}

// servedBy is what a route to m's version v serves: its cluster, model,
// version and prices, with which a timed request's telemetry stream opens.
func servedBy(m *Model, v Version) envoyconfig.Served {
	return envoyconfig.Served{
		Cluster: ClusterName(m.Name, v.Name), Model: m.Name, Version: v.Name,
		PriceInputPer1K: v.Metadata.PriceInputPer1K, PriceOutputPer1K: v.Metadata.PriceOutputPer1K,
	}
}
