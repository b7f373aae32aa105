//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/report"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

const preflightKey = "e2e-preflight-operator-key"

// preflightFleet serves every user from stable (v1 at 100 %) with canary
// v2 deployed at 0 %, the force key preflightKey, and an analyzer whose
// pre-flight requests go through the gateway and are graded by a
// simulated judge.
func preflightFleet(t *testing.T, stable, canary sim.Profile) (*fleet, *analyzerProc) {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "force-keys")
	if err := os.WriteFile(keys, []byte(preflightKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100, stable: stable, canary: canary,
		stack: local.Options{Telemetry: true, Measure: timeAll, Capture: extproc.CaptureOptions{Rate: 1},
			Wasm: &xds.WasmOptions{Path: wasmModule(t), HashKey: "e2e-fleet-hash-key-0123456789", ForceKeysFile: keys}}})
	a := startAnalyzer(t, f, t.TempDir())
	a.runner.Gateway = &analyzer.PreflightGateway{URL: "http://" + f.Gateway[0], ForceKey: preflightKey}
	a.runner.Judge = startJudge(t, f)
	return f, a
}

// startJudge returns a judge backed by a simulated judge model, grading
// every 200 ms when run.
func startJudge(t *testing.T, f *fleet) *quality.Judge {
	t.Helper()
	js, err := local.StartSim(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(js.Stop)
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	store, err := quality.OpenScoreStore(context.Background(), conn, wire.Database)
	if err != nil {
		t.Fatal(err)
	}
	j, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Store: store, Endpoint: "http://" + js.Addr, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func suite(n int) []analyzer.SuitePrompt {
	out := make([]analyzer.SuitePrompt, n)
	for i := range out {
		out[i] = analyzer.SuitePrompt{Prompt: fmt.Sprintf("Explain item %d of the checklist.", i), Category: []string{"reasoning", "chat"}[i%2]}
	}
	return out
}

func TestPreflightStopsARegressedCanaryBeforeAnyUserRequestReachesIt(t *testing.T) {
	stable := analyzerProfile("v1", 0)
	canary := analyzerProfile("v2", 0)
	canary.BadAnswerRate = 0.6
	f, a := preflightFleet(t, stable, canary)
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2",
		Preflight: &analyzer.PreflightPolicy{Suite: suite(30), Warmup: analyzer.WarmupPolicy{Tolerance: 0.5}}})
	if err != nil {
		t.Fatal(err)
	}
	stop, sent := drive(t, f)
	got := waitStatus(t, a, ro.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	stop()
	if got.Status != analyzer.RolloutRolledBack || got.Preflight == nil || got.Preflight.Status != analyzer.PreflightFailed || got.Last.Code != analyzer.CodeHarm {
		t.Fatalf("rollout %s, pre-flight %+v: want rolled back by the pre-flight; %s", got.Status, got.Preflight, lastReasonOf(got))
	}
	v := got.Preflight.Verdict
	if v == nil || v.Prompts != 30 || v.Judged != 30 || !strings.Contains(v.Reason, "net loss share") {
		t.Fatalf("the verdict must judge all 30 pairs and name the quality gate: %+v", v)
	}
	t.Logf("%d user requests sent; %s", sent.Load(), v.Reason)
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Weights["v2"] != 0 {
		t.Fatalf("after the pre-flight v2 must stay at 0 %%: %+v %v", m, err)
	}
	// The pre-flight's forced requests reached v2 and are labelled so;
	// not one user request did.
	waitFor(t, 20*time.Second, "the pre-flight's rows", func() bool {
		return f.countRows(t, wire.TableRequests, "version = 'v2' AND forced = 1 AND startsWith(request_id, ?)", analyzer.PreflightIDPrefix) >= uint64(30+v.Warmup.Requests) &&
			f.countRows(t, wire.TableRequests, "version = 'v1' AND forced = 1 AND startsWith(request_id, ?)", analyzer.PreflightIDPrefix) >= 30
	})
	noUserReachedTheCanary(t, f, uint64(30+v.Warmup.Requests))
	// The report shows the pre-flight's requests per version.
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d, err := report.Load(context.Background(), conn, wire.Database, got, time.Now())
	if err != nil || strings.Contains(fmt.Sprint(d.Missing), "pre-flight") {
		t.Fatalf("report: %v %v", err, d.Missing)
	}
	want := fmt.Sprintf("[{v1 30 %d} {v2 %d %d}]", v.StableErrors, 30+v.Warmup.Requests, v.CanaryErrors)
	var have []string
	for _, p := range d.Preflight {
		have = append(have, fmt.Sprintf("{%s %d %d}", p.Version, p.Requests, p.Failures))
	}
	if "["+strings.Join(have, " ")+"]" != want {
		t.Fatalf("the report's pre-flight requests %v, want %s", d.Preflight, want)
	}
}

// noUserReachedTheCanary checks the telemetry once the canary's forced
// requests (at least forced of them) are in the access log: not one
// user request (forced = 0) reached v2, in requests or in the access
// log, while users were served by v1.
func noUserReachedTheCanary(t *testing.T, f *fleet, forced uint64) {
	t.Helper()
	waitFor(t, 20*time.Second, "the request log", func() bool {
		return f.countRows(t, wire.TableRequestLog, "version = 'v2' AND forced = 1") >= forced
	})
	if n := f.countRows(t, wire.TableRequests, "version = 'v2' AND forced = 0"); n != 0 {
		t.Fatalf("%d user requests were served by the regressed canary", n)
	}
	if n := f.countRows(t, wire.TableRequestLog, "version = 'v2' AND forced = 0"); n != 0 {
		t.Fatalf("%d access-log entries of users served by the regressed canary", n)
	}
	if n := f.countRows(t, wire.TableRequests, "version = 'v1' AND forced = 0"); n == 0 {
		t.Fatal("no user request was recorded while the pre-flight ran")
	}
}

func TestPreflightStopsACanaryThatFailsRequestsBeforeAnyUserRequestReachesIt(t *testing.T) {
	f, a := preflightFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0.3))
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2",
		Preflight: &analyzer.PreflightPolicy{Suite: suite(20), Warmup: analyzer.WarmupPolicy{Tolerance: 0.5}, Gates: analyzer.PreflightGates{MaxErrors: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := drive(t, f)
	got := waitStatus(t, a, ro.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	stop()
	v := got.Preflight.Verdict
	if got.Status != analyzer.RolloutRolledBack || v == nil || v.CanaryErrors <= 2 || !strings.Contains(v.Reason, "of the canary's requests failed (at most 2 allowed)") {
		t.Fatalf("rollout %s: want rolled back for the canary's errors; %s", got.Status, lastReasonOf(got))
	}
	t.Logf("%s", v.Reason)
	noUserReachedTheCanary(t, f, uint64(20+v.Warmup.Requests))
}

func TestPreflightPassesAHealthyCanaryToItsFirstUserStage(t *testing.T) {
	f, a := preflightFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2",
		Preflight: &analyzer.PreflightPolicy{Suite: suite(30), Warmup: analyzer.WarmupPolicy{Tolerance: 0.5},
			Gates: analyzer.PreflightGates{MaxLatencyRatio: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if ro.CanaryWeight() != 0 || ro.Preflight.Status != analyzer.PreflightRunning {
		t.Fatalf("a rollout in pre-flight keeps the canary at 0 %%: %g %%, %+v", ro.CanaryWeight(), ro.Preflight)
	}
	var got *analyzer.Rollout
	waitFor(t, 90*time.Second, "a decided pre-flight", func() bool {
		got, err = a.runner.Store.Get(ro.ID)
		return err == nil && (!got.Preflight.Running() || got.Status != analyzer.RolloutRunning)
	})
	if got.Preflight.Status != analyzer.PreflightPassed || got.Status != analyzer.RolloutRunning || got.Stage != 0 {
		t.Fatalf("rollout %s at stage %d, pre-flight %s: want passed; %s", got.Status, got.Stage, got.Preflight.Status, lastReasonOf(got))
	}
	t.Logf("%s", got.Preflight.Verdict.Reason)
	first := got.Plan.Policy.EvaluatedStages()[0].Weight
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Weights["v2"] != first {
		t.Fatalf("after the pass v2 must be at its first stage's %g %%: %+v %v", first, m, err)
	}
	if got.CanaryWeight() != first || got.Preflight.Progress.SuiteDone != 30 || got.Preflight.Progress.Phase != analyzer.PhaseDone {
		t.Fatalf("status after the pass: weight %g, progress %+v", got.CanaryWeight(), got.Preflight.Progress)
	}
}
