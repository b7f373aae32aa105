//go:build integration

package chsource

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// TestReconcileInsertsOnlyTheDecisionsTheLogLacks logs a rollout's first
// changes, then stores an advance without logging it (the process stopped
// between the store and the insert): Reconcile inserts the advance and its
// looks once, and a second Reconcile inserts nothing.
func TestReconcileInsertsOnlyTheDecisionsTheLogLacks(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	conn := chtest.Connect(t, ch)
	ctx := context.Background()
	dl, err := NewDecisionLog(ctx, conn, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)
	look := func(at time.Duration, a analyzer.Action, code analyzer.Code) *analyzer.Decision {
		return &analyzer.Decision{At: t0.Add(at), Action: a, Code: code, Weight: 10,
			Metrics: []analyzer.MetricResult{{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusWithin, Estimate: 0.01}}}
	}
	event := func(d *analyzer.Decision, repeats int) analyzer.Event {
		return analyzer.Event{At: d.At, Kind: "decision", Action: d.Action, Code: d.Code, Reason: string(d.Code), Repeats: repeats, Decision: d}
	}
	started := &analyzer.Rollout{ID: "r-1", Model: "m", Stable: "v1", Canary: "v2", Status: analyzer.RolloutRunning,
		Plan:    analyzer.Plan{Policy: analyzer.DefaultPolicy()},
		History: []analyzer.Event{{At: t0, Kind: "operator", Code: analyzer.CodeOperator, Reason: "started"}}}
	held := *started
	h1, h2 := look(time.Minute, analyzer.ActionHold, analyzer.CodeMinSamples), look(2*time.Minute, analyzer.ActionHold, analyzer.CodeMinSamples)
	held.Last, held.History = h1, append(started.History, event(h1, 0))
	heldAgain := held
	heldAgain.Last, heldAgain.History = h2, append(started.History, event(h2, 1))
	dl.Changed(nil, started)
	dl.Changed(started, &held)
	dl.Changed(&held, &heldAgain)
	dl.Flush(ctx)

	adv := look(3*time.Minute, analyzer.ActionAdvance, analyzer.CodeGuarded)
	advanced := heldAgain
	advanced.Last, advanced.Pending, advanced.History = adv, analyzer.ActionAdvance, append(heldAgain.History, event(adv, 0))
	// stored, never logged
	n, err := dl.Reconcile(ctx, &advanced)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("reconcile inserted %d rows, want the advance event and its one look", n)
	}
	if n, err = dl.Reconcile(ctx, &advanced); err != nil || n != 0 {
		t.Errorf("a second reconcile inserted %d rows (%v), want none", n, err)
	}
	var events, looks uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE rollout_id = 'r-1'", db, EventsTable)).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE rollout_id = 'r-1'", db, LooksTable)).Scan(&looks); err != nil {
		t.Fatal(err)
	}
	// Events: the start, the hold (logged once however often it repeats),
	// the advance. Looks: two holds and the advance, one metric each.
	if events != 3 || looks != 3 {
		t.Fatalf("the log holds %d events and %d looks, want 3 and 3", events, looks)
	}
}
