package chwriter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// columnDef is one column of a table: its name, its ClickHouse type and
// its DEFAULT expression ("" for the type's zero), which is what the rows
// written before the column existed read.
type columnDef struct{ name, typ, def string }

// ddl is the column's definition in CREATE TABLE and ADD COLUMN.
func (c columnDef) ddl() string {
	if c.def == "" {
		return c.name + " " + c.typ
	}
	return c.name + " " + c.typ + " DEFAULT " + c.def
}

// column is a column of a table of rows of type R and how a row fills it.
// The column lists below are the single definition of the schema: CREATE
// TABLE, the migration and every INSERT column list come from them.
type column[R any] struct {
	columnDef
	value func(r *R) any
}

func col[R any](name, typ string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name, typ, ""}, value}
}

// colDefault is col with a DEFAULT expression.
func colDefault[R any](name, typ, def string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name, typ, def}, value}
}

func day(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// dateLit renders t's UTC day as a ClickHouse Date literal. Bound
// time.Time parameters compare as numbers against Date columns on 18.16.
func dateLit(t time.Time) string { return "toDate('" + day(t).Format("2006-01-02") + "')" }

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// requestColumns is the portable base schema of wire.TableRequests: it runs
// on ClickHouse 18.16. New columns are appended at the end; the migration
// adds the ones an existing table lacks.
var requestColumns = []column[extproc.Record]{
	col("ts", "DateTime", func(r *extproc.Record) any { return r.Time.UTC() }),
	col("ts_ms", "UInt64", func(r *extproc.Record) any { return uint64(r.Time.UnixMilli()) }),
	col("date", "Date", func(r *extproc.Record) any { return day(r.Time) }),
	col("request_id", "String", func(r *extproc.Record) any { return r.RequestID }),
	col("model", "String", func(r *extproc.Record) any { return r.Model }),
	col("version", "String", func(r *extproc.Record) any { return r.Version }),
	col("cluster", "String", func(r *extproc.Record) any { return r.Cluster }),
	col("path", "String", func(r *extproc.Record) any { return r.Path }),
	col("bucket", "UInt64", func(r *extproc.Record) any { return r.Bucket }),
	col("forced", "UInt8", func(r *extproc.Record) any { return b2u(r.Forced) }),
	col("category", "String", func(r *extproc.Record) any { return r.Category }),
	col("streamed", "UInt8", func(r *extproc.Record) any { return b2u(r.Streamed) }),
	col("status", "UInt16", func(r *extproc.Record) any { return uint16(r.Status) }),
	col("failure", "String", func(r *extproc.Record) any { return r.Failure }),
	col("ttft_ms", "Float64", func(r *extproc.Record) any { return r.TTFTMs }),
	col("total_ms", "Float64", func(r *extproc.Record) any { return r.TotalMs }),
	col("itl_mean_ms", "Float64", func(r *extproc.Record) any { return r.ITLMeanMs }),
	col("itl_p50_ms", "Float64", func(r *extproc.Record) any { return r.ITLP50Ms }),
	col("itl_p95_ms", "Float64", func(r *extproc.Record) any { return r.ITLP95Ms }),
	col("itl_max_ms", "Float64", func(r *extproc.Record) any { return r.ITLMaxMs }),
	col("prompt_tokens", "UInt32", func(r *extproc.Record) any { return r.PromptTokens }),
	col("completion_tokens", "UInt32", func(r *extproc.Record) any { return r.CompletionTokens }),
	col("tokens_from_usage", "UInt8", func(r *extproc.Record) any { return b2u(r.TokensFromUsage) }),
	col("finish_reason", "String", func(r *extproc.Record) any { return r.FinishReason }),
	col("refusal", "UInt8", func(r *extproc.Record) any { return b2u(r.Refusal) }),
	col("cost_usd", "Float64", func(r *extproc.Record) any { return r.CostUSD }),
	col("response_bytes", "UInt32", func(r *extproc.Record) any { return r.ResponseBytes }),
	col("chunks", "UInt32", func(r *extproc.Record) any { return r.Chunks }),
	colDefault("sample_rate", "Float64", "1", func(r *extproc.Record) any { return sampleRate(r.SampleRate) }),
	col("cohort", "String", func(r *extproc.Record) any { return r.Cohort }),
}

// sampleRate is the rate a request row is stored with: a rate outside
// (0, 1], such as the zero of a record spooled before records carried
// one, means the request was measured at rate 1.
func sampleRate(r float64) float64 {
	if r > 0 && r <= 1 {
		return r
	}
	return 1
}

// captureColumns is the schema of wire.TableCaptures: one row per
// extproc.Record with Captured set.
var captureColumns = []column[extproc.Record]{
	col("ts", "DateTime", func(r *extproc.Record) any { return r.Time.UTC() }),
	col("date", "Date", func(r *extproc.Record) any { return day(r.Time) }),
	col("request_id", "String", func(r *extproc.Record) any { return r.RequestID }),
	col("model", "String", func(r *extproc.Record) any { return r.Model }),
	col("version", "String", func(r *extproc.Record) any { return r.Version }),
	col("prompt", "String", func(r *extproc.Record) any { return r.Prompt }),
	col("completion", "String", func(r *extproc.Record) any { return r.Completion }),
}

// requestLogColumns is the schema of wire.TableRequestLog, one row per
// extproc.LogEntry: every request through Envoy.
var requestLogColumns = []column[extproc.LogEntry]{
	col("ts", "DateTime", func(e *extproc.LogEntry) any { return e.Time.UTC() }),
	col("ts_ms", "UInt64", func(e *extproc.LogEntry) any { return uint64(e.Time.UnixMilli()) }),
	col("date", "Date", func(e *extproc.LogEntry) any { return day(e.Time) }),
	col("request_id", "String", func(e *extproc.LogEntry) any { return e.RequestID }),
	col("model", "String", func(e *extproc.LogEntry) any { return e.Model }),
	col("version", "String", func(e *extproc.LogEntry) any { return e.Version }),
	col("cluster", "String", func(e *extproc.LogEntry) any { return e.Cluster }),
	col("path", "String", func(e *extproc.LogEntry) any { return e.Path }),
	col("status", "UInt16", func(e *extproc.LogEntry) any { return uint16(e.Status) }),
	col("duration_ms", "Float64", func(e *extproc.LogEntry) any { return e.DurationMs }),
	col("request_bytes", "UInt64", func(e *extproc.LogEntry) any { return e.BytesIn }),
	col("response_bytes", "UInt64", func(e *extproc.LogEntry) any { return e.BytesOut }),
	col("response_flags", "String", func(e *extproc.LogEntry) any { return e.Flags }),
	col("details", "String", func(e *extproc.LogEntry) any { return e.Details }),
	col("bucket", "UInt64", func(e *extproc.LogEntry) any { return e.Bucket }),
	col("forced", "UInt8", func(e *extproc.LogEntry) any { return b2u(e.Forced) }),
	col("sample_rate", "Float64", func(e *extproc.LogEntry) any { return e.SampleRate }),
	col("gateway", "UInt8", func(e *extproc.LogEntry) any { return b2u(e.Gateway) }),
	col("cohort", "String", func(e *extproc.LogEntry) any { return e.Cohort }),
}

// tableDef is a table's name and columns: what its DDL needs.
type tableDef struct {
	name string
	cols []columnDef
}

// table is one table the writer owns, of rows of type R.
type table[R any] struct {
	name string
	cols []column[R]
	// keep selects the rows of a batch that the table holds; nil: all.
	keep func(r *R) bool
}

func (t table[R]) def() tableDef {
	d := tableDef{name: t.name, cols: make([]columnDef, len(t.cols))}
	for i, c := range t.cols {
		d.cols[i] = c.columnDef
	}
	return d
}

func (t table[R]) createSQL(db string) string { return t.def().createSQL(db) }
func (t table[R]) insertSQL(db string) string { return t.def().insertSQL(db) }

var (
	requestsTable   = table[extproc.Record]{name: wire.TableRequests, cols: requestColumns}
	capturesTable   = table[extproc.Record]{name: wire.TableCaptures, cols: captureColumns, keep: func(r *extproc.Record) bool { return r.Captured }}
	requestLogTable = table[extproc.LogEntry]{name: wire.TableRequestLog, cols: requestLogColumns}
	// tables are all the writer's tables.
	tables = []tableDef{requestsTable.def(), capturesTable.def(), requestLogTable.def()}
)

func (t tableDef) createSQL(db string) string {
	defs := make([]string, len(t.cols))
	for i, c := range t.cols {
		defs[i] = "    " + c.ddl()
	}
	// MergeTree with PARTITION BY is the custom-partitioning syntax 18.16
	// already has; daily partitions make retention a DROP PARTITION.
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s\n) ENGINE = MergeTree\nPARTITION BY date\nORDER BY (model, version, ts, request_id)",
		db, t.name, strings.Join(defs, ",\n"))
}

func (t tableDef) insertSQL(db string) string {
	names := make([]string, len(t.cols))
	for i, c := range t.cols {
		names[i] = c.name
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", db, t.name, strings.Join(names, ", "))
}

// serverVersion is a ClickHouse version as SELECT version() reports it.
type serverVersion struct{ major, minor int }

func parseVersion(s string) (serverVersion, error) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return serverVersion{}, fmt.Errorf("parse clickhouse version %q", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return serverVersion{}, fmt.Errorf("parse clickhouse version %q", s)
	}
	return serverVersion{major, minor}, nil
}

func (v serverVersion) atLeast(major, minor int) bool {
	return v.major > major || (v.major == major && v.minor >= minor)
}

// extraDDL lists the statements that improve on the portable base schema
// when the server supports them. Only table-level settings that do not
// rewrite data are used, so an extra never changes what a query returns:
// with retentionDays > 0, servers ≥ 19.6 expire partitions by TTL; older
// ones rely on DropPartitionsBefore.
func extraDDL(v serverVersion, db string, retentionDays int) []string {
	var out []string
	if retentionDays > 0 && v.atLeast(19, 6) {
		for _, t := range tables {
			out = append(out, fmt.Sprintf("ALTER TABLE %s.%s MODIFY TTL date + toIntervalDay(%d)", db, t.name, retentionDays))
		}
	}
	return out
}

// migrate creates the database and tables if missing and adds the columns
// an existing table lacks. 18.16 has no ADD COLUMN IF NOT EXISTS, so the
// existing columns are read from system.columns.
func migrate(ctx context.Context, conn driver.Conn, db string, retentionDays int) (serverVersion, error) {
	var vs string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&vs); err != nil {
		return serverVersion{}, fmt.Errorf("server version: %w", err)
	}
	v, err := parseVersion(vs)
	if err != nil {
		return serverVersion{}, err
	}
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return v, fmt.Errorf("create database %s: %w", db, err)
	}
	for _, t := range tables {
		if err := conn.Exec(ctx, t.createSQL(db)); err != nil {
			return v, fmt.Errorf("create table %s.%s: %w", db, t.name, err)
		}
		have, err := existingColumns(ctx, conn, db, t.name)
		if err != nil {
			return v, err
		}
		prev := ""
		for _, c := range t.cols {
			if !have[c.name] {
				q := fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s", db, t.name, c.ddl())
				if prev != "" {
					q += " AFTER " + prev
				}
				if err := conn.Exec(ctx, q); err != nil {
					return v, fmt.Errorf("add column %s.%s.%s: %w", db, t.name, c.name, err)
				}
			}
			prev = c.name
		}
	}
	for _, q := range extraDDL(v, db, retentionDays) {
		if err := conn.Exec(ctx, q); err != nil {
			return v, fmt.Errorf("schema extra %q: %w", q, err)
		}
	}
	return v, nil
}

func existingColumns(ctx context.Context, conn driver.Conn, db, tbl string) (map[string]bool, error) {
	rows, err := conn.Query(ctx, "SELECT name FROM system.columns WHERE database = ? AND table = ?", db, tbl)
	if err != nil {
		return nil, fmt.Errorf("list columns of %s.%s: %w", db, tbl, err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("list columns of %s.%s: %w", db, tbl, err)
		}
		have[n] = true
	}
	return have, rows.Err()
}

// dropPartitionsBefore drops every daily partition of the writer's tables
// whose rows are all older than the day of before (UTC). It returns how
// many partitions it dropped.
func dropPartitionsBefore(ctx context.Context, conn driver.Conn, db string, before time.Time) (int, error) {
	cut := day(before)
	dropped := 0
	for _, t := range tables {
		rows, err := conn.Query(ctx,
			fmt.Sprintf("SELECT DISTINCT partition_id FROM system.parts WHERE database = ? AND table = ? AND active AND max_date < %s", dateLit(cut)),
			db, t.name)
		if err != nil {
			return dropped, fmt.Errorf("list partitions of %s.%s: %w", db, t.name, err)
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return dropped, fmt.Errorf("list partitions of %s.%s: %w", db, t.name, err)
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return dropped, fmt.Errorf("list partitions of %s.%s: %w", db, t.name, err)
		}
		for _, id := range ids {
			if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s DROP PARTITION ID '%s'", db, t.name, id)); err != nil {
				return dropped, fmt.Errorf("drop partition %s of %s.%s: %w", id, db, t.name, err)
			}
			dropped++
		}
	}
	return dropped, nil
}
