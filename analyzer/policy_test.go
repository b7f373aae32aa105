package analyzer

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

func TestDefaultPolicyIsValid(t *testing.T) {
	p := DefaultPolicy()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := len(p.EvaluatedStages()); got != 5 {
		t.Errorf("evaluated stages %d, want 5 (2, 5, 10, 25, 50; 100 is the promotion)", got)
	}
	var sum float64
	for m := range p.Tolerances {
		sum += p.MetricAlpha(m)
	}
	if math.Abs(sum-p.Alpha) > 1e-12 {
		t.Errorf("the metrics' shares of alpha sum to %v, want the whole %v", sum, p.Alpha)
	}
	if p.MetricAlpha(MetricQuality) <= p.MetricAlpha(MetricLatency) || p.MetricAlpha(MetricErrorRate) <= p.MetricAlpha(MetricCostPerRequest) {
		t.Error("errors and bad answers should weigh more than means and costs")
	}
	if a, b := p.HarmAlpha(MetricLatency), p.MetricAlpha(MetricLatency)/5; math.Abs(a-b) > 1e-15 {
		t.Errorf("a mean metric's stage level %v, want its share split over 5 stages (%v)", a, b)
	}
	if p.HarmAlpha(MetricErrorRate) != p.MetricAlpha(MetricErrorRate) {
		t.Error("an event metric's test spans the rollout and keeps its whole share")
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr []string
		check   func(t *testing.T, p Policy)
	}{
		{
			name: "fields left out keep their defaults",
			yaml: "alpha: 0.02\n",
			check: func(t *testing.T, p Policy) {
				if p.Alpha != 0.02 || len(p.Stages) != 6 || p.Tolerances[MetricLatency] != 0.10 {
					t.Errorf("got %+v", p)
				}
			},
		},
		{
			name: "a tolerances map lists exactly the metrics tested",
			yaml: "tolerances: {latency: 0.2, error_rate: 0.02}\n",
			check: func(t *testing.T, p Policy) {
				if len(p.Tolerances) != 2 || p.Tolerances[MetricLatency] != 0.2 {
					t.Errorf("tolerances %v", p.Tolerances)
				}
			},
		},
		{
			name: "durations read as Go durations",
			yaml: "stages:\n- {weight: 1, min_duration: 90s, min_samples: 10}\n- {weight: 100}\nmax_stage_duration: 30m\n",
			check: func(t *testing.T, p Policy) {
				if p.Stages[0].MinDuration.D() != 90*time.Second || p.MaxStageDuration.D() != 30*time.Minute {
					t.Errorf("stages %+v max %v", p.Stages, p.MaxStageDuration.D())
				}
			},
		},
		{
			name: "per-model overrides change only their fields",
			yaml: "models:\n  big-model:\n    tolerances: {latency: 0.05}\n    on_inconclusive: rollback\n",
			check: func(t *testing.T, p Policy) {
				o, err := p.For("big-model")
				if err != nil {
					t.Fatal(err)
				}
				if o.Tolerances[MetricLatency] != 0.05 || o.Tolerances[MetricErrorRate] != 0.01 || o.OnInconclusive != InconclusiveRollback {
					t.Errorf("override gave %+v", o)
				}
				d, _ := p.For("other")
				if d.Tolerances[MetricLatency] != 0.10 || d.OnInconclusive != InconclusivePause {
					t.Errorf("another model got %+v", d)
				}
				if p.Tolerances[MetricLatency] != 0.10 {
					t.Error("For changed the base policy")
				}
			},
		},
		{name: "unknown fields are rejected", yaml: "alpah: 0.1\n", wantErr: []string{"alpah"}},
		{
			name:    "every problem is reported at once",
			yaml:    "alpha: 2\nstages: [{weight: 10}, {weight: 5}]\ntolerances: {latency: -1, bogus: 1}\non_inconclusive: shrug\nrequired: [quality]\n",
			wantErr: []string{"alpha 2", "must be above the previous", "latency tolerance -1", "unknown metric \"bogus\"", "on_inconclusive \"shrug\"", "required metric \"quality\""},
		},
		{name: "a model override with a typo is rejected", yaml: "models:\n  m: {tolerance: {latency: 1}}\n", wantErr: []string{"models.m"}},
		{name: "weight 100 must come last", yaml: "stages: [{weight: 100}, {weight: 50}]\n", wantErr: []string{"must come last"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tc.yaml))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, p)
		})
	}
}

func TestGradeRisk(t *testing.T) {
	base := xds.VersionMetadata{BaseModel: "llama-3-8b", Family: "llama", ParametersB: 8, WeightsHash: "sha256:aaa"}
	with := func(f func(*xds.VersionMetadata)) xds.VersionMetadata { m := base; f(&m); return m }
	tests := []struct {
		name           string
		stable, canary xds.VersionMetadata
		want           Risk
	}{
		{"same weights is a config change", base, with(func(m *xds.VersionMetadata) { m.ConfigHash = "x" }), RiskLow},
		{"same base model is a fine-tune", base, with(func(m *xds.VersionMetadata) { m.WeightsHash = "sha256:bbb" }), RiskMedium},
		{"same family at another size is high", base, with(func(m *xds.VersionMetadata) { m.WeightsHash, m.BaseModel, m.ParametersB = "b", "llama-3-70b", 70 }), RiskHigh},
		{"another family is critical", base, xds.VersionMetadata{Family: "mistral", BaseModel: "mistral-7b", ParametersB: 7, WeightsHash: "c"}, RiskCritical},
		{"missing metadata is high", xds.VersionMetadata{}, xds.VersionMetadata{}, RiskHigh},
		{"empty hashes do not count as the same weights", with(func(m *xds.VersionMetadata) { m.WeightsHash = "" }), with(func(m *xds.VersionMetadata) { m.WeightsHash = "" }), RiskMedium},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := GradeRisk(tc.stable, tc.canary)
			if got != tc.want || why == "" {
				t.Errorf("got %s (%q), want %s", got, why, tc.want)
			}
		})
	}
}

func TestPlanFor(t *testing.T) {
	base := DefaultPolicy()
	m := xds.VersionMetadata{BaseModel: "b", Family: "f", ParametersB: 8, WeightsHash: "h"}
	other := xds.VersionMetadata{BaseModel: "o", Family: "g", ParametersB: 7, WeightsHash: "o"}
	tests := []struct {
		name          string
		canary        xds.VersionMetadata
		strategy      Strategy
		first         float64
		latencyTol    float64
		onInconcl     Inconclusive
		firstMinScale float64
	}{
		{"low risk moves in few large steps", m, StrategyFastCanary, 10, 0.10, InconclusivePause, 0.5},
		{"medium risk runs the policy as configured", func() xds.VersionMetadata { c := m; c.WeightsHash = "h2"; return c }(), StrategyCanary, 2, 0.10, InconclusivePause, 1},
		{"critical risk starts at 1 % with half the tolerance", other, StrategyCarefulCanary, 1, 0.05, InconclusivePause, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := PlanFor(base, m, tc.canary)
			if err := p.Policy.Validate(); err != nil {
				t.Fatalf("plan policy invalid: %v", err)
			}
			ev := p.Policy.EvaluatedStages()
			if p.Strategy != tc.strategy || ev[0].Weight != tc.first || p.Policy.Tolerances[MetricLatency] != tc.latencyTol || p.Policy.OnInconclusive != tc.onInconcl {
				t.Errorf("plan %s first %v latency tolerance %v inconclusive %s", p.Strategy, ev[0].Weight, p.Policy.Tolerances[MetricLatency], p.Policy.OnInconclusive)
			}
			if got, want := ev[0].MinDuration.D(), time.Duration(float64(base.Stages[0].MinDuration.D())*tc.firstMinScale); got != want {
				t.Errorf("first stage min duration %v, want %v", got, want)
			}
			if p.MinEvaluation <= 0 {
				t.Error("no evaluation time")
			}
			if last := p.Policy.Stages[len(p.Policy.Stages)-1]; last.Weight != 100 {
				t.Errorf("plan does not end in promotion: %+v", p.Policy.Stages)
			}
		})
	}
}
