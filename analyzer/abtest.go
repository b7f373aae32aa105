package analyzer

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// ExperimentMetric is one metric of an A/B test at one look. Effect and CI
// are in the metric's Kind, canary against stable.
type ExperimentMetric struct {
	Metric      Metric  `json:"metric"`
	Kind        Kind    `json:"kind"`
	CanaryValue float64 `json:"canary_value"`
	StableValue float64 `json:"stable_value"`
	Effect      float64 `json:"effect"`
	// CI is the always-valid interval so far; PValue the always-valid
	// p-value of "no difference" (running minimum).
	CI     *stats.Interval `json:"ci,omitempty"`
	PValue float64         `json:"p_value"`
	// Adjusted is the p-value adjusted across an A/B/n experiment's
	// candidates and metrics (Holm); 0 in a two-arm test.
	Adjusted    float64 `json:"adjusted_p,omitempty"`
	Significant bool    `json:"significant"`
	// Better names the version the data favours when Significant.
	Better string `json:"better,omitempty"`
	// WinRate is P(a canary request is better than a stable one), ties
	// counting half, for per-request values (not for rates).
	WinRate *float64 `json:"win_rate,omitempty"`
	NCanary int      `json:"n_canary"`
	NStable int      `json:"n_stable"`
	// NeededPerArm is the fixed-horizon sample size per arm to detect a
	// difference of the metric's tolerance at the policy's alpha and power;
	// Remaining is how many more the smaller arm needs. A planning figure:
	// the sequential test usually needs somewhat more.
	NeededPerArm int    `json:"needed_per_arm,omitempty"`
	Remaining    int    `json:"remaining,omitempty"`
	Status       string `json:"status"` // significant, undecided, too_few, not_measured
}

// ExperimentReport is one look at an A/B test.
type ExperimentReport struct {
	At      time.Time          `json:"at"`
	Split   float64            `json:"split"`
	SRM     *SRMCheck          `json:"srm,omitempty"`
	Metrics []ExperimentMetric `json:"metrics,omitempty"`
	Summary string             `json:"summary"`
}

// Experiment judges one look at an A/B test with a fixed split: for every
// metric an always-valid two-sided test of "no difference" (mixture SPRT
// with tau equal to the metric's tolerance, alpha split among the metrics
// by Bonferroni), the effect with its confidence sequence, the win rate and
// the samples still needed. Like Decide it is pure; the state's Metrics
// keep the running p-values (HarmP) and intervals.
func Experiment(p Policy, s StageState, m Measurements, split float64, now time.Time) (ExperimentReport, StageState) {
	ns := s.clone()
	ns.Looks++
	rep := ExperimentReport{At: now, Split: split}
	if m.Canary.Requests == 0 || m.Stable.Requests == 0 {
		rep.Summary = fmt.Sprintf("no data yet: %d canary and %d stable requests", m.Canary.Requests, m.Stable.Requests)
		return rep, ns
	}
	// The split check counts users, as a canary's does, with the running
	// minimum of its always-valid p-value: a chi-square test re-run at
	// every look would page on healthy experiments.
	users := m.Canary.Users + m.Stable.Users
	if users > 0 {
		if ns.SRMLooks == 0 {
			ns.SRMP = 1
		}
		ns.SRMLooks++
		ns.SRMP = math.Min(ns.SRMP, stats.UsersSRM(m.Canary.Users, users, split/100))
		rep.SRM = &SRMCheck{CanaryUsers: m.Canary.Users, StableUsers: m.Stable.Users,
			CanaryRequests: m.Canary.Requests, StableRequests: m.Stable.Requests,
			ObservedShare: 100 * float64(m.Canary.Users) / float64(users), ConfiguredShare: split,
			PValue: ns.SRMP, Mismatch: ns.SRMP <= p.SRMAlpha}
	}
	metrics := sortedMetrics(p.Tolerances)
	alpha := p.Alpha / float64(len(metrics))
	var sig []string
	for _, metric := range metrics {
		kind, _ := MetricKind(metric)
		tol := p.Tolerances[metric]
		e := estimateWindow(metric, m)
		st := ns.Metrics[metric]
		if st.Looks == 0 {
			st.HarmP, st.SafeP = 1, 1
		}
		em := ExperimentMetric{Metric: metric, Kind: kind, CanaryValue: e.canary, StableValue: e.stable, NCanary: e.nCanary, NStable: e.nStable, PValue: 1}
		// An arm with nothing to measure has no value (NaN, which JSON
		// cannot hold): it stays 0 and the status says not_measured.
		if math.IsNaN(em.CanaryValue) {
			em.CanaryValue = 0
		}
		if math.IsNaN(em.StableValue) {
			em.StableValue = 0
		}
		switch {
		case e.nCanary == 0 || e.nStable == 0 || !e.ok && e.nCanary >= p.MinTestSamples:
			em.Status = "not_measured"
		case e.nCanary < p.MinTestSamples || e.nStable < p.MinTestSamples || e.uCanary < p.MinTestUsers || e.uStable < p.MinTestUsers || !e.ok:
			em.Status = "too_few"
		default:
			v := math.Max(e.variance, 1e-12)
			tau2 := tol * tol
			st.HarmP = math.Min(st.HarmP, math.Min(1, math.Exp(-stats.MixtureLogLR(e.effect, 0, v, tau2))))
			st.look(e.effect, v, tau2, alpha)
			ns.Metrics[metric] = st
			em.Effect = e.effect
			em.Status = "undecided"
		}
		if st.Looks > 0 {
			em.PValue = st.HarmP
			if st.CI != nil {
				ci := *st.CI
				em.CI = &ci
			}
			em.Status = "undecided"
			if st.HarmP <= alpha {
				em.Status, em.Significant = "significant", true
				// Higher is worse except for scores.
				worse := em.Effect > 0
				if kind == KindScore {
					worse = !worse
				}
				em.Better = m.Canary.Version
				if worse {
					em.Better = m.Stable.Version
				}
				sig = append(sig, fmt.Sprintf("%s %s (better: %s)", metric, fmtEffect(kind, em.Effect), em.Better))
			}
		}
		em.WinRate = winRate(metric, m)
		em.NeededPerArm = neededPerArm(p, metric, kind, tol, m, alpha)
		if em.NeededPerArm > 0 {
			em.Remaining = max(0, em.NeededPerArm-min(em.NCanary, em.NStable))
		}
		rep.Metrics = append(rep.Metrics, em)
	}
	switch {
	case rep.SRM != nil && rep.SRM.Mismatch:
		rep.Summary = fmt.Sprintf("sample-ratio mismatch: the canary got %.2f %% but %g %% is configured (p=%s); the comparison cannot be trusted", rep.SRM.ObservedShare, split, fmtP(rep.SRM.PValue))
	case len(sig) > 0:
		rep.Summary = "significant differences: " + strings.Join(sig, "; ")
	default:
		rep.Summary = fmt.Sprintf("no significant difference yet over %d canary and %d stable requests", m.Canary.Requests, m.Stable.Requests)
	}
	return rep, ns
}

// winRate is P(canary request better than a stable one) from the
// Mann-Whitney AUC, for per-request values.
func winRate(metric Metric, m Measurements) *float64 {
	var c, s []float64
	higherBetter := false
	switch metric {
	case MetricLatency:
		c, s = m.Canary.LatencyMs, m.Stable.LatencyMs
	case MetricTTFT:
		c, s = m.Canary.TTFTMs, m.Stable.TTFTMs
	case MetricITL:
		c, s = m.Canary.ITLMs, m.Stable.ITLMs
	case MetricCostPerRequest:
		c, s = m.Canary.CostUSD, m.Stable.CostUSD
	case MetricTokensPerAnswer:
		c, s = m.Canary.CompletionTokens, m.Stable.CompletionTokens
	case MetricQuality:
		c, s, higherBetter = m.Canary.Quality, m.Stable.Quality, true
	default:
		return nil
	}
	r, err := stats.MannWhitney(c, s, stats.TwoSided, stats.MWAsymptotic)
	if err != nil || math.IsNaN(r.AUC) {
		return nil
	}
	w := 1 - r.AUC
	if higherBetter {
		w = r.AUC
	}
	return &w
}

// neededPerArm plans the fixed-horizon sample size per arm that detects a
// difference of the tolerance; 0 when it cannot be planned yet.
func neededPerArm(p Policy, metric Metric, kind Kind, tol float64, m Measurements, alpha float64) int {
	e := estimateWindow(metric, m)
	if e.nStable < 2 {
		return 0
	}
	var n float64
	var err error
	switch kind {
	case KindPoints:
		base := math.Min(math.Max(e.stable, 1e-4), 1-tol-1e-4)
		n, err = stats.SampleSizeProportions(base, tol, alpha, p.Power)
	default:
		// The effect's standard deviation per observation, from the
		// variance of the estimate and the arms' sizes.
		if !e.ok || e.variance <= 0 {
			return 0
		}
		sd := math.Sqrt(e.variance / (1/float64(e.nCanary) + 1/float64(e.nStable)))
		n, err = stats.SampleSizeMeans(sd, tol, alpha, p.Power)
	}
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
		return 0
	}
	return int(math.Ceil(n))
}
