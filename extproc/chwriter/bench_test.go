package chwriter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/stack/chtest"
)

// BenchmarkWriterSustainedRows measures rows per second from Write to rows
// inserted in a real ClickHouse, at the default batch size and a larger
// one. Each iteration writes 100 000 records as fast as Write takes them;
// the queue is sized so none is dropped. Run: go test -run '^$' -bench
// Sustained -benchtime 1x ./extproc/chwriter/
func BenchmarkWriterSustainedRows(b *testing.B) {
	for _, size := range []int{500, 5000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) { benchSustained(b, size) })
	}
}

func benchSustained(b *testing.B, batchSize int) {
	const rows = 100_000
	ch := chtest.Shared(b)
	w, err := New(context.Background(), Options{
		Addr: ch.Addr, Database: chtest.NewDatabase(), SpoolDir: b.TempDir(), QueueSize: rows, BatchSize: batchSize,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(context.Background())
	recs := makeRecords(rows, time.Now())
	for i := range recs {
		recs[i].Captured = false
	}

	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		for i := range recs {
			r := recs[i]
			r.RequestID = randomID()
			w.Write(r)
		}
		want := uint64(rows * (n + 1))
		for w.Stats().Written+w.Stats().Dropped < want {
			time.Sleep(5 * time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	st := w.Stats()
	if st.Dropped != 0 || st.Spooled != 0 {
		b.Fatalf("stats %+v: rows were dropped or spooled", st)
	}
	b.ReportMetric(float64(st.Written)/elapsed.Seconds(), "rows/s")
}
