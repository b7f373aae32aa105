//go:build integration

package chwriter

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

const testCluster = "telemetry"

func clusterOptions(servers []*procs.ClickHouse, db string) Options {
	return Options{Cluster: testCluster, Shards: chtest.ShardAddrs(servers), Database: db}
}

// bucketsOnShard returns the buckets of db.tbl on the server's own table.
func bucketsOnShard(t *testing.T, conn driver.Conn, db, tbl string) map[uint64]int {
	t.Helper()
	rows, err := conn.Query(context.Background(), fmt.Sprintf("SELECT bucket, count() FROM %s.%s GROUP BY bucket", db, tbl))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[uint64]int{}
	for rows.Next() {
		var b, n uint64
		if err := rows.Scan(&b, &n); err != nil {
			t.Fatal(err)
		}
		out[b] = int(n)
	}
	return out
}

// TestShardOfPlacesRowsWhereTheDistributedTableDoes inserts rows through
// the Distributed table, synchronously, and checks that ClickHouse put
// every bucket, small or beyond 2^63, on the shard ShardOf names.
func TestShardOfPlacesRowsWhereTheDistributedTableDoes(t *testing.T) {
	servers := chtest.Cluster(t, testCluster, 2)
	db := chtest.NewDatabase()
	closeWriter(t, newWriter(t, clusterOptions(servers, db)))

	recs := makeRecords(400, time.Now())
	for i := range recs {
		recs[i].Bucket = uint64(i)*0x9E3779B97F4A7C15 + uint64(i%3)
	}
	recs[0].Bucket, recs[1].Bucket, recs[2].Bucket = 0, 1<<63, ^uint64(0)
	conn := chtest.Connect(t, servers[0])
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
	b, err := conn.PrepareBatch(ctx, requestsTable.insertSQL(db)) // the Distributed table
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		vals := make([]any, len(requestsTable.cols))
		for j, c := range requestsTable.cols {
			vals[j] = c.value(&recs[i])
		}
		if err := b.Append(vals...); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for s, srv := range servers {
		for bucket, n := range bucketsOnShard(t, chtest.Connect(t, srv), db, wire.TableRequests+LocalSuffix) {
			if want := ShardOf(bucket, len(servers)); want != s {
				t.Errorf("bucket %d: ClickHouse put it on shard %d, ShardOf says %d", bucket, s, want)
			}
			seen += n
		}
	}
	if seen != len(recs) {
		t.Fatalf("%d rows on the shards, inserted %d", seen, len(recs))
	}
}

// TestClusterWriterKeepsEachUserOnOneShardAndCountsEveryRowOnce writes
// records and access-log entries to a 2-shard cluster: each shard holds
// only its own buckets, both hold some, captures sit beside their
// requests, and the Distributed tables on either shard count every row
// exactly once.
func TestClusterWriterKeepsEachUserOnOneShardAndCountsEveryRowOnce(t *testing.T) {
	servers := chtest.Cluster(t, testCluster, 2)
	db := chtest.NewDatabase()
	w := newWriter(t, clusterOptions(servers, db))
	const n = 1000
	recs := makeRecords(n, time.Now())
	for i := range recs {
		recs[i].Bucket = uint64(i % 97) // several rows per user
	}
	for _, r := range recs {
		w.Write(r)
	}
	entries := makeLogEntries(n, time.Now())
	for _, e := range entries {
		w.WriteLog(e)
	}
	closeWriter(t, w)
	if st := w.Stats(); st.Written != n || st.Dropped != 0 {
		t.Fatalf("stats %+v, want %d written", st, n)
	}

	captures := 0
	for _, r := range recs {
		if r.Captured {
			captures++
		}
	}
	for s, srv := range servers {
		conn := chtest.Connect(t, srv)
		for _, tbl := range []string{wire.TableRequests, wire.TableRequestLog} {
			buckets := bucketsOnShard(t, conn, db, tbl+LocalSuffix)
			if len(buckets) == 0 {
				t.Errorf("shard %d holds no rows of %s", s+1, tbl)
			}
			for b := range buckets {
				if ShardOf(b, 2) != s {
					t.Errorf("shard %d holds bucket %d of %s, which belongs on shard %d", s+1, b, tbl, ShardOf(b, 2)+1)
				}
			}
		}
		// Every capture is on the shard of its request.
		var orphans uint64
		q := fmt.Sprintf("SELECT count() FROM %[1]s.captures_local WHERE request_id NOT IN (SELECT request_id FROM %[1]s.requests_local)", db)
		if err := conn.QueryRow(context.Background(), q).Scan(&orphans); err != nil {
			t.Fatal(err)
		}
		if orphans != 0 {
			t.Errorf("shard %d: %d captures without their request on the shard", s+1, orphans)
		}
		for tbl, want := range map[string]int{wire.TableRequests: n, wire.TableRequestLog: n, wire.TableCaptures: captures} {
			rows, distinct := countRows(t, conn, db, tbl)
			if rows != uint64(want) || distinct != uint64(want) {
				t.Errorf("through shard %d, distributed %s: %d rows, %d distinct, want %d", s+1, tbl, rows, distinct, want)
			}
		}
	}
}

// TestClusterShardDownSpoolsItsRowsAndLosesNone kills one shard while the
// writer writes, and restarts the writer while it is down: the other shard
// keeps taking its rows (at once after the restart, its schema being in
// place), the dead shard's rows wait in its spool, across the restart, and
// arrive once it is back, none lost and none twice.
func TestClusterShardDownSpoolsItsRowsAndLosesNone(t *testing.T) {
	servers := chtest.Cluster(t, testCluster, 2)
	db := chtest.NewDatabase()
	o := clusterOptions(servers, db)
	o.SpoolDir = t.TempDir()
	w := newWriter(t, o)

	const n = 1200
	recs := makeRecords(n, time.Now())
	perShard := func(recs []extproc.Record) (out [2]uint64) {
		for i := range recs {
			out[ShardOf(recs[i].Bucket, 2)]++
		}
		return out
	}
	for _, r := range recs[:n/3] {
		w.Write(r)
	}
	waitFor(t, 30*time.Second, "the first third written", func() bool { return w.Stats().Written == n/3 })

	if err := servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	// Shard 1 takes all of its rows while shard 2 is down.
	shard1Takes := func(w *Writer, sent []extproc.Record) {
		t.Helper()
		want := perShard(sent)
		waitFor(t, 30*time.Second, "shard 1's rows written and shard 2's spooled", func() bool {
			ss := w.ShardStats()
			return ss[0].Written+ss[0].Replayed == want[0] && ss[1].Logged == want[1] && !ss[1].ClickHouseLive && ss[1].SpoolPending > 0
		})
	}
	for _, r := range recs[n/3 : 2*n/3] {
		w.Write(r)
	}
	shard1Takes(w, recs[:2*n/3])
	closeWriter(t, w)

	w = newWriter(t, o) // the telemetry service restarts while shard 2 is away
	defer closeWriter(t, w)
	for _, r := range recs[2*n/3:] {
		w.Write(r)
	}
	shard1Takes(w, recs[2*n/3:])
	want := perShard(recs)
	if rows, _ := countRows(t, chtest.Connect(t, servers[0]), db, wire.TableRequests+LocalSuffix); rows != want[0] {
		t.Fatalf("shard 1 has %d rows while shard 2 is down, want %d", rows, want[0])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := servers[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "shard 2 replayed", func() bool {
		ss := w.ShardStats()
		return ss[1].ClickHouseLive && ss[1].SpoolPending == 0
	})
	if st := w.Stats(); st.Dropped != 0 {
		t.Fatalf("stats %+v: rows dropped", st)
	}
	for s, srv := range servers {
		conn := chtest.Connect(t, srv)
		if rows, distinct := countRows(t, conn, db, wire.TableRequests+LocalSuffix); rows != want[s] || distinct != want[s] {
			t.Errorf("shard %d: %d rows, %d distinct, want %d", s+1, rows, distinct, want[s])
		}
		if rows, distinct := countRows(t, conn, db, wire.TableRequests); rows != n || distinct != n {
			t.Errorf("distributed through shard %d: %d rows, %d distinct, want %d", s+1, rows, distinct, n)
		}
	}
}

// TestClusterAdoptsALoneServersTableAndMigratesEachShard turns a lone
// server with a table of an older schema (no sample_rate) into shard 1 of
// a cluster: its table becomes the shard's local table with its rows, the
// missing column is added on both shards, and the Distributed table reads
// the old row beside the new ones.
func TestClusterAdoptsALoneServersTableAndMigratesEachShard(t *testing.T) {
	servers := chtest.Cluster(t, testCluster, 2)
	db := chtest.NewDatabase()
	ctx := context.Background()
	conn := chtest.Connect(t, servers[0])
	oldRow := makeRecord(0, time.Now())
	createOlderRequests(t, conn, db, len(requestColumns)-1, oldRow) // before sample_rate
	w := newWriter(t, clusterOptions(servers, db))
	recs := makeRecords(100, time.Now())[1:]
	for _, r := range recs {
		w.Write(r)
	}
	closeWriter(t, w)

	for s, srv := range servers {
		c := chtest.Connect(t, srv)
		for _, tbl := range []string{wire.TableRequests, wire.TableRequests + LocalSuffix} {
			have, err := existingColumns(ctx, c, db, tbl)
			if err != nil {
				t.Fatal(err)
			}
			if !have["sample_rate"] {
				t.Errorf("shard %d: %s.%s lacks sample_rate after the migration", s+1, db, tbl)
			}
		}
	}
	if rows, distinct := countRows(t, conn, db, wire.TableRequests); rows != 100 || distinct != 100 {
		t.Fatalf("distributed requests: %d rows, %d distinct, want the old row and 99 new ones", rows, distinct)
	}
	assertStoredAtRateOne(t, conn, db, oldRow.RequestID)
}

// TestClusterWriterRefusesAClusterTheServerDoesNotKnow checks the shard
// count against the servers' remote_servers config: the schema step of a
// writer given the wrong cluster name or too many shards fails and says
// why, so its rows stay in the spool rather than land on a wrong shard.
func TestClusterWriterRefusesAClusterTheServerDoesNotKnow(t *testing.T) {
	servers := chtest.Cluster(t, testCluster, 2)
	conn := chtest.Connect(t, servers[0])
	for _, tc := range []struct {
		name string
		l    layout
		want string
	}{
		{"unknown name", layout{db: "x", cluster: "other", shards: 2}, "not in the server's remote_servers"},
		{"shard count", layout{db: "x", cluster: testCluster, shards: 3}, "has 2 shards"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrate(context.Background(), conn, tc.l)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("migrate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
