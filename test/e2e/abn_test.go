//go:build integration

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

// TestABNDropsTheRegressedArmAndTheOtherKeepsItsUsers: an A/B/n
// experiment of v2 (healthy) and v3 (failing 40 % of its requests, and
// slower), 30 % each, over a real Envoy, ClickHouse and control plane.
// The analyzer drops v3, the arm listed last: its weight is 0 at the
// control plane and Envoy no longer serves it, while every user who was on
// v2 is still on v2 (each arm holds its own lane of the bucket range) and
// v2 is not decided against.
func TestABNDropsTheRegressedArmAndTheOtherKeepsItsUsers(t *testing.T) {
	bad := analyzerProfile("v3", 0.4)
	bad.TTFT = sim.Uniform(45, 60)
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	ctx := context.Background()
	v3, err := local.StartSim(bad)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v3.Stop)
	if _, err := f.API.PutVersion(ctx, model, xds.Version{Name: "v3", Endpoints: []string{v3.Addr}, Metadata: xds.VersionMetadata{BaseModel: model, PriceInputPer1K: 0.5, PriceOutputPer1K: 1.5}}); err != nil {
		t.Fatal(err)
	}
	a := startAnalyzer(t, f, t.TempDir())
	ro, err := a.runner.Start(ctx, analyzer.StartRequest{Model: model, Candidates: []string{"v2", "v3"}, Mode: analyzer.ModeABTest, Split: 30})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := f.API.Model(ctx, model); err != nil || m.Weights["v1"] != 40 || m.Weights["v2"] != 30 || m.Weights["v3"] != 30 {
		t.Fatalf("weights at the start: %+v %v", m, err)
	}
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Which arm each of a set of users is in before any decision.
	const users = 300
	arm := func() map[int]string {
		out := map[int]string{}
		for i, ans := range f.parallel(t, users, func(i int) request { return request{headers: user(3_000_000 + i)} }) {
			out[i] = ans.servedBy
		}
		return out
	}
	before := arm()
	stop, _ := drive(t, f)
	defer stop()

	var got *analyzer.Rollout
	waitFor(t, 90*time.Second, "drop of v3", func() bool {
		got, err = a.runner.Store.Get(ro.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Candidates[1].Status == analyzer.ArmDropped
	})
	t.Logf("v3: %s", got.Candidates[1].Reason)
	for _, e := range got.History {
		if strings.Contains(e.Reason, "change arm") {
			t.Fatalf("the drop moved another arm's users: %s", e.Reason)
		}
	}
	if got.Candidates[0].Status == analyzer.ArmDropped || got.Status != analyzer.RolloutRunning {
		t.Fatalf("after the drop: v2 %s, rollout %s: %s", got.Candidates[0].Status, got.Status, got.Candidates[0].Reason)
	}
	waitFor(t, 10*time.Second, "v3's weight at 0 on the control plane", func() bool {
		m, err := f.API.Model(ctx, model)
		return err == nil && m.Weights["v3"] == 0 && m.Weights["v2"] == 30 && m.Weights["v1"] == 70
	})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := f.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	after := arm()
	moved := 0
	for u, v := range before {
		switch {
		case after[u] == "v3":
			t.Fatalf("user %d is still served by v3 after the drop", u)
		case v == "v2" && after[u] != "v2":
			t.Fatalf("user %d was on v2 and is now on %s", u, after[u])
		case v == "v1" && after[u] != "v1":
			t.Fatalf("user %d was on stable v1 and is now on %s", u, after[u])
		case v == "v3" && after[u] != "v1":
			t.Fatalf("user %d was on v3 and is now on %s, want stable v1", u, after[u])
		case v == "v3":
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no sampled user was on v3 before the drop")
	}
	t.Logf("%d of %d users moved from v3 to v1; v2 and stable kept all of theirs", moved, users)
}
