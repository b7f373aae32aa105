package chsource

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/stack"
)

// One ClickHouse serves the tests that do not kill it; each test uses its
// own database.
var (
	sharedOnce sync.Once
	sharedCH   *stack.ClickHouse
	sharedDir  string
	sharedErr  error
	dbSeq      atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCH != nil {
		sharedCH.Stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

func sharedClickHouse(tb testing.TB) *stack.ClickHouse {
	tb.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "chsource-clickhouse-")
		if sharedErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		sharedCH, sharedErr = stack.StartClickHouse(ctx, stack.ClickHouseOptions{Dir: sharedDir})
	})
	if sharedErr != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", sharedErr)
	}
	return sharedCH
}

func startOwnClickHouse(tb testing.TB) *stack.ClickHouse {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := stack.StartClickHouse(ctx, stack.ClickHouseOptions{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatalf("start clickhouse (install it with make deps): %v", err)
	}
	tb.Cleanup(func() { ch.Stop() })
	return ch
}

func newDatabase() string { return fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1)) }

func connect(tb testing.TB, ch *stack.ClickHouse) driver.Conn {
	tb.Helper()
	conn, err := ch.Conn(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

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
