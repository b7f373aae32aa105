// Package chsource is the analyzer's MetricsSource on ClickHouse: it reads
// a window of the telemetry table wire.TableRequests and the scores of
// quality.Table and returns both arms' measurements.
package chsource

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var _ analyzer.MetricsSource = (*Source)(nil)

// Source measures windows in one ClickHouse database. Safe for concurrent
// use; the caller keeps ownership of the connection.
type Source struct {
	conn driver.Conn
	db   string
}

// New returns a Source reading database ("" means wire.Database) over
// conn.
func New(conn driver.Conn, database string) *Source {
	if database == "" {
		database = wire.Database
	}
	return &Source{conn: conn, db: database}
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Measure returns the stable and canary arms of w's model over the same
// window [w.From, w.To), by the request time ts_ms, in two queries: one
// over the requests table, one over the quality table.
//
// Only requests that reached their version by the random split count:
// forced requests (forced = 1) are left out, and so is every request with
// a category. A category override sends its category to a version the
// operator chose, and the row does not record whether an override applied,
// so all categorised requests are left out rather than some of them
// wrongly kept.
//
// Per arm: Requests counts every such request; Failures those whose
// failure is set to anything but client_cancel; Successes those without
// failure; Refusals the successes the model refused. The value lists are those
// of successes: LatencyMs is total_ms; TTFTMs and ITLMs come from streamed
// successes only, and ITLMs only from those with at least two completion
// tokens and a measured gap (as the extproc metrics count them); CostUSD
// and CompletionTokens from every success. Quality holds the judge and
// feedback scores of exactly the requests counted, one per request and
// source. A missing quality table means no scores.
//
// When an arm has no request in the window the error wraps
// analyzer.ErrNoData, and the Measurements returned with it are filled as
// far as they go; a failed query returns another wrapped error.
func (s *Source) Measure(ctx context.Context, w analyzer.Window) (analyzer.Measurements, error) {
	m := analyzer.Measurements{Model: w.Model, From: w.From, To: w.To,
		Stable: analyzer.Arm{Version: w.Stable}, Canary: analyzer.Arm{Version: w.Canary}}
	if err := s.check(w); err != nil {
		return m, err
	}
	filter := windowFilter(w)
	if err := s.readRequests(ctx, filter, w, &m.Stable, &m.Canary); err != nil {
		return m, err
	}
	var empty []string
	for _, a := range []*analyzer.Arm{&m.Stable, &m.Canary} {
		if a.Requests == 0 {
			empty = append(empty, a.Version)
		}
	}
	if len(empty) == 2 {
		return m, fmt.Errorf("chsource: model %s, versions %s and %s, %s..%s: %w",
			w.Model, w.Stable, w.Canary, w.From.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano), analyzer.ErrNoData)
	}
	if err := s.readQuality(ctx, filter, w, &m.Stable, &m.Canary); err != nil {
		return m, err
	}
	if len(empty) == 1 {
		return m, fmt.Errorf("chsource: model %s, version %s has no requests in %s..%s: %w",
			w.Model, empty[0], w.From.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano), analyzer.ErrNoData)
	}
	return m, nil
}

func (s *Source) check(w analyzer.Window) error {
	var errs []error
	if !identRe.MatchString(s.db) {
		errs = append(errs, fmt.Errorf("database %q is not a plain identifier", s.db))
	}
	if w.Model == "" || w.Stable == "" || w.Canary == "" {
		errs = append(errs, errors.New("window needs a model, a stable and a canary version"))
	}
	if w.Stable == w.Canary {
		errs = append(errs, fmt.Errorf("stable and canary are both %q", w.Stable))
	}
	if !w.To.After(w.From) {
		errs = append(errs, fmt.Errorf("window ends (%v) before it starts (%v)", w.To, w.From))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("chsource: %w", err)
	}
	return nil
}

// windowSQL is the WHERE clause of a window. key selects the rows of w's
// model and versions with From <= ts_ms < To; all adds that they reached
// their version by the split. The date and ts bounds are implied by ts_ms;
// they are there so ClickHouse prunes partitions by date and granules by
// the (model, version, ts) key. The three placeholders of each are the
// model and the two versions.
type windowSQL struct{ key, all string }

func windowFilter(w analyzer.Window) windowSQL {
	fromMs, toMs := w.From.UnixMilli(), w.To.UnixMilli() // [fromMs, toMs)
	last := toMs - 1
	key := fmt.Sprintf(`date >= %s AND date <= %s
  AND model = ? AND version IN (?, ?)
  AND ts >= toDateTime(%d) AND ts <= toDateTime(%d)
  AND ts_ms >= %d AND ts_ms < %d`,
		dateLit(time.UnixMilli(fromMs)), dateLit(time.UnixMilli(last)),
		floorDiv(fromMs, 1000), floorDiv(last, 1000), fromMs, toMs)
	return windowSQL{key: key, all: key + "\n  AND forced = 0 AND category = ''"}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// dateLit renders t's UTC day as a ClickHouse Date literal; bound
// time.Time parameters compare as numbers against Date columns on 18.16.
func dateLit(t time.Time) string { return "toDate('" + t.UTC().Format("2006-01-02") + "')" }

// isUnknownTable reports ClickHouse's UNKNOWN_TABLE (code 60).
func isUnknownTable(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == 60
}

// requestRow is what Measure reads of one request of the window.
type requestRow struct {
	canary           uint8 // 1: the canary's, 0: the stable's
	outcome          uint8 // outcomeSuccess, outcomeFailure or outcomeCancelled
	refusal          uint8
	streamed         uint8
	totalMs          float64
	ttftMs           float64
	itlMs            float64
	costUSD          float64
	completionTokens uint32
}

// Outcomes of a request, computed by the query from its failure column.
const (
	outcomeSuccess   = 0 // failure = ''
	outcomeFailure   = 1 // any failure but a client cancellation
	outcomeCancelled = 2 // the client went away: not the version's fault
)

// add counts r into a as measure.go defines the arm's fields.
func add(a *analyzer.Arm, r *requestRow) {
	a.Requests++
	switch r.outcome {
	case outcomeFailure:
		a.Failures++
		return
	case outcomeCancelled:
		return
	}
	a.Successes++
	if r.refusal == 1 {
		a.Refusals++
	}
	a.LatencyMs = append(a.LatencyMs, r.totalMs)
	a.CostUSD = append(a.CostUSD, r.costUSD)
	a.CompletionTokens = append(a.CompletionTokens, float64(r.completionTokens))
	if r.streamed == 1 {
		a.TTFTMs = append(a.TTFTMs, r.ttftMs)
		// One token has no gap; extproc stores 0 then, and its metrics
		// skip it the same way.
		if r.completionTokens > 1 && r.itlMs > 0 {
			a.ITLMs = append(a.ITLMs, r.itlMs)
		}
	}
}

// readRequests streams the window's requests, one narrow row each, and
// counts them into the arms. Rows of plain numbers scan without
// reflection; arrays built by groupArray scan element by element through
// reflection in clickhouse-go and were ten times slower.
func (s *Source) readRequests(ctx context.Context, filter windowSQL, w analyzer.Window, stable, canary *analyzer.Arm) error {
	q := fmt.Sprintf(`SELECT
    version = ?,
    multiIf(failure = '', %[3]d, failure = '%[5]s', %[4]d, 1),
    refusal,
    streamed,
    total_ms,
    ttft_ms,
    itl_mean_ms,
    cost_usd,
    completion_tokens
FROM %[1]s.%[2]s
WHERE %[6]s`, s.db, wire.TableRequests, outcomeSuccess, outcomeCancelled, extproc.FailureClientCancel, filter.all)
	rows, err := s.conn.Query(ctx, q, w.Canary, w.Model, w.Stable, w.Canary)
	if err != nil {
		return fmt.Errorf("chsource: query requests: %w", err)
	}
	defer rows.Close()
	var r requestRow
	dest := []any{&r.canary, &r.outcome, &r.refusal, &r.streamed, &r.totalMs, &r.ttftMs, &r.itlMs, &r.costUSD, &r.completionTokens}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("chsource: read requests: %w", err)
		}
		if r.canary == 1 {
			add(canary, &r)
		} else {
			add(stable, &r)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("chsource: read requests: %w", err)
	}
	return nil
}

// readQuality fills each arm's Quality with the scores of the requests
// readRequests counts. A request scored twice by one source (two judges
// racing) counts once.
//
// A quality row carries its request's ts_ms, date, model, version and
// forced flag (quality.Store and quality.Judge copy them from the requests
// row), so the window's filter applies to the quality table as it is.
// Only the category is not there: the subquery names the window's
// categorised requests, normally few, to leave out. Naming the counted
// requests instead would build a set of every request id in the window,
// five times slower at 200 000 requests.
func (s *Source) readQuality(ctx context.Context, filter windowSQL, w analyzer.Window, stable, canary *analyzer.Arm) error {
	q := fmt.Sprintf(`SELECT version = ?, score
FROM (
    SELECT version, request_id, source, any(score) AS score
    FROM %[1]s.%[2]s
    WHERE %[4]s
      AND forced = 0
      AND request_id NOT IN (SELECT request_id FROM %[1]s.%[3]s WHERE %[4]s AND category != '')
    GROUP BY version, request_id, source
)`, s.db, quality.Table, wire.TableRequests, filter.key)
	rows, err := s.conn.Query(ctx, q, w.Canary, w.Model, w.Stable, w.Canary, w.Model, w.Stable, w.Canary)
	if err != nil {
		if isUnknownTable(err) {
			return nil
		}
		return fmt.Errorf("chsource: query quality: %w", err)
	}
	defer rows.Close()
	var (
		isCanary uint8
		score    float64
	)
	for rows.Next() {
		if err := rows.Scan(&isCanary, &score); err != nil {
			return fmt.Errorf("chsource: read quality: %w", err)
		}
		if isCanary == 1 {
			canary.Quality = append(canary.Quality, score)
		} else {
			stable.Quality = append(stable.Quality, score)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("chsource: read quality: %w", err)
	}
	return nil
}
