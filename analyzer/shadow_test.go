package analyzer

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
)

// pairsOf builds the pairs of n judged prompts with the given verdicts
// (a 0/1 judge) and log latency ratios alternating ±spread around
// log(ratio).
func pairsOf(wins, losses, ties int, ratio, spread float64) ShadowPairs {
	n := wins + losses + ties
	p := ShadowPairs{Mirrored: n, Paired: n, Wins: wins, Losses: losses, Ties: ties, ScoreN: n, LatencyN: n}
	if n == 0 {
		return p
	}
	p.ScoreDiffMean = float64(losses-wins) / float64(n)
	if n > 1 {
		sq := float64(losses + wins)
		p.ScoreDiffVar = (sq - float64(n)*p.ScoreDiffMean*p.ScoreDiffMean) / float64(n-1)
	}
	p.LogRatioMean, p.LogRatioVar = math.Log(ratio), spread*spread*float64(n)/float64(n-1)
	return p
}

func TestDecideShadow(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	sp := DefaultShadowPolicy()
	tests := []struct {
		name   string
		pairs  ShadowPairs
		after  time.Duration
		action Action
		code   Code
		says   string
	}{
		{"nothing mirrored yet holds", ShadowPairs{}, time.Minute, ActionHold, CodeNoData, "no mirrored answer"},
		{"a canary losing most decided pairs rolls back", pairsOf(1, 14, 60, 1, 0.2), time.Minute, ActionRollback, CodeHarm, "lose to stable's"},
		{"failed shadow answers are losses and are named", func() ShadowPairs {
			p := pairsOf(1, 14, 60, 1, 0.2)
			p.CanaryFailed = 12
			return p
		}(), time.Minute, ActionRollback, CodeHarm, "lost 14 (12 failed)"},
		{"a canary much slower on the same prompts rolls back", pairsOf(2, 2, 60, 1.6, 0.2), time.Minute, ActionRollback, CodeHarm, "slower than stable"},
		{"an equal canary with too few pairs holds", pairsOf(3, 3, 94, 1, 0.2), time.Minute, ActionHold, CodeMinSamples, "100 of 200 judged pairs"},
		{"an equal canary with enough pairs passes", pairsOf(5, 5, 390, 1, 0.2), time.Minute, ActionProceed, CodeShadowPassed, "shadow passed"},
		{"undecided past the maximum pauses", pairsOf(20, 26, 200, 1.1, 0.6), 2 * time.Hour, ActionPause, CodeInconclusive, "without a decision"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DecideShadow(sp, 0.05, 0.15, start, tt.pairs, start.Add(tt.after))
			if d.Action != tt.action || d.Code != tt.code || !strings.Contains(d.Reason, tt.says) {
				t.Fatalf("%s/%s: %s", d.Action, d.Code, d.Reason)
			}
			if d.Percent != sp.Percent || d.MaxConcurrent != sp.MaxConcurrent {
				t.Fatalf("the decision must show the mirrored load's caps, got %v %% and %d", d.Percent, d.MaxConcurrent)
			}
		})
	}
}

func TestShadowPolicyValidation(t *testing.T) {
	if err := DefaultShadowPolicy().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := ShadowPolicy{Percent: 60, MinPairs: -1, QualityTolerance: 2, LatencyTolerance: -1, MinLatencyPairs: 1, MaxDuration: config.Duration(-time.Second)}
	err := bad.Validate()
	for _, want := range []string{"percent 60", "min_pairs", "quality_tolerance", "latency_tolerance", "min_latency_pairs", "max_duration"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
	if got := (ShadowPolicy{Percent: 5}).WithDefaults(); got.Percent != 5 || got.MinPairs != 200 {
		t.Errorf("defaults fill only zero fields: %+v", got)
	}
}
