// Package quality records how good answers are, in one ClickHouse table
// the analyzer reads as MetricQuality: scores from an LLM judge that grades
// captured responses (Judge), and ratings users send about their own
// requests (ScoreStore.FeedbackHandler).
//
// Every score is a number in [0, 1] (1 = good) tied to one request id. A
// row carries the rated request's time, model, version and forced flag, so
// the analyzer selects the quality of a window's requests with the same
// partitions and bounds as the requests themselves.
package quality

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// Table is the ClickHouse table of quality scores.
const Table = "quality"

// Sources of a score.
const (
	SourceJudge    = "judge"
	SourceFeedback = "feedback"
)

// Score is one row of Table: one grade of one request.
type Score struct {
	// Time is when the rated request was received (the requests row's
	// ts_ms), not when it was rated: windows select by request time.
	Time      time.Time
	RequestID string
	Model     string
	Version   string
	Score     float64 // in [0, 1]
	Source    string  // SourceJudge or SourceFeedback
	Forced    bool
	Comment   string
}

// columns is the schema of Table, in CREATE and INSERT order. It runs on
// ClickHouse 18.16.
var columns = []struct{ name, typ string }{
	{"ts", "DateTime"},
	{"ts_ms", "UInt64"},
	{"date", "Date"},
	{"request_id", "String"},
	{"model", "String"},
	{"version", "String"},
	{"score", "Float64"},
	{"source", "String"},
	{"forced", "UInt8"},
	{"comment", "String"},
}

func (s *Score) values() []any {
	t := time.UnixMilli(s.Time.UnixMilli()).UTC()
	var forced uint8
	if s.Forced {
		forced = 1
	}
	return []any{t, uint64(t.UnixMilli()), day(t), s.RequestID, s.Model, s.Version, s.Score, s.Source, forced, s.Comment}
}

// CreateTableSQL returns the CREATE TABLE statement of Table in database.
// Like the telemetry tables it is partitioned by day, so retention drops
// partitions, and ordered like them, so a window's scores are a key range.
func CreateTableSQL(database string) string { return createSQL(database, Table) }

// createSQL is the CREATE TABLE statement of a table of scores.
func createSQL(database, table string) string {
	defs := make([]string, len(columns))
	for i, c := range columns {
		defs[i] = fmt.Sprintf("    %s %s", c.name, c.typ)
	}
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s\n) ENGINE = MergeTree\nPARTITION BY date\nORDER BY (model, version, ts, request_id)",
		database, table, strings.Join(defs, ",\n"))
}

func insertSQL(database, table string) string {
	names := make([]string, len(columns))
	for i, c := range columns {
		names[i] = c.name
	}
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", database, table, strings.Join(names, ", "))
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkDatabase returns database, or wire.Database when it is empty, and
// rejects names that are not plain identifiers: they are spliced into SQL.
func checkDatabase(database string) (string, error) {
	if database == "" {
		return wire.Database, nil
	}
	if !identRe.MatchString(database) {
		return "", fmt.Errorf("quality: database %q is not a plain identifier", database)
	}
	return database, nil
}

func day(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// dateLit renders t's UTC day as a ClickHouse Date literal; bound
// time.Time parameters compare as numbers against Date columns on 18.16.
func dateLit(t time.Time) string { return "toDate('" + day(t).Format("2006-01-02") + "')" }

// ScoreStore writes quality scores and serves user feedback. Safe for
// concurrent use.
type ScoreStore struct {
	conn driver.Conn
	db   string

	// feedbackMu serialises the check-then-insert of a feedback rating, so
	// one process never stores two ratings of one request.
	feedbackMu sync.Mutex
	// lookupWait bounds how long feedback waits for its request's row,
	// which the telemetry writer inserts about a second after the response.
	lookupWait time.Duration
	// maxAge is how far back feedback may rate a request; it bounds the
	// partitions a lookup reads.
	maxAge time.Duration
	now    func() time.Time
	// missed, when set, is called each time feedback looked for its
	// request's row, did not find it and waits: tests wait on it.
	missed func(requestID string)
}

// Defaults of the ScoreStore.
const (
	DefaultLookupWait     = 3 * time.Second
	DefaultFeedbackMaxAge = 7 * 24 * time.Hour
)

// OpenScoreStore creates database and Table in it if they are missing ("" means
// wire.Database). The caller keeps ownership of conn.
func OpenScoreStore(ctx context.Context, conn driver.Conn, database string) (*ScoreStore, error) {
	if conn == nil {
		return nil, errors.New("quality: a ClickHouse connection is required")
	}
	db, err := checkDatabase(database)
	if err != nil {
		return nil, err
	}
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return nil, fmt.Errorf("quality: create database %s: %w", db, err)
	}
	if err := conn.Exec(ctx, CreateTableSQL(db)); err != nil {
		return nil, fmt.Errorf("quality: create table %s.%s: %w", db, Table, err)
	}
	return &ScoreStore{conn: conn, db: db, lookupWait: DefaultLookupWait, maxAge: DefaultFeedbackMaxAge, now: time.Now}, nil
}

// Database is the database holding Table.
func (s *ScoreStore) Database() string { return s.db }

// Write inserts scores in one batch. It checks every score first and
// writes none when one is invalid.
func (s *ScoreStore) Write(ctx context.Context, scores []Score) error {
	return writeScores(ctx, s.conn, insertSQL(s.db, Table), scores)
}

// writeScores inserts scores in one batch with insert, after checking
// every one.
func writeScores(ctx context.Context, conn driver.Conn, insert string, scores []Score) error {
	for i := range scores {
		if err := scores[i].validate(); err != nil {
			return err
		}
	}
	if len(scores) == 0 {
		return nil
	}
	b, err := conn.PrepareBatch(ctx, insert)
	if err != nil {
		return fmt.Errorf("quality: prepare insert: %w", err)
	}
	for i := range scores {
		if err := b.Append(scores[i].values()...); err != nil {
			_ = b.Abort()
			return fmt.Errorf("quality: append score: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("quality: insert scores: %w", err)
	}
	return nil
}

func (s *Score) validate() error {
	switch {
	case s.RequestID == "":
		return errors.New("quality: score without a request id")
	case !(s.Score >= 0 && s.Score <= 1):
		return fmt.Errorf("quality: score %v of request %s is outside [0, 1]", s.Score, s.RequestID)
	case s.Source != SourceJudge && s.Source != SourceFeedback && s.Source != SourceShadowJudge:
		return fmt.Errorf("quality: unknown score source %q", s.Source)
	case s.Time.IsZero():
		return fmt.Errorf("quality: score of request %s has no request time", s.RequestID)
	}
	return nil
}
