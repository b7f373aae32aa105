package chsource

import (
	"context"
	"fmt"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/wire"
)

var _ analyzer.RateObserver = (*Source)(nil)

// RequestRate is the model's requests per second over the last period
// `over`, every version and cohort together, from the request log (every
// request through Envoy, measured or not; the gateway's own answers left
// out). When the log begins inside the period the rate is over the time it
// covers. 0 when the model had no request.
func (s *Source) RequestRate(ctx context.Context, model string, over time.Duration) (float64, error) {
	if !identRe.MatchString(s.db) {
		return 0, fmt.Errorf("chsource: database %q is not a plain identifier", s.db)
	}
	now := time.Now()
	from := now.Add(-over)
	var n, first uint64
	row := s.conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(), min(ts_ms) FROM %s.%s
WHERE date >= %s AND model = ? AND ts_ms >= ? AND gateway = 0`, s.db, wire.TableRequestLog, dateLit(from)),
		model, uint64(from.UnixMilli()))
	if err := row.Scan(&n, &first); err != nil {
		return 0, fmt.Errorf("chsource: request rate: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	span := now.Sub(time.UnixMilli(int64(first)))
	if span < time.Second {
		span = time.Second
	}
	return float64(n) / span.Seconds(), nil
}
