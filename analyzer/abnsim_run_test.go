package analyzer

import (
	"math"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// TestABNDropsTheRegressedCandidateAndKeepsTheOthers: of three candidates,
// the one whose answers go from 3 % to 14 % bad is dropped in nearly every
// run; the neutral one and the faster one are not dropped.
func TestABNDropsTheRegressedCandidateAndKeepsTheOthers(t *testing.T) {
	runs := 10
	if testing.Short() {
		runs = 4
	}
	bad := armAs(BaseArm(), "v2")
	bad.BadRate = 0.14
	better := armAs(BaseArm(), "v4")
	better.LatencyMs = stats.LogNormal(math.Log(600), 0.5)
	r := SimulateABN(abnSim(runs, 21, bad, armAs(BaseArm(), "v3"), better))
	t.Logf("%d runs: dropped %v; statuses %v", r.Runs, r.Dropped, r.Status)
	if r.Dropped[0] < runs*9/10 {
		t.Errorf("the regressed candidate was dropped in %d of %d runs, want at least 90 %%", r.Dropped[0], runs)
	}
	if r.Dropped[1] > 0 || r.Dropped[2] > 0 {
		t.Errorf("the neutral and the better candidate were dropped in %d and %d of %d runs, want 0", r.Dropped[1], r.Dropped[2], runs)
	}
}

// TestABNAAAFamilyWiseFalseDropsStayBelowAlpha: three candidates identical
// to stable; the runs that drop any candidate (the family-wise error over
// candidates × metrics) stay below alpha: the test fails when the 99 %
// interval of their rate lies above it. `make bench` runs more.
func TestABNAAAFamilyWiseFalseDropsStayBelowAlpha(t *testing.T) {
	runs := 200
	if testing.Short() {
		runs = 20
	}
	cfg := abnSim(runs, 23, armAs(BaseArm(), "v2"), armAs(BaseArm(), "v3"), armAs(BaseArm(), "v4"))
	// Fewer, sparser looks than the runner's keep 200 runs fast; the
	// benchmark runs the full cadence.
	cfg.Duration, cfg.LookEvery = 10*time.Minute, time.Minute
	r := SimulateABN(cfg)
	t.Logf("A/A/A %d runs: %d dropped some candidate (%v per candidate), %d with a sample-ratio mismatch", r.Runs, r.AnyDropped, r.Dropped, r.SRM)
	if lo := wilsonLower(r.AnyDropped, r.Runs); lo > cfg.Policy.Alpha {
		t.Errorf("A/A/A family-wise false drops %d of %d: the 99 %% interval starts at %.3f, above alpha %v", r.AnyDropped, r.Runs, lo, cfg.Policy.Alpha)
	}
}

// BenchmarkABNAAA runs the A/A/A simulation with 1000 runs.
func BenchmarkABNAAA(b *testing.B) {
	for range b.N {
		cfg := abnSim(1000, 29, armAs(BaseArm(), "v2"), armAs(BaseArm(), "v3"), armAs(BaseArm(), "v4"))
		r := SimulateABN(cfg)
		b.Logf("A/A/A %d runs: %d dropped some candidate (%.1f %%, alpha %v), per candidate %v", r.Runs, r.AnyDropped, 100*float64(r.AnyDropped)/float64(r.Runs), cfg.Policy.Alpha, r.Dropped)
	}
}
