package xds

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestStableHistoryRecordsEveryStableVersionWithItsCause(t *testing.T) {
	dir := t.TempDir()
	srv, _, _ := newTestAPI(t, dir)
	ctx := context.Background()
	c := &Client{BaseURL: srv.URL, Token: testToken, Actor: "analyzer"}
	if code, body := call(t, srv, "PUT", "/v1/models/llama", testToken, llamaModel, "X-Llmcanary-Actor", "alice"); code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	// A weight change that keeps the stable version adds nothing.
	if _, err := c.SetWeightsBecause(ctx, "llama", map[string]float64{"v1": 95, "v2": 5}, "", Cause{Rollout: "r-1", Reason: "advance"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetWeightsBecause(ctx, "llama", map[string]float64{"v2": 100}, "v2", Cause{Rollout: "r-1", Reason: "promote: v2 is within tolerance on every metric"}); err != nil {
		t.Fatal(err)
	}
	h, err := c.History(ctx, "llama")
	if err != nil {
		t.Fatal(err)
	}
	if h.Stable != "v2" || len(h.History) != 2 {
		t.Fatalf("history %+v, want v1 then v2", h)
	}
	created, promoted := h.History[0], h.History[1]
	if created.Version != "v1" || created.Previous != "" || created.Actor != "alice" || !strings.Contains(created.Reason, "put model llama") {
		t.Fatalf("creation entry %+v", created)
	}
	if promoted.Version != "v2" || promoted.Previous != "v1" || promoted.Rollout != "r-1" || promoted.Actor != "analyzer" ||
		promoted.Reason != "promote: v2 is within tolerance on every metric" || promoted.Revision != 3 || promoted.At.IsZero() {
		t.Fatalf("promotion entry %+v", promoted)
	}
	// Replacing the model keeps its history, whatever the body says.
	if code, body := call(t, srv, "PUT", "/v1/models/llama", testToken, strings.Replace(llamaModel, `"weights"`, `"history": [], "weights"`, 1)); code != 200 {
		t.Fatalf("replace: %d %s", code, body)
	}
	h, _ = c.History(ctx, "llama")
	if len(h.History) != 3 || h.History[2].Version != "v1" || h.History[2].Previous != "v2" {
		t.Fatalf("after a PUT that makes v1 stable again: %+v", h.History)
	}
	// The history is part of the durable state.
	st2, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := st2.State().Models["llama"].History; len(got) != 3 || got[1].Rollout != "r-1" {
		t.Fatalf("reopened store has history %+v", got)
	}
}

func TestPreviousStableIsTheVersionTheLastChangeReplaced(t *testing.T) {
	m := &Model{Name: "llama", Stable: "v2", History: []StableChange{{Version: "v1"}, {Version: "v2", Previous: "v1", Rollout: "r-1"}}}
	e, err := m.PreviousStable()
	if err != nil || e.Previous != "v1" || e.Rollout != "r-1" {
		t.Fatalf("PreviousStable = %+v, %v", e, err)
	}
	for name, m := range map[string]*Model{
		"no history":              {Name: "llama", Stable: "v1"},
		"created with its stable": {Name: "llama", Stable: "v1", History: []StableChange{{Version: "v1"}}},
		"history out of step":     {Name: "llama", Stable: "v3", History: []StableChange{{Version: "v2", Previous: "v1"}}},
	} {
		if _, err := m.PreviousStable(); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: err %v, want ErrNotFound", name, err)
		}
	}
}

func TestHistoryIsBounded(t *testing.T) {
	s := &State{Models: map[string]*Model{"m": {Name: "m", Stable: "a"}}}
	for i := 0; i < MaxStableHistory+10; i++ {
		before := s.stables()
		if s.Models["m"].Stable == "a" {
			s.Models["m"].Stable = "b"
		} else {
			s.Models["m"].Stable = "a"
		}
		s.recordStable(before, StableChange{Revision: uint64(i)})
	}
	h := s.Models["m"].History
	if len(h) != MaxStableHistory || h[len(h)-1].Revision != MaxStableHistory+9 {
		t.Fatalf("%d entries, last revision %d", len(h), h[len(h)-1].Revision)
	}
}
