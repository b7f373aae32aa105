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
// written before the column existed read. On a modern server (see
// serverVersion.modern) the column takes its modern type and codec when
// it has them: the values and every query are the same on both.
type columnDef struct{ name, typ, def, modern, codec string }

// ddl is the column's definition in CREATE TABLE and ADD COLUMN on a
// server of version v.
func (c columnDef) ddl(v serverVersion) string {
	typ := c.typ
	if v.modern() && c.modern != "" {
		typ = c.modern
	}
	s := c.name + " " + typ
	if c.def != "" {
		s += " DEFAULT " + c.def
	}
	if v.modern() && c.codec != "" {
		s += " CODEC(" + c.codec + ")"
	}
	return s
}

// column is a column of a table of rows of type R and how a row fills it.
// The column lists below are the single definition of the schema: CREATE
// TABLE, the migration and every INSERT column list come from them.
type column[R any] struct {
	columnDef
	value func(r *R) any
}

func col[R any](name, typ string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name: name, typ: typ}, value}
}

// colDefault is col with a DEFAULT expression.
func colDefault[R any](name, typ, def string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name: name, typ: typ, def: def}, value}
}

// Modern types and codecs. A label (model, version, failure, …) takes a
// few distinct values per table: LowCardinality stores it as a dictionary
// index. Times and their milliseconds grow nearly monotonically within a
// part (ordered by model, version, ts): Delta then ZSTD. Durations are
// noisy floats: on 200 000 lognormal latencies Gorilla then ZSTD stored
// 3 % less than ZSTD alone and 7 % less than the default LZ4; Delta and
// FPC did no better than ZSTD alone.
const (
	lowCardinality = "LowCardinality(String)"
	dateTime64     = "DateTime64(3)"
	codecTime      = "Delta, ZSTD(1)"
	codecDuration  = "Gorilla, ZSTD(1)"
)

// label is a String column stored as LowCardinality(String) on a modern
// server.
func label[R any](name string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name: name, typ: "String", modern: lowCardinality}, value}
}

// timestamp is the ts column: DateTime (seconds) on 18.16, DateTime64(3)
// with Delta and ZSTD on a modern server. The rows carry milliseconds in
// ts_ms on both, which is what the queries filter by to the millisecond.
func timestamp[R any](value func(r *R) any) column[R] {
	return column[R]{columnDef{name: "ts", typ: "DateTime", modern: dateTime64, codec: codecTime}, value}
}

// millis is the ts_ms column, Delta and ZSTD on a modern server.
func millis[R any](value func(r *R) any) column[R] {
	return column[R]{columnDef{name: "ts_ms", typ: "UInt64", codec: codecTime}, value}
}

// duration is a Float64 of milliseconds, Gorilla and ZSTD on a modern
// server.
func duration[R any](name string, value func(r *R) any) column[R] {
	return column[R]{columnDef{name: name, typ: "Float64", codec: codecDuration}, value}
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
	timestamp(func(r *extproc.Record) any { return r.Time.UTC() }),
	millis(func(r *extproc.Record) any { return uint64(r.Time.UnixMilli()) }),
	col("date", "Date", func(r *extproc.Record) any { return day(r.Time) }),
	col("request_id", "String", func(r *extproc.Record) any { return r.RequestID }),
	label("model", func(r *extproc.Record) any { return r.Model }),
	label("version", func(r *extproc.Record) any { return r.Version }),
	label("cluster", func(r *extproc.Record) any { return r.Cluster }),
	label("path", func(r *extproc.Record) any { return r.Path }),
	col("bucket", "UInt64", func(r *extproc.Record) any { return r.Bucket }),
	col("forced", "UInt8", func(r *extproc.Record) any { return b2u(r.Forced) }),
	label("category", func(r *extproc.Record) any { return r.Category }),
	col("streamed", "UInt8", func(r *extproc.Record) any { return b2u(r.Streamed) }),
	col("status", "UInt16", func(r *extproc.Record) any { return uint16(r.Status) }),
	label("failure", func(r *extproc.Record) any { return r.Failure }),
	duration("ttft_ms", func(r *extproc.Record) any { return r.TTFTMs }),
	duration("total_ms", func(r *extproc.Record) any { return r.TotalMs }),
	duration("itl_mean_ms", func(r *extproc.Record) any { return r.ITLMeanMs }),
	duration("itl_p50_ms", func(r *extproc.Record) any { return r.ITLP50Ms }),
	duration("itl_p95_ms", func(r *extproc.Record) any { return r.ITLP95Ms }),
	duration("itl_max_ms", func(r *extproc.Record) any { return r.ITLMaxMs }),
	col("prompt_tokens", "UInt32", func(r *extproc.Record) any { return r.PromptTokens }),
	col("completion_tokens", "UInt32", func(r *extproc.Record) any { return r.CompletionTokens }),
	col("tokens_from_usage", "UInt8", func(r *extproc.Record) any { return b2u(r.TokensFromUsage) }),
	label("finish_reason", func(r *extproc.Record) any { return r.FinishReason }),
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
	timestamp(func(r *extproc.Record) any { return r.Time.UTC() }),
	col("date", "Date", func(r *extproc.Record) any { return day(r.Time) }),
	col("request_id", "String", func(r *extproc.Record) any { return r.RequestID }),
	label("model", func(r *extproc.Record) any { return r.Model }),
	label("version", func(r *extproc.Record) any { return r.Version }),
	col("prompt", "String", func(r *extproc.Record) any { return r.Prompt }),
	col("completion", "String", func(r *extproc.Record) any { return r.Completion }),
}

// shadowColumns is the schema of wire.TableShadow: a request row and its
// text, for every mirrored request a shadow version answered.
var shadowColumns = append(append([]column[extproc.Record](nil), requestColumns...),
	col("prompt", "String", func(r *extproc.Record) any { return r.Prompt }),
	col("completion", "String", func(r *extproc.Record) any { return r.Completion }),
)

// requestLogColumns is the schema of wire.TableRequestLog, one row per
// extproc.LogEntry: every request through Envoy.
var requestLogColumns = []column[extproc.LogEntry]{
	timestamp(func(e *extproc.LogEntry) any { return e.Time.UTC() }),
	millis(func(e *extproc.LogEntry) any { return uint64(e.Time.UnixMilli()) }),
	col("date", "Date", func(e *extproc.LogEntry) any { return day(e.Time) }),
	col("request_id", "String", func(e *extproc.LogEntry) any { return e.RequestID }),
	label("model", func(e *extproc.LogEntry) any { return e.Model }),
	label("version", func(e *extproc.LogEntry) any { return e.Version }),
	label("cluster", func(e *extproc.LogEntry) any { return e.Cluster }),
	label("path", func(e *extproc.LogEntry) any { return e.Path }),
	col("status", "UInt16", func(e *extproc.LogEntry) any { return uint16(e.Status) }),
	duration("duration_ms", func(e *extproc.LogEntry) any { return e.DurationMs }),
	col("request_bytes", "UInt64", func(e *extproc.LogEntry) any { return e.BytesIn }),
	col("response_bytes", "UInt64", func(e *extproc.LogEntry) any { return e.BytesOut }),
	label("response_flags", func(e *extproc.LogEntry) any { return e.Flags }),
	label("details", func(e *extproc.LogEntry) any { return e.Details }),
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
	// primary tables together hold each row exactly once; the writer's
	// counts are about them (the others hold extra detail of some rows).
	primary bool
}

func (t table[R]) def() tableDef {
	d := tableDef{name: t.name, cols: make([]columnDef, len(t.cols))}
	for i, c := range t.cols {
		d.cols[i] = c.columnDef
	}
	return d
}

func (t table[R]) createSQL(db string, v serverVersion) string { return t.def().createSQL(db, v) }
func (t table[R]) insertSQL(db string) string                  { return t.def().insertSQL(db) }

var (
	// A mirrored request's answer goes to the shadow table only: it was
	// never a user's request, so no query of user traffic can count it.
	requestsTable   = table[extproc.Record]{name: wire.TableRequests, cols: requestColumns, keep: func(r *extproc.Record) bool { return !r.Shadow }, primary: true}
	capturesTable   = table[extproc.Record]{name: wire.TableCaptures, cols: captureColumns, keep: func(r *extproc.Record) bool { return r.Captured && !r.Shadow }}
	shadowTable     = table[extproc.Record]{name: wire.TableShadow, cols: shadowColumns, keep: func(r *extproc.Record) bool { return r.Shadow }, primary: true}
	requestLogTable = table[extproc.LogEntry]{name: wire.TableRequestLog, cols: requestLogColumns, primary: true}
	// tables are all the writer's tables.
	tables = []tableDef{requestsTable.def(), capturesTable.def(), shadowTable.def(), requestLogTable.def()}
)

// createSQL creates the table on a lone server of version v.
func (t tableDef) createSQL(db string, v serverVersion) string {
	return t.createAsSQL(db, t.name, "", "MergeTree", v)
}

// createAsSQL creates the table under name with engine on a server of
// version v; on is "" or " ON CLUSTER name".
func (t tableDef) createAsSQL(db, name, on, engine string, v serverVersion) string {
	defs := make([]string, len(t.cols))
	for i, c := range t.cols {
		defs[i] = "    " + c.ddl(v)
	}
	// MergeTree with PARTITION BY is the custom-partitioning syntax 18.16
	// already has; daily partitions make retention a DROP PARTITION.
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s%s (\n%s\n) ENGINE = %s\nPARTITION BY date\nORDER BY (model, version, ts, request_id)",
		db, name, on, strings.Join(defs, ",\n"), engine)
}

func (t tableDef) insertSQL(db string) string { return t.insertIntoSQL(db, t.name) }

func (t tableDef) insertIntoSQL(db, name string) string {
	names := make([]string, len(t.cols))
	for i, c := range t.cols {
		names[i] = c.name
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", db, name, strings.Join(names, ", "))
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

// modern reports a server that creates the modern column types and codecs
// (columnDef.modern, columnDef.codec): 22.3 LTS and later. DateTime64,
// LowCardinality without a setting and column codecs all exist from 20.x,
// but 22.3 is the first long-term release with their present semantics;
// older servers get the portable schema, which they run as 18.16 does.
func (v serverVersion) modern() bool { return v.atLeast(22, 3) }

// extraDDL lists the statements that improve on the base schema when the
// server supports them. Only table-level settings that do not rewrite
// data are used, so an extra never changes what a query returns: with
// retentionDays > 0, servers ≥ 19.6 expire rows by TTL, and modern ones
// (serverVersion.modern) drop a whole daily part once all of it has
// expired (ttl_only_drop_parts), as DropPartitionsBefore does on older
// ones, instead of rewriting parts row by row.
func extraDDL(v serverVersion, db string, retentionDays int) []string {
	return extraDDLIn(v, layout{db: db, retentionDays: retentionDays})
}

// extraDDLIn is extraDDL for the tables that hold the rows on a server
// of layout l.
func extraDDLIn(v serverVersion, l layout) []string {
	var out []string
	if l.retentionDays > 0 && v.atLeast(19, 6) {
		for _, t := range tables {
			if v.modern() {
				out = append(out, fmt.Sprintf("ALTER TABLE %s.%s MODIFY SETTING ttl_only_drop_parts = 1", l.db, l.local(t.name)))
			}
			out = append(out, fmt.Sprintf("ALTER TABLE %s.%s MODIFY TTL date + toIntervalDay(%d)", l.db, l.local(t.name), l.retentionDays))
		}
	}
	return out
}

// migrate creates the database and tables of layout l if missing and adds
// the columns an existing table lacks. 18.16 has no ADD COLUMN IF NOT
// EXISTS, so the existing columns are read from system.columns. In a
// cluster it also checks the cluster's config, creates the Distributed
// tables, and adopts a lone server's tables as the shard's local ones.
func migrate(ctx context.Context, conn driver.Conn, l layout) (serverVersion, error) {
	var vs string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&vs); err != nil {
		return serverVersion{}, fmt.Errorf("server version: %w", err)
	}
	v, err := parseVersion(vs)
	if err != nil {
		return serverVersion{}, err
	}
	db, on := l.db, ""
	if l.cluster != "" {
		if err := checkCluster(ctx, conn, l); err != nil {
			return v, err
		}
		if onClusterDDL(ctx, conn, v) {
			on = " ON CLUSTER " + l.cluster
		}
	}
	// In a cluster, what this server already has is not created again: ON
	// CLUSTER DDL waits for every host, and one shard away must not keep
	// the others from taking rows once their schema is in place.
	create := func(what, name, q string) error {
		if l.cluster != "" {
			if ok, err := exists(ctx, conn, what, db, name); err != nil || ok {
				return err
			}
		}
		return conn.Exec(ctx, q)
	}
	if err := create("database", db, "CREATE DATABASE IF NOT EXISTS "+db+on); err != nil {
		return v, fmt.Errorf("create database %s: %w", db, err)
	}
	for _, t := range tables {
		local := l.local(t.name)
		if l.cluster != "" {
			if err := adoptLoneTable(ctx, conn, l, t.name); err != nil {
				return v, err
			}
		}
		if err := create("table", local, t.createAsSQL(db, local, on, l.engine(local), v)); err != nil {
			return v, fmt.Errorf("create table %s.%s: %w", db, local, err)
		}
		// A replicated table passes the ALTER on to its replicas, so
		// each shard's local table is migrated on the shard's server.
		if err := addColumns(ctx, conn, db, local, t.cols, "", v); err != nil {
			return v, err
		}
		if l.cluster == "" {
			continue
		}
		if err := create("table", t.name, l.distributedSQL(t, on)); err != nil {
			return v, fmt.Errorf("create distributed table %s.%s: %w", db, t.name, err)
		}
		if err := addColumns(ctx, conn, db, t.name, t.cols, on, v); err != nil {
			return v, err
		}
	}
	for _, q := range extraDDLIn(v, l) {
		if err := conn.Exec(ctx, q); err != nil {
			return v, fmt.Errorf("schema extra %q: %w", q, err)
		}
	}
	return v, nil
}

// addColumns adds the columns of cols that table db.tbl lacks on this
// server, each after its predecessor; with on (ON CLUSTER) it adds them
// on every host that lacks them.
func addColumns(ctx context.Context, conn driver.Conn, db, tbl string, cols []columnDef, on string, v serverVersion) error {
	have, err := existingColumns(ctx, conn, db, tbl)
	if err != nil {
		return err
	}
	prev := ""
	for _, c := range cols {
		if !have[c.name] {
			q := fmt.Sprintf("ALTER TABLE %s.%s%s ADD COLUMN %s", db, tbl, on, c.ddl(v))
			if on != "" {
				q = fmt.Sprintf("ALTER TABLE %s.%s%s ADD COLUMN IF NOT EXISTS %s", db, tbl, on, c.ddl(v))
			}
			if prev != "" {
				q += " AFTER " + prev
			}
			if err := conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("add column %s.%s.%s: %w", db, tbl, c.name, err)
			}
		}
		prev = c.name
	}
	return nil
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
func dropPartitionsBefore(ctx context.Context, conn driver.Conn, l layout, before time.Time) (int, error) {
	cut := day(before)
	dropped := 0
	db := l.db
	for _, td := range tables {
		t := tableDef{name: l.local(td.name)}
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

// Migrate creates database and the writer's tables on the server behind
// conn, or upgrades them, with the types and extras of that server's
// version, as a Writer does when it connects. A Writer needs no call; tools
// and tests that prepare a server do.
func Migrate(ctx context.Context, conn driver.Conn, database string, retentionDays int) error {
	if !identRe.MatchString(database) {
		return fmt.Errorf("chwriter: database %q is not a plain identifier", database)
	}
	_, err := migrate(ctx, conn, layout{db: database, retentionDays: retentionDays})
	return err
}
