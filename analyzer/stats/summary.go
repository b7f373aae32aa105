package stats

import "math"

// Summary holds the sufficient statistics of one group for means: the count,
// the mean and the sum of squared deviations from the mean. Summaries merge
// exactly (Chan et al.'s parallel update), so a runner can keep one per arm
// and fold in each interval's data, or build them from SQL aggregates.
type Summary struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	M2   float64 `json:"m2"`
}

// Summarize returns the Summary of xs (Welford's update, numerically stable).
func Summarize(xs []float64) Summary {
	var s Summary
	for _, x := range xs {
		s.N++
		d := x - s.Mean
		s.Mean += d / float64(s.N)
		s.M2 += d * (x - s.Mean)
	}
	return s
}

// SummaryFromSums builds a Summary from count, sum and sum of squares, the
// aggregates a database returns. It loses precision when the mean is large
// relative to the spread; prefer Summarize when the values are at hand.
func SummaryFromSums(n int, sum, sumSq float64) Summary {
	if n <= 0 {
		return Summary{}
	}
	mean := sum / float64(n)
	return Summary{N: n, Mean: mean, M2: math.Max(0, sumSq-sum*mean)}
}

// Merge returns the Summary of the union of both groups.
func (s Summary) Merge(o Summary) Summary {
	if s.N == 0 {
		return o
	}
	if o.N == 0 {
		return s
	}
	n := s.N + o.N
	d := o.Mean - s.Mean
	return Summary{
		N:    n,
		Mean: s.Mean + d*float64(o.N)/float64(n),
		M2:   s.M2 + o.M2 + d*d*float64(s.N)*float64(o.N)/float64(n),
	}
}

// Variance returns the sample variance (denominator N-1), NaN below 2 values.
func (s Summary) Variance() float64 {
	if s.N < 2 {
		return math.NaN()
	}
	return s.M2 / float64(s.N-1)
}
