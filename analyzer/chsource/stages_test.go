//go:build integration

package chsource

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// TestErrorRatePerRolloutStageFromRecordedStageWindows runs the query on
// one server and on a 2-shard cluster, where the requests are spread over
// the shards and the stage windows live on the server queried.
func TestErrorRatePerRolloutStageFromRecordedStageWindows(t *testing.T) {
	t.Run("one server", func(t *testing.T) {
		ch := chtest.Shared(t)
		db := chtest.NewDatabase()
		checkErrorRateByStage(t, chtest.Connect(t, ch), db, func(recs []extproc.Record) { chwritertest.WriteRecords(t, ch, db, recs) })
	})
	t.Run("cluster", func(t *testing.T) {
		servers := chtest.Cluster(t, "telemetry", 2)
		db := chtest.NewDatabase()
		checkErrorRateByStage(t, chtest.Connect(t, servers[1]), db, func(recs []extproc.Record) {
			chwritertest.WriteRecordsToCluster(t, servers, "telemetry", db, recs)
		})
	})
}

func checkErrorRateByStage(t *testing.T, conn driver.Conn, db string, write func([]extproc.Record)) {
	ctx := context.Background()
	log, err := NewStageLog(ctx, conn, db)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 24, 23, 55, 0, 0, time.UTC) // stage 0 crosses midnight
	t1 := t0.Add(10 * time.Minute)
	win := func(stage int, weight float64, started, ended, updated time.Time, outcome string) analyzer.StageWindow {
		return analyzer.StageWindow{RolloutID: "r1", Model: "m", Stable: "v1", Canary: "v2", Stage: stage, Weight: weight,
			Started: started, Ended: ended, Updated: updated, Outcome: outcome}
	}
	for _, w := range []analyzer.StageWindow{
		win(0, 10, t0, time.Time{}, t0, "running"),
		win(0, 10, t0, t1, t1, "advanced"), // replaces the open record
		win(1, 50, t1, time.Time{}, t1, "running"),
	} {
		if err := log.RecordStage(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	var recs []extproc.Record
	add := func(at time.Time, version string, n, failed int, failure string, forced bool) {
		for i := 0; i < n; i++ {
			r := extproc.Record{Time: at.Add(time.Duration(i) * time.Millisecond), RequestID: "", Model: "m", Version: version, Status: 200, Forced: forced, Bucket: uint64(i)}
			if i < failed {
				r.Failure, r.Status = failure, 500
			}
			recs = append(recs, r)
		}
	}
	add(t0.Add(time.Minute), "v1", 90, 9, extproc.FailureHTTP5xx, false)
	add(t0.Add(2*time.Minute), "v2", 10, 5, extproc.FailureHTTP5xx, false)
	add(t0.Add(3*time.Minute), "v2", 20, 20, extproc.FailureHTTP5xx, true) // forced: not in any stage's figures
	add(t1.Add(time.Minute), "v1", 50, 0, "", false)
	add(t1.Add(2*time.Minute), "v2", 50, 10, extproc.FailureClientCancel, false) // the client's fault, not the version's
	add(t0.Add(-time.Minute), "v1", 30, 30, extproc.FailureHTTP5xx, false)       // before the rollout
	write(recs)

	rows, err := conn.Query(ctx, strings.ReplaceAll(QueryErrorRateByStage, "llmcanary.", db+"."))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type row struct {
		stage    uint16
		weight   float64
		version  string
		requests uint64
		rate     float64
	}
	var got []row
	for rows.Next() {
		var id string
		var r row
		if err := rows.Scan(&id, &r.stage, &r.weight, &r.version, &r.requests, &r.rate); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	want := []row{{0, 10, "v1", 90, 0.1}, {0, 10, "v2", 10, 0.5}, {1, 50, "v1", 50, 0}, {1, 50, "v2", 50, 0}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}
