package bench

import (
	"fmt"
	"testing"

	"github.com/llmcanary/llmcanary/analyzer"
)

// BenchmarkRolloutDecisions runs simulated rollouts through the analyzer's
// own Decide, one look per interval: the A/A false-rollback rate next to the
// rate a naive fixed-horizon test re-run at every look gives, and how fast
// real regressions are caught.
func BenchmarkRolloutDecisions(b *testing.B) {
	fmt.Printf("\nsimulated rollouts through analyzer.Decide (seed 7)\n")
	for _, sc := range analyzer.Scenarios(1000, 7) {
		res, err := analyzer.SimulateRollouts(sc.Config)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Printf("  %-44s %s\n", sc.Name, res)
	}
	for i := 0; i < b.N; i++ {
	}
}
