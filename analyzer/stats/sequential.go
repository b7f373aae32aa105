package stats

import (
	"math"
)

// Always-valid sequential inference (Johari, Pekelis, Walsh, "Always Valid
// Inference: Continuous Monitoring of A/B Tests", Operations Research 2022;
// Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric,
// nonasymptotic confidence sequences", Annals of Statistics 2021).
//
// The mixture SPRT compares the likelihood of the observed effect estimate
// under the null theta0 with its likelihood averaged over alternatives
// theta ~ N(theta0, tau^2). For an estimate with (approximately) normal
// sampling distribution N(theta, V) the mixture likelihood ratio is
//
//	Lambda = sqrt(V/(V+tau^2)) * exp(tau^2 (est-theta0)^2 / (2 V (V+tau^2)))
//
// which is a nonnegative martingale under the null, so by Ville's inequality
// P(sup_n Lambda_n >= 1/alpha) <= alpha: rejecting the first time
// Lambda >= 1/alpha keeps the false-alarm rate at alpha however often one
// looks. The always-valid p-value is min over looks of 1/Lambda and the
// confidence sequence is the set of theta0 not rejected, intersected over
// looks. Tau is the only tuning knob: the boundary is tightest when the
// information V is about tau^2, so set tau to the effect size you care to
// detect (the minimum detectable effect); any tau > 0 keeps validity.

// SequentialOptions configures a sequential monitor.
type SequentialOptions struct {
	// Alpha is the false-alarm rate over the whole rollout. Default 0.05.
	Alpha float64
	// Tau is the standard deviation of the normal mixing distribution, in
	// the units of the effect (ms for latency means, absolute rate for
	// proportions, probability for SuperiorityMonitor). Required, > 0.
	Tau float64
	// Null is the effect under the null hypothesis (MeanMSPRT and
	// ProportionMSPRT only; default 0). A positive Null turns the test into
	// "canary worse than stable by more than Null".
	Null float64
	// MinSamples is the number of observations each group needs before a
	// look can reject: the plug-in variance of the mean and proportion
	// monitors is unreliable below it. Default 100.
	MinSamples int
}

func (o SequentialOptions) withDefaults() (SequentialOptions, error) {
	if o.Alpha == 0 {
		o.Alpha = 0.05
	}
	if o.MinSamples == 0 {
		o.MinSamples = 100
	}
	if err := checkAlpha(o.Alpha); err != nil {
		return o, err
	}
	if !(o.Tau > 0) || math.IsInf(o.Tau, 0) {
		return o, errorf(ErrInvalidParameter, "mixing standard deviation tau %v must be positive", o.Tau)
	}
	if o.MinSamples < 2 {
		return o, errorf(ErrInvalidParameter, "min samples %d below 2", o.MinSamples)
	}
	return o, nil
}

// SequentialResult is what a monitor reports after a look.
type SequentialResult struct {
	// Estimate is the current effect estimate (canary minus stable, or
	// P(canary > stable) for SuperiorityMonitor).
	Estimate float64 `json:"estimate"`
	// PValue is the always-valid p-value: non-increasing over looks.
	PValue float64 `json:"p_value"`
	// CI is the confidence sequence at 1-alpha, the running intersection of
	// the per-look intervals: it never widens. Unbounded before the first
	// valid look.
	CI Interval `json:"ci"`
	// Reject reports PValue <= alpha. Once true it stays true.
	Reject bool `json:"reject"`
	// Looks counts the looks taken, NCanary and NStable the observations
	// that entered the test so far.
	Looks   int `json:"looks"`
	NCanary int `json:"n_canary"`
	NStable int `json:"n_stable"`
}

// Monitor is a sequential test the analyzer's runner feeds every interval.
// Each call to Look adds that interval's observations and takes one look.
// Looks with too few observations return ErrTooFewSamples along with a
// neutral result (PValue 1 unless an earlier look was lower). A Monitor is
// not safe for concurrent use.
type Monitor interface {
	Look(canary, stable []float64) (SequentialResult, error)
	Result() SequentialResult
}

var (
	_ Monitor = (*MeanMSPRT)(nil)
	_ Monitor = (*ProportionMSPRT)(nil)
	_ Monitor = (*SuperiorityMonitor)(nil)
)

// MixtureLogLR returns log Lambda, the log mixture likelihood ratio of an
// effect estimate est with sampling variance v against the null theta0 with
// mixing variance tau2 (see the package's sequential section).
func MixtureLogLR(est, theta0, v, tau2 float64) float64 {
	d := est - theta0
	return 0.5*math.Log(v/(v+tau2)) + tau2*d*d/(2*v*(v+tau2))
}

// MixtureRadius returns the half-width r of the mixture confidence interval
// at one look: theta0 is rejected at alpha exactly when |est-theta0| >= r.
func MixtureRadius(v, tau2, alpha float64) float64 {
	return math.Sqrt(2 * v * (v + tau2) / tau2 * (math.Log(1/alpha) + 0.5*math.Log((v+tau2)/v)))
}

// sequentialState is the part every monitor shares: the running minimum of
// the p-value and the running intersection of the intervals.
type sequentialState struct {
	opts SequentialOptions
	res  SequentialResult
}

func newSequentialState(opts SequentialOptions) sequentialState {
	return sequentialState{opts: opts, res: SequentialResult{PValue: 1, CI: unbounded}}
}

// update folds one valid look with estimate est and variance v into the
// state. If the new interval does not meet the running one (possible when
// the model's approximations fail), the running interval is kept as is.
func (s *sequentialState) update(est, theta0, v float64) {
	tau2 := s.opts.Tau * s.opts.Tau
	s.res.Estimate = est
	if v <= 0 || math.IsNaN(v) {
		return
	}
	p := math.Min(1, math.Exp(-MixtureLogLR(est, theta0, v, tau2)))
	s.res.PValue = math.Min(s.res.PValue, p)
	r := MixtureRadius(v, tau2, s.opts.Alpha)
	lo, hi := math.Max(s.res.CI.Lo, est-r), math.Min(s.res.CI.Hi, est+r)
	if lo <= hi {
		s.res.CI = Interval{Lo: lo, Hi: hi}
	}
	s.res.Reject = s.res.PValue <= s.opts.Alpha
}

// MeanMSPRT is the mixture SPRT for the difference of two means (canary
// minus stable), with the variance of the difference plugged in from the data:
// V = s_c^2/n_c + s_s^2/n_s. The plug-in makes it asymptotically valid
// (the normal approximation of the difference of means), as in Johari et al.;
// MinSamples guards the early looks. Unequal group sizes are fine as long as
// the traffic split does not drift with the data.
type MeanMSPRT struct {
	state          sequentialState
	canary, stable Summary
}

// NewMeanMSPRT returns a monitor for a difference of means.
func NewMeanMSPRT(opts SequentialOptions) (*MeanMSPRT, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &MeanMSPRT{state: newSequentialState(o)}, nil
}

// Look adds raw observations and takes a look.
func (m *MeanMSPRT) Look(canary, stable []float64) (SequentialResult, error) {
	return m.LookSummary(Summarize(canary), Summarize(stable))
}

// LookSummary adds one interval's observations as Summaries (for example
// from SQL count/sum/sum-of-squares) and takes a look.
func (m *MeanMSPRT) LookSummary(canary, stable Summary) (SequentialResult, error) {
	m.canary = m.canary.Merge(canary)
	m.stable = m.stable.Merge(stable)
	st := &m.state
	st.res.Looks++
	st.res.NCanary, st.res.NStable = m.canary.N, m.stable.N
	if m.canary.N < st.opts.MinSamples || m.stable.N < st.opts.MinSamples {
		return st.res, errorf(ErrTooFewSamples, "mean msprt: %d canary, %d stable, need %d each", m.canary.N, m.stable.N, st.opts.MinSamples)
	}
	v := m.canary.Variance()/float64(m.canary.N) + m.stable.Variance()/float64(m.stable.N)
	st.update(m.canary.Mean-m.stable.Mean, st.opts.Null, v)
	return st.res, nil
}

// Result returns the state after the last look.
func (m *MeanMSPRT) Result() SequentialResult { return m.state.res }

// ProportionMSPRT is the mixture SPRT for the difference of two rates
// (canary minus stable). The variance of the difference is plugged in as
// p_c(1-p_c)/n_c + p_s(1-p_s)/n_s with each rate smoothed to (x+1)/(n+2), so
// that zero events early on do not make the variance vanish. Asymptotically
// valid like MeanMSPRT.
type ProportionMSPRT struct {
	state                    sequentialState
	cEvents, cN, sEvents, sN int
}

// NewProportionMSPRT returns a monitor for a difference of rates.
func NewProportionMSPRT(opts SequentialOptions) (*ProportionMSPRT, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &ProportionMSPRT{state: newSequentialState(o)}, nil
}

// Look adds observations (any non-zero value is an event) and takes a look.
func (m *ProportionMSPRT) Look(canary, stable []float64) (SequentialResult, error) {
	return m.LookCounts(countEvents(canary), len(canary), countEvents(stable), len(stable))
}

func countEvents(xs []float64) int {
	n := 0
	for _, x := range xs {
		if x != 0 {
			n++
		}
	}
	return n
}

// LookCounts adds one interval's event counts and trials and takes a look.
func (m *ProportionMSPRT) LookCounts(canaryEvents, canaryN, stableEvents, stableN int) (SequentialResult, error) {
	st := &m.state
	if canaryEvents < 0 || canaryEvents > canaryN || stableEvents < 0 || stableEvents > stableN {
		return st.res, errorf(ErrInvalidParameter, "proportion msprt: %d/%d canary, %d/%d stable", canaryEvents, canaryN, stableEvents, stableN)
	}
	m.cEvents += canaryEvents
	m.cN += canaryN
	m.sEvents += stableEvents
	m.sN += stableN
	st.res.Looks++
	st.res.NCanary, st.res.NStable = m.cN, m.sN
	if m.cN < st.opts.MinSamples || m.sN < st.opts.MinSamples {
		return st.res, errorf(ErrTooFewSamples, "proportion msprt: %d canary, %d stable, need %d each", m.cN, m.sN, st.opts.MinSamples)
	}
	pc := float64(m.cEvents) / float64(m.cN)
	ps := float64(m.sEvents) / float64(m.sN)
	sc := (float64(m.cEvents) + 1) / (float64(m.cN) + 2)
	ss := (float64(m.sEvents) + 1) / (float64(m.sN) + 2)
	v := sc*(1-sc)/float64(m.cN) + ss*(1-ss)/float64(m.sN)
	st.update(pc-ps, st.opts.Null, v)
	return st.res, nil
}

// Result returns the state after the last look.
func (m *ProportionMSPRT) Result() SequentialResult { return m.state.res }

// SuperiorityMonitor is a confidence sequence for
// theta = P(canary > stable) + P(canary = stable)/2, the probability that a
// canary response is worse (slower, costlier) than a stable one; 0.5 means
// no difference, and it is invariant to monotone transforms, so one monitor
// covers means, medians and tails of a latency distribution alike.
//
// Method: within each look, canary and stable observations are paired in
// arrival order (pair i is canary[i] with stable[i]; the surplus of the
// larger group is not used, so every pair comes from the same interval) and
// each pair gives B = 1{c > s} + 1{c = s}/2 in [0, 1]. The B are i.i.d. with
// mean theta whenever observations are, and a variable in [0,1] is
// 1/2-sub-Gaussian (Hoeffding's lemma), so the normal-mixture boundary with
// the known variance V = 1/(4n) is a nonnegative supermartingale under the
// null: the confidence sequence and the test of theta = 0.5 are valid at every
// sample size, with no asymptotics and no plug-in (Howard et al. 2021,
// Robbins' normal mixture). MinSamples is not needed for validity; it is
// honoured only to keep the look schedule the same as the other monitors.
type SuperiorityMonitor struct {
	state   sequentialState
	n       int
	wins    float64
	nCanary int
	nStable int
}

// NewSuperiorityMonitor returns a monitor for P(canary > stable). Tau is in
// probability units; 0.1 targets theta = 0.6.
func NewSuperiorityMonitor(opts SequentialOptions) (*SuperiorityMonitor, error) {
	if opts.MinSamples == 0 {
		opts.MinSamples = 2
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	o.Null = 0.5
	return &SuperiorityMonitor{state: newSequentialState(o)}, nil
}

// Look pairs this interval's observations, adds the pairs and takes a look.
func (m *SuperiorityMonitor) Look(canary, stable []float64) (SequentialResult, error) {
	k := min(len(canary), len(stable))
	for i := range k {
		switch c, s := canary[i], stable[i]; {
		case c > s:
			m.wins++
		case c == s:
			m.wins += 0.5
		}
	}
	m.n += k
	m.nCanary += len(canary)
	m.nStable += len(stable)
	st := &m.state
	st.res.Looks++
	st.res.NCanary, st.res.NStable = m.nCanary, m.nStable
	if m.n < st.opts.MinSamples {
		return st.res, errorf(ErrTooFewSamples, "superiority: %d pairs, need %d", m.n, st.opts.MinSamples)
	}
	st.update(m.wins/float64(m.n), 0.5, 0.25/float64(m.n))
	st.res.CI = Interval{Lo: math.Max(0, st.res.CI.Lo), Hi: math.Min(1, st.res.CI.Hi)}
	return st.res, nil
}

// Result returns the state after the last look.
func (m *SuperiorityMonitor) Result() SequentialResult { return m.state.res }
