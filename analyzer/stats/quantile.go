package stats

import (
	"math"
	"slices"

	"gonum.org/v1/gonum/stat/distuv"
)

// QuantileRatioResult compares one quantile of canary and stable.
type QuantileRatioResult struct {
	// P is the probability level, e.g. 0.99 for p99.
	P float64
	// Canary and Stable are the sample quantiles (linear interpolation
	// between order statistics: R's type 7, NumPy's default).
	Canary, Stable float64
	// Ratio is Canary / Stable.
	Ratio float64
	// CanaryCI and StableCI are the order-statistic intervals per group,
	// each at level 1 - alpha/2.
	CanaryCI, StableCI Interval
	// CI is the interval for the ratio of the population quantiles:
	// [CanaryCI.Lo / StableCI.Hi, CanaryCI.Hi / StableCI.Lo].
	CI Interval
}

// QuantileRatios compares the quantiles ps (each in (0,1)) of canary and
// stable as ratios canary/stable with confidence intervals at level conf.
//
// Method: distribution-free order-statistic intervals per group. For a group
// of n values and level 1-a, the interval is [X(l), X(u)] with
// l = the a/2 quantile of Binomial(n, p) and u = its 1-a/2 quantile plus one
// (1-based order statistics), which covers the population quantile with
// probability >= 1-a for any continuous distribution. Each group gets
// a = alpha/2 (Bonferroni), so both cover together with probability
// >= 1-alpha and the ratio interval built from their ends is conservative.
// Assumptions: independent observations, strictly positive values (latencies,
// costs). ErrTooFewSamples when a group is too small for its interval (p99
// at 95% needs a few hundred values); ErrNonPositive when a value is <= 0.
// Each sample is sorted once; cost O(n log n).
func QuantileRatios(canary, stable []float64, ps []float64, conf float64) ([]QuantileRatioResult, error) {
	if len(canary) == 0 || len(stable) == 0 {
		return nil, errorf(ErrNoSamples, "quantile ratio: %d canary, %d stable", len(canary), len(stable))
	}
	if err := checkAlpha(1 - conf); err != nil {
		return nil, err
	}
	if err := checkFinite(canary, stable); err != nil {
		return nil, err
	}
	c := slices.Clone(canary)
	s := slices.Clone(stable)
	slices.Sort(c)
	slices.Sort(s)
	if c[0] <= 0 || s[0] <= 0 {
		return nil, errorf(ErrNonPositive, "quantile ratio needs positive values, minimum canary %v, stable %v", c[0], s[0])
	}
	groupConf := 1 - (1-conf)/2
	out := make([]QuantileRatioResult, 0, len(ps))
	for _, p := range ps {
		if !(p > 0 && p < 1) {
			return nil, errorf(ErrInvalidParameter, "quantile level %v outside (0,1)", p)
		}
		cci, err := QuantileCI(c, p, groupConf)
		if err != nil {
			return nil, err
		}
		sci, err := QuantileCI(s, p, groupConf)
		if err != nil {
			return nil, err
		}
		r := QuantileRatioResult{
			P:        p,
			Canary:   QuantileSorted(c, p),
			Stable:   QuantileSorted(s, p),
			CanaryCI: cci,
			StableCI: sci,
			CI:       Interval{Lo: cci.Lo / sci.Hi, Hi: cci.Hi / sci.Lo},
		}
		r.Ratio = r.Canary / r.Stable
		out = append(out, r)
	}
	return out, nil
}

// QuantileSorted returns the p-quantile of ascending data by linear
// interpolation between order statistics (R's type 7, NumPy's default).
func QuantileSorted(sorted []float64, p float64) float64 {
	h := float64(len(sorted)-1) * p
	lo := math.Floor(h)
	i := int(lo)
	if i+1 >= len(sorted) {
		return sorted[len(sorted)-1]
	}
	return sorted[i] + (h-lo)*(sorted[i+1]-sorted[i])
}

// QuantileCI returns the distribution-free interval [X(l), X(u)] for the
// population p-quantile of ascending data at level conf, with l and u from
// Binomial(n, p) as documented on QuantileRatios. ErrTooFewSamples when l < 1
// or u > n, that is when no pair of order statistics reaches the level.
func QuantileCI(sorted []float64, p, conf float64) (Interval, error) {
	n := len(sorted)
	if n == 0 {
		return Interval{}, errorf(ErrNoSamples, "quantile interval")
	}
	if err := checkAlpha(1 - conf); err != nil {
		return Interval{}, err
	}
	a := 1 - conf
	l := binomialQuantile(n, p, a/2)
	u := binomialQuantile(n, p, 1-a/2) + 1
	if l < 1 || u > n {
		return Interval{}, errorf(ErrTooFewSamples, "p%g at level %g with %d values", 100*p, conf, n)
	}
	return Interval{Lo: sorted[l-1], Hi: sorted[u-1]}, nil
}

// binomialQuantile returns the smallest k in [0, n] with P(B <= k) >= q for
// B ~ Binomial(n, p), like SciPy's binom.ppf.
func binomialQuantile(n int, p, q float64) int {
	b := distuv.Binomial{N: float64(n), P: p}
	lo, hi := 0, n
	for lo < hi {
		mid := (lo + hi) / 2
		if b.CDF(float64(mid)) >= q {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}
