// Package chsource is the analyzer's MetricsSource on ClickHouse: it reads
// a window of the telemetry table wire.TableRequests and the scores of
// quality.Table and returns both arms' measurements.
package chsource

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var (
	_ analyzer.MetricsSource = (*Source)(nil)
	_ analyzer.Watermarker   = (*Source)(nil)
)

// Source measures windows in one ClickHouse database. Safe for concurrent
// use; the caller keeps ownership of the connection.
type Source struct {
	conn driver.Conn
	db   string
	// KeepValues keeps each arm's raw values in the measurements, for the
	// A/B reports' win rates.
	KeepValues bool

	mu        sync.Mutex
	baselines map[baselineKey][]baselineRow // the past does not change: read once
}

type baselineKey struct {
	model, stable string
	from, to      int64
}

// baselineRow is one user's stable traffic before a rollout: per tail
// value (latency, TTFT, ITL), the count and the sum of logarithms.
type baselineRow struct {
	bucket uint64
	n, s   [3]float64
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

// Measure reads the rollout's requests of w's model and versions from
// w.RolloutFrom (w.From when zero) to w.To, in time order, and counts them
// through an analyzer.Tally: the stage's window [w.From, w.To) for both
// arms, the users' first events since the rollout began, and the tail
// thresholds. Every request is one row, joined with the average of its
// quality scores, one per source (judge, user feedback; two judges racing
// on one request count once), when it has any.
//
// Only requests that reached their version by the random split count:
// forced requests (forced = 1) are left out, and so is every request with
// a category. A category override sends its category to a version the
// operator chose, and the row does not record whether an override applied,
// so all categorised requests are left out rather than some of them
// wrongly kept. Requests a cohort rule routed (cohort = opt_in or
// excluded) are left out too: their version was chosen for them, not
// drawn, so they would bias both arms and the split check.
//
// A request whose failure is set to anything but client_cancel is a
// failure; a client cancellation is counted as a request that neither
// failed nor succeeded. TTFT and ITL come from streamed successes only,
// and ITL only from those with at least two completion tokens and a
// measured gap (as the extproc metrics count them). A missing quality
// table means no scores.
//
// When the rollout has no request at all the error wraps
// analyzer.ErrNoData; one empty arm is data (the sample-ratio check reads
// it). A failed query returns another wrapped error.
func (s *Source) Measure(ctx context.Context, w analyzer.Window) (analyzer.Measurements, error) {
	if w.RolloutFrom.IsZero() || w.RolloutFrom.After(w.From) {
		w.RolloutFrom = w.From
	}
	m := analyzer.Measurements{Model: w.Model, From: w.From, To: w.To,
		Stable: analyzer.Arm{Version: w.Stable}, Canary: analyzer.Arm{Version: w.Canary}}
	if err := s.check(w); err != nil {
		return m, err
	}
	t := analyzer.NewTally(analyzer.TallyOptions{TailQuantile: w.TailQuantile, KeepValues: s.KeepValues})
	if !w.BaselineFrom.IsZero() && w.BaselineFrom.Before(w.RolloutFrom) {
		rows, err := s.baseline(ctx, w)
		if err != nil {
			return m, err
		}
		for _, b := range rows {
			for k := range b.n {
				t.AddBaseline(b.bucket, k, b.n[k], b.s[k])
			}
		}
	}
	t.StartStage(w.From)
	n, err := s.readRequests(ctx, w, t)
	if err != nil {
		return m, err
	}
	m = t.Measurements(w.Model, w.Stable, w.Canary, w.To)
	if n == 0 {
		return m, fmt.Errorf("chsource: model %s, versions %s and %s, %s..%s: %w",
			w.Model, w.Stable, w.Canary, w.RolloutFrom.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano), analyzer.ErrNoData)
	}
	return m, nil
}

// baseline reads each user's successful stable requests from
// w.BaselineFrom to w.RolloutFrom, by the same rules as the rollout's
// (no forced or categorised requests): per user, the count and the sum of
// the logarithms of latency, TTFT and inter-token latency. It is read once
// per rollout and kept: the past does not change.
func (s *Source) baseline(ctx context.Context, w analyzer.Window) ([]baselineRow, error) {
	key := baselineKey{w.Model, w.Stable, w.BaselineFrom.UnixMilli(), w.RolloutFrom.UnixMilli()}
	s.mu.Lock()
	rows, ok := s.baselines[key]
	s.mu.Unlock()
	if ok {
		return rows, nil
	}
	filter := windowFilter(w.BaselineFrom, w.RolloutFrom)
	q := fmt.Sprintf(`SELECT bucket,
    countIf(total_ms > 0), sumIf(log(total_ms), total_ms > 0),
    countIf(streamed = 1 AND ttft_ms > 0), sumIf(log(ttft_ms), streamed = 1 AND ttft_ms > 0),
    countIf(streamed = 1 AND completion_tokens > 1 AND itl_mean_ms > 0), sumIf(log(itl_mean_ms), streamed = 1 AND completion_tokens > 1 AND itl_mean_ms > 0)
FROM %s.%s
WHERE %s AND version = ? AND failure = ''
GROUP BY bucket`, s.db, wire.TableRequests, filter.all)
	res, err := s.conn.Query(ctx, q, w.Model, w.Stable, w.Canary, w.Stable)
	if err != nil {
		return nil, fmt.Errorf("chsource: query baseline: %w", err)
	}
	defer res.Close()
	var (
		b          baselineRow
		n0, n1, n2 uint64
	)
	for res.Next() {
		if err := res.Scan(&b.bucket, &n0, &b.s[0], &n1, &b.s[1], &n2, &b.s[2]); err != nil {
			return nil, fmt.Errorf("chsource: read baseline: %w", err)
		}
		b.n = [3]float64{float64(n0), float64(n1), float64(n2)}
		rows = append(rows, b)
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("chsource: read baseline: %w", err)
	}
	if latency, err := s.latencyBaseline(ctx, w, filter); err != nil {
		return nil, err
	} else if len(latency) > 0 {
		rows = mergeLatency(rows, latency)
	}
	s.mu.Lock()
	if s.baselines == nil || len(s.baselines) > 64 {
		s.baselines = map[baselineKey][]baselineRow{}
	}
	s.baselines[key] = rows
	s.mu.Unlock()
	return rows, nil
}

// latencyBaseline reads every user's latency before the rollout from the
// request log, which Envoy's access log fills for every request, measured
// or not: only a sample of users is timed while no rollout runs, but every
// user's usual latency is known. Nil when the table does not exist.
func (s *Source) latencyBaseline(ctx context.Context, w analyzer.Window, filter windowSQL) (map[uint64][2]float64, error) {
	q := fmt.Sprintf(`SELECT bucket, count(), sum(log(duration_ms))
FROM %s.%s
WHERE %s AND forced = 0 AND cohort = '' AND gateway = 0 AND status = 200 AND duration_ms > 0 AND version = ?
GROUP BY bucket`, s.db, wire.TableRequestLog, filter.key)
	res, err := s.conn.Query(ctx, q, w.Model, w.Stable, w.Canary, w.Stable)
	if err != nil {
		if isUnknownTable(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("chsource: query latency baseline: %w", err)
	}
	defer res.Close()
	out := map[uint64][2]float64{}
	var (
		bucket, n uint64
		sum       float64
	)
	for res.Next() {
		if err := res.Scan(&bucket, &n, &sum); err != nil {
			return nil, fmt.Errorf("chsource: read latency baseline: %w", err)
		}
		out[bucket] = [2]float64{float64(n), sum}
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("chsource: read latency baseline: %w", err)
	}
	return out, nil
}

// mergeLatency replaces every user's latency baseline with the request
// log's, adding the users only the log has seen.
func mergeLatency(rows []baselineRow, latency map[uint64][2]float64) []baselineRow {
	for i := range rows {
		l := latency[rows[i].bucket]
		rows[i].n[0], rows[i].s[0] = l[0], l[1]
		delete(latency, rows[i].bucket)
	}
	for bucket, l := range latency {
		rows = append(rows, baselineRow{bucket: bucket, n: [3]float64{l[0], 0, 0}, s: [3]float64{l[1], 0, 0}})
	}
	return rows
}

// Watermark is a cheap fingerprint of the rollout's rows, requests and
// quality scores: it changes when a row arrives.
func (s *Source) Watermark(ctx context.Context, w analyzer.Window) (string, error) {
	if w.RolloutFrom.IsZero() || w.RolloutFrom.After(w.From) {
		w.RolloutFrom = w.From
	}
	if err := s.check(w); err != nil {
		return "", err
	}
	filter := windowFilter(w.RolloutFrom, w.To)
	var n, last, scores uint64
	row := s.conn.QueryRow(ctx, fmt.Sprintf("SELECT count(), max(ts_ms) FROM %s.%s WHERE %s", s.db, wire.TableRequests, filter.key), w.Model, w.Stable, w.Canary)
	if err := row.Scan(&n, &last); err != nil {
		return "", fmt.Errorf("chsource: watermark: %w", err)
	}
	row = s.conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE %s", s.db, quality.Table, filter.key), w.Model, w.Stable, w.Canary)
	if err := row.Scan(&scores); err != nil && !isUnknownTable(err) {
		return "", fmt.Errorf("chsource: watermark: %w", err)
	}
	return fmt.Sprintf("%d/%d/%d", n, last, scores), nil
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
// the (model, version, ts) key. The upper ts bound is exclusive at the
// next whole second, so it holds for a DateTime ts (seconds, 18.16) and a
// DateTime64(3) ts (milliseconds, modern servers) alike. The three
// placeholders of each are the model and the two versions.
type windowSQL struct{ key, all string }

func windowFilter(from, to time.Time) windowSQL {
	fromMs, toMs := from.UnixMilli(), to.UnixMilli() // [fromMs, toMs)
	last := toMs - 1
	key := fmt.Sprintf(`date >= %s AND date <= %s
  AND model = ? AND version IN (?, ?)
  AND ts >= toDateTime(%d) AND ts < toDateTime(%d)
  AND ts_ms >= %d AND ts_ms < %d`,
		dateLit(time.UnixMilli(fromMs)), dateLit(time.UnixMilli(last)),
		floorDiv(fromMs, 1000), floorDiv(last, 1000)+1, fromMs, toMs)
	return windowSQL{key: key, all: key + "\n  AND forced = 0 AND category = '' AND cohort = ''"}
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

// readRequests streams the rollout's requests in time order, one narrow
// row each with its quality score, into t, and returns how many it read.
// Rows of plain numbers scan without reflection; arrays built by
// groupArray scan element by element through reflection in clickhouse-go
// and were ten times slower. Without a quality table it reads the requests
// alone. The join is GLOBAL: when the requests table is a Distributed
// table over a cluster, the scores (on this server only) are read once
// here and sent to every shard.
func (s *Source) readRequests(ctx context.Context, w analyzer.Window, t *analyzer.Tally) (int, error) {
	filter := windowFilter(w.RolloutFrom, w.To)
	cols := fmt.Sprintf(`ts_ms,
    bucket,
    version = ?,
    multiIf(failure = '', %d, failure = '%s', %d, %d),
    refusal,
    streamed,
    total_ms,
    ttft_ms,
    itl_mean_ms,
    cost_usd,
    completion_tokens,
    sample_rate`, analyzer.OutcomeSuccess, wire.FailureClientCancel, analyzer.OutcomeCancelled, analyzer.OutcomeFailure)
	withScores := fmt.Sprintf(`SELECT %[1]s, judged, score
FROM %[2]s.%[3]s
GLOBAL ANY LEFT JOIN (
    SELECT request_id, toUInt8(1) AS judged, avg(score) AS score
    FROM (
        SELECT request_id, source, any(score) AS score
        FROM %[2]s.%[4]s
        WHERE %[5]s AND forced = 0
        GROUP BY request_id, source
    )
    GROUP BY request_id
) AS scores USING request_id
WHERE %[6]s
ORDER BY ts_ms`, cols, s.db, wire.TableRequests, quality.Table, filter.key, filter.all)
	args := []any{w.Canary, w.Model, w.Stable, w.Canary, w.Model, w.Stable, w.Canary}
	rows, err := s.conn.Query(ctx, withScores, args...)
	scored := true
	if err != nil && isUnknownTable(err) {
		scored = false
		rows, err = s.conn.Query(ctx, fmt.Sprintf("SELECT %s, toUInt8(0), toFloat64(0)\nFROM %s.%s\nWHERE %s\nORDER BY ts_ms", cols, s.db, wire.TableRequests, filter.all),
			w.Canary, w.Model, w.Stable, w.Canary)
	}
	if err != nil {
		return 0, fmt.Errorf("chsource: query requests: %w", err)
	}
	defer rows.Close()
	var (
		tsMs, bucket                 uint64
		canary, outcome, refusal     uint8
		streamed, judged             uint8
		totalMs, ttftMs, itlMs, cost float64
		tokens                       uint32
		rate, score                  float64
	)
	dest := []any{&tsMs, &bucket, &canary, &outcome, &refusal, &streamed, &totalMs, &ttftMs, &itlMs, &cost, &tokens, &rate, &judged, &score}
	n := 0
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return n, fmt.Errorf("chsource: read requests: %w", err)
		}
		n++
		r := analyzer.Request{At: time.UnixMilli(int64(tsMs)), User: bucket, Canary: canary == 1, Outcome: analyzer.Outcome(outcome),
			Refusal: refusal == 1, Streamed: streamed == 1, LatencyMs: totalMs, CostUSD: cost, Tokens: float64(tokens),
			Judged: scored && judged == 1, Quality: score, SampleRate: rate}
		if r.Streamed {
			r.TTFTMs = ttftMs
			// One token has no gap; extproc stores 0 then, and its
			// metrics skip it the same way.
			if tokens > 1 && itlMs > 0 {
				r.ITLMs = itlMs
			}
		}
		t.Add(r)
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("chsource: read requests: %w", err)
	}
	return n, nil
}
