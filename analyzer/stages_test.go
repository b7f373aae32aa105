package analyzer

import (
	"testing"
	"time"
)

func TestStageChangesOpenAndCloseWindows(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	pol := DefaultPolicy()
	ro := func(stage int, started time.Time, st Status, updated time.Time) *Rollout {
		return &Rollout{ID: "r1", Model: "m", Stable: "v1", Canary: "v2", Plan: Plan{Policy: pol},
			Stage: stage, StageStarted: started, Status: st, Updated: updated}
	}
	t1, t2 := t0.Add(10*time.Minute), t0.Add(25*time.Minute)
	cases := []struct {
		name          string
		before, after *Rollout
		want          []StageWindow
	}{
		{"a new rollout opens its first stage", nil, ro(0, t0, RolloutRunning, t0),
			[]StageWindow{{Stage: 0, Weight: 2, Started: t0, Outcome: "running"}}},
		{"a hold changes nothing", ro(0, t0, RolloutRunning, t0), ro(0, t0, RolloutRunning, t1), nil},
		{"advancing closes the stage and opens the next", ro(0, t0, RolloutRunning, t0), ro(1, t1, RolloutRunning, t1),
			[]StageWindow{{Stage: 0, Weight: 2, Started: t0, Ended: t1, Outcome: "advanced"}, {Stage: 1, Weight: 5, Started: t1, Outcome: "running"}}},
		{"promotion after the last stage closes it", ro(1, t1, RolloutRunning, t1), ro(1, t1, RolloutPromoted, t2),
			[]StageWindow{{Stage: 1, Weight: 5, Started: t1, Ended: t2, Outcome: "promoted"}}},
		{"a rollback closes the stage", ro(0, t0, RolloutRunning, t0), ro(0, t0, RolloutRolledBack, t1),
			[]StageWindow{{Stage: 0, Weight: 2, Started: t0, Ended: t1, Outcome: "rolled_back"}}},
		{"a pause closes the stage", ro(0, t0, RolloutRunning, t0), ro(0, t0, RolloutPaused, t1),
			[]StageWindow{{Stage: 0, Weight: 2, Started: t0, Ended: t1, Outcome: "paused"}}},
		{"resuming opens the stage again from now", ro(0, t0, RolloutPaused, t1), ro(0, t2, RolloutRunning, t2),
			[]StageWindow{{Stage: 0, Weight: 2, Started: t2, Outcome: "running"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := stageChanges(c.before, c.after)
			if len(got) != len(c.want) {
				t.Fatalf("got %d windows %+v, want %d", len(got), got, len(c.want))
			}
			for i, w := range c.want {
				g := got[i]
				if g.Stage != w.Stage || g.Weight != w.Weight || !g.Started.Equal(w.Started) || !g.Ended.Equal(w.Ended) ||
					g.Outcome != w.Outcome || g.RolloutID != "r1" || g.Canary != "v2" || !g.Updated.Equal(c.after.Updated) {
					t.Fatalf("window %d: got %+v, want %+v", i, g, w)
				}
			}
		})
	}
}
