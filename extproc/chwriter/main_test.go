package chwriter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

func countRows(tb testing.TB, conn driver.Conn, db, tbl string) (rows, distinct uint64) {
	tb.Helper()
	q := fmt.Sprintf("SELECT count(), uniqExact(request_id) FROM %s.%s", db, tbl)
	if err := conn.QueryRow(context.Background(), q).Scan(&rows, &distinct); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	return rows, distinct
}

// waitFor polls cond until it holds; the timeout only bounds a failing test.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// makeRecord returns a record with every field set to a value derived
// from i, so a column mixed up with another shows in a round trip.
func makeRecord(i int, base time.Time) extproc.Record {
	r := extproc.Record{
		Time:             base.Add(time.Duration(i) * 1500 * time.Microsecond),
		RequestID:        fmt.Sprintf("req-%06d-%d", i, base.UnixNano()),
		Model:            []string{"llama", "mistral"}[i%2],
		Version:          []string{"v1", "v2", "v3"}[i%3],
		Cluster:          fmt.Sprintf("pool-%d", i%4),
		Path:             "/v1/chat/completions",
		Bucket:           uint64(i)*0x9E3779B97F4A7C15 + 1,
		Forced:           i%7 == 0,
		Category:         []string{"", "code", "chat"}[i%3],
		Streamed:         i%2 == 0,
		Status:           []int{200, 200, 429, 503}[i%4],
		Failure:          []string{"", "", extproc.FailureHTTP429, extproc.FailureHTTP5xx}[i%4],
		TTFTMs:           100 + float64(i)*0.25,
		TotalMs:          900 + float64(i),
		ITLMeanMs:        20.5,
		ITLP50Ms:         19.25,
		ITLP95Ms:         40.125,
		ITLMaxMs:         80 + float64(i%10),
		PromptTokens:     uint32(10 + i),
		CompletionTokens: uint32(50 + i%100),
		TokensFromUsage:  i%3 == 0,
		FinishReason:     []string{"stop", "length"}[i%2],
		Refusal:          i%11 == 0,
		CostUSD:          0.0001 * float64(i%50),
		ResponseBytes:    uint32(1000 + i),
		Chunks:           uint32(i % 60),
		// 0: a record spooled before records carried a rate, stored as 1.
		SampleRate: []float64{1, 0.25, 0.0125, 0}[i%4],
	}
	if i%5 == 0 {
		r.Captured = true
		r.Prompt = fmt.Sprintf("prompt %d: «héllo»", i)
		r.Completion = fmt.Sprintf("completion %d\nwith 'quotes'", i)
	}
	return r
}

func makeRecords(n int, base time.Time) []extproc.Record {
	out := make([]extproc.Record, n)
	for i := range out {
		out[i] = makeRecord(i, base)
	}
	return out
}

// makeLogEntry returns an access-log entry with every field set to a value
// derived from i.
func makeLogEntry(i int, base time.Time) extproc.LogEntry {
	return extproc.LogEntry{
		Time:       base.Add(time.Duration(i) * 700 * time.Microsecond),
		RequestID:  fmt.Sprintf("log-%06d-%d", i, base.UnixNano()),
		Model:      []string{"llama", "mistral", ""}[i%3],
		Version:    []string{"v1", "v2", "", "v3"}[i%4],
		Cluster:    []string{"llama_v1", "llama_v2", ""}[i%3],
		Path:       []string{"/v1/chat/completions", "/v1/models"}[i%2],
		Status:     []int{200, 503, 404, 200, 0}[i%5],
		DurationMs: 12.5 + float64(i),
		BytesIn:    uint64(100 + i),
		BytesOut:   uint64(1 << 20 * (i % 3)),
		Flags:      []string{"", "UF", "DC,UR", ""}[i%4],
		Details:    []string{"via_upstream", "direct_response", "llmcanary_filter"}[i%3],
		Bucket:     uint64(i) * 0x9E3779B97F4A7C15,
		Forced:     i%9 == 0,
		SampleRate: []float64{0, 1, 0.02}[i%3],
		Gateway:    i%3 == 2,
	}
}

func makeLogEntries(n int, base time.Time) []extproc.LogEntry {
	out := make([]extproc.LogEntry, n)
	for i := range out {
		out[i] = makeLogEntry(i, base)
	}
	return out
}

// createOlderRequests creates database db and in it the requests table of
// an older release, with only the first ncols columns, holding rows.
func createOlderRequests(tb testing.TB, conn driver.Conn, db string, ncols int, rows ...extproc.Record) {
	tb.Helper()
	ctx := context.Background()
	old := table[extproc.Record]{name: requestsTable.name, cols: requestsTable.cols[:ncols]}
	for _, q := range []string{"CREATE DATABASE " + db, old.createSQL(db, serverVersion{18, 16})} {
		if err := conn.Exec(ctx, q); err != nil {
			tb.Fatalf("%s: %v", q, err)
		}
	}
	b, err := conn.PrepareBatch(ctx, old.insertSQL(db))
	if err != nil {
		tb.Fatal(err)
	}
	for i := range rows {
		var vals []any
		for _, c := range old.cols {
			vals = append(vals, c.value(&rows[i]))
		}
		if err := b.Append(vals...); err != nil {
			tb.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		tb.Fatal(err)
	}
}

// assertStoredAtRateOne checks that the request reads sample_rate 1 from
// db.requests: a row written before rows carried a rate measured every
// request.
func assertStoredAtRateOne(tb testing.TB, conn driver.Conn, db, requestID string) {
	tb.Helper()
	var rate float64
	if err := conn.QueryRow(context.Background(), fmt.Sprintf("SELECT sample_rate FROM %s.requests WHERE request_id = ?", db), requestID).Scan(&rate); err != nil {
		tb.Fatal(err)
	}
	if rate != 1 {
		tb.Fatalf("a row from before the sample rate reads sample_rate %v, want 1", rate)
	}
}
