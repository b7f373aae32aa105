package chsource

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// StagesTable holds one row per rollout stage (see analyzer.StageWindow).
const StagesTable = "rollout_stages"

// StageLog records rollout stage windows in ClickHouse, next to the
// telemetry, so that any metric can be grouped by rollout stage. A stage is
// written when it opens (ended_ms = 0) and again when it closes; the table
// is a ReplacingMergeTree on updated_ms, so reading it with FINAL gives each
// stage's latest record. Safe for concurrent use.
type StageLog struct {
	conn driver.Conn
	db   string
}

var _ analyzer.StageLog = (*StageLog)(nil)

// CreateStagesSQL is the table's DDL (ClickHouse 18.16 and later).
func CreateStagesSQL(db string) string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.%s (
    rollout_id String,
    model String,
    stable String,
    canary String,
    stage UInt16,
    weight Float64,
    started_ms UInt64,
    ended_ms UInt64,
    outcome String,
    updated_ms UInt64,
    date Date
) ENGINE = ReplacingMergeTree(updated_ms)
PARTITION BY date
ORDER BY (model, rollout_id, stage)`, db, StagesTable)
}

// QueryErrorRateByStage is the error rate of each version in each stage of
// each rollout: telemetry rows joined to the stage windows of their model.
// The join is GLOBAL: on a cluster the stage windows, kept on the server
// queried, are read there once and sent to every shard.
const QueryErrorRateByStage = `SELECT
    rollout_id,
    stage,
    weight,
    version,
    count() AS requests,
    countIf(failure != '' AND failure != 'client_cancel') / count() AS error_rate
FROM llmcanary.requests
GLOBAL ALL INNER JOIN
(
    SELECT model, rollout_id, stage, weight, started_ms, ended_ms
    FROM llmcanary.rollout_stages FINAL
) AS stages USING model
WHERE ts_ms >= started_ms AND (ended_ms = 0 OR ts_ms < ended_ms) AND forced = 0 AND cohort = ''
GROUP BY rollout_id, stage, weight, version
ORDER BY rollout_id, stage, version`

// NewStageLog creates the table if needed ("" database means wire.Database).
func NewStageLog(ctx context.Context, conn driver.Conn, database string) (*StageLog, error) {
	if database == "" {
		database = wire.Database
	}
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+database); err != nil {
		return nil, fmt.Errorf("chsource: create database: %w", err)
	}
	if err := conn.Exec(ctx, CreateStagesSQL(database)); err != nil {
		return nil, fmt.Errorf("chsource: create %s: %w", StagesTable, err)
	}
	return &StageLog{conn: conn, db: database}, nil
}

// RecordStage writes one stage window.
func (l *StageLog) RecordStage(ctx context.Context, w analyzer.StageWindow) error {
	b, err := l.conn.PrepareBatch(ctx, fmt.Sprintf(
		"INSERT INTO %s.%s (rollout_id, model, stable, canary, stage, weight, started_ms, ended_ms, outcome, updated_ms, date)",
		l.db, StagesTable))
	if err != nil {
		return fmt.Errorf("chsource: prepare stage insert: %w", err)
	}
	var ended uint64
	if !w.Ended.IsZero() {
		ended = uint64(w.Ended.UnixMilli())
	}
	if err := b.Append(w.RolloutID, w.Model, w.Stable, w.Canary, uint16(w.Stage), w.Weight,
		uint64(w.Started.UnixMilli()), ended, w.Outcome, uint64(w.Updated.UnixMilli()), w.Started.UTC()); err != nil {
		_ = b.Abort()
		return fmt.Errorf("chsource: append stage: %w", err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("chsource: insert stage: %w", err)
	}
	return nil
}
