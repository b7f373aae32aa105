package stats

import (
	"math"

	"gonum.org/v1/gonum/stat/distuv"
)

// Rates compare event rates (errors, refusals, bad answers) between the
// canary and the stable version. Counts are events out of trials per group.

func checkCounts(events, n int) error {
	if n == 0 {
		return errorf(ErrNoSamples, "0 trials")
	}
	if n < 0 || events < 0 || events > n {
		return errorf(ErrInvalidParameter, "%d events out of %d trials", events, n)
	}
	return nil
}

// ZTestResult is the outcome of a two-proportion z-test.
type ZTestResult struct {
	// Diff is the canary rate minus the stable rate.
	Diff float64
	// Z is Diff over its pooled standard error.
	Z float64
	// PValue is the p-value for the requested alternative.
	PValue float64
}

// TwoProportionZTest tests equality of two rates with the pooled-variance
// z statistic, as statsmodels' proportions_ztest (prop_var=False). It is a
// large-sample approximation; prefer FisherExact when events are few. When
// the pooled rate is 0 or 1 both groups agree completely and PValue is 1.
func TwoProportionZTest(canaryEvents, canaryN, stableEvents, stableN int, alt Alternative) (ZTestResult, error) {
	if err := checkCounts(canaryEvents, canaryN); err != nil {
		return ZTestResult{}, err
	}
	if err := checkCounts(stableEvents, stableN); err != nil {
		return ZTestResult{}, err
	}
	if err := checkAlternative(alt); err != nil {
		return ZTestResult{}, err
	}
	n1, n2 := float64(canaryN), float64(stableN)
	p1, p2 := float64(canaryEvents)/n1, float64(stableEvents)/n2
	p := float64(canaryEvents+stableEvents) / (n1 + n2)
	res := ZTestResult{Diff: p1 - p2, PValue: 1}
	se := math.Sqrt(p * (1 - p) * (1/n1 + 1/n2))
	if se == 0 {
		return res, nil
	}
	res.Z = res.Diff / se
	res.PValue = normalPValue(res.Z, alt)
	return res, nil
}

// normalPValue is the p-value of a standard normal statistic z.
func normalPValue(z float64, alt Alternative) float64 {
	switch alt {
	case Greater:
		return distuv.UnitNormal.Survival(z)
	case Less:
		return distuv.UnitNormal.CDF(z)
	}
	return clamp01(2 * distuv.UnitNormal.Survival(math.Abs(z)))
}

// FisherResult is the outcome of Fisher's exact test.
type FisherResult struct {
	// OddsRatio is the sample odds ratio (a*d)/(b*c) of the table
	// [[canaryEvents, canaryN-canaryEvents], [stableEvents, stableN-stableEvents]],
	// as SciPy's fisher_exact reports it (not R's conditional MLE).
	OddsRatio float64
	// PValue is the p-value for the requested alternative.
	PValue float64
}

// FisherExact runs Fisher's exact test on the 2x2 table of events and
// non-events per group, conditioning on the margins (hypergeometric null).
// Greater means the canary's event rate is higher. The two-sided p-value sums
// the probabilities of all tables no more likely than the observed one, with
// the relative tolerance 1e-7 that R's fisher.test and SciPy use.
func FisherExact(canaryEvents, canaryN, stableEvents, stableN int, alt Alternative) (FisherResult, error) {
	if err := checkCounts(canaryEvents, canaryN); err != nil {
		return FisherResult{}, err
	}
	if err := checkCounts(stableEvents, stableN); err != nil {
		return FisherResult{}, err
	}
	if err := checkAlternative(alt); err != nil {
		return FisherResult{}, err
	}
	a, b := canaryEvents, canaryN-canaryEvents
	c, d := stableEvents, stableN-stableEvents
	var res FisherResult
	switch {
	case b*c != 0:
		res.OddsRatio = float64(a) * float64(d) / (float64(b) * float64(c))
	case a*d != 0:
		res.OddsRatio = math.Inf(1)
	default:
		res.OddsRatio = math.NaN()
	}

	// X = top-left cell given margins: row total r, column total k, grand total N.
	r, k, N := canaryN, a+c, canaryN+stableN
	lo, hi := max(0, r+k-N), min(r, k)
	logC := func(n, m int) float64 { return lchoose(n, m) }
	logDen := logC(N, r)
	logPMF := func(x int) float64 { return logC(k, x) + logC(N-k, r-x) - logDen }

	sum := func(from, to int, keep func(lp float64) bool) float64 {
		s := 0.0
		for x := from; x <= to; x++ {
			if lp := logPMF(x); keep(lp) {
				s += math.Exp(lp)
			}
		}
		return s
	}
	all := func(float64) bool { return true }
	switch alt {
	case Greater:
		res.PValue = sum(a, hi, all)
	case Less:
		res.PValue = sum(lo, a, all)
	default:
		limit := logPMF(a) + math.Log1p(1e-7)
		res.PValue = sum(lo, hi, func(lp float64) bool { return lp <= limit })
	}
	res.PValue = clamp01(res.PValue)
	return res, nil
}

func lchoose(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}

// Wilson returns the Wilson score interval for one proportion at level conf
// (statsmodels' proportion_confint(method="wilson")). It behaves well near 0
// and 1, where the Wald interval collapses.
func Wilson(events, n int, conf float64) (Interval, error) {
	if err := checkCounts(events, n); err != nil {
		return Interval{}, err
	}
	if err := checkAlpha(1 - conf); err != nil {
		return Interval{}, err
	}
	z := distuv.UnitNormal.Quantile(1 - (1-conf)/2)
	return wilson(float64(events), float64(n), z), nil
}

func wilson(x, n, z float64) Interval {
	z2 := z * z
	center := (x + z2/2) / (n + z2)
	half := z / (n + z2) * math.Sqrt(x*(n-x)/n+z2/4)
	return Interval{Lo: clamp01(center - half), Hi: clamp01(center + half)}
}

// NewcombeDiff returns Newcombe's hybrid score interval (his method 10,
// without continuity correction) for the difference of rates canary minus
// stable at level conf, built from the two Wilson intervals. It matches
// statsmodels' confint_proportions_2indep(method="newcomb", compare="diff").
func NewcombeDiff(canaryEvents, canaryN, stableEvents, stableN int, conf float64) (Interval, error) {
	if err := checkCounts(canaryEvents, canaryN); err != nil {
		return Interval{}, err
	}
	if err := checkCounts(stableEvents, stableN); err != nil {
		return Interval{}, err
	}
	if err := checkAlpha(1 - conf); err != nil {
		return Interval{}, err
	}
	z := distuv.UnitNormal.Quantile(1 - (1-conf)/2)
	x1, n1 := float64(canaryEvents), float64(canaryN)
	x2, n2 := float64(stableEvents), float64(stableN)
	p1, p2 := x1/n1, x2/n2
	w1, w2 := wilson(x1, n1, z), wilson(x2, n2, z)
	d := p1 - p2
	return Interval{
		Lo: d - math.Sqrt((p1-w1.Lo)*(p1-w1.Lo)+(w2.Hi-p2)*(w2.Hi-p2)),
		Hi: d + math.Sqrt((w1.Hi-p1)*(w1.Hi-p1)+(p2-w2.Lo)*(p2-w2.Lo)),
	}, nil
}
