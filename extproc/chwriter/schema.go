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

// column is one column of a table: its name, its ClickHouse type and how a
// Record fills it. The slices below are the single definition of the schema:
// CREATE TABLE, the migration and every INSERT column list come from them.
type column struct {
	name  string
	typ   string
	value func(r *extproc.Record) any
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
var requestColumns = []column{
	{"ts", "DateTime", func(r *extproc.Record) any { return r.Time.UTC() }},
	{"ts_ms", "UInt64", func(r *extproc.Record) any { return uint64(r.Time.UnixMilli()) }},
	{"date", "Date", func(r *extproc.Record) any { return day(r.Time) }},
	{"request_id", "String", func(r *extproc.Record) any { return r.RequestID }},
	{"model", "String", func(r *extproc.Record) any { return r.Model }},
	{"version", "String", func(r *extproc.Record) any { return r.Version }},
	{"cluster", "String", func(r *extproc.Record) any { return r.Cluster }},
	{"path", "String", func(r *extproc.Record) any { return r.Path }},
	{"bucket", "UInt64", func(r *extproc.Record) any { return r.Bucket }},
	{"forced", "UInt8", func(r *extproc.Record) any { return b2u(r.Forced) }},
	{"category", "String", func(r *extproc.Record) any { return r.Category }},
	{"streamed", "UInt8", func(r *extproc.Record) any { return b2u(r.Streamed) }},
	{"status", "UInt16", func(r *extproc.Record) any { return uint16(r.Status) }},
	{"failure", "String", func(r *extproc.Record) any { return r.Failure }},
	{"ttft_ms", "Float64", func(r *extproc.Record) any { return r.TTFTMs }},
	{"total_ms", "Float64", func(r *extproc.Record) any { return r.TotalMs }},
	{"itl_mean_ms", "Float64", func(r *extproc.Record) any { return r.ITLMeanMs }},
	{"itl_p50_ms", "Float64", func(r *extproc.Record) any { return r.ITLP50Ms }},
	{"itl_p95_ms", "Float64", func(r *extproc.Record) any { return r.ITLP95Ms }},
	{"itl_max_ms", "Float64", func(r *extproc.Record) any { return r.ITLMaxMs }},
	{"prompt_tokens", "UInt32", func(r *extproc.Record) any { return r.PromptTokens }},
	{"completion_tokens", "UInt32", func(r *extproc.Record) any { return r.CompletionTokens }},
	{"tokens_from_usage", "UInt8", func(r *extproc.Record) any { return b2u(r.TokensFromUsage) }},
	{"finish_reason", "String", func(r *extproc.Record) any { return r.FinishReason }},
	{"refusal", "UInt8", func(r *extproc.Record) any { return b2u(r.Refusal) }},
	{"cost_usd", "Float64", func(r *extproc.Record) any { return r.CostUSD }},
	{"response_bytes", "UInt32", func(r *extproc.Record) any { return r.ResponseBytes }},
	{"chunks", "UInt32", func(r *extproc.Record) any { return r.Chunks }},
}

// captureColumns is the schema of wire.TableCaptures: one row per
// extproc.Record with Captured set.
var captureColumns = []column{
	{"ts", "DateTime", func(r *extproc.Record) any { return r.Time.UTC() }},
	{"date", "Date", func(r *extproc.Record) any { return day(r.Time) }},
	{"request_id", "String", func(r *extproc.Record) any { return r.RequestID }},
	{"model", "String", func(r *extproc.Record) any { return r.Model }},
	{"version", "String", func(r *extproc.Record) any { return r.Version }},
	{"prompt", "String", func(r *extproc.Record) any { return r.Prompt }},
	{"completion", "String", func(r *extproc.Record) any { return r.Completion }},
}

// table is one table the writer owns.
type table struct {
	name string
	cols []column
}

var (
	requestsTable = table{wire.TableRequests, requestColumns}
	capturesTable = table{wire.TableCaptures, captureColumns}
	tables        = []table{requestsTable, capturesTable}
)

func (t table) createSQL(db string) string {
	defs := make([]string, len(t.cols))
	for i, c := range t.cols {
		defs[i] = fmt.Sprintf("    %s %s", c.name, c.typ)
	}
	// MergeTree with PARTITION BY is the custom-partitioning syntax 18.16
	// already has; daily partitions make retention a DROP PARTITION.
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s\n) ENGINE = MergeTree\nPARTITION BY date\nORDER BY (model, version, ts, request_id)",
		db, t.name, strings.Join(defs, ",\n"))
}

func (t table) insertSQL(db string) string {
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
				q := fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s", db, t.name, c.name, c.typ)
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
