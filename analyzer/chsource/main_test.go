package chsource

import (
	"context"
	"testing"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/stack"
	"github.com/llmcanary/llmcanary/internal/stack/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// writeRecords stores recs with the real telemetry writer and returns once
// every one is inserted.
func writeRecords(tb testing.TB, ch *stack.ClickHouse, db string, recs []extproc.Record) {
	tb.Helper()
	w, err := chwriter.New(context.Background(), chwriter.Options{
		Addr: ch.Addr, Database: db, SpoolDir: tb.TempDir(),
		BatchSize: 5000, QueueSize: len(recs) + 1,
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range recs {
		w.Write(r)
	}
	if err := w.Close(context.Background()); err != nil {
		tb.Fatal(err)
	}
	if st := w.Stats(); st.Written != uint64(len(recs)) {
		tb.Fatalf("writer stats %+v, want %d rows written", st, len(recs))
	}
}
