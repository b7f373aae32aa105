package analyzer

import (
	"fmt"
	"math"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// foldEvents brings an event metric's test up to date with the rollout's
// events of that metric. Each event lands on the canary, under the null,
// with the canary's share of exposure at its time: the weight of the span
// it fell in, adjusted by the event's exposure ratio (sample rates, and
// judging rates for quality; 0 means 1). Events outside every span, or
// whose ratio is unknown (NaN), are counted as folded but carry no
// evidence. If the events already folded are no longer a prefix of the
// metric's events (a late row changed a user's first event), the test is
// replayed from the start.
func foldEvents(st EventState, schedule []Span, events []UserEvent) EventState {
	if st.Count > len(events) || st.Count > 0 && events[st.Count-1].Print != st.Print {
		null, set := st.Null, st.NullSet
		st = EventState{}
		st.Null, st.NullSet = null, set
	}
	for _, e := range events[st.Count:] {
		if w, ok := weightAt(schedule, e.At); ok && !math.IsNaN(e.Ratio) {
			ratio := e.Ratio
			if !(ratio > 0) || math.IsInf(ratio, 0) {
				ratio = 1
			}
			st.Observe(e.Canary, w*ratio/(w*ratio+1-w))
		}
		st.Count++
		st.Print = e.Print
	}
	return st
}

// eventPrint is one event's term of the running fingerprint.
func eventPrint(e UserEvent) int64 {
	p := 2 * e.At.UnixNano()
	if e.Canary {
		p++
	}
	return p
}

// windowEstimate is one metric's effect over the stage's window, with its
// user-clustered variance.
type windowEstimate struct {
	ok               bool
	effect, variance float64
	canary, stable   float64
	nCanary, nStable int
	uCanary, uStable int
}

// estimateWindow computes metric's effect from the arms' per-user sums:
// a ratio of means for relative metrics, a difference of rates for
// points, a difference of mean scores for quality. Variances always treat
// users as the independent units, since routing assigns users.
func estimateWindow(metric Metric, m Measurements) windowEstimate {
	c, s := m.Canary.Sums[metric], m.Stable.Sums[metric]
	kind, _ := MetricKind(metric)
	w := weighting(kind)
	cm, _ := c.Estimate(w)
	sm, _ := s.Estimate(w)
	e := windowEstimate{canary: cm, stable: sm, nCanary: int(c.N), nStable: int(s.N), uCanary: c.Clusters, uStable: s.Clusters}
	switch kind {
	case KindRelative:
		e.effect, e.variance, e.ok = stats.RelativeEffect(c, s, w)
	case KindPoints:
		e.effect, e.variance, e.ok = stats.DifferenceEffect(c, s, w, true)
	case KindScore:
		e.effect, e.variance, e.ok = stats.DifferenceEffect(c, s, w, false)
	}
	return e
}

// weighting is how an arm's mean weighs its users. Means of values
// (latencies, tokens, costs) average each user's own mean (stats.PerUser):
// the typical user's experience, and with skewed activity far more
// precise than the mean over requests, which a few busy users with their
// own persistent latency dominate. Rates and scores are per request with a
// user-clustered variance (stats.PerObservation): a user's own rate over
// one or two requests is a coin flip, and averaging coin flips wastes
// what the busier users show.
func weighting(k Kind) stats.Weighting {
	if k == KindRelative {
		return stats.PerUser
	}
	return stats.PerObservation
}

// evaluate runs one look of one metric: the harm test (rollout-wide
// events for an event metric, the stage window's means otherwise) and the
// non-inferiority test on the stage's window.
//
// Harm needs both evidence and size: the always-valid p-value of "no
// worse than stable" at or below the metric's share of alpha, and the
// estimated effect beyond the tolerance. The null of no harm makes the
// test fast for the regressions a rollout exists to stop; the size
// condition keeps a canary that is worse by less than the tolerance (a
// real but accepted difference) from being rolled back once the data
// shows it is worse at all.
//
// Non-inferiority is the mixture SPRT of "worse by exactly the
// tolerance" against better than that, one-sided, with the mixing scale
// equal to the tolerance.
func evaluate(p Policy, metric Metric, st MetricState, ev EventState, m Measurements) (MetricResult, MetricState) {
	kind, _ := MetricKind(metric)
	tol := p.Tolerances[metric]
	alpha := p.HarmAlpha(metric)
	r := MetricResult{Metric: metric, Kind: kind, Tolerance: tol, HarmP: 1, SafeP: 1, HarmAlpha: alpha}
	if st.Looks == 0 {
		st.HarmP, st.SafeP = 1, 1
	}
	e := estimateWindow(metric, m)
	r.CanaryValue, r.StableValue, r.NCanary, r.NStable = e.canary, e.stable, e.nCanary, e.nStable
	if math.IsNaN(r.CanaryValue) {
		r.CanaryValue = 0
	}
	if math.IsNaN(r.StableValue) {
		r.StableValue = 0
	}
	if th, ok := m.Thresholds[metric]; ok {
		if m.TailPerUser {
			r.Note = fmt.Sprintf("threshold %.2f times each user's usual value, the first requests' p%g", th, 100*p.TailQuantile)
		} else {
			r.Note = fmt.Sprintf("threshold %.0f ms, the first requests' p%g", th, 100*p.TailQuantile)
		}
	}
	sign := 1.0 // +1 when higher is worse, -1 for scores
	if kind == KindScore {
		sign = -1
	}
	tested := e.ok && e.nCanary >= p.MinTestSamples && e.nStable >= p.MinTestSamples &&
		e.uCanary >= p.MinTestUsers && e.uStable >= p.MinTestUsers
	switch {
	case e.nCanary == 0 || e.nStable == 0:
		r.Status = StatusNotMeasured
	case !tested:
		r.Status = StatusTooFew
	default:
		v := math.Max(e.variance, 1e-12)
		tau2 := tol * tol
		// Non-inferiority: worse = sign*effect; null sign*effect = tol.
		safe := math.Min(1, math.Exp(-stats.OneSidedMixtureLogLR(-sign*e.effect, -tol, v, tau2)))
		st.SafeP = math.Min(st.SafeP, safe)
		if !IsEventMetric(metric) {
			// A mean's null sits at half the tolerance: plug-in variances
			// of a few dozen users' means are rough, and a mean within
			// half the tolerance is never worth a rollback.
			harm := math.Min(1, math.Exp(-stats.OneSidedMixtureLogLR(sign*e.effect, tol/2, v, tau2)))
			st.HarmP = math.Min(st.HarmP, harm)
		}
		st.look(e.effect, v, tau2, p.Alpha)
		r.StdErr = math.Sqrt(v)
	}
	r.Estimate = e.effect
	if st.Looks > 0 {
		r.SafeP = st.SafeP
		if st.CI != nil {
			ci := *st.CI
			r.CI = &ci
		}
		r.Status = StatusUndecided
		if st.SafeP <= p.Alpha {
			r.Status = StatusWithin
		}
	}

	if IsEventMetric(metric) {
		r.HarmP = ev.PValue()
		if !ev.NullSet {
			r.HarmP = 1 // no margin yet: stable's rate is not known
		}
		r.Events, r.CanaryEvents = ev.Events, ev.Canary
		r.RiskRatio = ev.RiskRatio()
		if base, ok := eventBase(p, metric, m); ok && ev.Events > 0 {
			r.Estimate = eventSize(ev, base, e.effect, sign, tested)
		}
		// A window interval wholly beyond the tolerance shows the size on
		// its own, and its estimate is the size.
		if sign*r.Estimate <= tol && r.CI != nil && beyond(*r.CI, sign, tol) {
			r.Estimate = e.effect
		}
	} else {
		r.HarmP = st.HarmP
	}
	if r.HarmP <= alpha && sign*r.Estimate > tol && (IsEventMetric(metric) || r.Status != StatusNotMeasured) {
		r.Status = StatusHarm
	}
	return r, st
}

// harmNull is the risk ratio an event metric's harm test takes as its
// null: the canary worse by HarmMargin of the tolerance, at stable's rate
// base. Some margin, not none: a canary worse by less than that is a
// difference the operator accepted, and must not be rolled back however
// much data shows it; not the whole tolerance either, which would make the
// test slow for the regressions a rollout exists to stop.
//
// At most maxHarmNull: against a stable that almost never has the event,
// a margin in the metric's units is a huge ratio (0.15 points over a rate
// of 0.01 % is 16 times), and a test against it would need hundreds of
// canary events to move; the size rule keeps the small absolute
// differences from being rolled back instead.
func harmNull(p Policy, metric Metric, base float64) float64 {
	if !(base > 0) {
		base = 1.0 / float64(p.MinTestSamples)
	}
	return min(1+p.HarmMargin*p.Tolerances[metric]/base, maxHarmNull)
}

// eventSize is an event metric's effect in its units, the size the harm
// rule holds against the tolerance: the shrunk risk ratio times stable's
// rate base. The ratio cannot say how far a canary is beyond a stable that
// almost never has the event: stable's rate is then a guess from its
// count of requests, and the ratio runs off the grid's end. There the
// stage window's difference windowEffect (once tested) sizes the effect,
// shrunk as far as the shrunk ratio falls short of the grid's end.
func eventSize(ev EventState, base, windowEffect, sign float64, tested bool) float64 {
	shrunk := ev.ShrunkRatio()
	size := sign * (shrunk - 1) * base
	if tested && stats.AtGridEnd(ev.RiskRatio()) {
		if w := windowEffect * (shrunk - 1) / (stats.RiskGridEnd() - 1); sign*w > sign*size {
			size = w
		}
	}
	return size
}

// beyond says the interval lies wholly on the worse side of the
// tolerance: above it when higher is worse (sign +1), below its negative
// for scores.
func beyond(ci stats.Interval, sign, tol float64) bool {
	if sign > 0 {
		return ci.Lo > tol
	}
	return ci.Hi < -tol
}

// maxHarmNull is the largest risk ratio an event metric's harm null takes.
const maxHarmNull = 4

// eventBase is stable's rate of an event metric over the rollout so far,
// which turns the events' risk ratio into the metric's units; known once
// stable has MinTestSamples observations of it. The whole rollout's
// stable traffic, not the stage's, so that a stage's first minutes do
// not swing it.
func eventBase(p Policy, metric Metric, m Measurements) (float64, bool) {
	b, ok := m.Baseline[metric]
	if !ok || b.N < p.MinTestSamples {
		return 0, false
	}
	return b.Value(), true
}

// look narrows the metric's confidence sequence with this look's interval
// (the running intersection keeps it always valid and never wider) and
// counts the look.
func (st *MetricState) look(effect, variance, tau2, alpha float64) {
	rad := stats.MixtureRadius(variance, tau2, alpha)
	lo, hi := effect-rad, effect+rad
	if st.CI != nil {
		lo, hi = math.Max(lo, st.CI.Lo), math.Min(hi, st.CI.Hi)
	}
	if lo <= hi {
		st.CI = &stats.Interval{Lo: lo, Hi: hi}
	}
	st.Looks++
}
