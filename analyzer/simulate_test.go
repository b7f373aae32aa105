package analyzer

import (
	"testing"
)

// TestDecisionRulesBySimulation runs the validation scenarios through
// Decide itself. Rollout counts are smaller with -short.
func TestDecisionRulesBySimulation(t *testing.T) {
	n := map[string]int{"aa": 1000, "quality": 100, "p99": 100, "healthy": 100, "boundary": 300}
	if testing.Short() {
		n = map[string]int{"aa": 100, "quality": 50, "p99": 50, "healthy": 50, "boundary": 50}
	}
	for _, sc := range Scenarios(0, 7) {
		t.Run(sc.Name, func(t *testing.T) {
			cfg := sc.Config
			cfg.Rollouts = n[sc.Name]
			r, err := SimulateRollouts(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %v; rollbacks by metric %v", sc.Name, r, r.RollbackMetrics)
			alpha := cfg.Policy.Alpha
			switch sc.Name {
			case "aa":
				if r.RollbackRate > alpha {
					t.Errorf("A/A false rollback rate %.3f above alpha %v", r.RollbackRate, alpha)
				}
				if r.NaiveRate <= r.RollbackRate {
					t.Errorf("the naive per-look test (%.3f) should roll back more often than the sequential rules (%.3f)", r.NaiveRate, r.RollbackRate)
				}
			case "quality":
				if r.RollbackRate < 0.9 || r.RollbackMetrics[MetricQuality] < r.RolledBack*9/10 {
					t.Errorf("quality 0.97 to 0.86 rolled back in %.2f of rollouts (by quality %d), want at least 0.9", r.RollbackRate, r.RollbackMetrics[MetricQuality])
				}
			case "p99":
				if r.RollbackRate < 0.9 || r.RollbackMetrics[MetricLatencyP99] < r.RolledBack*9/10 {
					t.Errorf("+30 %% p99 rolled back in %.2f of rollouts (by latency_p99 %d), want at least 0.9", r.RollbackRate, r.RollbackMetrics[MetricLatencyP99])
				}
			case "boundary":
				if r.RollbackRate > alpha {
					t.Errorf("a canary exactly at its tolerances rolled back in %.3f of rollouts, above alpha %v", r.RollbackRate, alpha)
				}
			case "healthy":
				if float64(r.Promoted) < 0.9*float64(r.Rollouts) {
					t.Errorf("healthy canary promoted in %d of %d rollouts, want at least 90 %%", r.Promoted, r.Rollouts)
				}
				if r.RollbackRate > alpha {
					t.Errorf("healthy canary rolled back in %.3f of rollouts", r.RollbackRate)
				}
			}
		})
	}
}
