package chsource

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Tables of the decision log, next to the telemetry: every rollout event
// (decisions with a new reason, traffic moves, operators' actions, errors)
// and every look's numbers per metric, so that a dashboard can draw
// decisions as annotations and a report each metric's effect and interval
// over time.
const (
	EventsTable = "rollout_events"
	LooksTable  = "rollout_looks"
)

// col is one column of a decision log table, in CREATE and INSERT order.
type col struct{ name, typ string }

// rolloutCols begin both tables: when, and which rollout at which stage
// and weight.
var rolloutCols = []col{
	{"ts", "DateTime"}, {"ts_ms", "UInt64"}, {"date", "Date"},
	{"rollout_id", "String"}, {"model", "String"}, {"stable", "String"}, {"canary", "String"},
	{"stage", "UInt16"}, {"weight", "Float64"},
}

var (
	eventCols = append(slices.Clone(rolloutCols), []col{
		{"status", "String"}, {"kind", "String"}, {"action", "String"}, {"code", "String"}, {"reason", "String"}, {"actor", "String"},
	}...)
	// lower and upper are nan while the interval does not bound that side.
	lookCols = append(slices.Clone(rolloutCols), []col{
		{"action", "String"}, {"code", "String"}, {"metric", "String"}, {"kind", "String"}, {"status", "String"},
		{"estimate", "Float64"}, {"lower", "Float64"}, {"upper", "Float64"}, {"tolerance", "Float64"},
		{"canary_value", "Float64"}, {"stable_value", "Float64"}, {"n_canary", "UInt32"}, {"n_stable", "UInt32"},
		{"harm_p", "Float64"}, {"safe_p", "Float64"},
	}...)
)

// CreateEventsSQL and CreateLooksSQL are the tables' DDL (ClickHouse 18.16
// and later). Daily partitions, like the telemetry: retention drops them.
func CreateEventsSQL(db string) string {
	return createSQL(db, EventsTable, eventCols, "model, rollout_id, ts_ms")
}

// CreateLooksSQL: one row per look per tested metric.
func CreateLooksSQL(db string) string {
	return createSQL(db, LooksTable, lookCols, "model, rollout_id, metric, ts_ms")
}

func createSQL(db, table string, cols []col, order string) string {
	defs := make([]string, len(cols))
	for i, c := range cols {
		defs[i] = "    " + c.name + " " + c.typ
	}
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s\n) ENGINE = MergeTree\nPARTITION BY date\nORDER BY (%s)",
		db, table, strings.Join(defs, ",\n"), order)
}

func insertSQL(db, table string, cols []col) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.name
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", db, table, strings.Join(names, ", "))
}

// RolloutAt is what begins every row of the decision log (rolloutCols):
// when, and which rollout at which stage and canary weight.
type RolloutAt struct {
	At        time.Time
	RolloutID string
	Model     string
	Stable    string
	Canary    string
	Stage     int // 0-based
	Weight    float64
}

func (r RolloutAt) values() []any {
	at := r.At.UTC()
	return []any{at, uint64(at.UnixMilli()), day(at), r.RolloutID, r.Model, r.Stable, r.Canary, uint16(r.Stage), r.Weight}
}

// EventRow is one row of EventsTable.
type EventRow struct {
	RolloutAt
	Status analyzer.Status
	analyzer.Event
}

// LookRow is one row of LooksTable: one metric at one look.
type LookRow struct {
	RolloutAt
	Action analyzer.Action
	Code   analyzer.Code
	analyzer.MetricResult
}

// Lower and Upper are the row's interval, NaN on a side it does not bound.
func (r LookRow) Lower() float64 {
	if r.CI == nil {
		return math.NaN()
	}
	return r.CI.Lo
}

func (r LookRow) Upper() float64 {
	if r.CI == nil {
		return math.NaN()
	}
	return r.CI.Hi
}

// DecisionRows returns the rows a persisted change of a rollout adds to
// the log: its new history events, and its new decision's tested metrics.
// Pure.
func DecisionRows(before, after *analyzer.Rollout) (events []EventRow, looks []LookRow) {
	for _, e := range analyzer.NewEvents(before, after) {
		events = append(events, EventRow{RolloutAt: RolloutAt{At: e.At, RolloutID: after.ID, Model: after.Model, Stable: after.Stable, Canary: after.Canary,
			Stage: after.Stage, Weight: after.CanaryWeight()}, Status: after.Status, Event: e})
	}
	d := analyzer.NewDecision(before, after)
	if d == nil {
		return events, nil
	}
	for _, m := range d.Metrics {
		if m.Status == analyzer.StatusNotMeasured {
			continue
		}
		looks = append(looks, LookRow{RolloutAt: RolloutAt{At: d.At, RolloutID: after.ID, Model: after.Model, Stable: after.Stable, Canary: after.Canary,
			Stage: d.Stage, Weight: d.Weight}, Action: d.Action, Code: d.Code, MetricResult: m})
	}
	return events, looks
}

// DecisionLog writes the decision log. Changed (an analyzer.RolloutStore
// watcher) queues rows without blocking; Run inserts them in batches, so
// a slow or absent ClickHouse never delays a decision: what cannot be
// queued is dropped and logged (the rollout's own history keeps the
// decisions). Safe for concurrent use.
type DecisionLog struct {
	conn  driver.Conn
	db    string
	log   *slog.Logger
	queue chan any // EventRow or LookRow
}

// NewDecisionLog creates the tables if needed ("" database means
// wire.Database).
func NewDecisionLog(ctx context.Context, conn driver.Conn, database string, log *slog.Logger) (*DecisionLog, error) {
	if database == "" {
		database = wire.Database
	}
	if log == nil {
		log = slog.Default()
	}
	if !identRe.MatchString(database) {
		return nil, fmt.Errorf("chsource: database %q is not a plain identifier", database)
	}
	for _, q := range []string{"CREATE DATABASE IF NOT EXISTS " + database, CreateEventsSQL(database), CreateLooksSQL(database)} {
		if err := conn.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("chsource: decision log: %w", err)
		}
	}
	return &DecisionLog{conn: conn, db: database, log: log, queue: make(chan any, 10000)}, nil
}

// Changed queues the rows of one persisted change.
func (l *DecisionLog) Changed(before, after *analyzer.Rollout) {
	events, looks := DecisionRows(before, after)
	dropped := 0
	for _, r := range events {
		select {
		case l.queue <- r:
		default:
			dropped++
		}
	}
	for _, r := range looks {
		select {
		case l.queue <- r:
		default:
			dropped++
		}
	}
	if dropped > 0 {
		l.log.Warn("decision log rows dropped: ClickHouse is behind", "rollout", after.ID, "rows", dropped)
	}
}

// Run inserts the queued rows every interval (a second by default) until
// ctx ends, then inserts what is left, for up to five seconds.
func (l *DecisionLog) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			l.Flush(fctx)
			cancel()
			return
		case <-t.C:
			l.Flush(ctx)
		}
	}
}

// Flush inserts every queued row now.
func (l *DecisionLog) Flush(ctx context.Context) {
	var events, looks [][]any
	for {
		select {
		case r := <-l.queue:
			switch r := r.(type) {
			case EventRow:
				events = append(events, r.values())
			case LookRow:
				looks = append(looks, r.values())
			}
			continue
		default:
		}
		break
	}
	if err := l.insert(ctx, EventsTable, eventCols, events); err != nil {
		l.log.Warn("decision log: rollout events not recorded", "rows", len(events), "error", err)
	}
	if err := l.insert(ctx, LooksTable, lookCols, looks); err != nil {
		l.log.Warn("decision log: looks not recorded", "rows", len(looks), "error", err)
	}
}

// Reconcile inserts the rows of ro the log lacks: its history entries
// (those not folded into a repeated hold: a folded entry's first look is
// logged already) and its last decision's looks, matched by rollout, time,
// kind and action. A process that stops after storing a change and before
// inserting its rows (rows are queued, then inserted every interval)
// leaves them out; the analyzer that acts next reconciles each recent
// rollout first, so rollout_events holds every decision once. It flushes
// the queue first, so that no queued row is inserted twice, and returns
// how many rows it inserted.
func (l *DecisionLog) Reconcile(ctx context.Context, ro *analyzer.Rollout) (int, error) {
	l.Flush(ctx)
	rows, err := l.conn.Query(ctx, fmt.Sprintf("SELECT ts_ms, kind, action FROM %s.%s WHERE rollout_id = ?", l.db, EventsTable), ro.ID)
	if err != nil {
		return 0, fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
	}
	logged := map[string]bool{}
	for rows.Next() {
		var ms uint64
		var kind, action string
		if err := rows.Scan(&ms, &kind, &action); err != nil {
			rows.Close()
			return 0, fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
		}
		logged[fmt.Sprintf("%d/%s/%s", ms, kind, action)] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
	}
	events, looks := DecisionRows(nil, ro)
	var missing [][]any
	for _, e := range events {
		if e.Repeats == 0 && !logged[fmt.Sprintf("%d/%s/%s", e.RolloutAt.At.UnixMilli(), e.Kind, e.Action)] {
			missing = append(missing, e.values())
		}
	}
	var lookRows [][]any
	if len(looks) > 0 {
		var n uint64
		q := fmt.Sprintf("SELECT count() FROM %s.%s WHERE rollout_id = ? AND ts_ms = ?", l.db, LooksTable)
		if err := l.conn.QueryRow(ctx, q, ro.ID, uint64(ro.Last.At.UnixMilli())).Scan(&n); err != nil {
			return 0, fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
		}
		if n == 0 {
			for _, r := range looks {
				lookRows = append(lookRows, r.values())
			}
		}
	}
	if err := l.insert(ctx, EventsTable, eventCols, missing); err != nil {
		return 0, fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
	}
	if err := l.insert(ctx, LooksTable, lookCols, lookRows); err != nil {
		return len(missing), fmt.Errorf("chsource: reconcile %s: %w", ro.ID, err)
	}
	return len(missing) + len(lookRows), nil
}

func (r EventRow) values() []any {
	return append(r.RolloutAt.values(), string(r.Status), r.Kind, string(r.Action), string(r.Code), r.Reason, r.Actor)
}

func (r LookRow) values() []any {
	return append(r.RolloutAt.values(),
		string(r.Action), string(r.Code), string(r.Metric), string(r.Kind), string(r.Status), r.Estimate, r.Lower(), r.Upper(), r.Tolerance,
		r.CanaryValue, r.StableValue, uint32(max(r.NCanary, 0)), uint32(max(r.NStable, 0)), r.HarmP, r.SafeP)
}

func (l *DecisionLog) insert(ctx context.Context, table string, cols []col, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	b, err := l.conn.PrepareBatch(ctx, insertSQL(l.db, table, cols))
	if err != nil {
		return err
	}
	for _, v := range rows {
		if err := b.Append(v...); err != nil {
			_ = b.Abort()
			return err
		}
	}
	return b.Send()
}

// Look is one metric at one look, as the report reads it back.
type Look struct {
	At       time.Time
	Stage    int
	Weight   float64
	Metric   analyzer.Metric
	Kind     analyzer.Kind
	Status   analyzer.MetricStatus
	Estimate float64
	// Lower and Upper are NaN on a side the interval does not bound.
	Lower, Upper float64
	Tolerance    float64
}

// ReadLooks returns a rollout's looks from database ("" means
// wire.Database), by metric, oldest first.
func ReadLooks(ctx context.Context, conn driver.Conn, database, rolloutID string) ([]Look, error) {
	if database == "" {
		database = wire.Database
	}
	if !identRe.MatchString(database) {
		return nil, fmt.Errorf("chsource: database %q is not a plain identifier", database)
	}
	rows, err := conn.Query(ctx, fmt.Sprintf(
		"SELECT ts_ms, stage, weight, metric, kind, status, estimate, lower, upper, tolerance FROM %s.%s WHERE rollout_id = ? ORDER BY metric, ts_ms",
		database, LooksTable), rolloutID)
	if err != nil {
		return nil, fmt.Errorf("chsource: read looks: %w", err)
	}
	defer rows.Close()
	var out []Look
	for rows.Next() {
		var ms uint64
		var stage uint16
		var x Look
		var metric, kind, status string
		if err := rows.Scan(&ms, &stage, &x.Weight, &metric, &kind, &status, &x.Estimate, &x.Lower, &x.Upper, &x.Tolerance); err != nil {
			return nil, fmt.Errorf("chsource: read looks: %w", err)
		}
		x.At, x.Stage = time.UnixMilli(int64(ms)).UTC(), int(stage)
		x.Metric, x.Kind, x.Status = analyzer.Metric(metric), analyzer.Kind(kind), analyzer.MetricStatus(status)
		out = append(out, x)
	}
	return out, rows.Err()
}

func day(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
