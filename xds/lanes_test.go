package xds

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// experimentStore returns a store holding model llama with stable v1 and
// the canaries v2..v<n+1>, all without traffic.
func experimentStore(t *testing.T, n int) *StateStore {
	t.Helper()
	st, err := OpenStateStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := &Model{Name: "llama", Stable: "v1", Weights: map[string]float64{"v1": 100}}
	for i := 1; i <= n+1; i++ {
		m.Versions = append(m.Versions, Version{Name: fmt.Sprintf("v%d", i), Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", 8000+i)}})
	}
	if _, err := st.Update(0, "test", "create", func(s *State) error { s.Models["llama"] = m; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

func setWeights(t *testing.T, st *StateStore, w map[string]float64) *Model {
	t.Helper()
	s, err := st.Update(0, "test", "weights", func(s *State) error { return s.SetWeights("llama", w, "") }, nil)
	if err != nil {
		t.Fatalf("weights %v: %v", w, err)
	}
	return s.Models["llama"]
}

// envoyPicks returns, for every bucket position, the version the translated
// route sends it to, walking the weighted clusters as Envoy does
// (bucket % total weight against their running sums).
func envoyPicks(t *testing.T, st *StateStore) []string {
	t.Helper()
	res, err := Translate(st.State(), DefaultGateway())
	if err != nil {
		t.Fatal(err)
	}
	var wc *routev3.WeightedCluster
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if r.GetName() == "llama/weighted" {
					wc = r.GetRoute().GetWeightedClusters()
				}
			}
		}
	}
	if wc == nil {
		t.Fatal("no weighted route for llama")
	}
	var total uint32
	for _, c := range wc.GetClusters() {
		total += c.GetWeight().GetValue()
	}
	if total != TotalWeight {
		t.Fatalf("weights sum to %d, want %d", total, TotalWeight)
	}
	out := make([]string, TotalWeight)
	var at uint32
	for _, c := range wc.GetClusters() {
		v := c.GetName()[strings.LastIndexByte(c.GetName(), '|')+1:]
		for b := at; b < at+c.GetWeight().GetValue(); b++ {
			out[b] = v
		}
		at += c.GetWeight().GetValue()
	}
	return out
}

func served(picks []string, v string) int {
	n := 0
	for _, p := range picks {
		if p == v {
			n++
		}
	}
	return n
}

// TestDroppingOrReweightingAnArmNeverMovesAnotherArmsUsers: in A/B/n
// experiments of 2 to 5 canaries with uneven splits, dropping any arm or
// changing its weight within its lane leaves every other canary with
// exactly the buckets it had, as Envoy walks the published route; the
// dropped arm's users all go to stable.
func TestDroppingOrReweightingAnArmNeverMovesAnotherArmsUsers(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for trial := 0; trial < 40; trial++ {
		n := 2 + trial%4
		st := experimentStore(t, n)
		w := map[string]float64{}
		left := 100.0
		for i := 2; i <= n+1; i++ {
			s := float64(1 + rng.IntN(int(80/float64(n))))
			w[fmt.Sprintf("v%d", i)] = s
			left -= s
		}
		w["v1"] = left
		m := setWeights(t, st, w)
		if len(m.Lanes) != n {
			t.Fatalf("trial %d: %d lanes for %d canaries: %+v", trial, len(m.Lanes), n, m.Lanes)
		}
		before := envoyPicks(t, st)
		for v, s := range w {
			if got := served(before, v); got != int(s*100) {
				t.Fatalf("trial %d: %s serves %d buckets, want %d", trial, v, got, int(s*100))
			}
		}
		// Drop one arm, or halve it.
		arm := fmt.Sprintf("v%d", 2+rng.IntN(n))
		next := map[string]float64{}
		for k, s := range w {
			next[k] = s
		}
		cut := next[arm]
		if trial%2 == 1 {
			cut = float64(int(cut / 2))
		}
		next[arm] -= cut
		next["v1"] += cut
		setWeights(t, st, next)
		after := envoyPicks(t, st)
		for b := range before {
			switch {
			case before[b] == arm && after[b] != arm && after[b] != "v1":
				t.Fatalf("trial %d: bucket %d went from %s to %s, want it to stay or go to stable", trial, b, arm, after[b])
			case before[b] != arm && before[b] != "v1" && after[b] != before[b]:
				t.Fatalf("trial %d: changing %s moved bucket %d from %s to %s (weights %v -> %v)", trial, arm, b, before[b], after[b], w, next)
			case before[b] == "v1" && after[b] != "v1":
				t.Fatalf("trial %d: shrinking %s moved stable's bucket %d to %s", trial, arm, b, after[b])
			}
		}
	}
}

// TestARolloutThatBecomesAnExperimentKeepsItsCanarysUsers: a canary at
// 10 % keeps exactly its buckets when a second canary joins, and a single
// canary has no lanes (its growth takes users from stable only, as ever).
func TestARolloutThatBecomesAnExperimentKeepsItsCanarysUsers(t *testing.T) {
	st := experimentStore(t, 2)
	if m := setWeights(t, st, map[string]float64{"v1": 90, "v2": 10}); m.Lanes != nil {
		t.Fatalf("one canary has lanes: %+v", m.Lanes)
	}
	alone := envoyPicks(t, st)
	m := setWeights(t, st, map[string]float64{"v1": 80, "v2": 10, "v3": 10})
	if len(m.Lanes) != 2 {
		t.Fatalf("lanes %+v", m.Lanes)
	}
	both := envoyPicks(t, st)
	for b := range alone {
		if (alone[b] == "v2") != (both[b] == "v2") {
			t.Fatalf("bucket %d: %s alone, %s once v3 joined", b, alone[b], both[b])
		}
	}
	// The experiment ends: v3 out, then v2 out; no lanes are left.
	setWeights(t, st, map[string]float64{"v1": 90, "v2": 10})
	if m := setWeights(t, st, map[string]float64{"v1": 100}); m.Lanes != nil {
		t.Fatalf("lanes after the experiment: %+v", m.Lanes)
	}
}

// TestAnArmOutgrowingItsLaneGetsNewLanes: an arm whose weight no longer
// fits its lane gets a new layout (users may move: the change says so
// through UsersMoved) rather than an invalid route.
func TestAnArmOutgrowingItsLaneGetsNewLanes(t *testing.T) {
	st := experimentStore(t, 2)
	before := setWeights(t, st, map[string]float64{"v1": 90, "v2": 5, "v3": 5})
	after := setWeights(t, st, map[string]float64{"v1": 30, "v2": 60, "v3": 10})
	if !after.lanesHold(after.Lanes) {
		t.Fatalf("lanes %+v do not hold %v", after.Lanes, after.Weights)
	}
	picks := envoyPicks(t, st)
	if served(picks, "v2") != 6000 || served(picks, "v3") != 1000 {
		t.Fatalf("v2 %d, v3 %d buckets", served(picks, "v2"), served(picks, "v3"))
	}
	if moved := UsersMoved(before, after); moved["v3"] == 0 {
		t.Fatalf("v3's lane moved but UsersMoved says %v", moved)
	}
	if moved := UsersMoved(after, Reweighted(after, map[string]float64{"v1": 90, "v2": 0, "v3": 10})); len(moved) != 0 {
		t.Fatalf("dropping v2 moves %v", moved)
	}
}

// TestLanesAreTheControlPlanesToKeep: lanes survive a restart of the
// control plane, and a client's PUT of the model cannot set them.
func TestLanesAreTheControlPlanesToKeep(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := &Model{Name: "llama", Stable: "v1", Weights: map[string]float64{"v1": 40, "v2": 30, "v3": 30}}
	for _, v := range []string{"v1", "v2", "v3"} {
		m.Versions = append(m.Versions, Version{Name: v, Endpoints: []string{"127.0.0.1:8001"}})
	}
	m.Lanes = []Lane{{Version: "v2", From: 0, To: 10}}
	s, err := st.Update(0, "test", "create", func(s *State) error { return s.PutModel("llama", *m) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Lane{{Version: "v2", From: 5000, To: 10000}, {Version: "v3", From: 0, To: 5000}}
	if got := s.Models["llama"].Lanes; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lanes %+v, want %+v", got, want)
	}
	reopened, err := OpenStateStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := reopened.State().Models["llama"].Lanes; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a restart: lanes %+v, want %+v", got, want)
	}
	b, _ := json.Marshal(reopened.State().Models["llama"])
	if !strings.Contains(string(b), `"lanes":[{"version":"v2","from":5000,"to":10000}`) {
		t.Fatalf("the model as the API serves it: %s", b)
	}
}

// TestAnExperimentStackedBeforeLanesKeepsItsArmsAtItsFirstChange: a
// state written before lanes existed has its canaries stacked; the first
// change (dropping the arm listed last) keeps every other arm's buckets.
func TestAnExperimentStackedBeforeLanesKeepsItsArmsAtItsFirstChange(t *testing.T) {
	st := experimentStore(t, 3)
	if _, err := st.Update(0, "test", "stacked", func(s *State) error {
		m := s.Models["llama"]
		m.Weights = map[string]float64{"v1": 40, "v2": 20, "v3": 20, "v4": 20}
		return nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	// What an older control plane wrote: the same weights, no lanes.
	old := st.State().Models["llama"].clone()
	old.Lanes = nil
	stacked := old.Layout()
	next := Reweighted(old, map[string]float64{"v1": 60, "v2": 20, "v3": 20, "v4": 0})
	if moved := UsersMoved(old, next); len(moved) != 0 {
		t.Fatalf("dropping v4 moves %v (stacked %+v, after %+v)", moved, stacked, next.Layout())
	}
}
