//go:build integration

package chsource

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// BenchmarkMeasure200k measures one window of 200 000 requests (100 000
// per arm, one in ten judged) in a table that also holds as many rows of
// other days and another model. The baseline is the server alone counting
// the same window, so the ratio shows what transferring and scanning the
// values costs. Run: go test -run '^$' -bench Measure -benchtime 10x
// ./analyzer/chsource/ (2 cores: about 55 ms per Measure, 3.6 million
// rows/s, against about 10 ms for the count alone).
func BenchmarkMeasure200k(b *testing.B) {
	const perArm = 100_000
	ch := chtest.Shared(b)
	db := chtest.NewDatabase()
	start := time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	span := time.Hour
	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", From: start, To: start.Add(span)}

	recs := make([]extproc.Record, 0, 4*perArm)
	var scores []quality.Score
	step := span / perArm
	for i := range perArm {
		for _, v := range []string{"v1", "v2"} {
			r := ok(fmt.Sprintf("%s-%d", v, i), v, start.Add(time.Duration(i)*step), i%2 == 0,
				500+float64(i%1000), 100+float64(i%300), 20+float64(i%10), uint32(10+i%200), 0.0001*float64(i%50))
			if i%20 == 0 {
				r.Failure, r.Status = extproc.FailureHTTP5xx, 503
			}
			recs = append(recs, r)
			if i%10 == 1 {
				scores = append(scores, quality.Score{Time: r.Time, RequestID: r.RequestID, Model: "m", Version: v,
					Score: float64(i%2) * 0.5, Source: quality.SourceJudge})
			}
			other := r
			other.RequestID, other.Time = "old-"+r.RequestID, r.Time.Add(-48*time.Hour)
			if i%2 == 0 {
				other.Model, other.Time = "other", r.Time
			}
			recs = append(recs, other)
		}
	}
	chwritertest.WriteRecords(b, ch, db, recs)
	conn := chtest.Connect(b, ch)
	store, err := quality.OpenScoreStore(context.Background(), conn, db)
	if err != nil {
		b.Fatal(err)
	}
	if err := store.Write(context.Background(), scores); err != nil {
		b.Fatal(err)
	}
	src := New(conn, db)

	b.Run("measure", func(b *testing.B) {
		begin := time.Now()
		for b.Loop() {
			m, err := src.Measure(context.Background(), w)
			if err != nil {
				b.Fatal(err)
			}
			if m.Stable.Requests != perArm || m.Canary.Requests != perArm || m.Canary.Judged != perArm/10 {
				b.Fatalf("measured %d/%d requests and %d canary scores, want %d/%d and %d",
					m.Stable.Requests, m.Canary.Requests, m.Canary.Judged, perArm, perArm, perArm/10)
			}
		}
		b.ReportMetric(float64(2*perArm)*float64(b.N)/time.Since(begin).Seconds(), "rows/s")
	})
	b.Run("baseline=count", countWindow(conn, db, w, 2*perArm))
}

// countWindow is the baseline of the Measure benchmarks: the server alone
// counting the window's requests, which must be want.
func countWindow(conn driver.Conn, db string, w analyzer.Window, want uint64) func(b *testing.B) {
	return func(b *testing.B) {
		q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE %s", db, wire.TableRequests, windowFilter(w.From, w.To).all)
		for b.Loop() {
			var n uint64
			if err := conn.QueryRow(context.Background(), q, w.Model, w.Stable, w.Canary).Scan(&n); err != nil {
				b.Fatal(err)
			}
			if n != want {
				b.Fatalf("counted %d, want %d", n, want)
			}
		}
	}
}

// BenchmarkEvaluate10M times one look of the analyzer at a window of ten
// million requests (five million per arm, 200 000 users, one in fifty a
// 5xx): the ClickHouse queries of Measure, as the runner makes them, and
// the decision on the result. The rows are generated in the server by an
// INSERT … SELECT from numbers(); the quality table exists, empty, so the
// query has production's shape. Not run in CI; make bench runs it once.
// Run: go test -tags integration -run '^$' -bench Evaluate10M -benchtime 1x
// ./analyzer/chsource/ (2 shared cores, ClickHouse 18.16: 10 s to generate
// the rows; one look 22.6 s, of which the decision 22 ms, about 440 000
// rows/s, against 0.47 s for the server counting the window alone).
func BenchmarkEvaluate10M(b *testing.B) {
	const rows = 10_000_000
	ch := chtest.Shared(b)
	db := chtest.NewDatabase()
	start := time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	span := time.Hour
	// One row of another model creates the tables through the real writer.
	chwritertest.WriteRecords(b, ch, db, []extproc.Record{ok("seed", "v1", start.Add(-48*time.Hour), true, 1, 1, 1, 1, 0)})
	conn := chtest.Connect(b, ch)
	ctx := context.Background()
	if _, err := quality.OpenScoreStore(ctx, conn, db); err != nil {
		b.Fatal(err)
	}
	from := start.UnixMilli()
	insert := fmt.Sprintf(`INSERT INTO %[1]s.%[2]s (ts, ts_ms, date, request_id, model, version, cluster, path, bucket, streamed, status, failure,
    ttft_ms, total_ms, itl_mean_ms, completion_tokens, finish_reason, cost_usd, sample_rate)
SELECT toDateTime(intDiv(t, 1000)), t, toDate(toDateTime(intDiv(t, 1000))), toString(number), 'm',
    if(number %% 2 = 0, 'v1', 'v2'), if(number %% 2 = 0, 'm-v1', 'm-v2'), '/v1/chat/completions',
    cityHash64(number %% 200000), 1, if(number %% 50 = 0, 503, 200), if(number %% 50 = 0, '%[3]s', ''),
    100 + number %% 300, 500 + (number * 7) %% 1000, 20 + number %% 10, toUInt32(10 + number %% 200), 'stop',
    0.0001 * (number %% 50), 1
FROM (SELECT number, %[4]d + intDiv(number * %[5]d, %[6]d) AS t FROM numbers(%[6]d))`,
		db, wire.TableRequests, extproc.FailureHTTP5xx, from, span.Milliseconds(), rows)
	began := time.Now()
	if err := conn.Exec(ctx, insert); err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %d rows in %v", rows, time.Since(began).Round(time.Millisecond))

	src := New(conn, db)
	p := analyzer.DefaultPolicy()
	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", RolloutFrom: start, From: start, To: start.Add(span), TailQuantile: p.TailQuantile}
	b.Run("measure+decide", func(b *testing.B) {
		var measure, decide time.Duration
		for b.Loop() {
			t0 := time.Now()
			m, err := src.Measure(ctx, w)
			if err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			m.Stable.Version, m.Canary.Version = w.Stable, w.Canary
			d, _ := analyzer.Decide(p, analyzer.NewStageState(0, start), m, w.To)
			decide += time.Since(t1)
			measure += t1.Sub(t0)
			if m.Stable.Requests != rows/2 || m.Canary.Requests != rows/2 {
				b.Fatalf("measured %d/%d requests, want %d each", m.Stable.Requests, m.Canary.Requests, rows/2)
			}
			if d.Action == "" {
				b.Fatal("no decision")
			}
		}
		n := float64(b.N)
		b.ReportMetric(measure.Seconds()/n, "measure-s/op")
		b.ReportMetric(decide.Seconds()/n, "decide-s/op")
		b.ReportMetric(rows*n/(measure+decide).Seconds(), "rows/s")
	})
	// The server alone counting the same window: what scanning costs
	// without transferring the rows.
	b.Run("baseline=count", countWindow(conn, db, w, rows))
}
