package analyzer

import (
	"fmt"
	"math"
	"testing"
)

// BenchmarkRolloutDecisions runs simulated rollouts through the analyzer's
// own Decide at the runner's cadence, with sticky users of skewed
// activity, per-user latency and answer quality, a daily traffic cycle and
// the stages' weight changes: one row per scenario, 1000 rollouts each,
// next to the naive fixed-horizon test re-run at every look.
func BenchmarkRolloutDecisions(b *testing.B) {
	fmt.Printf("\nsimulated rollouts through analyzer.Decide (seed 7, 1000 each)\n")
	fmt.Printf("  %-18s %9s %9s %9s %8s %8s %15s %13s  %s\n", "scenario", "promoted", "rollback", "paused", "srm", "naive", "canary@rollback", "canary@promote", "target")
	for _, sc := range Scenarios(1000, 7) {
		res, err := SimulateRollouts(sc.Config)
		if err != nil {
			b.Fatal(err)
		}
		pct := func(n int) string { return fmt.Sprintf("%.1f %%", 100*float64(n)/float64(res.Rollouts)) }
		fmt.Printf("  %-18s %9s %9s %9s %8s %8s %15s %13s  %s\n", sc.Name, pct(res.Promoted), pct(res.RolledBack), pct(res.Paused), pct(res.SRMPaused),
			fmt.Sprintf("%.1f %%", 100*res.NaiveRate), medP95(res.MedianCanaryAtRollback, res.P95CanaryAtRollback), num(res.MedianCanaryToPromote), sc.Target)
	}
	for b.Loop() {
	}
}

func medP95(med, p95 float64) string {
	if math.IsNaN(med) {
		return "-"
	}
	return fmt.Sprintf("%.0f / %.0f", med, p95)
}

func num(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.0f", x)
}
