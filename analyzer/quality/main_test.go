//go:build integration

package quality

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// openStore creates a fresh database with the telemetry tables and the
// quality table.
func openStore(tb testing.TB, ch *procs.ClickHouse, recs []extproc.Record) (*ScoreStore, driver.Conn) {
	tb.Helper()
	db := chtest.NewDatabase()
	chwritertest.WriteRecords(tb, ch, db, recs)
	conn := chtest.Connect(tb, ch)
	s, err := OpenScoreStore(context.Background(), conn, db)
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
