//go:build integration

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
)

// shardRows counts the model's rows in one shard's local table, and how
// many of them belong to another shard by their bucket.
func shardRows(t *testing.T, ch *procs.ClickHouse, shard, shards int) (rows, misplaced uint64) {
	t.Helper()
	conn, err := ch.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := fmt.Sprintf("SELECT bucket, count() FROM %s.%s WHERE model = ? GROUP BY bucket", wire.Database, wire.TableRequests+chwriter.LocalSuffix)
	res, err := conn.Query(context.Background(), q, model)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	for res.Next() {
		var bucket, n uint64
		if err := res.Scan(&bucket, &n); err != nil {
			t.Fatal(err)
		}
		rows += n
		if chwriter.ShardOf(bucket, shards) != shard {
			misplaced += n
		}
	}
	return rows, misplaced
}

// TestClusterTelemetryShardsByUserAndLosesNothingWhenAShardIsDown sends
// 1000 streamed requests of 300 users through a real Envoy whose telemetry
// writes to a 2-shard ClickHouse cluster, the second shard killed for the
// second half: both shards hold rows, each only of its own users; the
// first shard keeps taking its rows while the second is down; once it is
// back the Distributed table counts every request exactly once.
func TestClusterTelemetryShardsByUserAndLosesNothingWhenAShardIsDown(t *testing.T) {
	prof := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Fixed(5), ITL: sim.Fixed(1), OutputTokens: sim.FixedCount(8)}
	}
	f := startFleet(t, fleetOptions{wasm: true, stableW: 50, stable: prof("v1"), canary: prof("v2"),
		stack: local.Options{Telemetry: true, Measure: timeAll, ClickHouseShards: 2}})
	const n, users = 1000, 300
	send := func(from, to int) {
		answers := f.parallel(t, to-from, func(i int) request {
			return request{body: streamBody, headers: user((from + i) % users)}
		})
		for i, a := range answers {
			if a.status != 200 || !strings.Contains(a.body, "[DONE]") {
				t.Fatalf("request %d: %d %.100s", from+i, a.status, a.body)
			}
		}
	}
	send(0, n/2)
	if got, distinct := f.waitRows(t, n/2, 30*time.Second); got != n/2 || distinct != n/2 {
		t.Fatalf("%d requests gave %d rows (%d distinct) through the Distributed table, want %d", n/2, got, distinct, n/2)
	}

	if err := f.Shards[1].Kill(); err != nil {
		t.Fatal(err)
	}
	send(n/2, n)
	// The first shard takes its rows while the second is down: its local
	// row count reaches what the writer says it wrote there.
	w := f.Telemetry.Writer
	deadline := time.Now().Add(30 * time.Second)
	for {
		ss := w.ShardStats()
		rows, _ := shardRows(t, f.Shards[0], 0, 2)
		if ss[0].Logged+ss[1].Logged == n && ss[0].Written == ss[0].Logged && rows == ss[0].Logged && ss[1].SpoolPending > 0 {
			t.Logf("shard 2 down: shard 1 holds %d rows, shard 2's spool %d bytes pending", rows, ss[1].SpoolPending)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shard 2 down: shard 1 has %d rows, writer stats %+v", rows, ss)
		}
		time.Sleep(100 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := f.Shards[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got, distinct := f.waitRows(t, n, 60*time.Second); got != n || distinct != n {
		t.Fatalf("%d requests gave %d rows (%d distinct) through the Distributed table, want exactly %d", n, got, distinct, n)
	}
	var total uint64
	for s, ch := range f.Shards {
		rows, misplaced := shardRows(t, ch, s, 2)
		if rows == 0 || misplaced != 0 {
			t.Errorf("shard %d holds %d rows, %d of them of another shard's users", s+1, rows, misplaced)
		}
		t.Logf("shard %d: %d rows", s+1, rows)
		total += rows
	}
	if total != n {
		t.Fatalf("the shards hold %d rows together, want %d", total, n)
	}
	if st := w.Stats(); st.Dropped != 0 {
		t.Fatalf("writer dropped rows: %+v", st)
	}
}
