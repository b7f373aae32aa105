package quality

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

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

// openStore creates a fresh database with the telemetry tables and the
// quality table.
func openStore(tb testing.TB, ch *stack.ClickHouse, recs []extproc.Record) (*Store, driver.Conn) {
	tb.Helper()
	db := chtest.NewDatabase()
	writeRecords(tb, ch, db, recs)
	conn := chtest.Connect(tb, ch)
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
