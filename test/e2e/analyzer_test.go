//go:build integration

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
)

// compressedPolicy runs a rollout in seconds: stages of 10 % and 50 %, each
// at least 2 s and 150 canary requests, at most 90 s, judged on errors,
// latency and TTFT.
func compressedPolicy() analyzer.Policy {
	p := analyzer.DefaultPolicy()
	p.Stages = []analyzer.Stage{
		{Weight: 10, MinDuration: config.Duration(2 * time.Second), MinSamples: 150},
		{Weight: 50, MinDuration: config.Duration(2 * time.Second), MinSamples: 150},
		{Weight: 100},
	}
	p.MaxStageDuration = config.Duration(90 * time.Second)
	p.MinTestSamples = 50
	p.Tolerances = map[analyzer.Metric]float64{
		analyzer.MetricErrorRate: 0.05,
		analyzer.MetricLatency:   0.25,
		analyzer.MetricTTFT:      0.25,
	}
	p.Required = []analyzer.Metric{analyzer.MetricErrorRate, analyzer.MetricLatency}
	return p
}

// analyzerProc is a runner over the fleet's ClickHouse and control plane,
// as `llmcanary analyzer` wires it, stoppable to simulate a restart.
type analyzerProc struct {
	runner *analyzer.Runner
	cancel context.CancelFunc
	done   chan struct{}
}

func startAnalyzer(t *testing.T, f *fleet, dir string) *analyzerProc {
	t.Helper()
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	store, err := analyzer.OpenRolloutStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cp := analyzer.ControlPlaneClient{Client: f.API}
	src := chsource.New(conn, wire.Database)
	r := &analyzer.Runner{
		Store: store, Source: src, Pairs: src, Traffic: cp, Models: cp,
		Policy: compressedPolicy(), Interval: 250 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &analyzerProc{runner: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		_ = r.Run(ctx)
	}()
	stopped := false
	a.cancel = func() {
		if !stopped {
			stopped = true
			cancel()
			<-a.done
			conn.Close()
		}
	}
	t.Cleanup(a.cancel)
	return a
}

// drive sends streamed requests from random users until stop is called.
func drive(t *testing.T, f *fleet) (stop func(), sent *atomic.Int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sent = &atomic.Int64{}
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				_, _ = f.try(request{body: streamBody, headers: user(int(r.Uint32()))})
				sent.Add(1)
			}
		}()
	}
	return func() { cancel(); wg.Wait() }, sent
}

// waitStatus waits for the rollout to reach one of the statuses.
func waitStatus(t *testing.T, a *analyzerProc, id string, within time.Duration, want ...analyzer.Status) *analyzer.Rollout {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ro, err := a.runner.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range want {
			if ro.Status == s {
				return ro
			}
		}
		if time.Now().After(deadline) {
			last := ""
			if ro.Last != nil {
				last = ro.Last.Reason
			}
			t.Fatalf("rollout %s is %s at stage %d after %v, want %v; last decision: %s; error: %s", id, ro.Status, ro.Stage, within, want, last, ro.LastError)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// served sends n requests from new users and counts them per version.
func served(t *testing.T, f *fleet, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, a := range f.parallel(t, n, func(i int) request { return request{headers: user(1_000_000 + i)} }) {
		out[a.version]++
	}
	return out
}

func analyzerProfile(version string, errorRate float64) sim.Profile {
	return sim.Profile{Version: version, Model: model, TTFT: sim.Uniform(15, 25), ITL: sim.Uniform(1, 3), OutputTokens: sim.FixedCount(8), ErrorRate: errorRate, Seed: uint64(len(version))}
}

func TestAnalyzerRollsBackARegressionAndEnvoyServesStableWithinOneSecond(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0.4))
	a := startAnalyzer(t, f, t.TempDir())
	stop, _ := drive(t, f)
	defer stop()
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, a, ro.ID, 60*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	if done.Status != analyzer.RolloutRolledBack || done.Last == nil || done.Last.Code != analyzer.CodeHarm || !strings.Contains(done.Last.Reason, "error_rate") {
		t.Fatalf("rollout ended %s: %+v", done.Status, done.Last)
	}
	t.Logf("decision: %s", done.Last.Reason)
	// The decision is saved, then the weights move (write-ahead); one
	// second after the decision every Envoy must route every user to
	// stable.
	time.Sleep(time.Until(done.Last.At.Add(time.Second)))
	got := served(t, f, 200)
	if got["v1"] != 200 {
		t.Fatalf("1 s after the rollback Envoy served %v, want all 200 by v1", got)
	}
}

func TestAnalyzerPromotesAHealthyCanaryThroughEveryStage(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	a := startAnalyzer(t, f, t.TempDir())
	stop, _ := drive(t, f)
	defer stop()
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, a, ro.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	if done.Status != analyzer.RolloutPromoted {
		t.Fatalf("healthy canary ended %s: %+v", done.Status, done.Last)
	}
	var actions []string
	for _, e := range done.History {
		if e.Kind == "action" {
			actions = append(actions, string(e.Action))
		}
	}
	if fmt.Sprint(actions) != "[advance promote]" {
		t.Fatalf("traffic actions %v, want [advance promote]", actions)
	}
	t.Logf("decision: %s", done.Last.Reason)
	m, err := f.API.Model(context.Background(), model)
	if err != nil || m.Stable != "v2" || m.Weights["v2"] != 100 {
		t.Fatalf("control plane after promotion: %+v, %v", m, err)
	}
	// The promotion is in force once every Envoy serves its revision.
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.WaitReady(wctx); err != nil {
		t.Fatalf("the promotion did not reach every Envoy: %v", err)
	}
	if got := served(t, f, 200); got["v2"] != 200 {
		t.Fatalf("after promotion Envoy served %v, want all 200 by v2", got)
	}
}

func TestAnalyzerRestartedMidRolloutResumesWhereItStood(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	dir := t.TempDir()
	a := startAnalyzer(t, f, dir)
	stop, _ := drive(t, f)
	defer stop()
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the second stage, then stop the analyzer.
	deadline := time.Now().Add(60 * time.Second)
	var before *analyzer.Rollout
	for {
		before, err = a.runner.Store.Get(ro.ID)
		if err != nil {
			t.Fatal(err)
		}
		if before.Stage == 1 || !before.Status.Active() || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.cancel()
	before, _ = a.runner.Store.Get(ro.ID)
	if before.Stage != 1 || before.Status != analyzer.RolloutRunning {
		t.Fatalf("before the restart: stage %d status %s, want stage 2 running", before.Stage+1, before.Status)
	}
	// While it is down, someone moves the traffic.
	if _, err := f.API.SetWeights(context.Background(), model, map[string]float64{"v1": 100, "v2": 0}, ""); err != nil {
		t.Fatal(err)
	}
	b := startAnalyzer(t, f, dir)
	back, err := b.runner.Store.Get(ro.ID)
	if err != nil || back.Stage != 1 || !back.StageStarted.Equal(before.StageStarted) {
		t.Fatalf("after the restart: %+v, %v; want stage 2 started at %v", back, err, before.StageStarted)
	}
	// The restarted analyzer puts the stage's weights back.
	deadline = time.Now().Add(5 * time.Second)
	for {
		m, err := f.API.Model(context.Background(), model)
		if err == nil && (m.Weights["v2"] == 50 || m.Weights["v2"] == 100) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("weights after the restart: %+v, %v", m, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	done := waitStatus(t, b, ro.ID, 60*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	if done.Status != analyzer.RolloutPromoted {
		t.Fatalf("resumed rollout ended %s: %+v", done.Status, done.Last)
	}
}

func TestControlPlaneRestartedMidRolloutLosesNothing(t *testing.T) {
	f := telemetryFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	a := startAnalyzer(t, f, t.TempDir())
	stop, _ := drive(t, f)
	defer stop()
	ctx := context.Background()
	ro, err := a.runner.Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	// Once the first stage's weights are in place, the control plane goes
	// away, and stays away until the analyzer has decided to move traffic
	// and been refused.
	waitFor(t, 10*time.Second, "the first stage's weights", func() bool {
		m, err := f.API.Model(ctx, model)
		return err == nil && m.Weights["v2"] > 0
	})
	f.StopControlPlane()
	waitFor(t, 60*time.Second, "a refused traffic change", func() bool {
		x, err := a.runner.Store.Get(ro.ID)
		if err != nil {
			return false
		}
		for _, e := range x.History {
			if e.Kind == "error" {
				return true
			}
		}
		return false
	})
	// Envoy keeps serving on its last configuration meanwhile.
	for i, a := range f.parallel(t, 100, func(i int) request { return request{headers: user(2_000_000 + i)} }) {
		if a.status != 200 {
			t.Fatalf("request %d with the control plane down: %d %s", i, a.status, a.body)
		}
	}
	mid, err := a.runner.Store.Get(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if mid.Status != analyzer.RolloutRunning {
		t.Fatalf("with the control plane down the rollout became %s (%s); it must only wait", mid.Status, lastReasonOf(mid))
	}
	if err := f.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	done := waitStatus(t, a, ro.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	if done.Status != analyzer.RolloutPromoted {
		t.Fatalf("rollout ended %s after the control plane came back: %s", done.Status, lastReasonOf(done))
	}
	failedMoves := 0
	for _, e := range done.History {
		if e.Kind == "error" {
			failedMoves++
		}
	}
	t.Logf("%d traffic changes were refused while the control plane was down and retried after", failedMoves)
	if failedMoves == 0 {
		t.Fatal("the history does not record the refused traffic change")
	}
	m, err := f.API.Model(ctx, model)
	if err != nil || m.Stable != "v2" || m.Weights["v2"] != 100 {
		t.Fatalf("control plane after the promotion: %+v, %v", m, err)
	}
}

func lastReasonOf(ro *analyzer.Rollout) string {
	if ro.Last == nil {
		return ro.LastError
	}
	return ro.Last.Reason + " " + ro.LastError
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
