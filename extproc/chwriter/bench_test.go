//go:build integration

package chwriter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// BenchmarkWriterSustainedRows measures rows per second from Write to rows
// inserted in a real ClickHouse, at the default batch size and a larger
// one. Each iteration writes 100 000 records as fast as Write takes them;
// the queue is sized so none is dropped. Every row goes through the
// write-ahead spool (appended, fsync'd, read back) before its insert; the
// "direct" baseline, measured in the same run, inserts the same rows from
// memory in batches of the same size, as the writer did before it had the
// write-ahead log. Run: go test -run '^$' -bench Sustained -benchtime 1x
// ./extproc/chwriter/
func BenchmarkWriterSustainedRows(b *testing.B) {
	for _, size := range []int{500, 5000} {
		b.Run(fmt.Sprintf("batch=%d/wal", size), func(b *testing.B) {
			benchSustained(b, Options{Addr: chtest.Shared(b).Addr, BatchSize: size})
		})
		b.Run(fmt.Sprintf("batch=%d/direct", size), func(b *testing.B) { benchDirect(b, size) })
	}
}

const benchRows = 100_000

func benchRecords() []extproc.Record {
	recs := makeRecords(benchRows, time.Now())
	for i := range recs {
		recs[i].Captured = false
	}
	return recs
}

// BenchmarkWriterClusterIngest measures rows per second from Write to
// rows inserted into a 2-shard cluster of real servers (each row to the
// shard of its bucket, a spool and inserter per shard) against one server,
// measured in the same run, at the default batch size. The servers share
// the machine's cores, so the ratio shows the writer's overhead more than
// the gain of a second machine. Run: go test -tags integration -run '^$'
// -bench ClusterIngest -benchtime 3x ./extproc/chwriter/
func BenchmarkWriterClusterIngest(b *testing.B) {
	b.Run("servers=1", func(b *testing.B) {
		benchSustained(b, Options{Addr: chtest.Own(b).Addr})
	})
	b.Run("shards=2", func(b *testing.B) {
		servers := chtest.Cluster(b, "bench", 2)
		benchSustained(b, Options{Cluster: "bench", Shards: chtest.ShardAddrs(servers)})
	})
}

// benchSustained writes benchRows records per iteration through a Writer
// of options o (database, spool and queue set here) and reports rows/s.
func benchSustained(b *testing.B, o Options) {
	o.Database, o.SpoolDir, o.QueueSize = chtest.NewDatabase(), b.TempDir(), benchRows
	w, err := New(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(context.Background())
	recs := benchRecords()

	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		for i := range recs {
			r := recs[i]
			r.RequestID = randomID()
			w.Write(r)
		}
		want := uint64(benchRows * (n + 1))
		for w.Stats().Written+w.Stats().Dropped < want {
			time.Sleep(5 * time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	st := w.Stats()
	if st.Dropped != 0 || st.Spooled != 0 || st.Logged != st.Written {
		b.Fatalf("stats %+v: rows were dropped, spooled for an outage or not logged", st)
	}
	b.ReportMetric(float64(st.Written)/elapsed.Seconds(), "rows/s")
}

func benchDirect(b *testing.B, batchSize int) {
	ch := chtest.Shared(b)
	w, err := New(context.Background(), Options{Addr: ch.Addr, Database: chtest.NewDatabase(), SpoolDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(context.Background())
	recs := benchRecords()
	ctx := context.Background()

	b.ResetTimer()
	start := time.Now()
	rows := 0
	for n := 0; n < b.N; n++ {
		for i := range recs {
			recs[i].RequestID = randomID()
		}
		for lo := 0; lo < len(recs); lo += batchSize {
			m, _, err := w.shards[0].requests.insert(ctx, recs[lo:min(lo+batchSize, len(recs))], false)
			if err != nil {
				b.Fatal(err)
			}
			rows += m
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(rows)/elapsed.Seconds(), "rows/s")
}

// BenchmarkSpoolGroupCommit measures the write-ahead step alone: rows per
// second appended and fsync'd, by group size (one group per disk write).
func BenchmarkSpoolGroupCommit(b *testing.B) {
	for _, group := range []int{1, 10, 100, 500} {
		b.Run(fmt.Sprintf("group=%d", group), func(b *testing.B) {
			s, _, err := openSpool[extproc.Record](b.TempDir(), 0)
			if err != nil {
				b.Fatal(err)
			}
			defer s.close()
			recs := makeRecords(group, time.Now())
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				if err := s.append(recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*group)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
