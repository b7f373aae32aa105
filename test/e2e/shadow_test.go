//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

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
