// Package modernch puts the same telemetry on a second ClickHouse server,
// for tests that check that the product answers alike on 18.16 and on a
// modern server (chdbtest.Conn): Mirror creates llmcanary's tables there
// with that server's own schema, by the product's own code, and copies
// every row.
package modernch

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc/chwriter"
	"github.com/llmcanary/llmcanary/internal/procs/chdbtest"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Mirror creates in database db on to every llmcanary table that db has on
// from — the telemetry writer's (chwriter.Migrate, by to's version), the
// quality scores, the stage log and the decision log — and copies their
// rows. It returns the rows copied per table.
func Mirror(ctx context.Context, from, to driver.Conn, db string) (map[string]int, error) {
	have := map[string]bool{}
	rows, err := from.Query(ctx, "SELECT name FROM system.tables WHERE database = ?", db)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		have[n] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := chwriter.Migrate(ctx, to, db, 0); err != nil {
		return nil, fmt.Errorf("telemetry schema: %w", err)
	}
	if have[quality.Table] {
		if _, err := quality.OpenScoreStore(ctx, to, db); err != nil {
			return nil, err
		}
	}
	if have[chsource.StagesTable] {
		if _, err := chsource.NewStageLog(ctx, to, db); err != nil {
			return nil, err
		}
	}
	if have[chsource.EventsTable] || have[chsource.LooksTable] {
		if _, err := chsource.NewDecisionLog(ctx, to, db, nil); err != nil {
			return nil, err
		}
	}
	copied := map[string]int{}
	for _, t := range []string{wire.TableRequests, wire.TableCaptures, wire.TableShadow, wire.TableRequestLog, quality.Table,
		chsource.StagesTable, chsource.EventsTable, chsource.LooksTable} {
		if !have[t] {
			continue
		}
		n, err := chdbtest.Copy(ctx, from, to, db, t)
		if err != nil {
			return copied, fmt.Errorf("copy %s.%s: %w", db, t, err)
		}
		copied[t] = n
	}
	return copied, nil
}
