package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/stack"
)

// analyzerProcess runs `llmcanary analyzer` as a real process over the
// fleet, so a test can SIGKILL it at the moment that matters.
type analyzerProcess struct {
	t      *testing.T
	f      *fleet
	bin    string
	dir    string
	addr   string
	policy string
	token  string
	runs   int
	proc   *stack.Proc
}

func startAnalyzerProcess(t *testing.T, f *fleet, policyYAML string) *analyzerProcess {
	t.Helper()
	bin, err := stack.LlmcanaryBinary()
	if err != nil {
		t.Fatal(err)
	}
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := &analyzerProcess{t: t, f: f, bin: bin, dir: dir, addr: "127.0.0.1:" + strconv.Itoa(port),
		policy: filepath.Join(dir, "policy.yaml"), token: filepath.Join(dir, "token")}
	if err := os.WriteFile(a.policy, []byte(policyYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.token, []byte(local.DevToken), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	t.Cleanup(func() { a.proc.Stop(5 * time.Second) })
	return a
}

func (a *analyzerProcess) start() {
	a.t.Helper()
	a.runs++
	args := []string{"analyzer",
		"--listen", a.addr, "--data-dir", filepath.Join(a.dir, "data"), "--token-file", a.token,
		"--control-plane", a.f.API.BaseURL, "--clickhouse", a.f.ClickHouse.Addr, "--policy", a.policy,
		"--interval", "200ms"}
	if a.f.Certs != "" {
		args = append(args, "--control-plane-ca", a.f.Certs.CA())
	}
	p, err := stack.StartProc("analyzer", filepath.Join(a.dir, fmt.Sprintf("analyzer-%d.log", a.runs)), a.bin, args...)
	if err != nil {
		a.t.Fatal(err)
	}
	a.proc = p
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stack.WaitTCP(ctx, a.addr); err != nil {
		a.t.Fatalf("analyzer did not start: %v\n%s", err, p.Tail(30))
	}
}

func (a *analyzerProcess) client() *analyzer.Client {
	return &analyzer.Client{BaseURL: "http://" + a.addr, Token: local.DevToken, Actor: "e2e"}
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
	a := startAnalyzerProcess(t, f, `
stages:
  - {weight: 10, min_duration: 2s, min_samples: 100}
  - {weight: 50, min_duration: 5m, min_samples: 100}
  - {weight: 100}
max_stage_duration: 10m
min_test_samples: 50
tolerances: {error_rate: 0.05, latency: 0.25, ttft: 0.25}
required: [error_rate, latency]
`)
	stop, _ := drive(t, f)
	defer stop()
	ctx := context.Background()
	ro, err := a.client().Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, err := f.API.Model(ctx, model)
		if err == nil && m.Weights["v2"] == 50 {
			if err := a.proc.Kill(); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the canary never reached 50 %%: %+v %v\n%s", m, err, a.proc.Tail(20))
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-a.proc.Done()
	if st, err := analyzer.OpenStore(filepath.Join(a.dir, "data")); err == nil {
		if killed, err := st.Get(ro.ID); err == nil {
			t.Logf("killed at stage %d with %q pending (pending: between the traffic move and the saved outcome)", killed.Stage+1, killed.Pending)
		}
	}
	rev, err := f.API.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	a.start()
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
	got, err := a.client().Get(ctx, ro.ID)
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
			got.Status, got.Stage+1, got.Pending, advances, a.proc.Tail(20))
	}
}
