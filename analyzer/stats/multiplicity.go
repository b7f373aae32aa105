package stats

import (
	"fmt"
	"math"
	"sort"
)

// Correction is a multiple-testing adjustment of p-values.
type Correction int

const (
	// Holm is the Holm–Bonferroni step-down adjustment: controls the
	// family-wise error rate under any dependence. Use it when any false
	// rollback is costly.
	Holm Correction = iota
	// BenjaminiHochberg is the step-up adjustment that controls the false
	// discovery rate (independent or positively dependent tests).
	BenjaminiHochberg
)

// String names the correction as statsmodels' multipletests does.
func (c Correction) String() string {
	switch c {
	case Holm:
		return "holm"
	case BenjaminiHochberg:
		return "fdr_bh"
	}
	return "unknown"
}

// Adjust returns adjusted p-values in the input order, equal to statsmodels'
// multipletests(method="holm" or "fdr_bh"). Compare them with the family
// level alpha directly.
func Adjust(pvalues []float64, method Correction) ([]float64, error) {
	m := len(pvalues)
	if m == 0 {
		return nil, errorf(ErrNoSamples, "adjust: no p-values")
	}
	for _, p := range pvalues {
		if !(p >= 0 && p <= 1) {
			return nil, errorf(ErrInvalidParameter, "adjust: p-value %v outside [0,1]", p)
		}
	}
	order := make([]int, m)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return pvalues[order[a]] < pvalues[order[b]] })
	adj := make([]float64, m)
	switch method {
	case Holm:
		running := 0.0
		for rank, i := range order {
			running = math.Max(running, math.Min(1, float64(m-rank)*pvalues[i]))
			adj[i] = running
		}
	case BenjaminiHochberg:
		running := 1.0
		for rank := m - 1; rank >= 0; rank-- {
			i := order[rank]
			running = math.Min(running, float64(m)/float64(rank+1)*pvalues[i])
			adj[i] = running
		}
	default:
		return nil, errorf(ErrInvalidParameter, "adjust: unknown correction %d", int(method))
	}
	return adj, nil
}

// Variant is one non-control arm of an A/B/n rollout.
type Variant struct {
	Name   string
	Values []float64
}

// PairTest returns the p-value of one variant against the control.
type PairTest func(variant, control []float64) (float64, error)

// MannWhitneyTest is a PairTest running MannWhitney with the alternative alt.
func MannWhitneyTest(alt Alternative) PairTest {
	return func(variant, control []float64) (float64, error) {
		r, err := MannWhitney(variant, control, alt, MWAuto)
		return r.PValue, err
	}
}

// Comparison is one variant's result against the control.
type Comparison struct {
	Name     string  `json:"name"`
	PValue   float64 `json:"p_value"`
	Adjusted float64 `json:"adjusted"`
	Reject   bool    `json:"reject"`
}

// VersusControl tests each variant against the control with test and
// adjusts the p-values across the variants with method, rejecting where the
// adjusted p-value is <= alpha. The results follow the variants' order. An
// error from any test (for example ErrNoSamples for an empty variant) is
// returned, naming the variant, since adjusting without it would understate
// the family size.
func VersusControl(control []float64, variants []Variant, test PairTest, method Correction, alpha float64) ([]Comparison, error) {
	if err := checkAlpha(alpha); err != nil {
		return nil, err
	}
	if len(variants) == 0 {
		return nil, errorf(ErrNoSamples, "versus control: no variants")
	}
	out := make([]Comparison, len(variants))
	ps := make([]float64, len(variants))
	for i, v := range variants {
		p, err := test(v.Values, control)
		if err != nil {
			return nil, fmt.Errorf("variant %q: %w", v.Name, err)
		}
		out[i] = Comparison{Name: v.Name, PValue: p}
		ps[i] = p
	}
	adj, err := Adjust(ps, method)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Adjusted = adj[i]
		out[i].Reject = adj[i] <= alpha
	}
	return out, nil
}
