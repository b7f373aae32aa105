//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

const streamBody = `{"model":"` + model + `","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"tell me"}]}`
const streamBodyNoUsage = `{"model":"` + model + `","stream":true,"messages":[{"role":"user","content":"tell me"}]}`

// timeAll times every request: the telemetry tests check what each timed
// request records, not which are timed (TestStableIsMeasuredByUser does).
var timeAll = xds.Measure{All: true}

func telemetryFleet(t *testing.T, stable, canary sim.Profile) *fleet {
	return startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: stable, canary: canary,
		stack: local.Options{Telemetry: true, Measure: timeAll}})
}

// rows counts the telemetry rows of the model, and the distinct request ids.
func (f *fleet) rows(t testing.TB) (n, distinct uint64) {
	t.Helper()
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	row := conn.QueryRow(context.Background(), fmt.Sprintf(
		"SELECT count(), uniqExact(request_id) FROM %s.%s WHERE model = ?", wire.Database, wire.TableRequests), model)
	if err := row.Scan(&n, &distinct); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return n, distinct
}

// waitRows waits until the model has want rows (the writer batches and
// ext_proc records a request when its stream ends).
func (f *fleet) waitRows(t testing.TB, want uint64, within time.Duration) (n, distinct uint64) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		n, distinct = f.rows(t)
		if n >= want || time.Now().After(deadline) {
			return n, distinct
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestEveryStreamedRequestBecomesOneRowWithTheInjectedTiming(t *testing.T) {
	prof := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(40), ITL: sim.Fixed(4), OutputTokens: sim.FixedCount(16)}
	}
	f := telemetryFleet(t, prof("v1"), prof("v2"))
	const n = 1000
	answers := f.parallel(t, n, func(i int) request {
		b := streamBody
		if i%2 == 1 {
			b = streamBodyNoUsage // tokens must then be counted from the chunks
		}
		return request{body: b, headers: user(i)}
	})
	for i, a := range answers {
		if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
			t.Fatalf("request %d: %d %.100s", i, a.status, a.body)
		}
	}
	got, distinct := f.waitRows(t, n, 20*time.Second)
	if got != n || distinct != n {
		t.Fatalf("%d streamed requests gave %d rows (%d distinct request ids), want exactly %d", n, got, distinct, n)
	}
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var (
		minTTFT, p50TTFT, p99TTFT, maxTTFT, p50ITL float64
		wrongTokens, fromUsage, notOK, noVersion   uint64
		versions, wrongCluster, wrongCost          uint64
	)
	err = conn.QueryRow(context.Background(), fmt.Sprintf(`
		SELECT min(ttft_ms), quantile(0.5)(ttft_ms), quantile(0.99)(ttft_ms), max(ttft_ms), quantile(0.5)(itl_mean_ms),
		       countIf(completion_tokens != 16), countIf(tokens_from_usage = 1),
		       countIf(status != 200 OR failure != '' OR finish_reason != 'stop'), countIf(version = ''), uniqExact(version),
		       countIf(cluster != concat('llm|', model, '|', version)),
		       countIf(abs(cost_usd - (prompt_tokens * 0.5 + completion_tokens * 1.5) / 1000) > 1e-9)
		FROM %s.%s WHERE model = ?`, wire.Database, wire.TableRequests), model).
		Scan(&minTTFT, &p50TTFT, &p99TTFT, &maxTTFT, &p50ITL, &wrongTokens, &fromUsage, &notOK, &noVersion, &versions, &wrongCluster, &wrongCost)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("injected TTFT 40 ms, ITL 4 ms; measured TTFT min %.1f p50 %.1f p99 %.1f max %.1f ms, ITL p50 %.2f ms",
		minTTFT, p50TTFT, p99TTFT, maxTTFT, p50ITL)
	if minTTFT < 40 {
		t.Fatalf("a row has TTFT %.1f ms, below the 40 ms the pool waited", minTTFT)
	}
	if p50TTFT > 40+5 {
		t.Fatalf("median TTFT %.1f ms is more than 5 ms above the injected 40 ms", p50TTFT)
	}
	if p50ITL < 3 || p50ITL > 4+3 {
		t.Fatalf("median inter-token latency %.2f ms, injected 4 ms", p50ITL)
	}
	if wrongTokens != 0 {
		t.Fatalf("%d rows do not have exactly 16 completion tokens", wrongTokens)
	}
	if fromUsage != n/2 {
		t.Fatalf("%d rows took tokens from usage, want %d (the requests that asked for it)", fromUsage, n/2)
	}
	if notOK != 0 || noVersion != 0 || versions != 2 {
		t.Fatalf("rows with a failure %d, without a version %d, versions seen %d", notOK, noVersion, versions)
	}
	// The route opens each stream with its cluster and the version's prices.
	if wrongCluster != 0 || wrongCost != 0 {
		t.Fatalf("rows with another cluster than their version's %d, priced otherwise than at 0.5 and 1.5 per 1k tokens %d", wrongCluster, wrongCost)
	}
}

func TestClickHouseOutageLosesNoRowAndDuplicatesNone(t *testing.T) {
	f := telemetryFleet(t, sim.Profile{Version: "v1", Model: model, OutputTokens: sim.FixedCount(4)},
		sim.Profile{Version: "v2", Model: model, OutputTokens: sim.FixedCount(4)})
	send := func(from, n int) {
		answers := f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(from + i)} })
		for i, a := range answers {
			if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
				t.Fatalf("request %d: %d %.100s", from+i, a.status, a.body)
			}
		}
	}
	send(0, 200)
	if got, _ := f.waitRows(t, 200, 20*time.Second); got != 200 {
		t.Fatalf("before the outage: %d rows, want 200", got)
	}
	if err := f.ClickHouse.Kill(); err != nil {
		t.Fatal(err)
	}
	send(200, 300) // every request still succeeds while ClickHouse is away
	time.Sleep(1500 * time.Millisecond)
	if err := f.ClickHouse.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, distinct := f.waitRows(t, 500, 60*time.Second)
	t.Logf("after the outage: %d rows, %d distinct request ids", got, distinct)
	if got != 500 || distinct != 500 {
		t.Fatalf("after ClickHouse came back: %d rows, %d distinct; want every one of 500 exactly once", got, distinct)
	}
}

func TestEnvoyKeepsServingWhenTheTelemetryServiceDies(t *testing.T) {
	f := telemetryFleet(t, sim.Profile{Version: "v1", Model: model, OutputTokens: sim.FixedCount(4)},
		sim.Profile{Version: "v2", Model: model, OutputTokens: sim.FixedCount(4)})
	f.Telemetry.Kill()
	answers := f.parallel(t, 200, func(i int) request { return request{body: streamBody, headers: user(i)} })
	for i, a := range answers {
		if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
			t.Fatalf("request %d with ext_proc down: %d %.100s", i, a.status, a.body)
		}
	}
	// And telemetry resumes when the service is back.
	if err := f.Telemetry.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if a := f.do(t, request{body: streamBody, headers: user(1)}); a.status != http.StatusOK {
			t.Fatalf("status %d", a.status)
		}
		if n, _ := f.rows(t); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no row written within 20 s of the service's return")
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestClientCancelIsNotCountedAgainstTheVersion: a user who closes the
// stream mid-answer is recorded as client_cancel (not the version's fault),
// while a pool that cuts the stream is an upstream_reset. ext_proc alone
// cannot tell them apart once headers went out; Envoy's access log can.
func TestClientCancelIsNotCountedAgainstTheVersion(t *testing.T) {
	slow := sim.Profile{Version: "v1", Model: model, TTFT: sim.Fixed(10), ITL: sim.Fixed(50), OutputTokens: sim.FixedCount(40)}
	cutting := sim.Profile{Version: "v2", Model: model, TTFT: sim.Fixed(10), ITL: sim.Fixed(5), OutputTokens: sim.FixedCount(40), AbortRate: 1}
	f := startFleet(t, fleetOptions{wasm: true, stableW: 100, stable: slow, canary: cutting, stack: local.Options{Telemetry: true, Measure: timeAll}})
	ctx := context.Background()
	const n = 10
	for i := 0; i < n; i++ { // read the first token, then hang up
		cctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(cctx, "POST", "http://"+f.Gateway[0]+"/v1/chat/completions", strings.NewReader(streamBody))
		req.Header.Set(wire.HeaderUserID, fmt.Sprint("canceller-", i))
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		if _, err := resp.Body.Read(buf); err != nil {
			t.Fatal(err)
		}
		cancel()
		resp.Body.Close()
	}
	if _, err := f.API.SetWeights(ctx, model, map[string]float64{"v1": 0, "v2": 100}, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ { // the pool cuts these
		_, _ = f.try(request{body: streamBody, headers: user(i)})
	}
	f.waitRows(t, 2*n, 30*time.Second)
	conn, err := f.ClickHouse.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	count := func(version, failure string) uint64 {
		var c uint64
		q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE model = ? AND version = ? AND failure = ?", wire.Database, wire.TableRequests)
		if err := conn.QueryRow(ctx, q, model, version, failure).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := count("v1", extproc.FailureClientCancel); c != n {
		t.Fatalf("%d of %d hung-up requests recorded as client_cancel (upstream_reset: %d)", c, n, count("v1", extproc.FailureUpstreamReset))
	}
	if c := count("v2", extproc.FailureUpstreamReset); c != n {
		t.Fatalf("%d of %d requests the pool cut recorded as upstream_reset (client_cancel: %d)", c, n, count("v2", extproc.FailureClientCancel))
	}
}
