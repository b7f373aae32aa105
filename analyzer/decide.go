package analyzer

import (
	"fmt"
	"slices"
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
	CodeSRM             Code = "sample_ratio_mismatch"
	CodeHarm            Code = "harm"
	CodeWithinTolerance Code = "within_tolerance"
	CodeGuarded         Code = "no_harm_shown"
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

// StageState is what Decide carries from one look to the next. The
// per-stage part starts afresh with each stage (NewStageState,
// NextStageState); the schedule of weights and the event tests span the
// whole rollout and are carried over.
type StageState struct {
	// Stage indexes Policy.EvaluatedStages.
	Stage   int       `json:"stage"`
	Started time.Time `json:"started"`
	Looks   int       `json:"looks"`
	// SRMP is the running minimum of the always-valid p-value of the
	// users' sample-ratio check; SRMLooks counts its looks.
	SRMP     float64 `json:"srm_p"`
	SRMLooks int     `json:"srm_looks"`
	// Metrics holds each metric's running always-valid p-values and
	// confidence sequence over the stage's window.
	Metrics map[Metric]MetricState `json:"metrics,omitempty"`
	// Schedule is the canary's weight over the rollout, one span per
	// stage (and per resumed window); events outside every span (while
	// the fleet was changing weights) are not counted.
	Schedule []Span `json:"schedule,omitempty"`
	// Events holds the rollout-wide event tests, one per event metric.
	Events map[Metric]EventState `json:"events,omitempty"`
}

// Span is a time during which the canary's weight was Weight percent.
type Span struct {
	Stage  int       `json:"stage"`
	Weight float64   `json:"weight"`
	From   time.Time `json:"from"`
	// To is when the span ended (a traffic change was decided); zero while
	// it lasts.
	To time.Time `json:"to,omitzero"`
}

// EventState is one event metric's test and which events it has folded:
// the first Count events of the metric, whose running fingerprint is
// Print. A look whose events still start with the same
// prefix folds only the new ones; one whose prefix changed (a late row)
// replays them all.
type EventState struct {
	stats.EventTest
	Count int   `json:"count"`
	Print int64 `json:"print"`
}

// MetricState is one metric's sequential tests within a stage.
type MetricState struct {
	// Looks counts the looks at which the metric had enough data.
	Looks int `json:"looks"`
	// HarmP is the running minimum of the always-valid p-value of "the
	// canary is no worse than stable" (mean metrics; event metrics keep
	// theirs in EventState). 1 before the first look.
	HarmP float64 `json:"harm_p"`
	// SafeP is the running minimum of the always-valid p-value of "the
	// canary is worse by at least the tolerance"; small means the canary
	// is shown within tolerance (non-inferior). 1 before the first look.
	SafeP float64 `json:"safe_p"`
	// CI is the running intersection of the per-look intervals at the
	// stage's level, in the metric's units (Kind). Nil before the first look.
	CI *stats.Interval `json:"ci,omitempty"`
}

// NewStageState returns the state of a rollout's first window: stage
// starting at started, with nothing carried over.
func NewStageState(stage int, started time.Time) StageState {
	return StageState{Stage: stage, Started: started, Metrics: map[Metric]MetricState{}}
}

// NextStageState returns the state of the stage after s, whose window
// opens at started; the traffic change was decided at decided, which
// closes s's span. The schedule and the event tests carry over.
func NextStageState(s StageState, decided, started time.Time) StageState {
	return s.carry(s.Stage+1, decided, started)
}

// RestartStageState returns s's stage with a fresh window from started
// (an operator resumed it); the schedule and the event tests carry over.
func RestartStageState(s StageState, at time.Time) StageState {
	return s.carry(s.Stage, at, at)
}

func (s StageState) carry(stage int, closed, started time.Time) StageState {
	c := s.clone()
	ns := NewStageState(stage, started)
	ns.Schedule, ns.Events = c.Schedule, c.Events
	if n := len(ns.Schedule); n > 0 && ns.Schedule[n-1].To.IsZero() {
		ns.Schedule[n-1].To = closed
	}
	return ns
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
	out.Schedule = slices.Clone(s.Schedule)
	if s.Events != nil {
		out.Events = make(map[Metric]EventState, len(s.Events))
		for k, v := range s.Events {
			v.LogLik = slices.Clone(v.LogLik)
			out.Events[k] = v
		}
	}
	return out
}

// MetricStatus summarises one metric at one look.
type MetricStatus string

const (
	StatusHarm        MetricStatus = "harm"         // shown worse, beyond the tolerance
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
	// stage's window (for a tail metric: each arm's share above the
	// threshold).
	CanaryValue float64 `json:"canary_value"`
	StableValue float64 `json:"stable_value"`
	// Estimate is the effect the harm rule compares with the tolerance:
	// for an event metric the rollout's risk ratio turned into the metric's
	// units at stable's rate, for a mean metric the window's estimate.
	Estimate float64 `json:"estimate"`
	// StdErr is the window estimate's user-clustered standard error.
	StdErr float64 `json:"std_err"`
	// CI is the always-valid interval of the stage's window so far; nil
	// until the metric has been tested.
	CI *stats.Interval `json:"ci,omitempty"`
	// HarmP is the always-valid p-value of "no harm", HarmAlpha the level
	// it is held to; SafeP is the p-value of the non-inferiority test,
	// which promotion holds to the policy's Alpha.
	HarmP     float64 `json:"harm_p"`
	HarmAlpha float64 `json:"harm_alpha"`
	SafeP     float64 `json:"safe_p"`
	// RiskRatio, Events and CanaryEvents describe an event metric's
	// rollout-wide test: the canary's event rate over stable's, and the
	// users' first events counted.
	RiskRatio    float64 `json:"risk_ratio,omitempty"`
	Events       int     `json:"events,omitempty"`
	CanaryEvents int     `json:"canary_events,omitempty"`
	NCanary      int     `json:"n_canary"`
	NStable      int     `json:"n_stable"`
	Note         string  `json:"note,omitempty"`
}

// SRMCheck is the sample-ratio check of one look, on users.
type SRMCheck struct {
	CanaryUsers     int     `json:"canary_users"`
	StableUsers     int     `json:"stable_users"`
	CanaryRequests  int     `json:"canary_requests"`
	StableRequests  int     `json:"stable_requests"`
	ObservedShare   float64 `json:"observed_share"`   // percent of users
	ConfiguredShare float64 `json:"configured_share"` // percent of traffic
	// ExpectedShare is the canary's expected percent of measured users:
	// the configured share when every user is measured, more when only a
	// sample of stable's are (see Arm.SampleRate).
	ExpectedShare float64 `json:"expected_share"`
	// PValue is the always-valid p-value the decision uses (running
	// minimum over the stage's looks); ChiSquareP is Pearson's
	// fixed-horizon p-value of the users at this look alone, for reference.
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
	// Alpha is the policy's level: the false-rollback budget of the whole
	// rollout and the level of the promotion's non-inferiority tests.
	Alpha          float64        `json:"alpha"`
	InStage        time.Duration  `json:"in_stage"`
	MinDuration    time.Duration  `json:"min_duration"`
	CanaryRequests int            `json:"canary_requests"`
	MinSamples     int            `json:"min_samples"`
	SRM            *SRMCheck      `json:"srm,omitempty"`
	Metrics        []MetricResult `json:"metrics,omitempty"`
}

// Decide judges one look at a rollout. It is pure: the same policy,
// state, measurements and time give the same decision and next state.
// The rules, in order:
//
//  1. the rollout-wide event tests fold in the events since the last look;
//  2. a stage window without a request holds (no data);
//  3. a sample-ratio mismatch on users pauses for a human: the split is
//     not the configured one, so no comparison can be trusted;
//  4. a metric shown worse than stable (always-valid p-value at or below
//     its share of alpha) whose estimate is also beyond its tolerance
//     rolls back;
//  5. with the stage's minimum time and canary requests reached and the
//     required metrics measured, an early stage advances (they guard
//     against harm only); the last stage promotes once every measured
//     metric is shown within its tolerance at the full alpha;
//  6. past the maximum stage time the policy's inconclusive action applies;
//  7. otherwise hold, saying what is missing.
//
// Measurements must cover the stage from its start (cumulative), and the
// events the rollout from its start. Within a stage p-values never rise
// and intervals never narrow back out.
func Decide(p Policy, s StageState, m Measurements, now time.Time) (Decision, StageState) {
	stages := p.EvaluatedStages()
	ns := s.clone()
	ns.Looks++
	d := Decision{At: now, Stage: s.Stage, Alpha: p.Alpha, InStage: now.Sub(s.Started), CanaryRequests: m.Canary.Requests}
	if s.Stage < 0 || s.Stage >= len(stages) {
		d.Action, d.Code = ActionHold, CodeInvalidStage
		d.Reason = fmt.Sprintf("hold: stage %d does not exist in a policy of %d evaluated stages", s.Stage+1, len(stages))
		return d, ns
	}
	stage := stages[s.Stage]
	last := s.Stage == len(stages)-1
	d.Weight, d.MinDuration, d.MinSamples = stage.Weight, stage.MinDuration.D(), stage.MinSamples
	hold := func(code Code, format string, a ...any) (Decision, StageState) {
		d.Action, d.Code, d.Reason = ActionHold, code, "hold: "+fmt.Sprintf(format, a...)
		return d, ns
	}

	// 1. Events, as they arrived.
	ns.openSpan(s.Stage, stage.Weight, s.Started)
	for _, metric := range sortedMetrics(p.Tolerances) {
		if IsEventMetric(metric) {
			ev := ns.Events[metric]
			if !ev.NullSet {
				if base, ok := eventBase(p, metric, m); ok {
					ev.SetNull(harmNull(p, metric, base))
				}
			}
			ns.Events[metric] = foldEvents(ev, ns.Schedule, m.Events[metric])
		}
	}

	// 2. No data.
	if m.Canary.Users == 0 && m.Stable.Users == 0 {
		return hold(CodeNoData, "no data: neither version has served a request since the stage began %s ago", roundDur(d.InStage))
	}

	// 3. Sample-ratio mismatch, on users: routing assigns users, so each
	// user is one draw of the split, whatever their number of requests.
	// One empty arm is evidence here, not "no data".
	users := m.Canary.Users + m.Stable.Users
	expected := measuredShare(stage.Weight/100, m)
	srmP := stats.UsersSRM(m.Canary.Users, users, expected)
	if ns.SRMLooks == 0 {
		ns.SRMP = 1
	}
	ns.SRMLooks++
	ns.SRMP = min(ns.SRMP, srmP)
	d.SRM = &SRMCheck{
		CanaryUsers: m.Canary.Users, StableUsers: m.Stable.Users,
		CanaryRequests: m.Canary.Requests, StableRequests: m.Stable.Requests,
		ObservedShare:   100 * float64(m.Canary.Users) / float64(users),
		ConfiguredShare: stage.Weight, ExpectedShare: 100 * expected, PValue: ns.SRMP, Mismatch: ns.SRMP <= p.SRMAlpha,
	}
	if chi, err := stats.SampleRatioMismatch([]int{m.Stable.Users, m.Canary.Users}, []float64{1 - expected, expected}, p.SRMAlpha); err == nil {
		d.SRM.ChiSquareP = chi.PValue
	}
	if d.SRM.Mismatch {
		d.Action, d.Code = ActionPause, CodeSRM
		d.Reason = fmt.Sprintf("pause: sample-ratio mismatch, the canary has %.2f %% of %d %s (always-valid p=%s); the split is not what the control plane set, so no comparison can be trusted and a human should look (routing, stickiness, a failing pool, or telemetry loss)",
			d.SRM.ObservedShare, users, expectedSplit(stage.Weight, d.SRM.ExpectedShare, m), fmtP(ns.SRMP))
		return d, ns
	}

	// 4. Harm, per metric.
	metrics := sortedMetrics(p.Tolerances)
	d.Metrics = make([]MetricResult, len(metrics))
	var harmful []int
	for i, metric := range metrics {
		r, st := evaluate(p, metric, ns.Metrics[metric], ns.Events[metric], m)
		d.Metrics[i] = r
		if st.Looks > 0 {
			ns.Metrics[metric] = st
		}
		if r.Status == StatusHarm {
			harmful = append(harmful, i)
		}
	}
	if len(harmful) > 0 {
		parts := make([]string, len(harmful))
		for k, i := range harmful {
			parts[k] = describeHarm(d.Metrics[i])
		}
		d.Action, d.Code = ActionRollback, CodeHarm
		d.Reason = fmt.Sprintf("rollback: the canary %s is worse than stable %s beyond tolerance on %s, at %d canary requests in this stage",
			m.Canary.Version, m.Stable.Version, strings.Join(parts, "; "), m.Canary.Requests)
		return d, ns
	}
	if m.Canary.Users == 0 {
		return hold(CodeNoData, "no data: the canary %s has served no request since the stage began %s ago", m.Canary.Version, roundDur(d.InStage))
	}

	// 5. Advance or promote.
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
	if timeOK && samplesOK && len(missing) == 0 && (!last || len(undecided) == 0) {
		if last {
			d.Action, d.Code = ActionPromote, CodeWithinTolerance
			d.Reason = fmt.Sprintf("promote: after the last stage (%g %%), %s over %d canary requests in %s", stage.Weight, withinSummary(d.Metrics), m.Canary.Requests, roundDur(d.InStage))
		} else {
			d.Action, d.Code = ActionAdvance, CodeGuarded
			d.Reason = fmt.Sprintf("advance: %g %% to %g %%, no harm shown on %s over %d canary requests in %s", stage.Weight, stages[s.Stage+1].Weight, testedSummary(d.Metrics), m.Canary.Requests, roundDur(d.InStage))
		}
		return d, ns
	}

	// What is still missing, in one sentence.
	var waits []string
	code := CodeUndecided
	if last && len(undecided) > 0 {
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

	// 6. Past the maximum stage time.
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

	// 7. Hold.
	return hold(code, "%s", strings.Join(waits, "; "))
}

// openSpan makes sure the schedule's last span is the current stage's
// window: a state from before schedules existed, or a new stage, gets one.
func (s *StageState) openSpan(stage int, weight float64, from time.Time) {
	if n := len(s.Schedule); n > 0 {
		l := s.Schedule[n-1]
		if l.Stage == stage && l.To.IsZero() && !from.Before(l.From) {
			return
		}
		if l.To.IsZero() {
			s.Schedule[n-1].To = from
		}
	}
	s.Schedule = append(s.Schedule, Span{Stage: stage, Weight: weight, From: from})
	if s.Events == nil {
		s.Events = map[Metric]EventState{}
	}
}

// weightAt returns the canary's share in (0, 1) at t, false outside every
// span.
func weightAt(schedule []Span, t time.Time) (float64, bool) {
	for i := len(schedule) - 1; i >= 0; i-- {
		sp := schedule[i]
		if t.Before(sp.From) {
			continue
		}
		if !sp.To.IsZero() && !t.Before(sp.To) {
			return 0, false
		}
		return sp.Weight / 100, true
	}
	return 0, false
}

// measuredShare is the canary's expected share of measured users when it
// has share w of traffic: each arm's users count at its sample rate.
func measuredShare(w float64, m Measurements) float64 {
	rc, rs := knownRate(m.Canary.SampleRate), knownRate(m.Stable.SampleRate)
	return w * rc / (w*rc + (1-w)*rs)
}

// knownRate is a sample rate, 1 when unknown (unset, NaN or out of range).
func knownRate(r float64) float64 {
	if r > 0 && r <= 1 {
		return r
	}
	return 1
}

// expectedSplit says, in a reason, which share of users the canary should
// have: the configured one, or with a stable sample its share of the
// measured users.
func expectedSplit(configured, expected float64, m Measurements) string {
	if r := knownRate(m.Stable.SampleRate); r < 1 {
		return fmt.Sprintf("measured users but %.2f %% is expected (%g %% configured, %.4g %% of stable's users measured)", expected, configured, 100*r)
	}
	return fmt.Sprintf("users but %g %% is configured", configured)
}
