package stats

import (
	"math"
	"slices"
	"sort"

	"gonum.org/v1/gonum/stat/distuv"
)

// MWMethod selects how MannWhitney computes its p-value.
type MWMethod int

const (
	// MWAuto uses the exact null distribution when there are no ties and
	// one group has at most 8 observations (SciPy's rule) and n1*n2 <=
	// MaxExactPairs (unlike SciPy, which would also go exact for 8 against
	// 50,000), the normal approximation otherwise.
	MWAuto MWMethod = iota
	// MWExact uses the exact null distribution of U, which assumes no ties.
	// It is available while n1*n2 <= MaxExactPairs.
	MWExact
	// MWAsymptotic uses the normal approximation with tie and continuity
	// corrections.
	MWAsymptotic
)

// MaxExactPairs bounds n1*n2 for the exact distribution of U, whose cost
// grows as (n1*n2)^2/4.
const MaxExactPairs = 2500

// MannWhitneyResult is the outcome of a Mann-Whitney U test.
type MannWhitneyResult struct {
	// U is the statistic of the canary sample: the number of pairs
	// (canary, stable) with canary > stable, ties counting one half.
	// It equals SciPy's mannwhitneyu(x=canary, y=stable).statistic.
	U float64
	// PValue is the p-value for the requested alternative.
	PValue float64
	// Z is the continuity-corrected normal score of the statistic used for
	// the p-value (NaN when the exact method was used).
	Z float64
	// Exact reports whether the exact null distribution was used.
	Exact bool
	// AUC is U/(n1*n2), an estimate of P(canary > stable) + P(equal)/2.
	AUC float64
}

// MannWhitney tests whether canary and stable come from the same
// distribution against the alternative that one is stochastically larger.
//
// Assumptions: observations are independent within and across groups.
// The asymptotic p-value uses the normal approximation with the tie-corrected
// variance and a continuity correction of 1/2, exactly as SciPy's
// mannwhitneyu(use_continuity=True). Cost is O(n log n) for the ranks. When
// every value is tied the test has no information and PValue is 1.
func MannWhitney(canary, stable []float64, alt Alternative, method MWMethod) (MannWhitneyResult, error) {
	n1, n2 := len(canary), len(stable)
	if n1 == 0 || n2 == 0 {
		return MannWhitneyResult{}, errorf(ErrNoSamples, "mann-whitney: %d canary, %d stable", n1, n2)
	}
	if err := checkAlternative(alt); err != nil {
		return MannWhitneyResult{}, err
	}
	if err := checkFinite(canary, stable); err != nil {
		return MannWhitneyResult{}, err
	}
	r1, tieTerm := rankSum(canary, stable)
	u1 := r1 - float64(n1)*float64(n1+1)/2
	mn := float64(n1) * float64(n2)
	u2 := mn - u1
	res := MannWhitneyResult{U: u1, AUC: u1 / mn, Z: math.NaN()}

	var u, factor float64
	switch alt {
	case Greater:
		u, factor = u1, 1
	case Less:
		u, factor = u2, 1
	default:
		u, factor = math.Max(u1, u2), 2
	}

	exact := false
	switch method {
	case MWExact:
		if n1*n2 > MaxExactPairs {
			return MannWhitneyResult{}, errorf(ErrInvalidParameter, "mann-whitney: exact distribution needs n1*n2 <= %d, got %d", MaxExactPairs, n1*n2)
		}
		exact = true
	case MWAuto:
		exact = tieTerm == 0 && min(n1, n2) <= 8 && n1*n2 <= MaxExactPairs
	case MWAsymptotic:
	default:
		return MannWhitneyResult{}, errorf(ErrInvalidParameter, "mann-whitney: unknown method %d", int(method))
	}

	if exact {
		dist := mwuDistribution(n1, n2)
		// P(U >= u) = P(U <= mn - u) by symmetry.
		res.PValue = clamp01(factor * dist.cdf(int(math.Round(mn-u))))
		res.Exact = true
		return res, nil
	}
	n := float64(n1 + n2)
	s := math.Sqrt(mn / 12 * ((n + 1) - tieTerm/(n*(n-1))))
	if s == 0 {
		res.PValue = 1
		return res, nil
	}
	z := (u - mn/2 - 0.5) / s
	res.Z = z
	res.PValue = clamp01(factor * distuv.UnitNormal.Survival(z))
	return res, nil
}

// rankSum returns the sum of the mid-ranks of x in the pooled sample of x and
// y, and the tie term sum(t^3 - t) over groups of tied values.
func rankSum(x, y []float64) (r1, tieTerm float64) {
	type obs struct {
		v float64
		x bool
	}
	all := make([]obs, 0, len(x)+len(y))
	for _, v := range x {
		all = append(all, obs{v, true})
	}
	for _, v := range y {
		all = append(all, obs{v, false})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v < all[j].v })
	for i := 0; i < len(all); {
		j := i + 1
		for j < len(all) && all[j].v == all[i].v {
			j++
		}
		t := float64(j - i)
		mid := float64(i+1+j) / 2 // average of ranks i+1..j
		for k := i; k < j; k++ {
			if all[k].x {
				r1 += mid
			}
		}
		tieTerm += t*t*t - t
		i = j
	}
	return r1, tieTerm
}

// mwuDist is the exact null distribution of U for sizes (n1, n2), no ties.
type mwuDist struct{ pmf []float64 }

// cdf returns P(U <= k).
func (d mwuDist) cdf(k int) float64 {
	if k < 0 {
		return 0
	}
	if k >= len(d.pmf) {
		return 1
	}
	s := 0.0
	for _, p := range d.pmf[:k+1] {
		s += p
	}
	return s
}

// quantile returns the smallest k with P(U <= k) >= p, like R's qwilcox.
func (d mwuDist) quantile(p float64) int {
	s := 0.0
	for k, q := range d.pmf {
		s += q
		if s >= p*(1-64*epsilon) {
			return k
		}
	}
	return len(d.pmf) - 1
}

const epsilon = 0x1p-52

// mwuDistribution computes the pmf of U by the recurrence
// p(u; i, j) = i/(i+j) p(u-j; i-1, j) + j/(i+j) p(u; i, j-1)
// in probabilities, so it stays accurate where the counts overflow.
func mwuDistribution(n1, n2 int) mwuDist {
	m, n := min(n1, n2), max(n1, n2) // U's distribution is symmetric in the sizes
	// prev[j] holds p(.; i-1, j); cur[j] holds p(.; i, j).
	prev := make([][]float64, n+1)
	for j := range prev {
		prev[j] = []float64{1} // i = 0: U = 0 surely
	}
	for i := 1; i <= m; i++ {
		cur := make([][]float64, n+1)
		cur[0] = []float64{1} // j = 0: U = 0 surely
		for j := 1; j <= n; j++ {
			p := make([]float64, i*j+1)
			a := float64(i) / float64(i+j)
			b := float64(j) / float64(i+j)
			for u, q := range prev[j] {
				p[u+j] += a * q
			}
			for u, q := range cur[j-1] {
				p[u] += b * q
			}
			cur[j] = p
		}
		prev = cur
	}
	return mwuDist{pmf: prev[n]}
}

func checkFinite(groups ...[]float64) error {
	for _, g := range groups {
		for _, v := range g {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return errorf(ErrInvalidParameter, "non-finite observation %v", v)
			}
		}
	}
	return nil
}

// HodgesLehmannResult is a shift estimate with its confidence interval.
type HodgesLehmannResult struct {
	// Shift is the median of all n1*n2 differences canary_i - stable_j.
	Shift float64
	// CI is the distribution-free interval [D(k), D(n1*n2+1-k)] over the
	// sorted differences D.
	CI Interval
	// Exact reports whether k came from the exact distribution of U.
	Exact bool
}

// HodgesLehmann estimates the location shift canary - stable as the median
// of the pairwise differences, with a distribution-free confidence interval
// at level conf from order statistics of those differences.
//
// Assumptions: the two distributions differ by a shift (for the interval's
// coverage); observations are independent. The rank k of the lower bound
// follows R's wilcox.test(conf.int=TRUE) exact rule, k = qwilcox(alpha/2),
// when both groups have fewer than 50 observations and there are no ties;
// otherwise k = ceil(n1*n2/2 - 1/2 - z*sigma_U) with the tie-corrected sigma_U.
// k < 1 is raised to 1 (the interval then is the range of the differences).
//
// No pairs are materialised or subsampled: each order statistic of the
// differences is selected exactly by bisection over the float64 ordering
// with an O(n1+n2) two-pointer count per step, so 50k against 50k costs
// about 64 linear passes after two sorts.
func HodgesLehmann(canary, stable []float64, conf float64) (HodgesLehmannResult, error) {
	n1, n2 := len(canary), len(stable)
	if n1 == 0 || n2 == 0 {
		return HodgesLehmannResult{}, errorf(ErrNoSamples, "hodges-lehmann: %d canary, %d stable", n1, n2)
	}
	if err := checkAlpha(1 - conf); err != nil {
		return HodgesLehmannResult{}, err
	}
	if err := checkFinite(canary, stable); err != nil {
		return HodgesLehmannResult{}, err
	}
	x := slices.Clone(canary)
	y := slices.Clone(stable)
	slices.Sort(x)
	slices.Sort(y)
	N := n1 * n2
	var res HodgesLehmannResult
	if N%2 == 1 {
		res.Shift = kthDifference(x, y, N/2+1)
	} else {
		res.Shift = (kthDifference(x, y, N/2) + kthDifference(x, y, N/2+1)) / 2
	}

	alpha := 1 - conf
	_, tieTerm := rankSum(x, y)
	var k int
	if n1 < 50 && n2 < 50 && tieTerm == 0 {
		k = mwuDistribution(n1, n2).quantile(alpha / 2)
		res.Exact = true
	} else {
		n := float64(n1 + n2)
		mn := float64(N)
		sigma := math.Sqrt(mn / 12 * ((n + 1) - tieTerm/(n*(n-1))))
		z := distuv.UnitNormal.Quantile(1 - alpha/2)
		k = int(math.Ceil(mn/2 - 0.5 - z*sigma))
	}
	k = max(k, 1)
	res.CI = Interval{Lo: kthDifference(x, y, k), Hi: kthDifference(x, y, N+1-k)}
	return res, nil
}

// kthDifference returns the k-th smallest (1-based) of the differences
// x_i - y_j for ascending x and y. It bisects over the total order of
// float64 values: the answer is the smallest t with count(d <= t) >= k,
// which is always one of the differences.
func kthDifference(x, y []float64, k int) float64 {
	lo := orderKey(x[0] - y[len(y)-1])
	hi := orderKey(x[len(x)-1] - y[0])
	for lo < hi {
		mid := lo + (hi-lo)/2
		if countAtMost(x, y, fromOrderKey(mid)) >= k {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return fromOrderKey(lo)
}

// countAtMost counts pairs with x_i - y_j <= t in O(len(x)+len(y)).
func countAtMost(x, y []float64, t float64) int {
	c, j := 0, 0
	for _, xi := range x {
		for j < len(y) && xi-y[j] > t {
			j++
		}
		c += len(y) - j
	}
	return c
}

// orderKey maps a float64 to a uint64 with the same order.
func orderKey(f float64) uint64 {
	b := math.Float64bits(f)
	if b>>63 == 1 {
		return ^b
	}
	return b | 1<<63
}

func fromOrderKey(k uint64) float64 {
	if k>>63 == 1 {
		return math.Float64frombits(k &^ (1 << 63))
	}
	return math.Float64frombits(^k)
}
