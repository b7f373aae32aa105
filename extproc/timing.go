package extproc

import (
	"errors"
	"slices"
	"time"

	"gonum.org/v1/gonum/stat"
)

// ErrNoTokens reports a response in which no content-bearing event arrived:
// there is no time to first token and no inter-token latency.
var ErrNoTokens = errors.New("no content tokens")

// TokenTiming is the latency profile of one streamed response.
type TokenTiming struct {
	TTFT    time.Duration // request start → first content-bearing event
	ITLMean time.Duration // gaps between consecutive content-bearing events
	ITLP50  time.Duration
	ITLP95  time.Duration
	ITLMax  time.Duration
	Gaps    int // number of inter-token gaps (tokens − 1)
}

// MeasureTokens turns the arrival offsets of content-bearing events
// (measured from the request's start, in arrival order) into TTFT and
// inter-token latency statistics. Percentiles are empirical (the smallest
// observed gap at or above the fraction), so they are always gaps that
// really happened. With one token the ITL fields are zero; with none it
// returns ErrNoTokens.
func MeasureTokens(arrivals []time.Duration) (TokenTiming, error) {
	if len(arrivals) == 0 {
		return TokenTiming{}, ErrNoTokens
	}
	t := TokenTiming{TTFT: arrivals[0], Gaps: len(arrivals) - 1}
	if t.Gaps == 0 {
		return t, nil
	}
	gaps := make([]float64, t.Gaps)
	var sum float64
	for i := 1; i < len(arrivals); i++ {
		g := float64(arrivals[i] - arrivals[i-1])
		if g < 0 { // arrivals are recorded in order; a clock step must not yield negative gaps
			g = 0
		}
		gaps[i-1] = g
		sum += g
	}
	slices.Sort(gaps)
	t.ITLMean = time.Duration(sum / float64(len(gaps)))
	t.ITLP50 = time.Duration(stat.Quantile(0.50, stat.Empirical, gaps, nil))
	t.ITLP95 = time.Duration(stat.Quantile(0.95, stat.Empirical, gaps, nil))
	t.ITLMax = time.Duration(gaps[len(gaps)-1])
	return t, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
