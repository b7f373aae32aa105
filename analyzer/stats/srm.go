package stats

import (
	"math"

	"gonum.org/v1/gonum/stat/distuv"
)

// DefaultSRMAlpha is the level of the sample-ratio-mismatch check. It is
// strict on purpose: the check runs at every look on large counts, and a
// false mismatch halts a healthy rollout.
const DefaultSRMAlpha = 0.001

// SRMResult is the outcome of a sample-ratio-mismatch check.
type SRMResult struct {
	// ChiSquare is Pearson's statistic sum((observed-expected)^2/expected).
	ChiSquare float64 `json:"chi_square"`
	// DF is the degrees of freedom: arms with positive weight minus one.
	DF int `json:"df"`
	// PValue is the chi-square goodness-of-fit p-value.
	PValue float64 `json:"p_value"`
	// Expected is the count each arm should have had.
	Expected []float64 `json:"expected"`
	// Mismatch reports PValue < alpha: the split is not the configured one
	// and no comparison between the arms should be trusted.
	Mismatch bool `json:"mismatch"`
}

// SampleRatioMismatch checks the observed request counts per arm against
// the configured weights (any positive scale, e.g. 90 and 10) with Pearson's
// chi-square goodness-of-fit test, as SciPy's chisquare. alpha 0 means
// DefaultSRMAlpha. An arm with weight 0 must have no requests: if it has any,
// the result is a mismatch with PValue 0; if it has none it is left out.
// Assumes requests are assigned independently (per-request randomisation, or
// sticky users each sending about as much traffic).
func SampleRatioMismatch(observed []int, weights []float64, alpha float64) (SRMResult, error) {
	if alpha == 0 {
		alpha = DefaultSRMAlpha
	}
	if err := checkAlpha(alpha); err != nil {
		return SRMResult{}, err
	}
	if len(observed) != len(weights) {
		return SRMResult{}, errorf(ErrInvalidParameter, "srm: %d counts for %d weights", len(observed), len(weights))
	}
	total, wsum := 0, 0.0
	arms := 0
	for i, o := range observed {
		w := weights[i]
		if o < 0 || !(w >= 0) || math.IsInf(w, 0) {
			return SRMResult{}, errorf(ErrInvalidParameter, "srm: arm %d has count %d, weight %v", i, o, w)
		}
		total += o
		wsum += w
		if w > 0 {
			arms++
		}
	}
	if total == 0 {
		return SRMResult{}, errorf(ErrNoSamples, "srm: no requests")
	}
	if arms == 0 {
		return SRMResult{}, errorf(ErrInvalidParameter, "srm: all weights are zero")
	}
	res := SRMResult{Expected: make([]float64, len(observed)), DF: arms - 1, PValue: 1}
	for i, o := range observed {
		e := float64(total) * weights[i] / wsum
		res.Expected[i] = e
		if e == 0 {
			if o > 0 {
				res.ChiSquare = math.Inf(1)
			}
			continue
		}
		d := float64(o) - e
		res.ChiSquare += d * d / e
	}
	switch {
	case math.IsInf(res.ChiSquare, 1):
		res.PValue = 0
	case res.DF == 1:
		// The chi-square survival function with one degree of freedom is
		// erfc(sqrt(x/2)): exact, and far cheaper than the general
		// incomplete gamma, which matters when a simulation checks the
		// split at every look of thousands of rollouts.
		res.PValue = math.Erfc(math.Sqrt(res.ChiSquare / 2))
	case res.DF > 1:
		res.PValue = distuv.ChiSquared{K: float64(res.DF)}.Survival(res.ChiSquare)
	}
	res.Mismatch = res.PValue < alpha
	return res, nil
}
