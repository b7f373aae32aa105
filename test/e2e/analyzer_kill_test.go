//go:build integration

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// startAnalyzerProcess runs `llmcanary analyzer` as a real process over
// the fleet, so a test can SIGKILL it at the moment that matters; args
// are extra flags.
func startAnalyzerProcess(t testing.TB, f *fleet, policyYAML string, args ...string) *procs.Analyzer {
	t.Helper()
	o := procs.AnalyzerOptions{Dir: t.TempDir(), ControlPlane: f.API.BaseURL, Token: local.DevToken,
		ClickHouse: f.ClickHouse.Addr, PolicyYAML: policyYAML, Args: append([]string{"--interval", "200ms"}, args...)}
	if f.Certs != "" {
		o.CA = f.Certs.CA()
	}
	a, err := procs.StartAnalyzer(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Proc.Stop(5 * time.Second) })
	return a
}

// processPolicy is the YAML policy of the analyzer process tests: 10 %
// for at least 2 s and 100 canary requests, then 50 % for at least
// second and samples, then the promotion; judged on errors, latency and
// TTFT.
func processPolicy(second string, samples int, maxStage string) string {
	return fmt.Sprintf(`
stages:
  - {weight: 10, min_duration: 2s, min_samples: 100}
  - {weight: 50, min_duration: %s, min_samples: %d}
  - {weight: 100}
max_stage_duration: %s
min_test_samples: 50
tolerances: {error_rate: 0.05, latency: 0.25, ttft: 0.25}
required: [error_rate, latency]
`, second, samples, maxStage)
}

func analyzerClient(a *procs.Analyzer) *analyzer.Client {
	return &analyzer.Client{BaseURL: "http://" + a.Addr, Token: local.DevToken, Actor: "e2e"}
}

// TestAnalyzerKilledAtAStageChangeNeverRevertsTheRollout polls the control
// plane every 5 ms and SIGKILLs the analyzer the moment the canary's weight
// moves from 10 % to 50 %, then starts it again from its data directory:
// the rollout must resume at 50 % with one recorded advance, the weights
// must never go back to 10 % (users who entered the canary would be
// flipped back to stable), and the restart must publish no revision for
// weights already in place.
func TestAnalyzerKilledAtAStageChangeNeverRevertsTheRollout(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	a := startAnalyzerProcess(t, f, processPolicy("5m", 100, "10m"))
	stop, _ := drive(t, f)
	defer stop()
	ctx := context.Background()
	ro, err := analyzerClient(a).Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, err := f.API.Model(ctx, model)
		if err == nil && m.Weights["v2"] == 50 {
			if err := a.Proc.Kill(); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the canary never reached 50 %%: %+v %v\n%s", m, err, a.Proc.Tail(20))
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-a.Proc.Done()
	if st, err := analyzer.OpenRolloutStore(a.DataDir()); err == nil {
		if killed, err := st.Get(ro.ID); err == nil {
			t.Logf("killed at stage %d with %q pending (pending: between the traffic move and the saved outcome)", killed.Stage+1, killed.Pending)
		}
	}
	rev, err := f.API.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := a.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	watch := time.Now().Add(5 * time.Second)
	for time.Now().Before(watch) {
		m, err := f.API.Model(ctx, model)
		if err != nil {
			t.Fatal(err)
		}
		if m.Weights["v2"] != 50 {
			t.Fatalf("after the restart the canary is at %v %%, want 50 %%: the advance was reversed", m.Weights["v2"])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if now, err := f.API.Revision(ctx); err != nil || now != rev {
		t.Errorf("the restart moved the control plane from revision %d to %d (%v): it re-sent weights already in place", rev, now, err)
	}
	got, err := analyzerClient(a).Get(ctx, ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	advances := 0
	for _, e := range got.History {
		if e.Kind == "action" && e.Action == analyzer.ActionAdvance {
			advances++
		}
	}
	if got.Stage != 1 || got.Pending != "" || got.Status != analyzer.RolloutRunning || advances != 1 {
		t.Fatalf("after the restart the rollout is %s at stage %d (pending %q) with %d advances recorded, want running at stage 2 of 2 with one advance\n%s",
			got.Status, got.Stage+1, got.Pending, advances, a.Proc.Tail(20))
	}
}
