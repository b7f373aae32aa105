package analyzer

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// MaxCandidates bounds the candidates of one A/B/n experiment: every arm
// divides the family's alpha further and takes users from stable.
const MaxCandidates = 5

// ArmStatus is where one candidate of an A/B/n experiment stands.
type ArmStatus string

const (
	// ArmRunning: no decision yet; the arm keeps its share.
	ArmRunning ArmStatus = "running"
	// ArmDropped: significantly worse than stable on a metric; its share
	// went to stable.
	ArmDropped ArmStatus = "dropped"
	// ArmBetter: significantly better than stable on at least one metric
	// and within tolerance on every other.
	ArmBetter ArmStatus = "better"
	// ArmWithin: within tolerance of stable on every metric.
	ArmWithin ArmStatus = "within_tolerance"
)

// Candidate is one arm of an A/B/n experiment: a version with its fixed
// share of users, its running test state and its latest report.
type Candidate struct {
	Version string    `json:"version"`
	Split   float64   `json:"split"`
	Status  ArmStatus `json:"status"`
	// Reason says why the arm was decided; Decided is when.
	Reason  string            `json:"reason,omitempty"`
	Decided time.Time         `json:"decided,omitzero"`
	State   StageState        `json:"state"`
	Report  *ExperimentReport `json:"report,omitempty"`
}

// ABNReport is one look at an A/B/n experiment.
type ABNReport struct {
	At time.Time `json:"at"`
	// Tests is the family the multiplicity control covers: candidates
	// times guarded metrics; Correction is how (holm).
	Tests      int    `json:"tests"`
	Correction string `json:"correction"`
	// Dropped names the candidates dropped at this look.
	Dropped []string `json:"dropped,omitempty"`
	// Done: every arm is decided or the experiment reached its deadline.
	Done bool `json:"done"`
	// Winner is the surviving candidate best on the primary metric when
	// Done; the experiment never promotes it: people decide.
	Winner  string `json:"winner,omitempty"`
	Primary Metric `json:"primary,omitempty"`
	Summary string `json:"summary"`
}

// ABN judges one look at an A/B/n experiment. ms[i] is candidate i
// measured against stable over the same window (ignored for dropped
// candidates, which are not measured any more). Each candidate gets the
// always-valid tests of Experiment; the family-wise error is controlled
// across candidates × metrics by Holm over the running minima of the
// always-valid p-values (each is a valid p-value at any stopping time and
// Holm is monotone in them, so a rejection at any look stays within the
// family's alpha). A candidate significantly worse than stable on a metric
// is dropped; one shown better or within tolerance on every metric is
// marked so. The experiment is done when no arm is running or at deadline
// (zero: none). ABN is pure: it returns the candidates as they should be
// stored.
func ABN(p Policy, cands []Candidate, ms []Measurements, now, deadline time.Time) (ABNReport, []Candidate) {
	out := make([]Candidate, len(cands))
	copy(out, cands)
	k := len(out)
	rep := ABNReport{At: now, Correction: stats.Holm.String(), Primary: primaryMetric(p)}
	if k == 0 {
		rep.Summary = "no candidates"
		return rep, out
	}
	// Each candidate's own intervals are at alpha/(candidates×metrics), so
	// the within-tolerance marks are covered by Bonferroni.
	pa := p
	pa.Alpha = p.Alpha / float64(k)
	stableShare := 100.0
	surviving := 0.0
	anyDropped := false
	for _, c := range out {
		stableShare -= c.Split
		if c.Status == ArmDropped {
			anyDropped = true
		} else {
			surviving += c.Split
		}
	}
	type ref struct{ arm, metric int }
	var ps []float64
	var refs []ref
	for i := range out {
		c := &out[i]
		if c.Status != ArmDropped && i < len(ms) {
			prevP, prevLooks := c.State.SRMP, c.State.SRMLooks
			r, ns := Experiment(pa, c.State, ms[i], c.Split, now)
			ns.SRMP, ns.SRMLooks = prevP, prevLooks
			r.SRM = armSRM(p, &ns, ms, out, i, stableShare, surviving, anyDropped)
			c.State, c.Report = ns, &r
		}
		if c.Report == nil {
			continue
		}
		for j, em := range c.Report.Metrics {
			ps = append(ps, em.PValue)
			refs = append(refs, ref{i, j})
		}
	}
	// The family is fixed before the data: every candidate × every guarded
	// metric, a test without data yet counting with p = 1. A family that
	// grew with the data would spend the whole alpha on the first metric
	// measured.
	for len(ps) < k*len(p.Tolerances) {
		ps = append(ps, 1)
	}
	rep.Tests = len(ps)
	if len(ps) > 0 {
		adj, err := stats.Adjust(ps, stats.Holm)
		if err != nil {
			// The p-values are running minima in [0, 1]; an error here is
			// a bug, not data.
			panic(fmt.Sprintf("abn: %v", err))
		}
		for n, r := range refs {
			c := &out[r.arm]
			if c.Status == ArmDropped && !contains(rep.Dropped, c.Version) {
				continue // a dropped arm's report stays as it was decided
			}
			em := &c.Report.Metrics[r.metric]
			em.Adjusted = adj[n]
			em.Significant = adj[n] <= p.Alpha
			em.Better = ""
			if em.Significant {
				em.Status = "significant"
				em.Better = c.Version
				if worseThanStable(em.Kind, em.Effect) {
					em.Better = "stable"
				}
			} else if em.Status == "significant" {
				em.Status = "undecided"
			}
		}
	}
	var notes []string
	for i := range out {
		c := &out[i]
		if c.Status == ArmDropped || c.Report == nil {
			continue
		}
		if c.Report.SRM != nil && c.Report.SRM.Mismatch {
			notes = append(notes, fmt.Sprintf("%s: sample-ratio mismatch (%.2f %% of users, %.2f %% expected, p=%s), not judged", c.Version, c.Report.SRM.ObservedShare, c.Report.SRM.ConfiguredShare, fmtP(c.Report.SRM.PValue)))
			continue
		}
		// A candidate marked better or within tolerance keeps being
		// measured: if it turns out significantly worse it is dropped all
		// the same; otherwise its mark stays.
		status, why := judgeArm(p, c.Report.Metrics)
		if status == ArmRunning || c.Status != ArmRunning && status != ArmDropped {
			continue
		}
		c.Status, c.Reason, c.Decided = status, fmt.Sprintf("%s %s: %s (Holm over %d tests at alpha %g)", c.Version, status, why, rep.Tests, p.Alpha), now
		if status == ArmDropped {
			rep.Dropped = append(rep.Dropped, c.Version)
		}
		notes = append(notes, c.Reason)
	}
	running := 0
	for _, c := range out {
		if c.Status == ArmRunning {
			running++
		}
	}
	rep.Done = running == 0 || !deadline.IsZero() && !now.Before(deadline)
	if rep.Done {
		rep.Winner = winner(out, rep.Primary)
		end := "every arm is decided"
		if running > 0 {
			end = "the experiment reached its maximum duration"
		}
		w := "no surviving candidate"
		if rep.Winner != "" {
			w = fmt.Sprintf("best surviving candidate on %s: %s (not promoted: an A/B/n experiment is decided by people)", rep.Primary, rep.Winner)
		}
		notes = append(notes, end+"; "+w)
	}
	if len(notes) == 0 {
		notes = append(notes, fmt.Sprintf("no arm decided yet: %d running, %d tests under Holm", running, rep.Tests))
	}
	rep.Summary = strings.Join(notes, "; ")
	return rep, out
}

// armSRM checks candidate i's users against the configured split. While
// no arm is dropped the reference is stable: the arm should hold
// split/(split+stable share) of the two arms' users. After a drop stable
// also serves the dropped arm's users, so the surviving candidates are
// compared with each other instead (none when one survives).
func armSRM(p Policy, ns *StageState, ms []Measurements, cands []Candidate, i int, stableShare, surviving float64, anyDropped bool) *SRMCheck {
	m := ms[i]
	c := cands[i]
	var mine, total int
	var share float64
	if !anyDropped {
		mine, total = m.Canary.Users, m.Canary.Users+m.Stable.Users
		share = c.Split / (c.Split + stableShare)
	} else {
		for j, o := range cands {
			if o.Status == ArmDropped || j >= len(ms) {
				continue
			}
			total += ms[j].Canary.Users
		}
		mine = m.Canary.Users
		share = c.Split / surviving
	}
	if total == 0 || share >= 1 {
		return nil
	}
	if ns.SRMLooks == 0 {
		ns.SRMP = 1
	}
	ns.SRMLooks++
	ns.SRMP = math.Min(ns.SRMP, stats.UsersSRM(mine, total, share))
	return &SRMCheck{CanaryUsers: mine, StableUsers: total - mine, CanaryRequests: m.Canary.Requests, StableRequests: m.Stable.Requests,
		ObservedShare: 100 * float64(mine) / float64(total), ConfiguredShare: 100 * share, PValue: ns.SRMP, Mismatch: ns.SRMP <= p.SRMAlpha}
}

// judgeArm decides one candidate from its Holm-adjusted metrics: dropped
// when significantly worse on any; better when significantly better on
// one and within tolerance (interval on the good side of the tolerance)
// on the others; within when within tolerance on all.
func judgeArm(p Policy, ms []ExperimentMetric) (ArmStatus, string) {
	for _, em := range ms {
		if em.Significant && worseThanStable(em.Kind, em.Effect) {
			return ArmDropped, fmt.Sprintf("%s %s worse than stable (adjusted p=%s)", em.Metric, fmtEffect(em.Kind, em.Effect), fmtP(em.Adjusted))
		}
	}
	if len(ms) == 0 {
		return ArmRunning, ""
	}
	better := []string{}
	for _, em := range ms {
		switch {
		case em.Significant:
			better = append(better, fmt.Sprintf("%s %s", em.Metric, fmtEffect(em.Kind, em.Effect)))
		case em.CI == nil:
			return ArmRunning, ""
		default:
			tol := p.Tolerances[em.Metric]
			if em.Kind == KindScore && em.CI.Lo < -tol || em.Kind != KindScore && em.CI.Hi > tol {
				return ArmRunning, ""
			}
		}
	}
	if len(better) > 0 {
		return ArmBetter, "better than stable on " + strings.Join(better, ", ") + ", within tolerance on the rest"
	}
	return ArmWithin, "within tolerance of stable on every metric"
}

// worseThanStable reads an effect's direction: higher is worse except for
// scores.
func worseThanStable(k Kind, effect float64) bool {
	if k == KindScore {
		return effect < 0
	}
	return effect > 0
}

// primaryMetric is the metric a winner is chosen on: quality when the
// policy guards it, else the first guarded metric.
func primaryMetric(p Policy) Metric {
	if _, ok := p.Tolerances[MetricQuality]; ok {
		return MetricQuality
	}
	if ms := sortedMetrics(p.Tolerances); len(ms) > 0 {
		return ms[0]
	}
	return ""
}

// winner is the surviving candidate with the best effect on primary,
// decided arms before undecided ones at equal effect; "" when none
// survives or none measured it.
func winner(cands []Candidate, primary Metric) string {
	type arm struct {
		v     string
		score float64
	}
	var arms []arm
	for _, c := range cands {
		if c.Status == ArmDropped || c.Report == nil {
			continue
		}
		for _, em := range c.Report.Metrics {
			if em.Metric != primary || em.NCanary == 0 {
				continue
			}
			s := em.Effect
			if em.Kind == KindScore {
				s = -s
			}
			arms = append(arms, arm{c.Version, s})
		}
	}
	if len(arms) == 0 {
		return ""
	}
	sort.SliceStable(arms, func(a, b int) bool { return arms[a].score < arms[b].score })
	return arms[0].v
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// ArmWeights returns the weights of stable and candidates for the control
// plane: each running or decided candidate its split, a dropped one 0,
// stable the rest. While several candidates have traffic the control
// plane gives each a lane of the bucket range (xds.Lane), so a drop hands
// the dropped arm's users to stable and moves no other arm's.
func ArmWeights(stable string, cands []Candidate) map[string]float64 {
	w := map[string]float64{}
	rest := 100.0
	for _, c := range cands {
		s := c.Split
		if c.Status == ArmDropped {
			s = 0
		}
		w[c.Version] = s
		rest -= s
	}
	w[stable] = rest
	return w
}

// validateCandidates checks an A/B/n start request and fills in Splits:
// mode abtest, 2 to MaxCandidates distinct candidates other than stable,
// each a positive share (Splits, else Split, else an equal share with
// stable), the candidates' total below 100.
func validateCandidates(req *StartRequest) []error {
	var errs []error
	if req.Mode != ModeABTest {
		errs = append(errs, fmt.Errorf("several candidates (%s) need mode abtest", strings.Join(req.Candidates, ", ")))
	}
	if req.Revert {
		errs = append(errs, errors.New("a revert has no candidates"))
	}
	if len(req.Candidates) > MaxCandidates {
		errs = append(errs, fmt.Errorf("%d candidates: at most %d", len(req.Candidates), MaxCandidates))
	}
	seen := map[string]bool{}
	for _, c := range req.Candidates {
		switch {
		case c == "":
			errs = append(errs, errors.New("a candidate has an empty name"))
		case seen[c]:
			errs = append(errs, fmt.Errorf("candidate %q is named twice", c))
		case req.Stable != "" && c == req.Stable:
			errs = append(errs, fmt.Errorf("candidate %q is the stable version", c))
		}
		seen[c] = true
	}
	for v := range req.Splits {
		if !seen[v] {
			errs = append(errs, fmt.Errorf("splits names %q, which is not a candidate", v))
		}
	}
	if len(req.Splits) > 0 && req.Split != 0 {
		errs = append(errs, errors.New("give split or splits, not both"))
	}
	splits := map[string]float64{}
	total := 0.0
	for _, c := range req.Candidates {
		s, ok := req.Splits[c]
		switch {
		case ok:
		case len(req.Splits) > 0:
			errs = append(errs, fmt.Errorf("splits has no share for candidate %q", c))
		case req.Split != 0:
			s = req.Split
		default:
			s = math.Floor(10000/float64(len(req.Candidates)+1)) / 100
		}
		if !(s > 0 && s < 100) {
			errs = append(errs, fmt.Errorf("candidate %q: split %v must be in (0, 100)", c, s))
		}
		splits[c] = s
		total += s
	}
	if total >= 100 {
		errs = append(errs, fmt.Errorf("the candidates' splits add up to %g %%: they must leave stable a share (below 100)", total))
	}
	req.Splits = splits
	return errs
}
