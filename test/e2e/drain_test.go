//go:build integration

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
)

// stream sends one streaming chat completion and reads it to the end. It
// reports on started once the first bytes of the answer arrived.
func (f *fleet) stream(i int, started chan<- struct{}) (status int, body string, err error) {
	req, err := http.NewRequest("POST", "http://"+f.Gateway[0]+"/v1/chat/completions", strings.NewReader(streamBody))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set(wire.HeaderUserID, fmt.Sprintf("user-%d", i))
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		return resp.StatusCode, "", err
	}
	started <- struct{}{}
	rest, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(first) + string(rest), err
}

// rowOutcomes counts the model's rows by failure kind ("" for complete).
func (f *fleet) rowOutcomes(t *testing.T) map[string]uint64 {
	t.Helper()
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.Query(context.Background(), fmt.Sprintf(
		"SELECT failure, count() FROM %s.%s WHERE model = ? GROUP BY failure", wire.Database, wire.TableRequests), model)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var failure string
		var n uint64
		if err := rows.Scan(&failure, &n); err != nil {
			t.Fatal(err)
		}
		out[failure] = n
	}
	return out
}

// TestGracefulStopOfTelemetryRecordsEveryOpenLongStream: SIGTERM reaches
// `llmcanary extproc` while 10-second answers stream through Envoy, as in a
// rolling restart. With its default drain bound the service stops taking
// new streams, lets the open ones finish and only then exits: every answer
// has its complete row, exactly once.
func TestGracefulStopOfTelemetryRecordsEveryOpenLongStream(t *testing.T) {
	long := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(20), ITL: sim.Fixed(100), OutputTokens: sim.FixedCount(100)}
	}
	f, ep := extprocFleet(t, long("v1"), long("v2"))
	const n = 20
	started := make(chan struct{}, n)
	type result struct {
		status int
		body   string
		err    error
		at     time.Time
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			r.status, r.body, r.err = f.stream(i, started)
			r.at = time.Now()
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d streams started", i, n)
		}
	}
	time.Sleep(time.Second) // every stream is well into its answer
	if err := ep.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	exited := make(chan time.Time, 1)
	go func() { <-ep.Proc.Done(); exited <- time.Now() }()
	wg.Wait()
	var lastEnd time.Time
	for i, r := range results {
		if r.err != nil || r.status != 200 || !strings.Contains(r.body, "[DONE]") {
			t.Fatalf("stream %d: status %d err %v body %.100s", i, r.status, r.err, r.body)
		}
		if r.at.After(lastEnd) {
			lastEnd = r.at
		}
	}
	var exitAt time.Time
	select {
	case exitAt = <-exited:
	case <-time.After(60 * time.Second):
		t.Fatal("extproc still runs 60 s after SIGTERM and the end of every stream")
	}
	t.Logf("SIGTERM %v before the last stream ended; the service exited %v after it",
		lastEnd.Sub(termAt).Round(time.Millisecond), exitAt.Sub(lastEnd).Round(time.Millisecond))
	got, distinct := f.rows(t)
	outcomes := f.rowOutcomes(t)
	t.Logf("rows %d (distinct %d) for %d streams; by failure %v", got, distinct, n, outcomes)
	if got != n || distinct != n {
		t.Fatalf("%d streams open at SIGTERM left %d rows (%d distinct), want exactly %d", n, got, distinct, n)
	}
	if outcomes[""] != n {
		t.Fatalf("rows by failure %v: want every one of the %d streams recorded complete", outcomes, n)
	}
	// Envoy's last message to the service and the client's last byte leave
	// together; an exit well before the last answer ended cut streams.
	if exitAt.Before(lastEnd.Add(-500 * time.Millisecond)) {
		t.Fatalf("the service exited %v before the last stream ended", lastEnd.Sub(exitAt))
	}
}

// TestTelemetryCutAtDrainBoundStillRecordsOpenStreams: when the drain bound
// passes before the open streams end, the service still writes a row for
// each, with what it saw, marked as not the version's fault (client_cancel:
// the observer left, as when a client hangs up), and exits.
func TestTelemetryCutAtDrainBoundStillRecordsOpenStreams(t *testing.T) {
	long := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(20), ITL: sim.Fixed(100), OutputTokens: sim.FixedCount(100)}
	}
	f, ep := extprocFleet(t, long("v1"), long("v2"), "--drain-timeout", "2s")
	const n = 10
	started := make(chan struct{}, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var status int
			var body string
			status, body, errs[i] = f.stream(i, started)
			if errs[i] == nil && (status != 200 || !strings.Contains(body, "[DONE]")) {
				errs[i] = fmt.Errorf("status %d body %.100s", status, body)
			}
		}()
	}
	for i := 0; i < n; i++ {
		<-started
	}
	if err := ep.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	select {
	case <-ep.Proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("extproc still runs 30 s after SIGTERM with a 2 s drain bound")
	}
	t.Logf("the service exited %v after SIGTERM", time.Since(termAt).Round(time.Millisecond))
	wg.Wait()
	for i, err := range errs { // the answers themselves never depend on telemetry
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	got, distinct := f.rows(t)
	outcomes := f.rowOutcomes(t)
	t.Logf("rows %d (distinct %d); by failure %v", got, distinct, outcomes)
	if got != n || distinct != n || outcomes[extproc.FailureClientCancel] != n {
		t.Fatalf("rows %d (%d distinct), by failure %v: want %d rows, each %s", got, distinct, outcomes, n, extproc.FailureClientCancel)
	}
	conn, err := f.ClickHouse.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var minTokens uint32
	if err := conn.QueryRow(context.Background(), fmt.Sprintf("SELECT min(completion_tokens) FROM %s.%s WHERE model = ?",
		wire.Database, wire.TableRequests), model).Scan(&minTokens); err != nil {
		t.Fatal(err)
	}
	if minTokens < 10 {
		t.Fatalf("a cut row holds %d completion tokens; each stream had streamed for over 2 s at 10 tokens/s", minTokens)
	}
}
