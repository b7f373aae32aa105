package chsource

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var _ analyzer.ShadowSource = (*Source)(nil)

// shadowWindow selects rows of one model's version in [from, to) (on
// ts_ms, with the partitions and seconds it spans).
func shadowWindow(from, to time.Time) string {
	fromMs, toMs := from.UnixMilli(), to.UnixMilli()
	last := toMs - 1
	// ts's bound is exclusive at the next second: on a modern server ts
	// has milliseconds, and <= a whole second would leave the last part
	// of a second out.
	return fmt.Sprintf(`date >= %s AND date <= %s AND ts >= toDateTime(%d) AND ts < toDateTime(%d) AND ts_ms >= %d AND ts_ms < %d`,
		dateLit(time.UnixMilli(fromMs)), dateLit(time.UnixMilli(last)), floorDiv(fromMs, 1000), floorDiv(last, 1000)+1, fromMs, toMs)
}

// ShadowPairs reads a shadow stage's pairs: the canary's mirrored answers
// (wire.TableShadow) matched by request id with stable's successful,
// unforced answers to the same user requests (wire.TableRequests), their
// paired latency ratios, and the shadow judge's scores of both answers
// (quality.ShadowTable). The user's request row and its mirror start
// within milliseconds of each other; both are selected on their own time.
// The join is GLOBAL: on a cluster both tables are Distributed, and the
// stable answers are read once and sent to the shards holding the mirrors.
func (s *Source) ShadowPairs(ctx context.Context, w analyzer.ShadowWindow) (analyzer.ShadowPairs, error) {
	var p analyzer.ShadowPairs
	win := shadowWindow(w.From, w.To)
	both := "stable_ok = 1 AND failure = '' AND total_ms > 0 AND stable_total > 0"
	q := fmt.Sprintf(`SELECT count(), countIf(stable_ok = 1), countIf(stable_ok = 1 AND failure != ''), countIf(%[5]s),
    avgIf(log(total_ms / stable_total), %[5]s), varSampIf(log(total_ms / stable_total), %[5]s)
FROM %[1]s.%[2]s
GLOBAL ANY LEFT JOIN (
    SELECT request_id, toUInt8(1) AS stable_ok, total_ms AS stable_total
    FROM %[1]s.%[3]s
    WHERE %[4]s AND model = ? AND version = ? AND failure = '' AND forced = 0
) AS stable USING request_id
WHERE %[4]s AND model = ? AND version = ?`, s.db, wire.TableShadow, wire.TableRequests, win, both)
	var mirrored, paired, failed, latN uint64
	var mean, variance float64
	err := s.conn.QueryRow(ctx, q, w.Model, w.Stable, w.Model, w.Canary).Scan(&mirrored, &paired, &failed, &latN, &mean, &variance)
	if err != nil {
		if isUnknownTable(err) {
			return p, nil
		}
		return p, fmt.Errorf("chsource: shadow pairs: %w", err)
	}
	p.Mirrored, p.Paired, p.CanaryFailed, p.LatencyN = int(mirrored), int(paired), int(failed), int(latN)
	p.LogRatioMean, p.LogRatioVar = finiteOr0(mean), finiteOr0(variance)

	q = fmt.Sprintf(`SELECT countIf(d < 0), countIf(d > 0), countIf(d = 0), count(), avg(d), varSamp(d)
FROM (
    SELECT request_id, anyIf(score, version = ?) - anyIf(score, version = ?) AS d
    FROM %[1]s.%[2]s
    WHERE %[3]s AND model = ? AND version IN (?, ?)
    GROUP BY request_id
    HAVING countIf(version = ?) > 0 AND countIf(version = ?) > 0
)`, s.db, quality.ShadowTable, win)
	var wins, losses, ties, n uint64
	err = s.conn.QueryRow(ctx, q, w.Stable, w.Canary, w.Model, w.Stable, w.Canary, w.Stable, w.Canary).Scan(&wins, &losses, &ties, &n, &mean, &variance)
	if err != nil {
		if isUnknownTable(err) {
			return p, nil
		}
		return p, fmt.Errorf("chsource: shadow scores: %w", err)
	}
	p.Wins, p.Losses, p.Ties, p.ScoreN = int(wins), int(losses), int(ties), int(n)
	p.ScoreDiffMean, p.ScoreDiffVar = finiteOr0(mean), finiteOr0(variance)
	return p, nil
}

// finiteOr0 turns ClickHouse's nan (an average of nothing) and inf into 0.
func finiteOr0(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0
	}
	return x
}
