//go:build integration

package chwriter

import (
	"context"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

// BenchmarkWriterLogRowsCPU measures the writer's own CPU per request-log
// row (this process's CPU; ClickHouse's is not counted): queue, write-ahead
// spool, insert. Run: go test -tags integration -run '^$' -bench
// LogRowsCPU -benchtime 3x ./extproc/chwriter/
func BenchmarkWriterLogRowsCPU(b *testing.B) {
	ch := chtest.Shared(b)
	w, err := New(context.Background(), Options{
		Addr: ch.Addr, Database: chtest.NewDatabase(), SpoolDir: b.TempDir(), QueueSize: benchRows,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(context.Background())
	entries := makeLogEntries(benchRows, time.Now())
	b.ResetTimer()
	c0 := procs.SelfCPU()
	for n := 0; n < b.N; n++ {
		for i := range entries {
			e := entries[i]
			e.RequestID = randomID()
			w.WriteLog(e)
		}
		want := uint64(benchRows * (n + 1))
		for w.LogStats().Written+w.LogStats().Dropped < want {
			time.Sleep(5 * time.Millisecond)
		}
	}
	cpu := procs.SelfCPU() - c0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*benchRows), "cpu-µs/row")
}
