package analyzer

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// abnWindows draws one window per candidate against stable at a 1:2
// ratio of users (20 % each of three candidates, stable 40 %).
func abnWindows(seed uint64, n int, arms ...ArmModel) []Measurements {
	out := make([]Measurements, len(arms))
	for i, a := range arms {
		out[i] = window(seed+uint64(i), 2*n, n, testArm(), a)
		out[i].Stable.Version, out[i].Canary.Version = "v1", a.Version
	}
	return out
}

func abnCands(versions ...string) []Candidate {
	out := make([]Candidate, len(versions))
	for i, v := range versions {
		out[i] = Candidate{Version: v, Split: 20, Status: ArmRunning, State: NewStageState(0, t0)}
	}
	return out
}

func TestABN(t *testing.T) {
	bad := armAs(testArm(), "v2")
	bad.BadRate = 0.14
	bad.JudgeRate = 1
	good := armAs(testArm(), "v3")
	good.JudgeRate = 1
	slow := armAs(testArm(), "v4")
	slow.LatencyMs = func(r *rand.Rand) float64 { return 1.4 * testArm().LatencyMs(r) }
	now := t0.Add(time.Hour)
	tests := []struct {
		name        string
		cands       []Candidate
		ms          []Measurements
		deadline    time.Time
		wantStatus  []ArmStatus // "": any
		wantDropped []string
		wantDone    bool
	}{
		{
			name:        "a regressed candidate is dropped, the others keep running",
			cands:       abnCands("v2", "v3", "v4"),
			ms:          abnWindows(1, 4000, bad, armAs(testArm(), "v3"), armAs(testArm(), "v4")),
			wantStatus:  []ArmStatus{ArmDropped, ArmRunning, ArmRunning},
			wantDropped: []string{"v2"},
		},
		{
			name:        "two regressed candidates are both dropped at one look",
			cands:       abnCands("v2", "v3", "v4"),
			ms:          abnWindows(2, 4000, bad, armAs(testArm(), "v3"), slow),
			wantStatus:  []ArmStatus{ArmDropped, ArmRunning, ArmDropped},
			wantDropped: []string{"v2", "v4"},
		},
		{
			name: "a candidate marked within tolerance is still dropped when shown worse",
			cands: func() []Candidate {
				c := abnCands("v2", "v3", "v4")
				c[0].Status = ArmWithin
				return c
			}(),
			ms:          abnWindows(8, 4000, bad, armAs(testArm(), "v3"), armAs(testArm(), "v4")),
			wantStatus:  []ArmStatus{ArmDropped, "", ""},
			wantDropped: []string{"v2"},
		},
		{
			name:       "too little data decides nothing",
			cands:      abnCands("v2", "v3"),
			ms:         abnWindows(3, 20, bad, armAs(testArm(), "v3")),
			wantStatus: []ArmStatus{ArmRunning, ArmRunning},
		},
		{
			name:       "at the deadline the experiment is done with the arms undecided",
			cands:      abnCands("v2", "v3"),
			ms:         abnWindows(4, 20, armAs(testArm(), "v2"), armAs(testArm(), "v3")),
			deadline:   now,
			wantStatus: []ArmStatus{ArmRunning, ArmRunning},
			wantDone:   true,
		},
		{
			name: "a dropped candidate is not judged again and counts in the family",
			cands: func() []Candidate {
				c := abnCands("v2", "v3")
				c[0].Status, c[0].Reason = ArmDropped, "v2 dropped earlier"
				c[0].Report = &ExperimentReport{Metrics: []ExperimentMetric{{Metric: MetricQuality, Kind: KindScore, PValue: 1e-6, Effect: -0.1}}}
				return c
			}(),
			ms:         []Measurements{{}, abnWindows(5, 20, armAs(testArm(), "v3"))[0]},
			wantStatus: []ArmStatus{ArmDropped, ArmRunning},
		},
		{
			name:  "a sample-ratio mismatch holds the arm undecided",
			cands: abnCands("v2", "v3", "v4"),
			ms: func() []Measurements {
				ms := abnWindows(6, 4000, bad, armAs(testArm(), "v3"), armAs(testArm(), "v4"))
				ms[0] = window(6, 8000, 1000, testArm(), bad) // 1 in 9 users, 1 in 3 configured
				ms[0].Stable.Version, ms[0].Canary.Version = "v1", "v2"
				return ms
			}(),
			wantStatus: []ArmStatus{ArmRunning, "", ""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy()
			rep, got := ABN(p, tc.cands, tc.ms, now, tc.deadline)
			for i, c := range got {
				if tc.wantStatus[i] != "" && c.Status != tc.wantStatus[i] {
					t.Errorf("candidate %s: %s (%s), want %s; report %s", c.Version, c.Status, c.Reason, tc.wantStatus[i], rep.Summary)
				}
			}
			if strings.Join(rep.Dropped, ",") != strings.Join(tc.wantDropped, ",") {
				t.Errorf("dropped %v, want %v", rep.Dropped, tc.wantDropped)
			}
			if rep.Tests != len(tc.cands)*len(p.Tolerances) {
				t.Errorf("family of %d tests, want every candidate × metric: %d", rep.Tests, len(tc.cands)*len(p.Tolerances))
			}
			if rep.Done != tc.wantDone {
				t.Errorf("done %v, want %v: %s", rep.Done, tc.wantDone, rep.Summary)
			}
			if tc.cands[0].Status == ArmRunning && tc.cands[0].Report != nil {
				t.Error("ABN changed its input")
			}
			for _, c := range got {
				if c.Report == nil {
					continue
				}
				for _, em := range c.Report.Metrics {
					if em.Adjusted != 0 && em.Adjusted < em.PValue {
						t.Errorf("%s %s: adjusted p %v below the raw %v", c.Version, em.Metric, em.Adjusted, em.PValue)
					}
				}
			}
		})
	}
}

func TestABNNamesTheBestSurvivingCandidateWithoutPromoting(t *testing.T) {
	bad := armAs(testArm(), "v2")
	bad.BadRate = 0.14
	bad.JudgeRate = 1
	fast := armAs(testArm(), "v3")
	fast.LatencyMs = func(r *rand.Rand) float64 { return 0.7 * testArm().LatencyMs(r) }
	p := testPolicy()
	p.Tolerances = map[Metric]float64{MetricLatency: p.Tolerances[MetricLatency], MetricQuality: p.Tolerances[MetricQuality]}
	rep, got := ABN(p, abnCands("v2", "v3", "v4"), abnWindows(7, 4000, bad, fast, armAs(testArm(), "v4")), t0.Add(time.Hour), t0.Add(time.Hour))
	if !rep.Done || got[0].Status != ArmDropped {
		t.Fatalf("report %+v, candidates %+v", rep, got)
	}
	if rep.Winner == "" || rep.Winner == "v2" || !strings.Contains(rep.Summary, "not promoted") {
		t.Errorf("winner %q: %s", rep.Winner, rep.Summary)
	}
}

func TestArmWeightsGiveADroppedShareToStable(t *testing.T) {
	c := abnCands("v2", "v3", "v4")
	w := ArmWeights("v1", c)
	if w["v1"] != 40 || w["v2"] != 20 || w["v3"] != 20 || w["v4"] != 20 {
		t.Fatalf("weights %v", w)
	}
	c[1].Status = ArmDropped
	w2 := ArmWeights("v1", c)
	if w2["v1"] != 60 || w2["v2"] != 20 || w2["v3"] != 0 || w2["v4"] != 20 {
		t.Fatalf("weights after dropping v3 %v", w2)
	}
}

// abnSource measures each candidate's window from its own measurements.
type abnSource struct{ by map[string]Measurements }

func (s abnSource) Measure(_ context.Context, w Window) (Measurements, error) {
	m, ok := s.by[w.Canary]
	if !ok {
		return Measurements{}, ErrNoData
	}
	return m, nil
}

func abnRig(t *testing.T) *rig {
	r := newRig(t)
	r.runner.Models = fakeModels{traffic: r.traffic, models: map[string]*xds.Model{"m": {
		Name: "m", Stable: "v1",
		Versions: []xds.Version{{Name: "v1"}, {Name: "v2"}, {Name: "v3"}, {Name: "v4"}},
		Weights:  map[string]float64{"v1": 100},
	}}}
	return r
}

func TestStartABNValidates(t *testing.T) {
	tests := []struct {
		name string
		req  StartRequest
	}{
		{"several candidates outside an A/B test", StartRequest{Model: "m", Candidates: []string{"v2", "v3"}}},
		{"canary and candidates", StartRequest{Model: "m", Canary: "v2", Candidates: []string{"v3", "v4"}, Mode: ModeABTest}},
		{"a candidate named twice", StartRequest{Model: "m", Candidates: []string{"v2", "v2"}, Mode: ModeABTest}},
		{"the stable version as a candidate", StartRequest{Model: "m", Candidates: []string{"v1", "v2"}, Mode: ModeABTest}},
		{"an unknown candidate", StartRequest{Model: "m", Candidates: []string{"v2", "v9"}, Mode: ModeABTest}},
		{"splits adding up to 100", StartRequest{Model: "m", Candidates: []string{"v2", "v3"}, Mode: ModeABTest, Split: 50}},
		{"a split for a version that is no candidate", StartRequest{Model: "m", Candidates: []string{"v2", "v3"}, Mode: ModeABTest, Splits: map[string]float64{"v2": 10, "v4": 10}}},
		{"too many candidates", StartRequest{Model: "m", Candidates: []string{"a", "b", "c", "d", "e", "f"}, Mode: ModeABTest, Split: 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := abnRig(t)
			if _, err := r.runner.Start(context.Background(), tc.req); !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v, want ErrInvalid", err)
			}
			if r.traffic.count() != 0 {
				t.Error("traffic moved")
			}
		})
	}
}

func TestRunnerDropsTheLosingArmAndKeepsTheOther(t *testing.T) {
	r := abnRig(t)
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Candidates: []string{"v3", "v2"}, Mode: ModeABTest, Splits: map[string]float64{"v2": 20, "v3": 30}})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.traffic.last().weights; got["v1"] != 50 || got["v2"] != 20 || got["v3"] != 30 {
		t.Fatalf("first weights %v", got)
	}
	if ro.Candidates[0].Version != "v2" || ro.Canary != "v2" {
		t.Fatalf("candidates not in the model's version order: %+v", ro.Candidates)
	}
	if r := ro.History[0].Reason; !strings.Contains(r, "weights v1 50 %, v2 20 %, v3 30 %") {
		t.Fatalf("the start does not name every arm's weight: %s", r)
	}
	bad := armAs(testArm(), "v2")
	bad.BadRate = 0.14
	bad.JudgeRate = 1
	mBad := window(1, 5000, 2000, testArm(), bad)
	mOK := window(2, 5000, 3000, testArm(), armAs(testArm(), "v3"))
	src := abnSource{by: map[string]Measurements{"v2": mBad, "v3": mOK}}
	r.runner.Source = src
	r.clock.add(time.Minute)
	got, err := r.runner.Step(context.Background(), ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Candidates[0].Status != ArmDropped || got.Candidates[1].Status == ArmDropped || got.Status != RolloutRunning {
		t.Fatalf("candidates %+v; %s", got.Candidates, got.ABN.Summary)
	}
	if w := r.traffic.last().weights; w["v1"] != 70 || w["v2"] != 0 || w["v3"] != 30 {
		t.Fatalf("weights after the drop %v", w)
	}
	last := got.History[len(got.History)-1]
	if last.Kind != "action" || !strings.Contains(last.Reason, "v2 dropped") || !strings.Contains(last.Reason, "quality") {
		t.Errorf("last event %+v", last)
	}
	// The next look measures the surviving arm only and moves nothing.
	n := r.traffic.count()
	delete(src.by, "v2")
	r.clock.add(time.Minute)
	got, err = r.runner.Step(context.Background(), ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.traffic.count() != n || got.Candidates[0].Status != ArmDropped {
		t.Errorf("second look: %d weight changes (want %d), candidates %+v", r.traffic.count(), n, got.Candidates)
	}
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpPromote, "alice", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("promoting an A/B/n experiment: %v, want ErrInvalid", err)
	}
}

// TestABNLooksAtArmsWithNothingMeasuredCanBeStored: an arm whose every
// request failed has no latency or quality value; its report must still
// encode (JSON has no NaN) so that the look is saved.
func TestABNLooksAtArmsWithNothingMeasuredCanBeStored(t *testing.T) {
	failing := armAs(testArm(), "v2")
	failing.ErrorRate = 1
	for _, n := range []int{1, 10, 60} {
		rep, got := ABN(testPolicy(), abnCands("v2", "v3"), abnWindows(1, n, failing, armAs(testArm(), "v3")), t0, time.Time{})
		if _, err := json.Marshal(got); err != nil {
			t.Fatalf("%d requests per arm: the candidates do not encode: %v", n, err)
		}
		if _, err := json.Marshal(rep); err != nil {
			t.Fatalf("%d requests per arm: the report does not encode: %v", n, err)
		}
	}
}
