package xds

import (
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
)

func TestSamplingOf(t *testing.T) {
	model := func(weights map[string]float64) *Model {
		return &Model{Name: "m", Stable: "v1", Versions: []Version{{Name: "v1"}, {Name: "v2"}, {Name: "v3"}}, Weights: weights}
	}
	all := Sampling{StableRate: 1, CanaryRate: 1}
	cases := []struct {
		name    string
		weights map[string]float64
		policy  Measure
		keyed   bool
		want    Sampling
	}{
		{"no rollout: the background share of users, by the background key", map[string]float64{"v1": 100}, Measure{}, true,
			Sampling{StableRate: 0.01, Key: wire.HeaderBackground, CanaryRate: 1}},
		{"no rollout, background off: nothing measured", map[string]float64{"v1": 100}, Measure{Background: -1}, true,
			Sampling{StableRate: 0, CanaryRate: 1}},
		{"a 2 % canary: at least a fifth of stable's users", map[string]float64{"v1": 98, "v2": 2}, Measure{}, true,
			Sampling{StableRate: 0.2, Key: wire.HeaderSample, CanaryRate: 1}},
		{"a 25 % canary: stable sampled to twice the canary's traffic", map[string]float64{"v1": 75, "v2": 25}, Measure{}, true,
			Sampling{StableRate: 0.6667, Key: wire.HeaderSample, CanaryRate: 1}},
		{"a 5 % canary without a minimum: twice its traffic", map[string]float64{"v1": 95, "v2": 5}, Measure{StableMin: -1}, true,
			Sampling{StableRate: 0.1053, Key: wire.HeaderSample, CanaryRate: 1}},
		{"two canaries count together", map[string]float64{"v1": 80, "v2": 10, "v3": 10}, Measure{StableRatio: 1, StableMin: -1}, true,
			Sampling{StableRate: 0.25, Key: wire.HeaderSample, CanaryRate: 1}},
		{"a canary at half: stable capped at every user", map[string]float64{"v1": 50, "v2": 50}, Measure{}, true, all},
		{"a tiny canary still samples some stable users", map[string]float64{"v1": 99.99, "v2": 0.01}, Measure{StableRatio: 0.1, StableMin: -1}, true,
			Sampling{StableRate: 0.0001, Key: wire.HeaderSample, CanaryRate: 1}},
		{"no stable traffic: everything is canary and measured", map[string]float64{"v2": 100}, Measure{}, true, all},
		{"all: every request", map[string]float64{"v1": 95, "v2": 5}, Measure{All: true}, true, all},
		{"no filter sets the keys: every request", map[string]float64{"v1": 95, "v2": 5}, Measure{}, false, all},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := SamplingOf(model(c.weights), c.policy, c.keyed); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestMeasureRejectsRatesThatAreNotRates(t *testing.T) {
	for _, p := range []Measure{{StableRatio: -1}, {Background: 1.5}, {StableMin: 2}} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v: accepted", p)
		}
	}
	if err := (Measure{StableRatio: 3, Background: 0.05}).Validate(); err != nil {
		t.Errorf("a valid policy was rejected: %v", err)
	}
}

func TestAShadowStageMeasuresAtLeastTheMirroredShareOfStablesUsers(t *testing.T) {
	m := &Model{Name: "m", Stable: "v1", Versions: []Version{{Name: "v1"}, {Name: "v2"}}, Weights: map[string]float64{"v1": 100},
		Shadow: &Shadow{Version: "v2", Percent: 25}}
	if got, want := SamplingOf(m, Measure{}, true), (Sampling{StableRate: 0.25, Key: wire.HeaderBackground, CanaryRate: 1}); got != want {
		t.Fatalf("shadow before the user stages: %+v, want %+v", got, want)
	}
	m.Weights = map[string]float64{"v1": 98, "v2": 2}
	if got, want := SamplingOf(m, Measure{}, true), (Sampling{StableRate: 0.25, Key: wire.HeaderSample, CanaryRate: 1}); got != want {
		t.Fatalf("shadow beside a 2 %% canary: %+v, want %+v", got, want)
	}
	m.Shadow.Percent = 5
	if got, want := SamplingOf(m, Measure{}, true), (Sampling{StableRate: 0.2, Key: wire.HeaderSample, CanaryRate: 1}); got != want {
		t.Fatalf("a shadow share below the rollout's sample changes nothing: %+v, want %+v", got, want)
	}
	m.Shadow.Percent = 0
	m.Weights = map[string]float64{"v1": 100}
	if got := SamplingOf(m, Measure{}, true); got.StableRate != 0.01 {
		t.Fatalf("a mirror switched off leaves the background rate: %+v", got)
	}
}
