package analyzer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
)

// forcingGateway stands in for Envoy on loopback: it answers a request
// forced with the right key from that version's simulated pool and says
// which version served, as the gateway does; it counts the requests per
// version.
type forcingGateway struct {
	*httptest.Server
	mu   sync.Mutex
	seen map[string]int
}

func startForcingGateway(t *testing.T, profiles ...sim.Profile) *forcingGateway {
	t.Helper()
	pools := map[string]http.Handler{}
	for _, p := range profiles {
		s, err := sim.New(p)
		if err != nil {
			t.Fatal(err)
		}
		pools[p.Version] = s
	}
	g := &forcingGateway{seen: map[string]int{}}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := r.Header.Get(wire.HeaderForce)
		pool, ok := pools[v]
		if !ok || r.Header.Get(wire.HeaderKey) != "key" {
			http.Error(w, "not forced", http.StatusNotFound)
			return
		}
		g.mu.Lock()
		g.seen[v]++
		g.mu.Unlock()
		w.Header().Set(wire.HeaderVersion, v)
		pool.ServeHTTP(w, r)
	}))
	t.Cleanup(g.Close)
	return g
}

// simJudge grades as the simulated judge does (a fake of the judge model
// for pure logic: the marker of a bad answer scores 0).
type simJudge struct{}

func (simJudge) GradeAnswer(_ context.Context, _, _, _, answer string) (float64, error) {
	return sim.JudgeScore(answer), nil
}

var _ PairJudge = simJudge{}

// runPreflight takes looks until the rollout's pre-flight is decided: the
// first look starts it, the next one after it is done acts on it.
func runPreflight(t *testing.T, r *rig, id string) *Rollout {
	t.Helper()
	if _, err := r.runner.Step(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	r.runner.mu.Lock()
	run := r.runner.preflights[id]
	r.runner.mu.Unlock()
	if run == nil {
		t.Fatal("the first look did not start the pre-flight")
	}
	<-run.done
	got, err := r.runner.Step(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func preflightRig(t *testing.T, canary sim.Profile) (*rig, *mirrorTraffic, *forcingGateway) {
	t.Helper()
	r := newRig(t)
	mt := &mirrorTraffic{fakeTraffic: r.traffic}
	g := startForcingGateway(t, sim.Profile{Version: "v1", Model: "m", Seed: 1, OutputTokens: sim.FixedCount(4)}, canary)
	r.runner.Traffic, r.runner.Judge = mt, simJudge{}
	r.runner.Gateway = &PreflightGateway{URL: g.URL, ForceKey: "key"}
	return r, mt, g
}

var testSuite = []SuitePrompt{{Prompt: "a"}, {Prompt: "b"}, {Prompt: "c"}, {Prompt: "d"}, {Prompt: "e"}, {Prompt: "f"}, {Prompt: "g"}, {Prompt: "h"}, {Prompt: "i"}, {Prompt: "j"}}

func TestAPassedPreflightStartsTheShadowStageAndOnlyThenMirrors(t *testing.T) {
	r, mt, g := preflightRig(t, sim.Profile{Version: "v2", Model: "m", Seed: 2, OutputTokens: sim.FixedCount(4)})
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2",
		Preflight: &PreflightPolicy{Suite: testSuite, Warmup: WarmupPolicy{Tolerance: 0.9}}, Shadow: &ShadowPolicy{Percent: 20}})
	if err != nil {
		t.Fatal(err)
	}
	if mt.mirror() != nil {
		t.Fatalf("requests mirrored during the pre-flight: %+v", mt.mirror())
	}
	got := runPreflight(t, r, ro.ID)
	if got.Preflight.Status != PreflightPassed || !got.Shadow.Running() || got.Status != RolloutRunning || got.CanaryWeight() != 0 {
		t.Fatalf("pre-flight %s, shadow %+v, status %s, weight %g: want passed into the shadow stage; %s", got.Preflight.Status, got.Shadow, got.Status, got.CanaryWeight(), got.Last.Reason)
	}
	if m := mt.mirror(); m == nil || m.Version != "v2" || m.Percent != 20 {
		t.Fatalf("the shadow stage's mirror is not set: %+v", m)
	}
	if w := r.traffic.last().weights["v2"]; w != 0 {
		t.Fatalf("v2 got %g %% of user traffic", w)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen["v1"] != len(testSuite) || g.seen["v2"] != len(testSuite)+got.Preflight.Verdict.Warmup.Requests {
		t.Fatalf("forced requests %v: want the suite to both and the warm-up to v2", g.seen)
	}
}

func TestAFailedPreflightRollsBackWithoutEverGivingTheCanaryUsers(t *testing.T) {
	r, _, _ := preflightRig(t, sim.Profile{Version: "v2", Model: "m", Seed: 2, OutputTokens: sim.FixedCount(4), BadAnswerRate: 0.7})
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Preflight: &PreflightPolicy{Suite: testSuite, Warmup: WarmupPolicy{Tolerance: 0.9}}})
	if err != nil {
		t.Fatal(err)
	}
	got := runPreflight(t, r, ro.ID)
	if got.Status != RolloutRolledBack || got.Preflight.Status != PreflightFailed || got.Last.Code != CodeHarm {
		t.Fatalf("status %s, pre-flight %s: %s", got.Status, got.Preflight.Status, got.Last.Reason)
	}
	r.traffic.mu.Lock()
	defer r.traffic.mu.Unlock()
	for _, c := range r.traffic.calls {
		if c.weights["v2"] != 0 {
			t.Fatalf("v2 was given %g %% of user traffic", c.weights["v2"])
		}
	}
}

func TestAnAbortDuringThePreflightEndsIt(t *testing.T) {
	r, _, _ := preflightRig(t, sim.Profile{Version: "v2", Model: "m", Seed: 2, OutputTokens: sim.FixedCount(4)})
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Preflight: &PreflightPolicy{Suite: testSuite}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.runner.Step(context.Background(), ro.ID); err != nil {
		t.Fatal(err)
	}
	got, err := r.runner.Operate(context.Background(), ro.ID, OpAbort, "bob", "")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != RolloutAborted || got.Preflight.Status != PreflightEnded {
		t.Fatalf("status %s, pre-flight %s", got.Status, got.Preflight.Status)
	}
	r.runner.mu.Lock()
	defer r.runner.mu.Unlock()
	if len(r.runner.preflights) != 0 {
		t.Fatal("the aborted rollout's pre-flight is still running")
	}
}
