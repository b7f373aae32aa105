//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

// shadowPool is a simulated pool that remembers what reached it: the
// request ids and Host headers, so a test can tell mirrored requests from
// routed ones.
type shadowPool struct {
	Addr string
	mu   sync.Mutex
	ids  map[string]string // request id → Host
}

func startShadowPool(t *testing.T, p sim.Profile) *shadowPool {
	t.Helper()
	h, err := sim.New(p)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sp := &shadowPool{Addr: l.Addr().String(), ids: map[string]string{}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			sp.mu.Lock()
			sp.ids[r.Header.Get(wire.HeaderRequestID)] = r.Host
			sp.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sp
}

func (sp *shadowPool) seen() map[string]string {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out := make(map[string]string, len(sp.ids))
	for k, v := range sp.ids {
		out[k] = v
	}
	return out
}

// shadowFleet serves every user from stable (v1 at 100 %) and mirrors
// percent of the weighted requests to the version "shadow", a pool of
// profile p, with every answer timed and captured.
func shadowFleet(t *testing.T, p sim.Profile, percent float64) (*fleet, *shadowPool) {
	t.Helper()
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100,
		stable: sim.Profile{Version: "v1", Model: model, Seed: 1, OutputTokens: sim.FixedCount(8)},
		stack:  local.Options{Telemetry: true, Measure: timeAll, Capture: extproc.CaptureOptions{Rate: 1}}})
	p.Version, p.Model = "shadow", model
	sp := startShadowPool(t, p)
	ctx := context.Background()
	m, err := f.API.Model(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	m.Versions = append(m.Versions, xds.Version{Name: "shadow", Endpoints: []string{sp.Addr}})
	m.Shadow = &xds.Shadow{Version: "shadow", Percent: percent}
	if _, err := f.API.PutModel(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := f.API.WaitApplied(ctx); err != nil {
		t.Fatal(err)
	}
	return f, sp
}

// countRows counts rows of a table for the model matching cond.
func (f *fleet) countRows(t testing.TB, table, cond string, args ...any) uint64 {
	t.Helper()
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n uint64
	q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE model = ? AND (%s)", wire.Database, table, cond)
	if err := conn.QueryRow(context.Background(), q, append([]any{model}, args...)...).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func TestMirroredRequestsReachTheShadowVersionWhileUsersGetOnlyStablesAnswers(t *testing.T) {
	f, sp := shadowFleet(t, sim.Profile{Seed: 7, OutputTokens: sim.FixedCount(8)}, 50)
	const n = 300
	answers := f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(i)} })
	ids := map[string]bool{}
	for i, a := range answers {
		if a.status != 200 || a.version != "v1" || a.servedBy != "v1" || !strings.Contains(a.body, "[DONE]") {
			t.Fatalf("request %d: status %d, announced %q, served by %q: users must get stable's answers only", i, a.status, a.version, a.servedBy)
		}
		ids[a.header.Get(wire.HeaderRequestID)] = true
	}
	// Mirroring is fire and forget: wait for the mirrored requests' rows.
	var shadowRows uint64
	waitFor(t, 20*time.Second, "shadow rows", func() bool {
		shadowRows = f.countRows(t, wire.TableShadow, "1")
		return shadowRows > 0 && shadowRows == uint64(len(sp.seen()))
	})
	seen := sp.seen()
	lo, hi := binomialBounds(n, 0.5, 3.29)
	t.Logf("%d of %d user requests mirrored (50 %% configured), %d shadow rows", len(seen), n, shadowRows)
	if float64(len(seen)) < lo || float64(len(seen)) > hi {
		t.Fatalf("%d of %d requests mirrored at 50 %%, outside [%.0f, %.0f]", len(seen), n, lo, hi)
	}
	for id, host := range seen {
		if !ids[id] {
			t.Fatalf("the shadow pool got request id %q, which no user request had: the mirror must keep x-request-id", id)
		}
		// Envoy 1.37 suffixes the host name, before the port.
		if h, _, err := net.SplitHostPort(host); err != nil || !strings.HasSuffix(h, "-shadow") {
			t.Fatalf("mirrored request with Host %q: Envoy marks mirrored requests with the -shadow suffix", host)
		}
	}
	// The shadow's answers are paired with stable's by request id and
	// never counted as user traffic.
	if got := f.countRows(t, wire.TableShadow, "version = 'shadow' AND failure = '' AND completion != '' AND request_id IN (SELECT request_id FROM "+wire.Database+"."+wire.TableRequests+" WHERE version = 'v1')"); got != shadowRows {
		t.Fatalf("%d of %d shadow rows are complete answers of version shadow paired with a stable row", got, shadowRows)
	}
	if got := f.countRows(t, wire.TableRequests, "version = 'shadow'"); got != 0 {
		t.Fatalf("%d request rows of the shadow version: mirrored answers must never count as user traffic", got)
	}
	waitFor(t, 10*time.Second, "the request log", func() bool { return f.countRows(t, wire.TableRequestLog, "1") >= n })
	if got := f.countRows(t, wire.TableRequestLog, "version = 'shadow' OR cluster LIKE '%shadow%'"); got != 0 {
		t.Fatalf("%d request log rows of the shadow version", got)
	}
	if got := f.countRows(t, wire.TableRequests, "version = 'v1'"); got != n {
		t.Fatalf("%d stable request rows, want %d", got, n)
	}
}

// startShadowJudge grades shadow pairs with a simulated judge until the
// test ends.
func startShadowJudge(t *testing.T, f *fleet) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sj, err := quality.NewShadowJudge(ctx, startJudge(t, f))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = sj.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestShadowStageRollsBackARegressedCanaryBeforeAnyUserReachesIt(t *testing.T) {
	stable := analyzerProfile("v1", 0)
	stable.BadAnswerRate = 0.02
	canary := analyzerProfile("v2", 0)
	canary.BadAnswerRate = 0.5
	// Measured by need, with text kept for 1 % of requests: the shadow
	// stage itself must measure and keep the user's answer of every
	// mirrored request.
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100, stable: stable, canary: canary,
		stack: local.Options{Telemetry: true, Capture: extproc.CaptureOptions{Rate: 0.01}}})
	startShadowJudge(t, f)
	a := startAnalyzer(t, f, t.TempDir())
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2",
		Shadow: &analyzer.ShadowPolicy{Percent: 50, MaxConcurrent: 8, MinPairs: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Shadow == nil || m.Shadow.Version != "v2" || m.Weights["v2"] != 0 {
		t.Fatalf("the control plane must mirror to v2 with v2 at 0 %%: %+v %v", m, err)
	}
	stop, sent := drive(t, f)
	got := waitStatus(t, a, ro.ID, 90*time.Second, analyzer.RolloutRolledBack, analyzer.RolloutPromoted, analyzer.RolloutPaused)
	stop()
	if got.Status != analyzer.RolloutRolledBack || got.Shadow == nil || got.Shadow.Status != analyzer.ShadowFailed || got.Last.Code != analyzer.CodeHarm {
		t.Fatalf("rollout %s, shadow %+v: want rolled back on shadow evidence; %s", got.Status, got.Shadow, lastReasonOf(got))
	}
	t.Logf("%d user requests sent; %s", sent.Load(), got.Last.Reason)
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Shadow.Mirrors() || m.Weights["v2"] != 0 {
		t.Fatalf("after the rollback the mirror must be off and v2 at 0 %%: %+v %v", m, err)
	}
	// No user was served by the canary, ever: not one request row, not
	// one access-log entry.
	if n := f.countRows(t, wire.TableRequests, "version = 'v2'"); n != 0 {
		t.Fatalf("%d user requests were served by the regressed canary", n)
	}
	if n := f.countRows(t, wire.TableRequestLog, "version = 'v2'"); n != 0 {
		t.Fatalf("%d access-log entries of the regressed canary", n)
	}
	if n := f.countRows(t, wire.TableShadow, "version = 'v2'"); n == 0 {
		t.Fatal("no shadow answer was recorded")
	}
	if n := f.countRows(t, quality.ShadowTable, "1"); n == 0 {
		t.Fatal("no shadow pair was judged")
	}
	// Every mirrored request's user answer was timed and kept, though
	// only half of the users are measured and 1 % of text is captured:
	// the mirror draws from the measured users, whose answers the route
	// asks the telemetry to keep.
	mirrored := f.countRows(t, wire.TableShadow, "version = 'v2'")
	kept := f.countRows(t, wire.TableShadow, "version = 'v2' AND request_id IN (SELECT request_id FROM "+wire.Database+"."+wire.TableCaptures+" WHERE version = 'v1')")
	if kept < mirrored*9/10 {
		t.Fatalf("stable's answer was kept for %d of %d mirrored requests", kept, mirrored)
	}
	t.Logf("stable's answer kept for %d of %d mirrored requests", kept, mirrored)
	for v, n := range served(t, f, 100) {
		if v != "v1" {
			t.Fatalf("%d requests served by %q after the rollback", n, v)
		}
	}
}

func TestMirrorSwitchedOnAndOffUnderLoadNeverFailsAUserRequest(t *testing.T) {
	f, _ := shadowFleet(t, sim.Profile{Seed: 7, OutputTokens: sim.FixedCount(8)}, 50)
	ctx := context.Background()
	var failed, total atomic.Int64
	stopCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := 0; stopCtx.Err() == nil; i++ {
				a, err := f.try(request{body: streamBody, headers: user(w*1_000_000 + i)})
				total.Add(1)
				if err != nil || a.status != 200 || a.version != "v1" {
					failed.Add(1)
					return
				}
			}
		})
	}
	for i := range 20 {
		m, err := f.API.Model(ctx, model)
		if err != nil {
			t.Fatal(err)
		}
		m.Sampling = nil
		// Off by removing the setting or by 0 %, on again.
		switch i % 4 {
		case 0:
			m.Shadow = nil
		case 2:
			m.Shadow = &xds.Shadow{Version: "shadow"}
		default:
			m.Shadow = &xds.Shadow{Version: "shadow", Percent: 50}
		}
		if _, err := f.API.PutModel(ctx, m); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = f.API.WaitApplied(wctx)
		cancel()
		// Let mirrored requests be in flight when the next change lands.
		time.Sleep(300 * time.Millisecond)
		if err != nil || failed.Load() > 0 {
			stop()
			wg.Wait()
			t.Fatalf("change %d: %d of %d user requests failed (%v)", i, failed.Load(), total.Load(), err)
		}
	}
	stop()
	wg.Wait()
	t.Logf("%d user requests while the mirror was switched 20 times, %d failed", total.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of %d user requests failed or were not stable's", failed.Load(), total.Load())
	}
}

func TestShadowStagePassesAHealthyCanaryToItsFirstUserStage(t *testing.T) {
	stable := analyzerProfile("v1", 0)
	stable.BadAnswerRate = 0.02
	canary := analyzerProfile("v2", 0)
	canary.BadAnswerRate, canary.Seed = 0.02, 7 // its own draws: not the same answers as stable
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100, stable: stable, canary: canary,
		stack: local.Options{Telemetry: true, Measure: timeAll, Capture: extproc.CaptureOptions{Rate: 1}}})
	startShadowJudge(t, f)
	a := startAnalyzer(t, f, t.TempDir())
	ro, err := a.runner.Start(context.Background(), analyzer.StartRequest{Model: model, Canary: "v2",
		Shadow: &analyzer.ShadowPolicy{Percent: 50, MinPairs: 150, QualityTolerance: 0.1, LatencyTolerance: 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := drive(t, f)
	defer stop()
	var got *analyzer.Rollout
	waitFor(t, 120*time.Second, "a passed shadow stage", func() bool {
		got, err = a.runner.Store.Get(ro.ID)
		return err == nil && (got.Shadow.Status != analyzer.ShadowRunning || got.Status != analyzer.RolloutRunning)
	})
	if got.Shadow.Status != analyzer.ShadowPassed || got.Status != analyzer.RolloutRunning || got.Stage != 0 {
		t.Fatalf("rollout %s at stage %d, shadow %s: want the shadow stage passed; %s", got.Status, got.Stage, got.Shadow.Status, lastReasonOf(got))
	}
	t.Logf("%s", got.Shadow.Last.Reason)
	first := got.Plan.Policy.EvaluatedStages()[0].Weight
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Shadow.Mirrors() || m.Weights["v2"] != first {
		t.Fatalf("after the pass the mirror must be off and v2 at %g %%: %+v %v", first, m, err)
	}
	// The version that was the shadow can be promoted: it becomes stable
	// and is no one's shadow any more.
	if _, err := a.runner.Operate(context.Background(), ro.ID, analyzer.OpPromote, "alice", "ship it"); err != nil {
		t.Fatal(err)
	}
	if m, err := f.API.Model(context.Background(), model); err != nil || m.Stable != "v2" || m.Shadow != nil || m.Weights["v2"] != 100 {
		t.Fatalf("after the promotion v2 must be stable at 100 %% with no shadow: %+v %v", m, err)
	}
}
