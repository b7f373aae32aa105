// Package stats is the statistics library of the canary analyzer: pure
// functions over plain values that compare a canary version against the
// stable version.
//
// Two families live here, with different jobs:
//
//   - Always-valid sequential inference (MeanMSPRT, ProportionMSPRT,
//     SuperiorityMonitor) drives decisions. The analyzer looks at the data
//     every interval; these monitors keep their false-alarm rate at alpha no
//     matter how often they are looked at. Their p-values never increase and
//     their confidence sequences never widen from one look to the next.
//   - Classic fixed-horizon tests (MannWhitney, HodgesLehmann,
//     TwoProportionZTest, FisherExact, QuantileRatios, Wilson and Newcombe
//     intervals) describe the data in reports. Re-running one of them every
//     interval and acting on it inflates false alarms (see Simulate), so the
//     analyzer does not decide on them.
//
// Around them: sample-size and power planning (SampleSizeMeans,
// SampleSizeProportions), the sample-ratio-mismatch check that gates every
// decision (SampleRatioMismatch), and multiplicity corrections for A/B/n
// rollouts (Adjust, VersusControl).
//
// Conventions: the canary is always the first argument and effects are
// canary minus stable (or canary over stable for ratios), so a positive
// latency effect means the canary is slower. "No data" is reported with the
// sentinel errors below, never with a zero result.
package stats

import (
	"errors"
	"math"
)

// Sentinel errors. Check them with errors.Is; functions wrap them with detail.
var (
	// ErrNoSamples means a group had no observations at all.
	ErrNoSamples = errors.New("stats: no samples")
	// ErrTooFewSamples means there are observations, but not enough for the
	// requested method (for example an order-statistic interval for p99
	// needs a few hundred values).
	ErrTooFewSamples = errors.New("stats: too few samples")
	// ErrInvalidParameter means an argument is outside its domain (alpha
	// outside (0,1), a negative count, a non-positive standard deviation…).
	ErrInvalidParameter = errors.New("stats: invalid parameter")
	// ErrNonPositive means a ratio was requested for data that is not
	// strictly positive.
	ErrNonPositive = errors.New("stats: non-positive values")
)

// Alternative selects the alternative hypothesis of a test, always phrased as
// canary versus stable.
type Alternative int

const (
	// TwoSided tests canary != stable.
	TwoSided Alternative = iota
	// Greater tests canary > stable (canary stochastically larger).
	Greater
	// Less tests canary < stable.
	Less
)

// String returns "two-sided", "greater" or "less".
func (a Alternative) String() string {
	switch a {
	case TwoSided:
		return "two-sided"
	case Greater:
		return "greater"
	case Less:
		return "less"
	}
	return "unknown"
}

// Interval is a closed interval [Lo, Hi]. Unbounded sides are ±Inf.
type Interval struct {
	Lo float64 `json:"lo"`
	Hi float64 `json:"hi"`
}

// Contains reports whether x lies in the interval.
func (i Interval) Contains(x float64) bool { return i.Lo <= x && x <= i.Hi }

// unbounded is the interval that says nothing.
var unbounded = Interval{Lo: math.Inf(-1), Hi: math.Inf(1)}

func checkAlpha(alpha float64) error {
	if !(alpha > 0 && alpha < 1) {
		return errorf(ErrInvalidParameter, "alpha %v outside (0,1)", alpha)
	}
	return nil
}

func checkAlternative(alt Alternative) error {
	if alt != TwoSided && alt != Greater && alt != Less {
		return errorf(ErrInvalidParameter, "unknown alternative %d", int(alt))
	}
	return nil
}

func clamp01(p float64) float64 { return math.Max(0, math.Min(1, p)) }
