package analyzer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// mirrorTraffic is fakeTraffic that can also mirror: it records every
// shadow setting (nil: mirror removed).
type mirrorTraffic struct {
	*fakeTraffic
	smu     sync.Mutex
	shadows []*xds.Shadow
}

func (m *mirrorTraffic) SetShadow(_ context.Context, _ string, s *xds.Shadow) error {
	m.smu.Lock()
	defer m.smu.Unlock()
	m.shadows = append(m.shadows, s)
	return nil
}

func (m *mirrorTraffic) mirror() *xds.Shadow {
	m.smu.Lock()
	defer m.smu.Unlock()
	if len(m.shadows) == 0 {
		return nil
	}
	return m.shadows[len(m.shadows)-1]
}

// fakePairs returns fixed pairs, or an error.
type fakePairs struct {
	p   ShadowPairs
	err error
}

func (f *fakePairs) ShadowPairs(context.Context, ShadowWindow) (ShadowPairs, error) {
	return f.p, f.err
}

var (
	_ ShadowSetter = (*mirrorTraffic)(nil)
	_ ShadowSource = (*fakePairs)(nil)
)

func shadowRig(t *testing.T, pairs *fakePairs) (*rig, *mirrorTraffic, *Rollout) {
	t.Helper()
	r := newRig(t)
	mt := &mirrorTraffic{fakeTraffic: r.traffic}
	r.runner.Traffic, r.runner.Pairs = mt, pairs
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Actor: "alice", Shadow: &ShadowPolicy{Percent: 20, MaxConcurrent: 4}})
	if err != nil {
		t.Fatal(err)
	}
	return r, mt, ro
}

func TestShadowStageKeepsUsersOnStableWhileTheCanaryIsMirrored(t *testing.T) {
	_, mt, ro := shadowRig(t, &fakePairs{})
	if got := mt.last(); got.weights["v2"] != 0 || got.weights["v1"] != 100 {
		t.Fatalf("weights at start %+v: no user may reach the canary in shadow", got.weights)
	}
	if m := mt.mirror(); m == nil || m.Version != "v2" || m.Percent != 20 || m.MaxConcurrent != 4 {
		t.Fatalf("mirror at start %+v, want 20 %% to v2 with at most 4 in flight", m)
	}
	if !ro.Shadow.Running() || ro.CanaryWeight() != 0 {
		t.Fatalf("shadow %+v, canary weight %v", ro.Shadow, ro.CanaryWeight())
	}
}

func TestShadowStageActs(t *testing.T) {
	tests := []struct {
		name       string
		pairs      ShadowPairs
		err        error
		wantStatus Status
		wantShadow string
		wantWeight float64
		wantMirror bool
		wantCode   Code
	}{
		{"harm in shadow rolls back with no user on the canary", pairsOf(1, 14, 60, 1, 0.2), nil, RolloutRolledBack, ShadowFailed, 0, false, CodeHarm},
		{"a pass moves to the first user stage", pairsOf(5, 5, 390, 1, 0.2), nil, RolloutRunning, ShadowPassed, 20, false, CodeShadowPassed},
		{"too few pairs hold with the mirror kept", pairsOf(1, 1, 20, 1, 0.2), nil, RolloutRunning, ShadowRunning, 0, true, CodeMinSamples},
		{"a failed query holds", ShadowPairs{}, errors.New("clickhouse down"), RolloutRunning, ShadowRunning, 0, true, CodeQueryFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, mt, ro := shadowRig(t, &fakePairs{p: tc.pairs, err: tc.err})
			r.clock.add(time.Minute)
			got, _ := r.runner.Step(context.Background(), ro.ID)
			if got.Status != tc.wantStatus || got.Shadow.Status != tc.wantShadow {
				t.Fatalf("status %s, shadow %s; want %s, %s (%s)", got.Status, got.Shadow.Status, tc.wantStatus, tc.wantShadow, lastReason(got))
			}
			if w := mt.last().weights["v2"]; w != tc.wantWeight {
				t.Fatalf("canary weight %v, want %v", w, tc.wantWeight)
			}
			if mt.mirror().Mirrors() != tc.wantMirror {
				t.Fatalf("mirror %+v, want set: %v", mt.mirror(), tc.wantMirror)
			}
			if e := got.History[len(got.History)-1]; e.Code != tc.wantCode && got.History[len(got.History)-2].Code != tc.wantCode {
				t.Fatalf("history ends %+v, want code %s", e, tc.wantCode)
			}
			if tc.wantShadow == ShadowPassed && !got.StageStarted.Equal(r.clock.now()) {
				t.Fatalf("the first user stage's window opens at the pass, got %v", got.StageStarted)
			}
		})
	}
}

func TestOperatorRollbackInShadowRemovesTheMirror(t *testing.T) {
	r, mt, ro := shadowRig(t, &fakePairs{})
	got, err := r.runner.Operate(context.Background(), ro.ID, OpRollback, "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	if mt.mirror().Mirrors() || got.Shadow.Status != ShadowEnded || got.Status != RolloutRolledBack {
		t.Fatalf("mirror %+v, shadow %s, status %s", mt.mirror(), got.Shadow.Status, got.Status)
	}
}

func TestStartRejectsAShadowStageOutsideACanaryRollout(t *testing.T) {
	r := newRig(t)
	r.runner.Traffic = &mirrorTraffic{fakeTraffic: r.traffic}
	_, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Mode: ModeABTest, Shadow: &ShadowPolicy{}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("A/B test with a shadow stage: %v", err)
	}
	_, err = r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Shadow: &ShadowPolicy{Percent: 70}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("70 %% mirrored: %v", err)
	}
}

func lastReason(ro *Rollout) string {
	if ro.Last != nil {
		return ro.Last.Reason + " " + ro.LastError
	}
	return ro.LastError
}
