package analyzer

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestTransition(t *testing.T) {
	at := func(status Status, stage int) *Rollout {
		return &Rollout{ID: "r", Stable: "v1", Canary: "v2", Mode: ModeCanary, Plan: Plan{Policy: testPolicy()}, Status: status, Stage: stage}
	}
	ab := &Rollout{ID: "r", Stable: "v1", Canary: "v2", Mode: ModeABTest, Split: 30, Plan: Plan{Policy: testPolicy()}, Status: RolloutRunning}
	tests := []struct {
		name    string
		ro      *Rollout
		action  Action
		want    Transition
		wantErr error
	}{
		{"advance moves the canary to the next stage's weight", at(RolloutRunning, 0), ActionAdvance,
			Transition{Moves: true, Weight: 50, Stable: "v1", Status: RolloutRunning, Stage: 1}, nil},
		{"advance past the last evaluated stage conflicts", at(RolloutRunning, 1), ActionAdvance,
			Transition{Weight: 50, Stable: "v1", Status: RolloutRunning, Stage: 1}, ErrConflict},
		{"promote gives the canary everything and makes it stable", at(RolloutRunning, 1), ActionPromote,
			Transition{Moves: true, Weight: 100, Stable: "v2", Status: RolloutPromoted, Stage: 1}, nil},
		{"rollback gives stable everything", at(RolloutRunning, 1), ActionRollback,
			Transition{Moves: true, Weight: 0, Stable: "v1", Status: RolloutRolledBack, Stage: 1}, nil},
		{"abort gives stable everything and only ends the rollout", at(RolloutRunning, 0), ActionAbort,
			Transition{Moves: true, Weight: 0, Stable: "v1", Status: RolloutAborted}, nil},
		{"pause keeps the traffic", at(RolloutRunning, 1), ActionPause,
			Transition{Weight: 50, Stable: "v1", Status: RolloutPaused, Stage: 1}, nil},
		{"resume keeps the traffic", at(RolloutPaused, 1), ActionResume,
			Transition{Weight: 50, Stable: "v1", Status: RolloutRunning, Stage: 1}, nil},
		{"a paused rollout can be promoted", at(RolloutPaused, 0), ActionPromote,
			Transition{Moves: true, Weight: 100, Stable: "v2", Status: RolloutPromoted}, nil},
		{"pausing a paused rollout conflicts", at(RolloutPaused, 0), ActionPause,
			Transition{Weight: 20, Stable: "v1", Status: RolloutPaused}, ErrConflict},
		{"resuming a running rollout conflicts", at(RolloutRunning, 0), ActionResume,
			Transition{Weight: 20, Stable: "v1", Status: RolloutRunning}, ErrConflict},
		{"a finished rollout does not change", at(RolloutRolledBack, 0), ActionPromote,
			Transition{Weight: 0, Stable: "v1", Status: RolloutRolledBack}, ErrConflict},
		{"hold is not an action on a rollout", at(RolloutRunning, 0), ActionHold,
			Transition{Weight: 20, Stable: "v1", Status: RolloutRunning}, ErrInvalid},
		{"an A/B test's pause keeps its split", ab, ActionPause,
			Transition{Weight: 30, Stable: "v1", Status: RolloutPaused}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := transition(tc.ro, tc.action)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("transition %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestWeightStepsFollowTheTrafficMovesOfTheHistory(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	r.clock.add(time.Minute)
	if _, err := r.runner.act(context.Background(), ro, ActionAdvance, r.clock.now(), nil); err != nil {
		t.Fatal(err)
	}
	r.clock.add(time.Minute)
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpPause, "bob", ""); err != nil {
		t.Fatal(err)
	}
	r.clock.add(time.Minute)
	done, err := r.runner.Operate(context.Background(), ro.ID, OpPromote, "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	want := []WeightStep{{t0, 20}, {t0.Add(time.Minute), 50}, {t0.Add(3 * time.Minute), 100}, {t0.Add(3 * time.Minute), 100}}
	got := done.WeightSteps()
	if len(got) != len(want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].At.Equal(want[i].At) || got[i].Weight != want[i].Weight {
			t.Fatalf("steps %v, want %v", got, want)
		}
	}
}

// gatedTraffic holds the first weight change until release is closed, so
// that a test can act while a Start is between moving traffic and
// storing its rollout.
type gatedTraffic struct {
	*fakeTraffic
	entered chan struct{}
	release chan struct{}
	first   bool
}

func (g *gatedTraffic) SetWeights(ctx context.Context, model string, w map[string]float64, stable string) error {
	g.mu.Lock()
	first := !g.first
	g.first = true
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.release
	}
	return g.fakeTraffic.SetWeights(ctx, model, w, stable)
}

// Two starts of one model at once: the one that reserved the model first
// wins, the other is refused before it touches traffic, so the winner's
// first stage is never overwritten or "restored" away.
func TestConcurrentStartsOfAModelNeverUndoTheWinnersWeights(t *testing.T) {
	r := newRig(t)
	gate := &gatedTraffic{fakeTraffic: r.traffic, entered: make(chan struct{}), release: make(chan struct{})}
	r.runner.Traffic = gate
	type result struct {
		ro  *Rollout
		err error
	}
	first := make(chan result, 1)
	go func() {
		ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Actor: "alice"})
		first <- result{ro, err}
	}()
	<-gate.entered // the first start is moving traffic
	if _, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Actor: "bob"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second start while the first moves traffic: error %v, want a conflict", err)
	}
	if n := r.traffic.count(); n != 0 {
		t.Fatalf("the refused start changed weights %d times", n)
	}
	close(gate.release)
	res := <-first
	if res.err != nil {
		t.Fatalf("first start: %v", res.err)
	}
	if n := r.traffic.count(); n != 1 {
		t.Fatalf("weights changed %d times, want once (the winner's first stage)", n)
	}
	if got := r.traffic.last(); got.weights["v2"] != 20 || got.stable != "v1" {
		t.Fatalf("weights %+v, want the winner's first stage (v2 20 %%)", got)
	}
	all, _ := r.runner.Store.List()
	if len(all) != 1 || all[0].ID != res.ro.ID {
		t.Fatalf("stored rollouts %d, want only the winner", len(all))
	}
	// The reservation ends with the start: once the winner is aborted the
	// model takes a new rollout.
	if _, err := r.runner.Operate(context.Background(), res.ro.ID, OpAbort, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2"}); err != nil {
		t.Fatalf("start after the abort: %v", err)
	}
}
