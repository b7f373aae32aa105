package analyzer

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// Action is what a decision asks the runner to do.
type Action string

const (
	// ActionHold keeps the stage running; the reason says what is missing.
	ActionHold Action = "hold"
	// ActionAdvance moves the canary to the next stage's weight.
	ActionAdvance Action = "advance"
	// ActionPromote sends all traffic to the canary and makes it stable.
	ActionPromote Action = "promote"
	// ActionRollback sends all traffic back to stable at once.
	ActionRollback Action = "rollback"
	// ActionPause stops the automation and asks a human; traffic stays as is.
	ActionPause Action = "pause"
)

// Code classifies a decision's reason for machines: the history collapses
// repeated holds with the same code, and tests assert on it.
type Code string

const (
	CodeNoData          Code = "no_data"
	CodeTooFewSamples   Code = "too_few_samples"
	CodeSRM             Code = "sample_ratio_mismatch"
	CodeHarm            Code = "harm"
	CodeWithinTolerance Code = "within_tolerance"
	CodeMinDuration     Code = "min_duration"
	CodeMinSamples      Code = "min_samples"
	CodeRequiredMissing Code = "required_metric_missing"
	CodeUndecided       Code = "undecided"
	CodeInconclusive    Code = "inconclusive"
	CodeInvalidStage    Code = "invalid_stage"
	// Codes the runner records.
	CodeQueryFailed   Code = "query_failed"
	CodeTrafficFailed Code = "traffic_failed"
	CodeOperator      Code = "operator"
)

// StageState is what Decide carries from one look to the next within a
// stage. A new stage starts from NewStageState.
type StageState struct {
	// Stage indexes Policy.EvaluatedStages.
	Stage   int       `json:"stage"`
	Started time.Time `json:"started"`
	Looks   int       `json:"looks"`
	// SRMP is the running minimum of the always-valid p-value of the
	// sample-ratio check; SRMLooks counts its looks (1 before the first).
	SRMP     float64 `json:"srm_p"`
	SRMLooks int     `json:"srm_looks"`
	// Metrics holds each metric's running always-valid p-values and
	// confidence sequence.
	Metrics map[Metric]MetricState `json:"metrics,omitempty"`
}

// MetricState is one metric's sequential test state within a stage.
type MetricState struct {
	// Looks counts the looks at which the metric had enough data.
	Looks int `json:"looks"`
	// HarmP is the running minimum of the always-valid p-value of "the
	// canary is not worse than stable by more than the tolerance"; small
	// means evidence of harm. 1 before the first look.
	HarmP float64 `json:"harm_p"`
	// SafeP is the running minimum of the always-valid p-value of "the
	// canary is worse by at least the tolerance"; small means the canary is
	// shown within tolerance (non-inferior). 1 before the first look.
	SafeP float64 `json:"safe_p"`
	// CI is the running intersection of the per-look intervals at the
	// stage's level, in the metric's units (Kind). Nil before the first look.
	CI *stats.Interval `json:"ci,omitempty"`
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

// NewStageState returns the state of a stage that starts at started.
func NewStageState(stage int, started time.Time) StageState {
	return StageState{Stage: stage, Started: started, Metrics: map[Metric]MetricState{}}
}

func (s StageState) clone() StageState {
	out := s
	out.Metrics = make(map[Metric]MetricState, len(s.Metrics))
	for k, v := range s.Metrics {
		if v.CI != nil {
			ci := *v.CI
			v.CI = &ci
		}
		out.Metrics[k] = v
	}
	return out
}

// MetricStatus summarises one metric at one look.
type MetricStatus string

const (
	StatusHarm        MetricStatus = "harm"         // significantly worse than the tolerance
	StatusWithin      MetricStatus = "within"       // shown within the tolerance
	StatusUndecided   MetricStatus = "undecided"    // tested, neither yet
	StatusTooFew      MetricStatus = "too_few"      // some data, below the test minimum
	StatusNotMeasured MetricStatus = "not_measured" // no data in an arm
)

// MetricResult is one metric's numbers at one look. Estimate and CI are in
// the metric's Kind: a ratio minus one, rate points, or a score
// difference, always canary against stable.
type MetricResult struct {
	Metric    Metric       `json:"metric"`
	Kind      Kind         `json:"kind"`
	Status    MetricStatus `json:"status"`
	Tolerance float64      `json:"tolerance"`
	// CanaryValue and StableValue are the arms' means or rates over the
	// window (for latency_p99: each arm's share above stable's p99).
	CanaryValue float64 `json:"canary_value"`
	StableValue float64 `json:"stable_value"`
	Estimate    float64 `json:"estimate"`
	// StdErr is the estimate's standard error at this look.
	StdErr float64 `json:"std_err"`
	// CI is the always-valid interval of the stage so far; nil until the
	// metric has been tested.
	CI *stats.Interval `json:"ci,omitempty"`
	// HarmP is the always-valid p-value of the harm test, HarmPAdjusted
	// the same after the multiplicity correction across metrics; SafeP is
	// the p-value of the non-inferiority test.
	HarmP         float64 `json:"harm_p"`
	HarmPAdjusted float64 `json:"harm_p_adjusted"`
	SafeP         float64 `json:"safe_p"`
	NCanary       int     `json:"n_canary"`
	NStable       int     `json:"n_stable"`
	Note          string  `json:"note,omitempty"`
}

// SRMCheck is the sample-ratio check of one look.
type SRMCheck struct {
	CanaryRequests  int     `json:"canary_requests"`
	StableRequests  int     `json:"stable_requests"`
	ObservedShare   float64 `json:"observed_share"`   // percent
	ConfiguredShare float64 `json:"configured_share"` // percent
	// PValue is the always-valid p-value the decision uses (running
	// minimum over the stage's looks); ChiSquareP is Pearson's
	// fixed-horizon p-value of this look alone, for reference.
	PValue     float64 `json:"p_value"`
	ChiSquareP float64 `json:"chi_square_p"`
	Mismatch   bool    `json:"mismatch"`
}

// Decision is the outcome of one look: what to do, why in one sentence,
// and the numbers behind it.
type Decision struct {
	At     time.Time `json:"at"`
	Action Action    `json:"action"`
	Code   Code      `json:"code"`
	Reason string    `json:"reason"`
	Stage  int       `json:"stage"`
	Weight float64   `json:"weight"`
	// Alpha is the stage's level (Policy.StageAlpha).
	Alpha          float64        `json:"alpha"`
	InStage        time.Duration  `json:"in_stage"`
	MinDuration    time.Duration  `json:"min_duration"`
	CanaryRequests int            `json:"canary_requests"`
	MinSamples     int            `json:"min_samples"`
	SRM            *SRMCheck      `json:"srm,omitempty"`
	Metrics        []MetricResult `json:"metrics,omitempty"`
}

// Decide judges one look at a stage. It is pure: the same policy, state,
// measurements and time give the same decision and next state. The rules,
// in order:
//
//  1. an arm without requests, or fewer than MinTestSamples, holds;
//  2. a sample-ratio mismatch pauses for a human: the split is not the
//     configured one, so no comparison can be trusted, and nothing shows
//     harm either;
//  3. a metric significantly worse than its tolerance (always-valid
//     p-value after the multiplicity correction at or below the stage's
//     alpha) rolls back;
//  4. with the stage's minimum time and canary requests reached, the
//     required metrics measured and every measured metric shown within its
//     tolerance, the canary advances (promotes after the last stage);
//  5. past the maximum stage time the policy's inconclusive action applies;
//  6. otherwise hold, saying what is missing.
//
// Measurements must cover the stage from its start (cumulative); each look
// recomputes the mixture likelihood ratio of the cumulative estimate and
// the state keeps the running minimum of the p-values and the running
// intersection of the intervals, so p-values never rise and intervals never
// widen within a stage.
func Decide(p Policy, s StageState, m Measurements, now time.Time) (Decision, StageState) {
	stages := p.EvaluatedStages()
	ns := s.clone()
	ns.Looks++
	d := Decision{At: now, Stage: s.Stage, Alpha: p.StageAlpha(), InStage: now.Sub(s.Started), CanaryRequests: m.Canary.Requests}
	if s.Stage < 0 || s.Stage >= len(stages) {
		d.Action, d.Code = ActionHold, CodeInvalidStage
		d.Reason = fmt.Sprintf("hold: stage %d does not exist in a policy of %d evaluated stages", s.Stage+1, len(stages))
		return d, ns
	}
	stage := stages[s.Stage]
	d.Weight, d.MinDuration, d.MinSamples = stage.Weight, stage.MinDuration.D(), stage.MinSamples
	hold := func(code Code, format string, a ...any) (Decision, StageState) {
		d.Action, d.Code, d.Reason = ActionHold, code, "hold: "+fmt.Sprintf(format, a...)
		return d, ns
	}

	// 1. No data, too few samples.
	switch {
	case m.Canary.Requests == 0 && m.Stable.Requests == 0:
		return hold(CodeNoData, "no data: neither version has served a request since the stage began %s ago", roundDur(d.InStage))
	case m.Canary.Requests == 0:
		return hold(CodeNoData, "no data: the canary %s has served no request since the stage began %s ago", m.Canary.Version, roundDur(d.InStage))
	case m.Stable.Requests == 0:
		return hold(CodeNoData, "no data: the stable version %s has served no request since the stage began %s ago", m.Stable.Version, roundDur(d.InStage))
	case m.Canary.Requests < p.MinTestSamples || m.Stable.Requests < p.MinTestSamples:
		return hold(CodeTooFewSamples, "too few samples to test: %d canary and %d stable requests, each arm needs %d", m.Canary.Requests, m.Stable.Requests, p.MinTestSamples)
	}

	// 2. Sample-ratio mismatch. The check runs at every look, so it is
	// always-valid too: a fixed-horizon chi-square test re-run every
	// interval at 0.001 pauses about 1.5 % of healthy rollouts (measured
	// by the simulation), each a false page.
	total := m.Canary.Requests + m.Stable.Requests
	srmP := srmPValue(m.Canary.Requests, total, stage.Weight/100)
	if ns.SRMLooks == 0 {
		ns.SRMP = 1
	}
	ns.SRMLooks++
	ns.SRMP = math.Min(ns.SRMP, srmP)
	d.SRM = &SRMCheck{
		CanaryRequests: m.Canary.Requests, StableRequests: m.Stable.Requests,
		ObservedShare:   100 * float64(m.Canary.Requests) / float64(total),
		ConfiguredShare: stage.Weight, PValue: ns.SRMP, Mismatch: ns.SRMP <= p.SRMAlpha,
	}
	if chi, err := stats.SampleRatioMismatch([]int{m.Stable.Requests, m.Canary.Requests}, []float64{100 - stage.Weight, stage.Weight}, p.SRMAlpha); err == nil {
		d.SRM.ChiSquareP = chi.PValue
	}
	if d.SRM.Mismatch {
		d.Action, d.Code = ActionPause, CodeSRM
		d.Reason = fmt.Sprintf("pause: sample-ratio mismatch, the canary got %.2f %% of %d requests but %g %% is configured (always-valid p=%s); the split is not what the control plane set, so no comparison can be trusted and a human should look (routing, stickiness, a failing pool, or telemetry loss)",
			d.SRM.ObservedShare, total, stage.Weight, fmtP(ns.SRMP))
		return d, ns
	}

	// 3. Harm, per metric.
	alpha := p.StageAlpha()
	metrics := sortedMetrics(p.Tolerances)
	d.Metrics = make([]MetricResult, len(metrics))
	harmP := make([]float64, len(metrics))
	for i, metric := range metrics {
		r, st := evaluate(p, metric, ns.Metrics[metric], m, alpha)
		d.Metrics[i] = r
		if st.Looks > 0 {
			ns.Metrics[metric] = st
		}
		harmP[i] = r.HarmP
	}
	adj := adjust(harmP, p.Multiplicity)
	var harmful []int
	for i := range d.Metrics {
		d.Metrics[i].HarmPAdjusted = adj[i]
		if d.Metrics[i].Status == StatusUndecided || d.Metrics[i].Status == StatusWithin {
			if adj[i] <= alpha {
				d.Metrics[i].Status = StatusHarm
				harmful = append(harmful, i)
			}
		}
	}
	if len(harmful) > 0 {
		sort.SliceStable(harmful, func(a, b int) bool { return adj[harmful[a]] < adj[harmful[b]] })
		parts := make([]string, len(harmful))
		for k, i := range harmful {
			parts[k] = describeHarm(d.Metrics[i])
		}
		d.Action, d.Code = ActionRollback, CodeHarm
		d.Reason = fmt.Sprintf("rollback: the canary %s is worse than stable %s beyond tolerance on %s, over %d canary and %d stable requests",
			m.Canary.Version, m.Stable.Version, strings.Join(parts, "; "), m.Canary.Requests, m.Stable.Requests)
		return d, ns
	}

	// 4. Advance or promote.
	var missing, undecided, tooFew []string
	for _, r := range d.Metrics {
		switch r.Status {
		case StatusNotMeasured, StatusTooFew:
			if slices.Contains(p.Required, r.Metric) {
				missing = append(missing, string(r.Metric))
			}
			if r.Status == StatusTooFew {
				tooFew = append(tooFew, fmt.Sprintf("%s (%d canary)", r.Metric, r.NCanary))
			}
		case StatusUndecided:
			undecided = append(undecided, describeUndecided(r))
		}
	}
	timeOK := d.InStage >= stage.MinDuration.D()
	samplesOK := m.Canary.Requests >= stage.MinSamples
	if timeOK && samplesOK && len(missing) == 0 && len(undecided) == 0 {
		d.Code = CodeWithinTolerance
		within := withinSummary(d.Metrics)
		if s.Stage == len(stages)-1 {
			d.Action = ActionPromote
			d.Reason = fmt.Sprintf("promote: after the last stage (%g %%), %s over %d canary requests in %s", stage.Weight, within, m.Canary.Requests, roundDur(d.InStage))
		} else {
			d.Action = ActionAdvance
			d.Reason = fmt.Sprintf("advance: %g %% to %g %%, %s over %d canary requests in %s", stage.Weight, stages[s.Stage+1].Weight, within, m.Canary.Requests, roundDur(d.InStage))
		}
		return d, ns
	}

	// What is still missing, in one sentence.
	var waits []string
	code := CodeUndecided
	if len(undecided) > 0 {
		waits = append(waits, "not yet shown within tolerance: "+strings.Join(undecided, "; "))
	}
	if len(missing) > 0 {
		code = CodeRequiredMissing
		waits = append(waits, "required metrics without enough data: "+strings.Join(missing, ", "))
	} else if len(tooFew) > 0 {
		waits = append(waits, "too few samples yet for "+strings.Join(tooFew, ", "))
	}
	if !samplesOK {
		code = CodeMinSamples
		waits = append(waits, fmt.Sprintf("%d of %d canary requests", m.Canary.Requests, stage.MinSamples))
	}
	if !timeOK {
		code = CodeMinDuration
		waits = append(waits, fmt.Sprintf("%s of the stage's minimum %s", roundDur(d.InStage), roundDur(stage.MinDuration.D())))
	}

	// 5. Past the maximum stage time.
	if d.InStage >= p.MaxStageDuration.D() {
		d.Code = CodeInconclusive
		why := fmt.Sprintf("stage %g %% is inconclusive after %s (maximum %s): %s", stage.Weight, roundDur(d.InStage), roundDur(p.MaxStageDuration.D()), strings.Join(waits, "; "))
		switch p.OnInconclusive {
		case InconclusiveRollback:
			d.Action, d.Reason = ActionRollback, "rollback: "+why+"; the policy rolls back inconclusive stages"
		case InconclusivePause:
			d.Action, d.Reason = ActionPause, "pause: "+why+"; a human decides"
		default:
			d.Action, d.Reason = ActionHold, "hold: "+why+"; the policy extends the stage"
		}
		return d, ns
	}

	// 6. Hold.
	return hold(code, "%s", strings.Join(waits, "; "))
}

// srmPValue is the always-valid p-value, at one look, of "each request goes
// to the canary with probability w": the mixture SPRT of the observed share
// against w with the variance known under the null, w(1-w)/n, and a mixing
// scale of a quarter of the smaller arm's share (a 2 % canary getting 2.5 %
// is the mismatch it is tuned for).
func srmPValue(canary, total int, w float64) float64 {
	if total == 0 || w <= 0 || w >= 1 {
		return 1
	}
	v := w * (1 - w) / float64(total)
	tau := 0.25 * math.Min(w, 1-w)
	return math.Min(1, math.Exp(-stats.MixtureLogLR(float64(canary)/float64(total), w, v, tau*tau)))
}

// evaluate runs one look of one metric's sequential test on the window's
// cumulative data. The test is the mixture SPRT of the estimate against the
// null "worse by exactly the tolerance", with the mixing scale tau equal to
// the tolerance: a look with the estimate beyond the tolerance lowers the
// harm p-value, one inside it lowers the non-inferiority p-value.
func evaluate(p Policy, metric Metric, st MetricState, m Measurements, alpha float64) (MetricResult, MetricState) {
	kind, _ := MetricKind(metric)
	tol := p.Tolerances[metric]
	r := MetricResult{Metric: metric, Kind: kind, Tolerance: tol, HarmP: 1, SafeP: 1}
	if st.Looks == 0 {
		st.HarmP, st.SafeP = 1, 1
	}
	e := estimate(p, metric, m)
	r.CanaryValue, r.StableValue, r.NCanary, r.NStable, r.Note = e.canary, e.stable, e.nCanary, e.nStable, e.note
	switch {
	case e.nCanary == 0 || e.nStable == 0:
		r.Status = StatusNotMeasured
	case e.nCanary < p.MinTestSamples || e.nStable < e.minStable(p):
		r.Status = StatusTooFew
	case !e.ok:
		r.Status = StatusNotMeasured
	default:
		// Harm direction: +1 when higher is worse, -1 for scores.
		sign := 1.0
		if kind == KindScore {
			sign = -1
		}
		null := sign * tol
		v := math.Max(e.variance, 1e-12)
		tau2 := tol * tol
		pv := math.Min(1, math.Exp(-stats.MixtureLogLR(e.effect, null, v, tau2)))
		if sign*(e.effect-null) > 0 {
			st.HarmP = math.Min(st.HarmP, pv)
		} else {
			st.SafeP = math.Min(st.SafeP, pv)
		}
		st.look(e.effect, v, tau2, alpha)
		r.Estimate = e.effect
		r.StdErr = math.Sqrt(v)
		r.Status = StatusUndecided
		if st.SafeP <= alpha {
			r.Status = StatusWithin
		}
	}
	if st.Looks > 0 {
		r.HarmP, r.SafeP = st.HarmP, st.SafeP
		if st.CI != nil {
			ci := *st.CI
			r.CI = &ci
		}
		if r.Status != StatusUndecided && r.Status != StatusWithin {
			// Earlier looks tested it; the running values stand.
			r.Status = StatusUndecided
			if st.SafeP <= alpha {
				r.Status = StatusWithin
			}
		}
	}
	return r, st
}

// metricEstimate is one metric's effect and its sampling variance over a
// window.
type metricEstimate struct {
	ok               bool
	effect, variance float64
	canary, stable   float64
	nCanary, nStable int
	note             string
	tailStable       int // stable observations a tail threshold needs
}

func (e metricEstimate) minStable(p Policy) int { return max(p.MinTestSamples, e.tailStable) }

func estimate(p Policy, metric Metric, m Measurements) metricEstimate {
	switch metric {
	case MetricLatency:
		return relativeMeans(m.Canary.LatencyMs, m.Stable.LatencyMs)
	case MetricTTFT:
		return relativeMeans(m.Canary.TTFTMs, m.Stable.TTFTMs)
	case MetricITL:
		return relativeMeans(m.Canary.ITLMs, m.Stable.ITLMs)
	case MetricCostPerRequest:
		return relativeMeans(m.Canary.CostUSD, m.Stable.CostUSD)
	case MetricTokensPerAnswer:
		return relativeMeans(m.Canary.CompletionTokens, m.Stable.CompletionTokens)
	case MetricQuality:
		c, s := summarize(m.Canary.Quality), summarize(m.Stable.Quality)
		e := metricEstimate{nCanary: c.N, nStable: s.N, canary: c.Mean, stable: s.Mean}
		if c.N >= 2 && s.N >= 2 {
			e.ok, e.effect, e.variance = true, c.Mean-s.Mean, c.Variance()/float64(c.N)+s.Variance()/float64(s.N)
		}
		return e
	case MetricErrorRate:
		return rates(m.Canary.Failures, m.Canary.Requests, m.Stable.Failures, m.Stable.Requests)
	case MetricRefusalRate:
		return rates(m.Canary.Refusals, m.Canary.Successes, m.Stable.Refusals, m.Stable.Successes)
	case MetricLatencyP99:
		return tail(m.Canary.LatencyMs, m.Stable.LatencyMs, p.TailQuantile)
	}
	return metricEstimate{}
}

// relativeMeans estimates canary mean / stable mean - 1 with the delta
// method's variance. Values must be positive on average (latencies,
// tokens, costs); a zero stable mean leaves the metric not measured.
func relativeMeans(canary, stable []float64) metricEstimate {
	c, s := summarize(canary), summarize(stable)
	e := metricEstimate{nCanary: c.N, nStable: s.N, canary: c.Mean, stable: s.Mean}
	if c.N < 2 || s.N < 2 || !(s.Mean > 0) || c.Mean < 0 {
		if c.N >= 2 && s.N >= 2 {
			e.note = "stable mean is zero: no ratio"
		}
		return e
	}
	ratio := c.Mean / s.Mean
	e.ok = true
	e.effect = ratio - 1
	// Delta method: Var(mc/ms) = Var(mc)/ms^2 + ratio^2 Var(ms)/ms^2.
	e.variance = (c.Variance()/float64(c.N) + ratio*ratio*s.Variance()/float64(s.N)) / (s.Mean * s.Mean)
	return e
}

// summarize returns the count, mean and sum of squared deviations of xs
// in two passes (the same numbers as stats.Summarize, faster on the large
// cumulative windows Decide reads at every look).
func summarize(xs []float64) stats.Summary {
	if len(xs) == 0 {
		return stats.Summary{}
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	mean := sum / float64(len(xs))
	var m2, comp float64
	for _, x := range xs {
		d := x - mean
		m2 += d * d
		comp += d
	}
	// Corrected two-pass algorithm (Chan, Golub, LeVeque).
	m2 -= comp * comp / float64(len(xs))
	return stats.Summary{N: len(xs), Mean: mean, M2: m2}
}

// rates estimates the difference of two rates, with each rate smoothed to
// (x+1)/(n+2) in the variance so that zero events do not make it vanish
// (as stats.ProportionMSPRT).
func rates(ce, cn, se, sn int) metricEstimate {
	e := metricEstimate{nCanary: cn, nStable: sn}
	if cn == 0 || sn == 0 {
		return e
	}
	pc, ps := float64(ce)/float64(cn), float64(se)/float64(sn)
	sc := (float64(ce) + 1) / (float64(cn) + 2)
	ss := (float64(se) + 1) / (float64(sn) + 2)
	e.ok, e.canary, e.stable = true, pc, ps
	e.effect = pc - ps
	e.variance = sc*(1-sc)/float64(cn) + ss*(1-ss)/float64(sn)
	return e
}

// tail compares the shares of each arm above stable's q-quantile. Under the
// null of equal distributions the canary's share is about 1-q and the
// difference of shares has, asymptotically, the variance of a difference of
// two independent rates (the threshold's own noise adds stable's binomial
// term), so the rate test applies.
func tail(canary, stable []float64, q float64) metricEstimate {
	need := int(math.Ceil(10 / (1 - q)))
	e := metricEstimate{nCanary: len(canary), nStable: len(stable), tailStable: need}
	if len(canary) == 0 || len(stable) < need {
		return e
	}
	thr := quantile(stable, q)
	above := func(xs []float64) int {
		n := 0
		for _, x := range xs {
			if x > thr {
				n++
			}
		}
		return n
	}
	r := rates(above(canary), len(canary), above(stable), len(stable))
	r.tailStable = need
	r.note = fmt.Sprintf("stable p%g is %.0f ms; %.1f %% of canary requests are above it", 100*q, thr, 100*r.canary)
	return r
}

// quantile returns the q-quantile of xs as stats.QuantileSorted does
// (linear interpolation between order statistics, R's type 7) without
// sorting: two selections on a copy, O(n) on average.
func quantile(xs []float64, q float64) float64 {
	c := slices.Clone(xs)
	h := q * float64(len(c)-1)
	k := int(math.Floor(h))
	lo := selectKth(c, k)
	if k+1 >= len(c) {
		return lo
	}
	// After selection every element right of k is >= c[k].
	hi := slices.Min(c[k+1:])
	return lo + (h-float64(k))*(hi-lo)
}

// selectKth partially orders xs so that xs[k] is its k-th smallest value,
// smaller ones to its left and larger ones to its right, and returns it.
func selectKth(xs []float64, k int) float64 {
	lo, hi := 0, len(xs)-1
	for lo < hi {
		// Median of three as the pivot.
		mid := lo + (hi-lo)/2
		if xs[mid] < xs[lo] {
			xs[mid], xs[lo] = xs[lo], xs[mid]
		}
		if xs[hi] < xs[lo] {
			xs[hi], xs[lo] = xs[lo], xs[hi]
		}
		if xs[hi] < xs[mid] {
			xs[hi], xs[mid] = xs[mid], xs[hi]
		}
		pivot := xs[mid]
		i, j := lo, hi
		for i <= j {
			for xs[i] < pivot {
				i++
			}
			for xs[j] > pivot {
				j--
			}
			if i <= j {
				xs[i], xs[j] = xs[j], xs[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return xs[k]
		}
	}
	return xs[k]
}

// adjust returns the multiplicity-adjusted p-values.
func adjust(ps []float64, method Multiplicity) []float64 {
	if method == MultiplicityBonferroni {
		out := make([]float64, len(ps))
		for i, p := range ps {
			out[i] = math.Min(1, p*float64(len(ps)))
		}
		return out
	}
	out, err := stats.Adjust(ps, stats.Holm)
	if err != nil {
		return adjust(ps, MultiplicityBonferroni)
	}
	return out
}

func describeHarm(r MetricResult) string {
	s := fmt.Sprintf("%s %s (", r.Metric, fmtEffect(r.Kind, r.Estimate))
	if r.CI != nil {
		s += fmt.Sprintf("interval %s to %s, ", fmtEffect(r.Kind, r.CI.Lo), fmtEffect(r.Kind, r.CI.Hi))
	}
	s += fmt.Sprintf("tolerance %s, p=%s adjusted for %s", fmtTolerance(r.Kind, r.Tolerance), fmtP(r.HarmPAdjusted), "every metric")
	s += ")"
	if r.Note != "" {
		s += ": " + r.Note
	}
	return s
}

func describeUndecided(r MetricResult) string {
	s := fmt.Sprintf("%s %s", r.Metric, fmtEffect(r.Kind, r.Estimate))
	if r.CI != nil {
		s += fmt.Sprintf(" (interval %s to %s vs tolerance %s)", fmtEffect(r.Kind, r.CI.Lo), fmtEffect(r.Kind, r.CI.Hi), fmtTolerance(r.Kind, r.Tolerance))
	}
	return s
}

func withinSummary(rs []MetricResult) string {
	var in, out []string
	for _, r := range rs {
		if r.Status == StatusWithin {
			in = append(in, fmt.Sprintf("%s %s", r.Metric, fmtEffect(r.Kind, r.Estimate)))
		} else {
			out = append(out, string(r.Metric))
		}
	}
	s := "every measured metric is within tolerance (" + strings.Join(in, ", ") + ")"
	if len(out) > 0 {
		s += "; not measured: " + strings.Join(out, ", ")
	}
	return s
}

// fmtEffect writes an effect in its unit: "+12.3 %", "+4.10 pts", "-0.110".
func fmtEffect(k Kind, x float64) string {
	switch k {
	case KindRelative:
		return fmt.Sprintf("%+.1f %%", 100*x)
	case KindPoints:
		return fmt.Sprintf("%+.2f pts", 100*x)
	}
	return fmt.Sprintf("%+.3f", x)
}

func fmtTolerance(k Kind, tol float64) string {
	if k == KindScore {
		return fmtEffect(k, -tol)
	}
	return fmtEffect(k, tol)
}

func fmtP(p float64) string {
	if p < 1e-4 {
		return fmt.Sprintf("%.1e", p)
	}
	return fmt.Sprintf("%.4f", p)
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
