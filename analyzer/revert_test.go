package analyzer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// causedTraffic is fakeTraffic that also records each change's cause.
type causedTraffic struct {
	*fakeTraffic
	causes []xds.Cause
}

func (c *causedTraffic) SetWeightsBecause(ctx context.Context, model string, w map[string]float64, stable string, cause xds.Cause) error {
	if err := c.SetWeights(ctx, model, w, stable); err != nil {
		return err
	}
	c.causes = append(c.causes, cause)
	return nil
}

var _ CausedTrafficSetter = (*causedTraffic)(nil)

func TestPromotionTellsTheControlPlaneWhichRolloutDecidedAndWhy(t *testing.T) {
	r := newRig(t)
	ct := &causedTraffic{fakeTraffic: r.traffic}
	r.runner.Traffic = ct
	ro := r.start(t)
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpPromote, "bob", "looks good"); err != nil {
		t.Fatal(err)
	}
	if len(ct.causes) != 2 {
		t.Fatalf("causes %+v, want the start's and the promotion's", ct.causes)
	}
	c := ct.causes[1]
	if c.Rollout != ro.ID || c.Actor != "bob" || !strings.HasPrefix(c.Reason, "promote by bob: v1 0 %, v2 100 %") || !strings.Contains(c.Reason, "looks good") {
		t.Fatalf("promotion cause %+v", c)
	}
	if got := r.traffic.last(); got.stable != "v2" {
		t.Fatalf("promotion set stable %q", got.stable)
	}
}

// revertRig is a rig whose model m was promoted from v1 to v2 by rollout
// r-0, with history.
func revertRig(t *testing.T, history []xds.StableChange, versions ...string) *rig {
	r := newRig(t)
	var vs []xds.Version
	for _, v := range versions {
		vs = append(vs, xds.Version{Name: v, Metadata: xds.VersionMetadata{BaseModel: "b"}})
	}
	r.runner.Models = fakeModels{traffic: r.traffic, models: map[string]*xds.Model{"m": {
		Name: "m", Stable: "v2", Versions: vs, Weights: map[string]float64{"v2": 100}, History: history,
	}}}
	return r
}

var promoted = []xds.StableChange{
	{Version: "v1", At: t0.Add(-48 * time.Hour), Reason: "put model m"},
	{Version: "v2", Previous: "v1", At: t0.Add(-time.Hour), Rollout: "r-0", Reason: "promote: within tolerance"},
}

func TestRevertStartsAMeasuredRolloutBackToThePreviousStable(t *testing.T) {
	r := revertRig(t, promoted, "v1", "v2")
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Revert: true, Actor: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if ro.Canary != "v1" || ro.Stable != "v2" || ro.Mode != ModeCanary || ro.Reverts == nil || ro.Reverts.Rollout != "r-0" {
		t.Fatalf("revert rollout %s → %s, mode %s, reverts %+v", ro.Stable, ro.Canary, ro.Mode, ro.Reverts)
	}
	if got := r.traffic.last(); got.stable != "v2" || got.weights["v1"] != 20 || got.weights["v2"] != 80 {
		t.Fatalf("first stage %+v: the previous stable is the canary at the first stage's weight", got)
	}
	if !strings.Contains(ro.History[0].Reason, "a revert to v1") || !strings.Contains(ro.History[0].Reason, "rollout r-0 promoted v2") {
		t.Fatalf("start reason %q", ro.History[0].Reason)
	}
	// Promoting the revert makes the previous stable stable again.
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpPromote, "carol", ""); err != nil {
		t.Fatal(err)
	}
	if got := r.traffic.last(); got.stable != "v1" || got.weights["v1"] != 100 {
		t.Fatalf("after promoting the revert: %+v", got)
	}
}

func TestRevertIsRefusedWhenThereIsNothingToReturnTo(t *testing.T) {
	cases := []struct {
		name     string
		history  []xds.StableChange
		versions []string
		req      StartRequest
		err      error
		want     string
	}{
		{"the previous stable was removed", promoted, []string{"v2"}, StartRequest{Model: "m", Revert: true}, ErrConflict, "was removed from the model; put it back with its endpoints"},
		{"no promotion in the history", promoted[:0], []string{"v1", "v2"}, StartRequest{Model: "m", Revert: true}, ErrConflict, "names no version that was stable before"},
		{"a revert that names its canary", promoted, []string{"v1", "v2"}, StartRequest{Model: "m", Revert: true, Canary: "v1"}, ErrInvalid, "names neither canary nor stable"},
		{"a revert as an A/B test", promoted, []string{"v1", "v2"}, StartRequest{Model: "m", Revert: true, Mode: ModeABTest}, ErrInvalid, "not an A/B test"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := revertRig(t, tc.history, tc.versions...)
			_, err := r.runner.Start(context.Background(), tc.req)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %v saying %q", err, tc.err, tc.want)
			}
			if r.traffic.count() != 0 {
				t.Fatal("a refused revert moved traffic")
			}
		})
	}
}
