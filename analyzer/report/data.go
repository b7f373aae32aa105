// Package report writes a rollout report people can read: one
// self-contained HTML page (inline CSS and SVG charts, no script, nothing
// fetched) with the plan and why it was chosen, each stage's window, the
// canary's weight over time, every metric's effect and always-valid
// interval at each look, the latency and time-to-first-token
// distributions of both versions, every decision with its sentence, and
// the canary's worst answers as the quality judge graded them, redacted.
//
// Data gathers what a report shows (Load reads it from the rollout and
// ClickHouse); Write renders any number of rollouts' Data as one page and
// is a pure function of it.
package report

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// Data is everything one rollout's section of a report shows.
type Data struct {
	Rollout *analyzer.Rollout
	// Now is when the data was read: a running rollout's last window
	// ends here.
	Now time.Time
	// Looks are the decision log's numbers per metric at every look
	// (chsource.LooksTable), by metric, oldest first.
	Looks []chsource.Look
	// Latency and TTFT are each version's distribution of total response
	// time and time to first token over the rollout, successful requests
	// only (TTFT: streamed ones), forced, category- and cohort-routed
	// ones left out as the analyzer leaves them out.
	Latency, TTFT map[string]Distribution
	// Cohorts is the traffic a cohort rule routed (opt-in users to the
	// canary, excluded ones to stable) during the rollout, per cohort and
	// version: not part of the comparison, reported on its own.
	Cohorts []CohortTraffic
	// Preflight is the pre-flight stage's forced requests per version
	// (request ids preflight:<rollout>:…), apart from every user
	// statistic; nil for a rollout without one.
	Preflight []PreflightTraffic
	// Worst are the canary's answers the judge scored lowest, redacted.
	Worst []Answer
	// Missing says what could not be read, in sentences; the report shows
	// them instead of leaving a section silently empty.
	Missing []string
}

// Distribution is a version's distribution by its quantiles.
type Distribution struct {
	Count  uint64
	Levels []float64 // in (0, 1)
	Values []float64 // milliseconds, one per level
}

// PreflightTraffic is one version's pre-flight requests as the telemetry
// recorded them. Failures are the version's: a stream the sender closed
// first (client_cancel) is not one.
type PreflightTraffic struct {
	Version                 string
	Requests, Failures      uint64
	LatencyP50Ms, TTFTP50Ms float64
}

// CohortTraffic is one cohort's requests served by one version.
type CohortTraffic struct {
	Cohort   string // wire.AssignedOptIn or wire.AssignedExcluded
	Version  string
	Requests uint64
	// Users counts distinct buckets (identities).
	Users uint64
	// Failures are failed requests (a client's cancellation is not one).
	Failures uint64
	// LatencyP50Ms and TTFTP50Ms are the median total time of successful
	// requests and the median time to first token of streamed ones (0
	// when there is none).
	LatencyP50Ms, TTFTP50Ms float64
}

// Answer is one graded answer.
type Answer struct {
	RequestID  string
	At         time.Time
	Score      float64
	Prompt     string
	Completion string
}

// Levels are the quantiles a distribution is read at: every percent, and
// the tail closer.
var Levels = func() []float64 {
	var l []float64
	for i := 1; i <= 99; i++ {
		l = append(l, float64(i)/100)
	}
	return append(l, 0.995, 0.999)
}()

// WorstAnswers is how many of the canary's answers a report shows.
const WorstAnswers = 5

// MaxAnswerChars caps each prompt and completion shown.
const MaxAnswerChars = 600

// End is when the rollout's data ends: its last update once finished,
// else now.
func (d Data) End() time.Time {
	if d.Rollout.Status.Active() {
		return d.Now
	}
	return d.Rollout.Updated
}

// Load reads a rollout's report data from ClickHouse (database ""
// means wire.Database). A part that cannot be read (a table that does
// not exist yet, a failed query) is named in Missing and the rest is
// still returned; only an invalid database name fails.
func Load(ctx context.Context, conn driver.Conn, database string, ro *analyzer.Rollout, now time.Time) (Data, error) {
	if database == "" {
		database = wire.Database
	}
	if !identRe.MatchString(database) {
		return Data{}, fmt.Errorf("report: database %q is not a plain identifier", database)
	}
	d := Data{Rollout: ro, Now: now.UTC()}
	var err error
	if d.Looks, err = chsource.ReadLooks(ctx, conn, database, ro.ID); err != nil {
		d.Missing = append(d.Missing, fmt.Sprintf("the metrics over time could not be read (%v)", err))
	}
	from, to := ro.Created, d.End()
	if d.Latency, err = distributions(ctx, conn, database, ro, "total_ms", "", from, to); err != nil {
		d.Missing = append(d.Missing, fmt.Sprintf("the latency distributions could not be read (%v)", err))
	}
	if d.TTFT, err = distributions(ctx, conn, database, ro, "ttft_ms", "AND streamed = 1", from, to); err != nil {
		d.Missing = append(d.Missing, fmt.Sprintf("the time-to-first-token distributions could not be read (%v)", err))
	}
	if d.Cohorts, err = cohortTraffic(ctx, conn, database, ro, from, to); err != nil {
		d.Missing = append(d.Missing, fmt.Sprintf("the cohorts' traffic could not be read (%v)", err))
	}
	if ro.Preflight != nil {
		if d.Preflight, err = preflightTraffic(ctx, conn, database, ro, from, to); err != nil {
			d.Missing = append(d.Missing, fmt.Sprintf("the pre-flight's requests could not be read (%v)", err))
		}
	}
	if d.Worst, err = worstAnswers(ctx, conn, database, ro, from, to); err != nil {
		d.Missing = append(d.Missing, fmt.Sprintf("the judge's grades could not be read (%v)", err))
	}
	return d, nil
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func dateLit(t time.Time) string { return "toDate('" + t.UTC().Format("2006-01-02") + "')" }

func levelList() string {
	parts := make([]string, len(Levels))
	for i, l := range Levels {
		parts[i] = fmt.Sprintf("%g", l)
	}
	return strings.Join(parts, ", ")
}

// distributions reads each version's quantiles of column over [from, to).
func distributions(ctx context.Context, conn driver.Conn, db string, ro *analyzer.Rollout, column, extra string, from, to time.Time) (map[string]Distribution, error) {
	q := fmt.Sprintf(`SELECT version, count(), quantiles(%s)(%s)
FROM %s.%s
WHERE date >= %s AND date <= %s AND model = ? AND version IN (?, ?)
  AND ts_ms >= ? AND ts_ms < ? AND forced = 0 AND category = '' AND cohort = '' AND failure = '' %s
GROUP BY version ORDER BY version`,
		levelList(), column, db, wire.TableRequests, dateLit(from), dateLit(to), extra)
	rows, err := conn.Query(ctx, q, ro.Model, ro.Stable, ro.Canary, uint64(from.UnixMilli()), uint64(to.UnixMilli()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Distribution{}
	for rows.Next() {
		var v string
		var n uint64
		var qs []float64
		if err := rows.Scan(&v, &n, &qs); err != nil {
			return nil, err
		}
		out[v] = Distribution{Count: n, Levels: Levels, Values: qs}
	}
	return out, rows.Err()
}

// cohortTraffic reads the cohort-routed requests of [from, to) per cohort
// and version. Cohort routes measure every request (rate 1), so the
// counts are the requests themselves.
func cohortTraffic(ctx context.Context, conn driver.Conn, db string, ro *analyzer.Rollout, from, to time.Time) ([]CohortTraffic, error) {
	q := fmt.Sprintf(`SELECT cohort, version, count(), uniqExact(bucket),
    countIf(failure != '' AND failure != '%s'),
    quantileIf(0.5)(total_ms, failure = ''), quantileIf(0.5)(ttft_ms, failure = '' AND streamed = 1)
FROM %s.%s
WHERE date >= %s AND date <= %s AND model = ? AND version IN (?, ?)
  AND ts_ms >= ? AND ts_ms < ? AND forced = 0 AND cohort != ''
GROUP BY cohort, version ORDER BY cohort, version`,
		wire.FailureClientCancel, db, wire.TableRequests, dateLit(from), dateLit(to))
	rows, err := conn.Query(ctx, q, ro.Model, ro.Stable, ro.Canary, uint64(from.UnixMilli()), uint64(to.UnixMilli()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []CohortTraffic
	for rows.Next() {
		var c CohortTraffic
		if err := rows.Scan(&c.Cohort, &c.Version, &c.Requests, &c.Users, &c.Failures, &c.LatencyP50Ms, &c.TTFTP50Ms); err != nil {
			return nil, err
		}
		zeroNaN(&c.LatencyP50Ms, &c.TTFTP50Ms)
		out = append(out, c)
	}
	return out, rows.Err()
}

// preflightTraffic reads the rollout's pre-flight requests of [from, to]
// per version: forced, with the rollout's pre-flight request id prefix.
func preflightTraffic(ctx context.Context, conn driver.Conn, db string, ro *analyzer.Rollout, from, to time.Time) ([]PreflightTraffic, error) {
	q := fmt.Sprintf(`SELECT version, count(), countIf(failure != '' AND failure != '%s'),
    quantileIf(0.5)(total_ms, failure = ''), quantileIf(0.5)(ttft_ms, failure = '' AND streamed = 1)
FROM %s.%s
WHERE date >= %s AND date <= %s AND model = ? AND forced = 1 AND startsWith(request_id, ?)
GROUP BY version ORDER BY version`, wire.FailureClientCancel, db, wire.TableRequests, dateLit(from), dateLit(to))
	rows, err := conn.Query(ctx, q, ro.Model, analyzer.PreflightIDPrefix+ro.ID+":")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PreflightTraffic
	for rows.Next() {
		var p PreflightTraffic
		if err := rows.Scan(&p.Version, &p.Requests, &p.Failures, &p.LatencyP50Ms, &p.TTFTP50Ms); err != nil {
			return nil, err
		}
		zeroNaN(&p.LatencyP50Ms, &p.TTFTP50Ms)
		out = append(out, p)
	}
	return out, rows.Err()
}

// zeroNaN sets the medians of no successful request (NaN) to 0.
func zeroNaN(xs ...*float64) {
	for _, x := range xs {
		if *x != *x {
			*x = 0
		}
	}
}

// worstAnswers reads the canary's lowest judge scores of [from, to) with
// their captured text.
func worstAnswers(ctx context.Context, conn driver.Conn, db string, ro *analyzer.Rollout, from, to time.Time) ([]Answer, error) {
	q := fmt.Sprintf(`SELECT request_id, ts_ms, score, prompt, completion
FROM %[1]s.%[2]s
ANY INNER JOIN
(
    SELECT request_id, prompt, completion FROM %[1]s.%[3]s
    WHERE date >= %[4]s AND date <= %[5]s AND model = ? AND version = ?
) AS answers USING request_id
WHERE date >= %[4]s AND date <= %[5]s AND model = ? AND version = ? AND source = ? AND forced = 0
  AND ts_ms >= ? AND ts_ms < ?
ORDER BY score ASC, ts_ms ASC, request_id ASC
LIMIT %[6]d`, db, quality.Table, wire.TableCaptures, dateLit(from), dateLit(to), WorstAnswers)
	rows, err := conn.Query(ctx, q, ro.Model, ro.Canary, ro.Model, ro.Canary, quality.SourceJudge, uint64(from.UnixMilli()), uint64(to.UnixMilli()))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Answer
	for rows.Next() {
		var a Answer
		var ms uint64
		if err := rows.Scan(&a.RequestID, &ms, &a.Score, &a.Prompt, &a.Completion); err != nil {
			return nil, err
		}
		a.At = time.UnixMilli(int64(ms)).UTC()
		a.Prompt, a.Completion = Redact(a.Prompt), Redact(a.Completion)
		out = append(out, a)
	}
	return out, rows.Err()
}

// Redact prepares captured text for a report: the telemetry service's
// redaction again (e-mail addresses, long digit runs; captures are
// redacted when taken, this covers text captured under another rule),
// then cut to MaxAnswerChars.
func Redact(s string) string {
	s = extproc.DefaultRedact(s)
	if utf8.RuneCountInString(s) <= MaxAnswerChars {
		return s
	}
	r := []rune(s)
	return string(r[:MaxAnswerChars-1]) + "…"
}

// ErrNoRollouts is returned by Write without any rollout.
var ErrNoRollouts = errors.New("report: no rollout to report")

// metricsOf returns the looks grouped by metric, in the policy's
// tolerance order (sorted names).
func metricsOf(looks []chsource.Look) (names []analyzer.Metric, by map[analyzer.Metric][]chsource.Look) {
	by = map[analyzer.Metric][]chsource.Look{}
	for _, l := range looks {
		if _, ok := by[l.Metric]; !ok {
			names = append(names, l.Metric)
		}
		by[l.Metric] = append(by[l.Metric], l)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] < names[j] })
	return names, by
}
