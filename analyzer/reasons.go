package analyzer

import (
	"fmt"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// The sentences decisions give: one clause per metric, numbers first.

func describeHarm(r MetricResult) string {
	s := fmt.Sprintf("%s %s (", r.Metric, fmtEffect(r.Kind, r.Estimate))
	if r.Events > 0 {
		s += fmt.Sprintf("risk ratio %s over %d users' first events, %d on the canary, ", FormatRiskRatio(r.RiskRatio), r.Events, r.CanaryEvents)
	} else if r.CI != nil {
		s += fmt.Sprintf("interval %s to %s, ", fmtEffect(r.Kind, r.CI.Lo), fmtEffect(r.Kind, r.CI.Hi))
	}
	s += fmt.Sprintf("tolerance %s, p=%s against its level %s)", fmtTolerance(r.Kind, r.Tolerance), fmtP(r.HarmP), fmtP(r.HarmAlpha))
	if r.Note != "" {
		s += ": " + r.Note
	}
	return s
}

// FormatRiskRatio gives a risk ratio; at the end of the test's grid it is a
// lower bound (a stable without events makes it unbounded).
func FormatRiskRatio(rr float64) string {
	if stats.AtGridEnd(rr) {
		return fmt.Sprintf("at least %.0f", stats.RiskGridEnd())
	}
	return fmt.Sprintf("%.2f", rr)
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

// testedSummary lists the metrics an early stage looked at, with their
// estimates.
func testedSummary(rs []MetricResult) string {
	var in, out []string
	for _, r := range rs {
		switch r.Status {
		case StatusNotMeasured, StatusTooFew:
			out = append(out, string(r.Metric))
		default:
			in = append(in, fmt.Sprintf("%s %s", r.Metric, fmtEffect(r.Kind, r.Estimate)))
		}
	}
	s := strings.Join(in, ", ")
	if len(in) == 0 {
		s = "no metric yet"
	}
	if len(out) > 0 {
		s += " (too few data: " + strings.Join(out, ", ") + ")"
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
