package analyzer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

// The shadow stage runs before any user sees the canary: Envoy mirrors a
// share of the model's user requests to it (xds.Shadow), the telemetry
// service records both answers of each request (the user's from stable,
// the mirrored one from the canary), the judge compares the two answers
// to the same prompt, and DecideShadow judges the pairs. The rollout
// then rolls back, or proceeds to its first user stage, on shadow
// evidence alone.

// ShadowPolicy configures a rollout's shadow stage. Zero fields take the
// defaults of DefaultShadowPolicy.
type ShadowPolicy struct {
	// Percent of the model's user requests mirrored to the canary, at
	// most xds.MaxShadowPercent. Default 10.
	Percent float64 `json:"percent,omitempty"`
	// MaxConcurrent caps the mirrored requests in flight at the canary's
	// pool (xds.Shadow.MaxConcurrent). Default xds.DefaultShadowConcurrency.
	MaxConcurrent uint32 `json:"max_concurrent,omitempty"`
	// MinPairs is the least number of judged pairs before the shadow
	// stage may pass. Default 200.
	MinPairs int `json:"min_pairs,omitempty"`
	// QualityTolerance is how much lower the canary's mean judged score
	// may be than stable's on the same prompts (for a 0/1 judge: how many
	// more bad answers in a hundred, over one hundred); the stage passes
	// once the paired difference's confidence sequence lies below it.
	// Default 0.05, the user stages' quality tolerance.
	QualityTolerance float64 `json:"quality_tolerance,omitempty"`
	// LatencyTolerance is how much slower (relative, paired total latency
	// ratio) the canary may be; harm is tested against HarmMargin of it,
	// as the user stages do. Default 0.2.
	LatencyTolerance float64 `json:"latency_tolerance,omitempty"`
	// MinLatencyPairs is the least number of paired latencies the ratio
	// test needs (its variance is estimated). Default 30.
	MinLatencyPairs int `json:"min_latency_pairs,omitempty"`
	// MaxDuration is the longest the shadow stage runs undecided before
	// it pauses for a human. Default 1h.
	MaxDuration config.Duration `json:"max_duration,omitempty"`
}

// DefaultShadowPolicy returns the defaults of a shadow stage.
func DefaultShadowPolicy() ShadowPolicy {
	return ShadowPolicy{
		Percent: 10, MaxConcurrent: xds.DefaultShadowConcurrency, MinPairs: 200, QualityTolerance: 0.05,
		LatencyTolerance: 0.2, MinLatencyPairs: 30, MaxDuration: config.Duration(time.Hour),
	}
}

// WithDefaults fills the zero fields.
func (p ShadowPolicy) WithDefaults() ShadowPolicy {
	d := DefaultShadowPolicy()
	if p.Percent == 0 {
		p.Percent = d.Percent
	}
	if p.MaxConcurrent == 0 {
		p.MaxConcurrent = d.MaxConcurrent
	}
	if p.MinPairs == 0 {
		p.MinPairs = d.MinPairs
	}
	if p.QualityTolerance == 0 {
		p.QualityTolerance = d.QualityTolerance
	}
	if p.LatencyTolerance == 0 {
		p.LatencyTolerance = d.LatencyTolerance
	}
	if p.MinLatencyPairs == 0 {
		p.MinLatencyPairs = d.MinLatencyPairs
	}
	if p.MaxDuration == 0 {
		p.MaxDuration = d.MaxDuration
	}
	return p
}

// Validate reports every invalid field of a policy with defaults applied.
func (p ShadowPolicy) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("shadow: "+format, a...)) }
	if !(p.Percent > 0 && p.Percent <= xds.MaxShadowPercent) || math.Abs(p.Percent*100-math.Round(p.Percent*100)) > 1e-6 {
		bad("percent %v must be in (0, %d] with at most two decimals", p.Percent, xds.MaxShadowPercent)
	}
	if p.MinPairs < 1 {
		bad("min_pairs %d must be positive", p.MinPairs)
	}
	if !(p.QualityTolerance > 0 && p.QualityTolerance < 1) {
		bad("quality_tolerance %v must be in (0, 1)", p.QualityTolerance)
	}
	if !(p.LatencyTolerance > 0) || math.IsInf(p.LatencyTolerance, 0) {
		bad("latency_tolerance %v must be positive", p.LatencyTolerance)
	}
	if p.MinLatencyPairs < 2 {
		bad("min_latency_pairs %d must be at least 2", p.MinLatencyPairs)
	}
	if p.MaxDuration.D() <= 0 {
		bad("max_duration %v must be positive", p.MaxDuration.D())
	}
	return errors.Join(errs...)
}

// Mirror returns the control plane's shadow setting for canary.
func (p ShadowPolicy) Mirror(canary string) *xds.Shadow {
	return &xds.Shadow{Version: canary, Percent: p.Percent, MaxConcurrent: p.MaxConcurrent}
}

// ShadowWindow selects a shadow stage's pairs: the mirrored requests of
// Model answered by Canary from From to To, paired with Stable's answers.
type ShadowWindow struct {
	Model, Stable, Canary string
	From, To              time.Time
}

// ShadowSource reads a shadow stage's pairs (chsource.Source on
// ClickHouse). Nothing mirrored yet is zero counts, not an error.
type ShadowSource interface {
	ShadowPairs(ctx context.Context, w ShadowWindow) (ShadowPairs, error)
}

// ShadowPairs is what the telemetry holds about the shadow stage's pairs:
// each a user's request answered by stable and its mirrored copy
// answered by the canary, matched by request id. Pairs whose stable
// answer failed are left out (no answer to compare with).
type ShadowPairs struct {
	// Mirrored counts the canary's shadow answers; Paired those with a
	// successful stable answer.
	Mirrored int `json:"mirrored"`
	Paired   int `json:"paired"`
	// CanaryFailed counts pairs whose shadow answer failed: the judge
	// scores it 0 without a call, so each is a loss unless stable's
	// answer scored 0 too.
	CanaryFailed int `json:"canary_failed"`
	// Wins, Losses, Ties are the verdicts of the judged pairs: the
	// canary's answer scored higher, stable's, or the same.
	Wins   int `json:"wins"`
	Losses int `json:"losses"`
	Ties   int `json:"ties"`
	// ScoreN judged pairs (a failed shadow answer scores 0) have the mean
	// and sample variance ScoreDiffMean, ScoreDiffVar of stable's score
	// minus the canary's.
	ScoreN        int     `json:"score_n"`
	ScoreDiffMean float64 `json:"score_diff_mean"`
	ScoreDiffVar  float64 `json:"score_diff_var"`
	// LatencyN pairs where both answered have the mean and sample
	// variance LogRatioMean, LogRatioVar of log(canary total / stable
	// total).
	LatencyN     int     `json:"latency_n"`
	LogRatioMean float64 `json:"log_ratio_mean"`
	LogRatioVar  float64 `json:"log_ratio_var"`
}

// ShadowDecision is one look at a shadow stage: what to do, why, and the
// evidence.
type ShadowDecision struct {
	At     time.Time `json:"at"`
	Action Action    `json:"action"`
	Code   Code      `json:"code"`
	Reason string    `json:"reason"`
	// Percent and MaxConcurrent are the mirrored load's caps.
	Percent       float64     `json:"percent"`
	MaxConcurrent uint32      `json:"max_concurrent"`
	Pairs         ShadowPairs `json:"pairs"`
	// Losses is the sign test of the verdicts: the canary's share of the
	// decided pairs it lost (harm); ScoreDiff the paired difference of
	// judged scores, stable's minus the canary's (tolerance); Latency the
	// ratio of the canary's total latency over stable's (geometric mean;
	// its p-value is the harm test's, its interval the tolerance's).
	Losses    PairTest `json:"losses"`
	ScoreDiff PairTest `json:"score_diff"`
	Latency   PairTest `json:"latency"`
	// Alpha is the rollout's level: the two harm tests share it, each
	// tolerance is shown at it.
	Alpha float64 `json:"alpha"`
}

// PairTest is one test of a shadow stage's pairs, as decisions record
// it: no interval until the test has its data.
type PairTest struct {
	Estimate float64         `json:"estimate"`
	CI       *stats.Interval `json:"ci,omitempty"`
	PValue   float64         `json:"p_value"`
	Harm     bool            `json:"harm"`
}

func pairTest(est float64, ci stats.Interval, p float64, harm, ok bool) PairTest {
	t := PairTest{PValue: p, Harm: harm}
	if ok && !math.IsNaN(est) {
		t.Estimate = est
		t.CI = &ci
	}
	return t
}

// ActionProceed ends a shadow stage that passed: the rollout goes on to
// its first user stage.
const ActionProceed Action = "proceed"

// CodeShadowPassed marks a shadow stage that passed.
const CodeShadowPassed Code = "shadow_passed"

// DecideShadow judges a shadow stage on its pairs since it started. It is
// pure. The two questions of the user stages, on pairs:
//
//  1. harm rolls back: the canary's answers shown (always-valid sign
//     test, ties dropped, failed shadow answers scored 0) to lose more often
//     than they win, with a mean score difference of at least HarmMargin
//     of the quality tolerance; or its paired latency shown slower than
//     HarmMargin of the latency tolerance with an estimate beyond the
//     tolerance. The two tests share alpha, so the stage may be looked at
//     after every pair;
//  2. with MinPairs judged pairs and the confidence sequences of the
//     paired score difference and latency ratio within their tolerances
//     (at alpha), the stage passes (proceed);
//  3. past MaxDuration it pauses for a human;
//  4. otherwise it holds, saying what is missing.
func DecideShadow(sp ShadowPolicy, alpha, harmMargin float64, started time.Time, pairs ShadowPairs, now time.Time) ShadowDecision {
	sp = sp.WithDefaults()
	d := ShadowDecision{At: now, Percent: sp.Percent, MaxConcurrent: sp.MaxConcurrent, Pairs: pairs, Alpha: alpha}
	losses := pairs.Losses
	sign, _ := stats.SignTest(pairs.Wins, losses, pairs.Ties, alpha/2)
	score, scoreErr := stats.PairedMeanTest(pairs.ScoreN, pairs.ScoreDiffMean, pairs.ScoreDiffVar,
		harmMargin*sp.QualityTolerance, sp.QualityTolerance, alpha, sp.MinLatencyPairs)
	tol := math.Log1p(sp.LatencyTolerance)
	lat, latErr := stats.PairedMeanTest(pairs.LatencyN, pairs.LogRatioMean, pairs.LogRatioVar,
		math.Log1p(harmMargin*sp.LatencyTolerance), tol, alpha/2, sp.MinLatencyPairs)
	// The tolerance side is shown at the full alpha (a separate question).
	latOK, _ := stats.PairedMeanTest(pairs.LatencyN, pairs.LogRatioMean, pairs.LogRatioVar, 0, tol, alpha, sp.MinLatencyPairs)
	ratioCI := stats.Interval{Lo: math.Exp(latOK.CI.Lo), Hi: math.Exp(latOK.CI.Hi)}
	d.Losses = pairTest(sign.LossShare, sign.CI, sign.PValue, sign.Harm, losses+pairs.Wins > 0)
	d.ScoreDiff = pairTest(score.Mean, score.CI, score.PValue, score.Harm, scoreErr == nil)
	d.Latency = pairTest(math.Exp(pairs.LogRatioMean), ratioCI, lat.PValue, lat.Harm, latErr == nil)
	judged := pairs.Wins + losses + pairs.Ties
	evidence := fmt.Sprintf("%d judged pairs: canary won %d, lost %d (%d failed), %d ties; stable's score minus the canary's %s (CS %s); latency ratio %s over %d pairs (CS %s)",
		judged, pairs.Wins, losses, pairs.CanaryFailed, pairs.Ties, num3(pairs.ScoreDiffMean, scoreErr == nil), interval(score.CI, scoreErr == nil, false),
		ratio(d.Latency.Estimate, latErr == nil), pairs.LatencyN, interval(latOK.CI, latErr == nil, true))
	switch {
	case sign.Harm && pairs.ScoreDiffMean >= harmMargin*sp.QualityTolerance:
		d.Action, d.Code = ActionRollback, CodeHarm
		d.Reason = fmt.Sprintf("rollback: in shadow, the canary's answers lose to stable's on the same prompts more often than they win (loss share %s, always-valid p %.3g ≤ %.3g); %s",
			pct(sign.LossShare), sign.PValue, alpha/2, evidence)
	case latErr == nil && lat.Harm && d.Latency.Estimate > 1+sp.LatencyTolerance:
		d.Action, d.Code = ActionRollback, CodeHarm
		d.Reason = fmt.Sprintf("rollback: in shadow, the canary is slower than stable on the same prompts by more than %.0f %% (always-valid p %.3g ≤ %.3g); %s",
			100*sp.LatencyTolerance, lat.PValue, alpha/2, evidence)
	case judged >= sp.MinPairs && scoreErr == nil && score.CI.Hi < sp.QualityTolerance && latErr == nil && latOK.CI.Hi < tol:
		d.Action, d.Code = ActionProceed, CodeShadowPassed
		d.Reason = fmt.Sprintf("shadow passed: the canary's judged score is at most %.3f below stable's (tolerance %.3f) and its latency at most %s stable's (tolerance %s); %s",
			score.CI.Hi, sp.QualityTolerance, ratio(math.Exp(latOK.CI.Hi), true), ratio(1+sp.LatencyTolerance, true), evidence)
	case now.Sub(started) >= sp.MaxDuration.D():
		d.Action, d.Code = ActionPause, CodeInconclusive
		d.Reason = fmt.Sprintf("pause: the shadow stage ran %v without a decision; %s", sp.MaxDuration.D(), evidence)
	case pairs.Mirrored == 0:
		d.Action, d.Code = ActionHold, CodeNoData
		d.Reason = fmt.Sprintf("hold: no mirrored answer yet (%g %% of user requests are mirrored, at most %d in flight)", sp.Percent, sp.MaxConcurrent)
	case judged < sp.MinPairs:
		d.Action, d.Code = ActionHold, CodeMinSamples
		d.Reason = fmt.Sprintf("hold: %d of %d judged pairs; %s", judged, sp.MinPairs, evidence)
	default:
		d.Action, d.Code = ActionHold, CodeUndecided
		d.Reason = "hold: neither harm nor tolerance shown yet; " + evidence
	}
	return d
}

func pct(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f %%", 100*x)
}

func ratio(x float64, ok bool) string {
	if !ok || math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%.3g×", x)
}

func num3(x float64, ok bool) string {
	if !ok || math.IsNaN(x) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", x)
}

func interval(iv stats.Interval, ok, asRatio bool) string {
	if !ok || math.IsInf(iv.Hi, 1) {
		return "n/a"
	}
	if asRatio {
		return "[" + ratio(math.Exp(iv.Lo), true) + ", " + ratio(math.Exp(iv.Hi), true) + "]"
	}
	return fmt.Sprintf("[%.3f, %.3f]", iv.Lo, iv.Hi)
}
