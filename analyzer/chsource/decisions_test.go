package chsource

import (
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
)

func TestDecisionRowsLogEveryLookButARepeatedHoldOnlyOnceAsAnEvent(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
	ro := func(at time.Duration, repeats int) *analyzer.Rollout {
		return &analyzer.Rollout{ID: "r-1", Model: "llama", Stable: "v1", Canary: "v2", Status: analyzer.RolloutRunning,
			Plan: analyzer.Plan{Policy: analyzer.DefaultPolicy()},
			Last: &analyzer.Decision{At: t0.Add(at), Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples, Stage: 0, Weight: 2,
				Metrics: []analyzer.MetricResult{
					{Metric: analyzer.MetricLatency, Status: analyzer.StatusUndecided, Estimate: 0.1},
					{Metric: analyzer.MetricQuality, Status: analyzer.StatusNotMeasured},
				}},
			History: []analyzer.Event{{At: t0.Add(at), Kind: "decision", Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples, Reason: "hold", Repeats: repeats}},
		}
	}
	first, again := ro(time.Second, 0), ro(2*time.Second, 1)
	ev, looks := DecisionRows(nil, first)
	if len(ev) != 1 || len(looks) != 1 || looks[0].Metric != analyzer.MetricLatency || looks[0].Weight != 2 {
		t.Fatalf("first look: %d events, looks %+v", len(ev), looks)
	}
	ev, looks = DecisionRows(first, again)
	if len(ev) != 0 || len(looks) != 1 || !looks[0].At.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("the same hold again: %d events (want 0), %d looks (want 1)", len(ev), len(looks))
	}
	if ev, looks = DecisionRows(again, again); len(ev)+len(looks) != 0 {
		t.Fatalf("a change without a new look logged %d rows", len(ev)+len(looks))
	}
}
