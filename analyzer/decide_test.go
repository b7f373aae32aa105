package analyzer

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// testArm is the simulated version the decision tests draw from.
func testArm() ArmModel { return Scenarios(1, 1)[0].Config.Stable }

// window draws nStable and nCanary requests from the two models.
func window(seed uint64, nStable, nCanary int, stable, canary ArmModel) Measurements {
	r := rand.New(rand.NewPCG(seed, 99))
	m := Measurements{Model: "m", From: t0, Stable: Arm{Version: "v1"}, Canary: Arm{Version: "v2"}}
	for range nStable {
		draw(&m.Stable, stable, r)
	}
	for range nCanary {
		draw(&m.Canary, canary, r)
	}
	return m
}

// testPolicy has stages of 20 % and 50 %, ten minutes and 2000 canary
// requests each, at most an hour.
func testPolicy() Policy {
	p := DefaultPolicy()
	p.Stages = []Stage{
		{Weight: 20, MinDuration: config.Duration(10 * time.Minute), MinSamples: 2000},
		{Weight: 50, MinDuration: config.Duration(10 * time.Minute), MinSamples: 2000},
		{Weight: 100},
	}
	p.MaxStageDuration = config.Duration(time.Hour)
	return p
}

func TestDecide(t *testing.T) {
	healthy := testArm()
	erroring := healthy
	erroring.ErrorRate = 0.10
	worseQuality := healthy
	worseQuality.Quality, worseQuality.QualityShare = func(r *rand.Rand) float64 {
		if r.Float64() < 0.86 {
			return 1
		}
		return 0
	}, 1
	slow := healthy
	slow.LatencyMs = func(r *rand.Rand) float64 { return 1.5 * healthy.LatencyMs(r) }
	noQuality := healthy
	noQuality.Quality = nil
	requireQuality := testPolicy()
	requireQuality.Required = append(requireQuality.Required, MetricQuality)
	extend, rollback := testPolicy(), testPolicy()
	extend.OnInconclusive, rollback.OnInconclusive = InconclusiveExtend, InconclusiveRollback

	big := window(1, 40000, 10000, healthy, healthy)
	tests := []struct {
		name     string
		policy   Policy
		stage    int
		m        Measurements
		elapsed  time.Duration
		action   Action
		code     Code
		contains []string
	}{
		{"no data at all holds", testPolicy(), 0, window(1, 0, 0, healthy, healthy), 20 * time.Minute, ActionHold, CodeNoData, []string{"neither version"}},
		{"canary without requests holds", testPolicy(), 0, window(1, 500, 0, healthy, healthy), 20 * time.Minute, ActionHold, CodeNoData, []string{"canary v2"}},
		{"stable without requests holds", testPolicy(), 0, window(1, 0, 500, healthy, healthy), 20 * time.Minute, ActionHold, CodeNoData, []string{"stable version v1"}},
		{"too few requests to test holds", testPolicy(), 0, window(1, 400, 50, healthy, healthy), 20 * time.Minute, ActionHold, CodeTooFewSamples, []string{"50 canary"}},
		{"sample-ratio mismatch pauses instead of rolling back", testPolicy(), 0, window(1, 8000, 4000, healthy, erroring), 20 * time.Minute, ActionPause, CodeSRM, []string{"33.33 %", "20 % is configured"}},
		{"error rate beyond tolerance rolls back", testPolicy(), 0, window(1, 8000, 2000, healthy, erroring), 2 * time.Minute, ActionRollback, CodeHarm, []string{"error_rate", "pts", "p="}},
		{"worse answers roll back on quality", testPolicy(), 0, window(1, 8000, 2000, func() ArmModel { a := healthy; a.QualityShare = 1; return a }(), worseQuality), 2 * time.Minute, ActionRollback, CodeHarm, []string{"quality"}},
		{"slower canary rolls back on latency", testPolicy(), 0, window(1, 8000, 2000, healthy, slow), 2 * time.Minute, ActionRollback, CodeHarm, []string{"latency +5"}},
		{"healthy canary advances after the minimum time and samples", testPolicy(), 0, big, 11 * time.Minute, ActionAdvance, CodeWithinTolerance, []string{"20 % to 50 %"}},
		{"healthy canary is promoted after the last stage", testPolicy(), 1, window(2, 10000, 10000, healthy, healthy), 11 * time.Minute, ActionPromote, CodeWithinTolerance, []string{"last stage (50 %)"}},
		{"before the minimum time holds", testPolicy(), 0, big, 5 * time.Minute, ActionHold, CodeMinDuration, []string{"of the stage's minimum 10m0s"}},
		{"before the minimum samples holds", testPolicy(), 0, window(3, 6000, 1500, healthy, healthy), 11 * time.Minute, ActionHold, CodeMinSamples, []string{"1500 of 2000 canary requests"}},
		{"metrics not yet within tolerance hold", testPolicy(), 0, window(3, 800, 200, healthy, healthy), 11 * time.Minute, ActionHold, CodeMinSamples, []string{"not yet shown within tolerance"}},
		{"a required metric without data holds", requireQuality, 0, window(1, 40000, 10000, noQuality, noQuality), 11 * time.Minute, ActionHold, CodeRequiredMissing, []string{"quality"}},
		{"an inconclusive stage pauses by default", testPolicy(), 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionPause, CodeInconclusive, []string{"inconclusive", "a human decides"}},
		{"an inconclusive stage extends when the policy says so", extend, 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionHold, CodeInconclusive, []string{"extends"}},
		{"an inconclusive stage rolls back when the policy says so", rollback, 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionRollback, CodeInconclusive, []string{"rolls back inconclusive"}},
		{"a stage outside the policy holds", testPolicy(), 5, big, 11 * time.Minute, ActionHold, CodeInvalidStage, []string{"does not exist"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.policy.Validate(); err != nil {
				t.Fatal(err)
			}
			d, _ := Decide(tc.policy, NewStageState(tc.stage, t0), tc.m, t0.Add(tc.elapsed))
			if d.Action != tc.action || d.Code != tc.code {
				t.Fatalf("got %s/%s, want %s/%s: %s", d.Action, d.Code, tc.action, tc.code, d.Reason)
			}
			for _, s := range tc.contains {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q does not mention %q", d.Reason, s)
				}
			}
			if !strings.HasPrefix(d.Reason, string(d.Action)+": ") {
				t.Errorf("reason %q does not start with the action", d.Reason)
			}
		})
	}
}

func TestDecideRollbackNamesEffectIntervalAndPValue(t *testing.T) {
	erroring := testArm()
	erroring.ErrorRate = 0.10
	d, _ := Decide(testPolicy(), NewStageState(0, t0), window(1, 8000, 2000, testArm(), erroring), t0.Add(time.Minute))
	var er *MetricResult
	for i := range d.Metrics {
		if d.Metrics[i].Metric == MetricErrorRate {
			er = &d.Metrics[i]
		}
	}
	if er == nil || er.Status != StatusHarm || er.CI == nil || er.CI.Lo <= er.Tolerance || er.HarmPAdjusted > d.Alpha || er.NCanary != 2000 {
		t.Fatalf("error_rate result %+v does not show significant harm with its interval", er)
	}
	if d.SRM == nil || d.SRM.Mismatch {
		t.Fatalf("SRM %+v: want a passed check", d.SRM)
	}
}

func TestDecideIsPureAndPValuesNeverRise(t *testing.T) {
	p := testPolicy()
	healthy := testArm()
	st := NewStageState(0, t0)
	before := st.clone()
	m := window(5, 4000, 1000, healthy, healthy)
	d1, s1 := Decide(p, st, m, t0.Add(time.Minute))
	d2, _ := Decide(p, st, m, t0.Add(time.Minute))
	if !reflect.DeepEqual(d1, d2) {
		t.Fatal("the same inputs gave different decisions")
	}
	if !reflect.DeepEqual(st, before) {
		t.Fatal("Decide changed its input state")
	}
	// A later look with less favourable data must not raise the p-values
	// or widen the intervals.
	worse := window(6, 4400, 1100, healthy, func() ArmModel { a := healthy; a.ErrorRate = 0.018; return a }())
	_, s2 := Decide(p, s1, worse, t0.Add(2*time.Minute))
	for metric, a := range s1.Metrics {
		b := s2.Metrics[metric]
		if b.HarmP > a.HarmP || b.SafeP > a.SafeP {
			t.Errorf("%s: p-values rose from %v/%v to %v/%v", metric, a.HarmP, a.SafeP, b.HarmP, b.SafeP)
		}
		if a.CI != nil && (b.CI.Lo < a.CI.Lo || b.CI.Hi > a.CI.Hi) {
			t.Errorf("%s: interval widened from %v to %v", metric, *a.CI, *b.CI)
		}
	}
	if s2.Looks != 2 {
		t.Errorf("looks %d, want 2", s2.Looks)
	}
}
