package quality

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
		sharedDir, sharedErr = os.MkdirTemp("", "quality-clickhouse-")
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

// openStore creates a fresh database with the telemetry tables and the
// quality table.
func openStore(tb testing.TB, ch *stack.ClickHouse, recs []extproc.Record) (*Store, driver.Conn) {
	tb.Helper()
	db := newDatabase()
	writeRecords(tb, ch, db, recs)
	conn := connect(tb, ch)
	s, err := OpenStore(context.Background(), conn, db)
	if err != nil {
		tb.Fatal(err)
	}
	return s, conn
}

// storedScores reads the quality table, ordered by request id and source.
func storedScores(tb testing.TB, conn driver.Conn, db string) []Score {
	tb.Helper()
	rows, err := conn.Query(context.Background(), fmt.Sprintf(
		"SELECT ts_ms, request_id, model, version, score, source, forced, comment FROM %s.%s ORDER BY request_id, source, score", db, Table))
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out []Score
	for rows.Next() {
		var (
			s      Score
			tsMs   uint64
			forced uint8
		)
		if err := rows.Scan(&tsMs, &s.RequestID, &s.Model, &s.Version, &s.Score, &s.Source, &forced, &s.Comment); err != nil {
			tb.Fatal(err)
		}
		s.Time, s.Forced = time.UnixMilli(int64(tsMs)).UTC(), forced == 1
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}
