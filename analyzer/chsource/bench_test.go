//go:build integration

package chsource

import (
	"context"
	"fmt"
	"testing"
	"time"

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
	b.Run("baseline=count", func(b *testing.B) {
		q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE %s", db, wire.TableRequests, windowFilter(w.From, w.To).all)
		for b.Loop() {
			var n uint64
			if err := conn.QueryRow(context.Background(), q, w.Model, w.Stable, w.Canary).Scan(&n); err != nil {
				b.Fatal(err)
			}
			if n != 2*perArm {
				b.Fatalf("counted %d, want %d", n, 2*perArm)
			}
		}
	})
}
