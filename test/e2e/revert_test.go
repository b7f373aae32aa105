//go:build integration

package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
)

// TestRevertAfterPromotionRestoresThePreviousStable: v2 is promoted over
// v1 by an operator; `rollout revert` then starts a rollout of its own,
// v1 as the canary, which the analyzer measures through every stage and
// promotes. The control plane's history tells the whole story and Envoy
// serves v1 again.
func TestRevertAfterPromotionRestoresThePreviousStable(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	a := startAnalyzer(t, f, t.TempDir())
	ctx := context.Background()
	stop, _ := drive(t, f)
	defer stop()
	first, err := a.runner.Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2", Actor: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.runner.Operate(ctx, first.ID, analyzer.OpPromote, "alice", "ship it"); err != nil {
		t.Fatal(err)
	}
	if m, err := f.API.Model(ctx, model); err != nil || m.Stable != "v2" {
		t.Fatalf("after the promotion: %+v %v", m, err)
	}

	revert, err := a.runner.Start(ctx, analyzer.StartRequest{Model: model, Revert: true, Actor: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if revert.Canary != "v1" || revert.Stable != "v2" || revert.Reverts == nil || revert.Reverts.Rollout != first.ID {
		t.Fatalf("revert rollout %s → %s reverting %+v, want v2 → v1 reverting %s", revert.Stable, revert.Canary, revert.Reverts, first.ID)
	}
	// A second revert while this one runs is refused: the model is taken.
	if _, err := a.runner.Start(ctx, analyzer.StartRequest{Model: model, Revert: true}); !errors.Is(err, analyzer.ErrConflict) {
		t.Fatalf("a second revert during the first: %v, want a conflict", err)
	}
	done := waitStatus(t, a, revert.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	if done.Status != analyzer.RolloutPromoted {
		t.Fatalf("the revert ended %s: %+v", done.Status, done.Last)
	}
	measured := 0
	for _, e := range done.History {
		if e.Kind == "decision" && e.Decision != nil && e.Decision.CanaryRequests > 0 {
			measured++
		}
	}
	if measured == 0 {
		t.Fatal("the revert was promoted without a measured look")
	}

	h, err := f.API.History(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	if h.Stable != "v1" || len(h.History) != 3 {
		t.Fatalf("history %+v, want v1, v2, v1", h)
	}
	promoted, reverted := h.History[1], h.History[2]
	if promoted.Version != "v2" || promoted.Previous != "v1" || promoted.Rollout != first.ID || promoted.Actor != "alice" || !strings.Contains(promoted.Reason, "promote by alice") {
		t.Fatalf("promotion entry %+v", promoted)
	}
	if reverted.Version != "v1" || reverted.Previous != "v2" || reverted.Rollout != revert.ID || reverted.Reason != done.Last.Reason {
		t.Fatalf("revert entry %+v, want the revert's promotion with its decision %q", reverted, done.Last.Reason)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if got := served(t, f, 200); got["v1"] != 200 {
		t.Fatalf("after the revert Envoy served %v, want all 200 by v1", got)
	}
}
