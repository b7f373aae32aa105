//go:build integration

package chwriter

import (
	"context"
	"fmt"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var docQueries = map[string]string{
	"QueryTTFTByVersion":       QueryTTFTByVersion,
	"QueryErrorRateByVersion":  QueryErrorRateByVersion,
	"QueryCostPerRequest":      QueryCostPerRequest,
	"QueryTokensPerResponse":   QueryTokensPerResponse,
	"QueryRequestLogByVersion": QueryRequestLogByVersion,
}

// queryRows runs q and returns each row keyed by column name; numbers of
// any width come back as float64.
func queryRows(t *testing.T, conn driver.Conn, q string) []map[string]any {
	t.Helper()
	rows, err := conn.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%v\n%s", err, q)
	}
	defer rows.Close()
	cols := rows.Columns()
	var types []reflect.Type
	for _, ct := range rows.ColumnTypes() {
		types = append(types, ct.ScanType())
	}
	var out []map[string]any
	for rows.Next() {
		vals := scanRow(t, rows, len(cols), types)
		m := map[string]any{}
		for i, c := range cols {
			v := reflect.ValueOf(vals[i])
			switch {
			case v.CanFloat():
				m[c] = v.Float()
			case v.CanUint():
				m[c] = float64(v.Uint())
			case v.CanInt():
				m[c] = float64(v.Int())
			default:
				m[c] = vals[i]
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// queryFixture is two versions of one model over the last hour: v1 faster
// with 10% failures, v2 slower and dearer, plus forced and old rows the
// queries must leave out.
func queryFixture(now time.Time) []extproc.Record {
	var recs []extproc.Record
	add := func(r extproc.Record) {
		r.RequestID = fmt.Sprintf("q-%d", len(recs))
		r.Model, r.Path, r.Status = "m", "/v1/chat/completions", 200
		r.PromptTokens, r.TokensFromUsage = 10, true
		recs = append(recs, r)
	}
	for i := 0; i < 100; i++ {
		r := extproc.Record{Time: now.Add(-time.Duration(i) * time.Second), Version: "v1",
			TTFTMs: 100 + float64(i), CompletionTokens: 50, CostUSD: 0.001}
		switch {
		case i%20 == 0:
			r.Failure, r.Status = extproc.FailureHTTP5xx, 503
		case i%10 == 0:
			r.Failure, r.Status = extproc.FailureHTTP429, 429
		}
		add(r)
		add(extproc.Record{Time: now.Add(-time.Duration(i) * time.Second), Version: "v2",
			TTFTMs: 300 + float64(i), CompletionTokens: 80, CostUSD: 0.002})
	}
	for i := 0; i < 5; i++ {
		add(extproc.Record{Time: now, Version: "v2", Forced: true, TTFTMs: 1e4, CompletionTokens: 1, CostUSD: 1})
		add(extproc.Record{Time: now.Add(-2 * time.Hour), Version: "v1", TTFTMs: 5e3, CompletionTokens: 1, CostUSD: 0.001})
	}
	return recs
}

// logFixture is the access log of the last hour: v1 with 100 requests,
// 5 answered 503 and 3 reset by the pool mid-answer, 2 cut off by their
// client and 4 rate limited, half of them measured; v2 with 50 clean
// requests, all measured; plus the gateway's own answers, forced and old
// requests the query must leave out.
func logFixture(now time.Time) []extproc.LogEntry {
	var es []extproc.LogEntry
	add := func(e extproc.LogEntry) {
		e.RequestID = fmt.Sprintf("l-%d", len(es))
		if e.Time.IsZero() {
			e.Time = now.Add(-time.Duration(len(es)) * time.Second)
		}
		if !e.Gateway {
			e.Model, e.Cluster = "m", "m_"+e.Version
		}
		if e.Status == 0 {
			e.Status = 200
		}
		es = append(es, e)
	}
	for i := 0; i < 100; i++ {
		e := extproc.LogEntry{Version: "v1"}
		switch {
		case i < 5:
			e.Status, e.Flags = 503, "UF"
		case i < 8:
			e.Flags = "UR,DC"
		case i < 10:
			e.Flags = "DC"
		case i < 14:
			e.Status = 429
		}
		if i%2 == 0 {
			e.SampleRate = 0.5
		}
		add(e)
	}
	for i := 0; i < 50; i++ {
		add(extproc.LogEntry{Version: "v2", SampleRate: 1})
	}
	for i := 0; i < 5; i++ {
		add(extproc.LogEntry{Gateway: true, Status: 404, Details: "llmcanary_filter"})
		add(extproc.LogEntry{Version: "v2", Forced: true, Status: 503})
		add(extproc.LogEntry{Version: "v1", Time: now.Add(-2 * time.Hour), Status: 503})
	}
	return es
}

// writeQueryFixtures writes the documented queries' fixtures into
// wire.Database with a writer of options o, each row of its own user.
func writeQueryFixtures(t *testing.T, o Options, now time.Time) {
	t.Helper()
	o.Database = wire.Database
	w := newWriter(t, o)
	for i, r := range queryFixture(now) {
		r.Bucket = uint64(i)
		w.Write(r)
	}
	for i, e := range logFixture(now) {
		e.Bucket = uint64(i)
		w.WriteLog(e)
	}
	closeWriter(t, w)
}

func TestDocumentedQueriesAnswerOnTheRealServer(t *testing.T) {
	ch := chtest.Shared(t)
	writeQueryFixtures(t, Options{Addr: ch.Addr}, time.Now())
	conn := chtest.Connect(t, ch)

	type want map[string][2]float64 // column → [min, max]
	cases := []struct {
		name  string
		query string
		want  map[string]want // version → expectations
	}{
		{"p99 TTFT per version", QueryTTFTByVersion, map[string]want{
			"v1": {"requests": {90, 90}, "p50_ttft_ms": {140, 160}, "p99_ttft_ms": {190, 199}},
			"v2": {"requests": {100, 100}, "p50_ttft_ms": {340, 360}, "p99_ttft_ms": {390, 399}},
		}},
		{"error rate per version", QueryErrorRateByVersion, map[string]want{
			"v1": {"requests": {100, 100}, "failures": {10, 10}, "error_rate": {0.1, 0.1}, "server_failures": {5, 5}, "rate_limited": {5, 5}},
			"v2": {"requests": {100, 100}, "failures": {0, 0}, "error_rate": {0, 0}},
		}},
		{"cost per request", QueryCostPerRequest, map[string]want{
			"v1": {"requests": {105, 105}, "cost_per_request_usd": {0.001 - 1e-12, 0.001 + 1e-12}, "total_cost_usd": {0.105 - 1e-9, 0.105 + 1e-9}},
			"v2": {"requests": {100, 100}, "cost_per_request_usd": {0.002 - 1e-12, 0.002 + 1e-12}},
		}},
		{"tokens per response", QueryTokensPerResponse, map[string]want{
			"v1": {"responses": {90, 90}, "avg_completion_tokens": {50, 50}, "p50_completion_tokens": {50, 50}, "avg_prompt_tokens": {10, 10}, "share_from_usage": {1, 1}},
			"v2": {"responses": {100, 100}, "avg_completion_tokens": {80, 80}},
		}},
		{"every request per version from the access log", QueryRequestLogByVersion, map[string]want{
			"v1": {"requests": {100, 100}, "server_errors": {8, 8}, "error_rate": {0.08, 0.08}, "rate_limited": {4, 4}, "measured": {50, 50}},
			"v2": {"requests": {50, 50}, "server_errors": {0, 0}, "error_rate": {0, 0}, "rate_limited": {0, 0}, "measured": {50, 50}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rows := queryRows(t, conn, tc.query)
			if len(rows) != len(tc.want) {
				t.Fatalf("%d rows, want one per version: %v", len(rows), rows)
			}
			for _, row := range rows {
				exp, ok := tc.want[row["version"].(string)]
				if !ok {
					t.Fatalf("unexpected row %v", row)
				}
				for col, rng := range exp {
					got, ok := row[col].(float64)
					if !ok || got < rng[0] || got > rng[1] {
						t.Errorf("version %s %s = %v, want in [%v, %v]", row["version"], col, row[col], rng[0], rng[1])
					}
				}
			}
		})
	}
}

// TestDocumentedQueriesAnswerTheSameOnACluster writes the same rows to one
// server and to a 2-shard cluster and runs every documented query, as
// written, on both: through the Distributed tables they return the same
// rows.
func TestDocumentedQueriesAnswerTheSameOnACluster(t *testing.T) {
	lone := chtest.Own(t)
	servers := chtest.Cluster(t, testCluster, 2)
	now := time.Now()
	writeQueryFixtures(t, Options{Addr: lone.Addr}, now)
	writeQueryFixtures(t, clusterOptions(servers, ""), now)
	loneConn, clusterConn := chtest.Connect(t, lone), chtest.Connect(t, servers[1])
	for name, q := range docQueries {
		t.Run(name, func(t *testing.T) {
			want, got := queryRows(t, loneConn, q), queryRows(t, clusterConn, q)
			if len(got) != len(want) || len(want) == 0 {
				t.Fatalf("cluster %d rows, one server %d", len(got), len(want))
			}
			for i := range want {
				for col, w := range want[i] {
					g := got[i][col]
					wf, wok := w.(float64)
					gf, gok := g.(float64)
					if wok && gok && math.Abs(gf-wf) <= 1e-9*math.Max(1, math.Abs(wf)) {
						continue // sums over shards add in another order
					}
					if !reflect.DeepEqual(g, w) {
						t.Errorf("row %d %s: cluster %v, one server %v", i, col, g, w)
					}
				}
			}
		})
	}
}

func TestTelemetryDocQuotesTheTestedQueriesAndSchema(t *testing.T) {
	b, err := os.ReadFile("../../docs/telemetry.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for name, q := range docQueries {
		if !strings.Contains(doc, q) {
			t.Errorf("docs/telemetry.md does not quote %s verbatim", name)
		}
	}
	for _, tb := range tables {
		if !strings.Contains(doc, tb.createSQL(wire.Database, serverVersion{18, 16})) {
			t.Errorf("docs/telemetry.md does not show the CREATE TABLE of %s", tb.name)
		}
	}
}
