//go:build integration

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/sim"
)

// extprocFleet starts a fleet whose telemetry service is a real
// `llmcanary extproc` process (built from this module), so the tests can
// stop it with real signals.
func extprocFleet(t testing.TB, stable, canary sim.Profile, args ...string) (*fleet, *procs.Extproc) {
	t.Helper()
	if _, err := procs.LlmcanaryBinary(); err != nil {
		t.Fatalf("these tests run the real llmcanary binary: %v", err)
	}
	port, err := procs.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: stable, canary: canary,
		stack: local.Options{ClickHouse: true, ExtProcAddr: addr, Measure: timeAll}})
	ep, err := procs.StartExtproc(context.Background(), procs.ExtprocOptions{
		Dir: filepath.Join(t.TempDir(), "extproc"), Listen: addr, ClickHouse: f.ClickHouse.Addr, Args: args,
		TLS: f.Certs.ServerFiles(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("extproc log tail:\n%s", ep.Proc.Tail(40))
		}
		ep.Proc.Kill()
	})
	return f, ep
}

// TestCrashOfTelemetryLosesNoFinishedRequestsRow: SIGKILL reaches
// `llmcanary extproc` right after a burst of short requests finished (the
// service has seen each one end). Every row was on disk before it waited
// for ClickHouse, so after a restart on the same spool each request has
// exactly one row.
func TestCrashOfTelemetryLosesNoFinishedRequestsRow(t *testing.T) {
	short := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(5), ITL: sim.Fixed(1), OutputTokens: sim.FixedCount(4)}
	}
	f, ep := extprocFleet(t, short("v1"), short("v2"))
	ctx := context.Background()
	const n = 600 // more than one batch of 500: part is in ClickHouse at the crash, part only on disk
	answers := f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(i)} })
	for i, a := range answers {
		if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
			t.Fatalf("request %d: %d %.100s", i, a.status, a.body)
		}
	}
	lastAnswer := time.Now()
	// Envoy streams to the service beside the client: wait until the
	// service has seen every request end and its row is on disk in the
	// spool (what a finished request is owed), then crash.
	deadline := time.Now().Add(10 * time.Second)
	for _, m := range []string{"llmcanary_extproc_requests_total", "llmcanary_telemetry_logged_total"} {
		for {
			v, err := ep.Metric(ctx, m)
			if err == nil && v >= n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is %v of %d requests (%v)", m, v, n, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := ep.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %v after the last answer", time.Since(lastAnswer).Round(time.Millisecond))
	before, _ := f.rows(t)
	if err := ep.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitRows(t, n, 30*time.Second)
	time.Sleep(1500 * time.Millisecond) // a duplicate would show up by now
	got, distinct := f.rows(t)
	t.Logf("rows in ClickHouse at the crash %d; after the restart %d (%d distinct) of %d", before, got, distinct, n)
	if got != n || distinct != n {
		t.Fatalf("%d finished requests have %d rows (%d distinct) after a crash and restart, want exactly %d", n, got, distinct, n)
	}
}
