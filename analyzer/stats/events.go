package stats

import (
	"math"
)

// RiskGrid is the grid of risk ratios rho (canary's event rate over
// stable's) on which EventTest keeps its log-likelihoods: log-spaced from
// 1/16 to 64. The points above 1 carry the harm mixture; all of them give
// the estimate.
var RiskGrid = func() []float64 {
	const n, lo, hi = 49, 1.0 / 16, 64.0
	g := make([]float64, n)
	for i := range g {
		g[i] = lo * math.Pow(hi/lo, float64(i)/float64(n-1))
	}
	return g
}()

// riskPrior returns the mixing weights of the harm mixture against the
// null rho <= RiskGrid[null]: a half-normal on log(rho / rho0) with scale
// log 3 over the grid points above the null, zero elsewhere, summing to 1
// so that the mixture of the grid's likelihood ratios is a test
// supermartingale. The scale centres it on the regressions a canary must
// be caught at: two to five times the null's rate.
func riskPrior(null int) []float64 {
	w := make([]float64, len(RiskGrid))
	var sum float64
	s := math.Log(3)
	for i := null + 1; i < len(RiskGrid); i++ {
		l := math.Log(RiskGrid[i]/RiskGrid[null]) / s
		w[i] = math.Exp(-l * l / 2)
		sum += w[i]
	}
	for i := range w {
		w[i] /= sum
	}
	return w
}

// RiskGridEnd is the grid's largest risk ratio.
func RiskGridEnd() float64 { return RiskGrid[len(RiskGrid)-1] }

// AtGridEnd says a risk ratio is the grid's largest: as an estimate, a
// lower bound (a stable without events makes the ratio unbounded).
func AtGridEnd(rr float64) bool { return rr >= RiskGridEnd()*(1-1e-9) }

// NullIndex returns the index of the smallest grid point at or above
// rho0 (at least 1): testing against it is valid for every rho <= rho0.
// The grid's last point is never the null, since the harm mixture needs a
// point above it: a rho0 beyond the second-to-last point is tested at
// that point, a smaller null (rejecting it still shows the canary worse
// than stable, by less than rho0 asked).
func NullIndex(rho0 float64) int {
	rho0 = math.Max(rho0, 1)
	for i, r := range RiskGrid[:len(RiskGrid)-1] {
		if r >= rho0*(1-1e-9) {
			return i
		}
	}
	return len(RiskGrid) - 2
}

// EventTest is an exact sequential test that a canary does not cause more
// events (errors, refusals, bad answers, requests beyond a latency
// threshold) than stable, conditional on the events.
//
// Each event is drawn from one arm. Under the null, an event lands on the
// canary with probability pi, the canary's share of the exposure at that
// moment: the canary's traffic weight when routing is random, or its share
// of judged answers. If the canary's event rate is rho times stable's, the
// probability is rho pi / (rho pi + 1 - pi). The product over events of
// these Bernoulli likelihoods against pi is, for every fixed rho, a
// martingale under the null whatever pi does from one event to the next;
// the mixture over rho > 1 (riskPrior) is one too, so by Ville's
// inequality the chance that it ever reaches 1/alpha is at most alpha. It
// can be checked at every event, across weight changes and stage
// boundaries, with no look schedule.
//
// Counting each user's first event only (what the analyzer feeds it)
// keeps it exact when users differ: under the null a user's first event
// happens when it happens whichever arm the user is on, and the arm is the
// user's hash, independent of the user's behaviour. A user who fails a lot
// is one event, not a cluster of correlated ones.
//
// The null may sit above rho = 1, "the canary causes at most rho0 times
// stable's events", so that a canary worse by less than a margin is not
// rolled back: SetNull fixes rho0 once, and the running maximum is
// tracked from then on (a maximum over fewer times is still valid).
//
// The zero value is ready (null rho = 1); it marshals to JSON so the
// state survives a restart.
type EventTest struct {
	Events int `json:"events"`
	Canary int `json:"canary"`
	// Null indexes RiskGrid: the null is rho <= RiskGrid[Null]; NullSet
	// says SetNull fixed it (else it is rho = 1).
	Null    int  `json:"null"`
	NullSet bool `json:"null_set"`
	// LogLik is the log-likelihood ratio of each RiskGrid point against
	// rho = 1 over the events so far.
	LogLik []float64 `json:"log_lik,omitempty"`
	// MaxLogM is the running maximum, over events, of the log of the
	// mixture likelihood ratio: the always-valid p-value is exp(-MaxLogM).
	MaxLogM float64 `json:"max_log_m"`
}

// Observe folds one event in: canary says which arm it landed on and pi
// is the canary's share of exposure when it happened, in (0, 1). Events
// with pi outside (0, 1) carry no information and are ignored.
func (t *EventTest) Observe(canary bool, pi float64) {
	if !(pi > 0 && pi < 1) {
		return
	}
	if t.LogLik == nil {
		t.LogLik = make([]float64, len(RiskGrid))
	}
	t.Events++
	if canary {
		t.Canary++
	}
	for i, r := range RiskGrid {
		den := r*pi + 1 - pi
		if canary {
			t.LogLik[i] += math.Log(r / den)
		} else {
			t.LogLik[i] -= math.Log(den)
		}
	}
	if lm := t.logMixture(); lm > t.MaxLogM {
		t.MaxLogM = lm
	}
}

// SetNull fixes the null at rho0 (rounded up to the grid) the first
// time it is called; later calls change nothing.
func (t *EventTest) SetNull(rho0 float64) {
	if t.NullSet {
		return
	}
	t.Null, t.NullSet = NullIndex(rho0), true
	t.MaxLogM = 0
	if t.LogLik != nil {
		t.MaxLogM = math.Max(0, t.logMixture())
	}
}

func (t *EventTest) null() int {
	if t.NullSet {
		return t.Null
	}
	return NullIndex(1)
}

var priors = func() [][]float64 {
	p := make([][]float64, len(RiskGrid)-1)
	for i := range p {
		p[i] = riskPrior(i)
	}
	return p
}()

func (t *EventTest) logMixture() float64 {
	// log sum_i w_i exp(l_i - l_null), stably.
	null := t.null()
	prior := priors[null]
	m := math.Inf(-1)
	for i, w := range prior {
		if w > 0 && t.LogLik[i] > m {
			m = t.LogLik[i]
		}
	}
	var s float64
	for i, w := range prior {
		if w > 0 {
			s += w * math.Exp(t.LogLik[i]-m)
		}
	}
	return m + math.Log(s) - t.LogLik[null]
}

// PValue is the always-valid p-value of "the canary causes at most rho0
// times stable's events": non-increasing as events arrive.
func (t EventTest) PValue() float64 { return math.Min(1, math.Exp(-t.MaxLogM)) }

// RiskRatio is the maximum-likelihood risk ratio over RiskGrid (refined by
// a parabola through the neighbouring points); 1 before any event.
func (t EventTest) RiskRatio() float64 {
	if t.Events == 0 || len(t.LogLik) != len(RiskGrid) {
		return 1
	}
	best := 0
	for i, l := range t.LogLik {
		if l > t.LogLik[best] {
			best = i
		}
	}
	x := math.Log(RiskGrid[best])
	if best > 0 && best < len(RiskGrid)-1 {
		l0, l1, l2 := t.LogLik[best-1], t.LogLik[best], t.LogLik[best+1]
		if den := l0 - 2*l1 + l2; den < 0 {
			h := math.Log(RiskGrid[best+1]) - x
			x += 0.5 * h * (l0 - l2) / den
		}
	}
	return math.Exp(x)
}

// ShrunkRatio is the risk ratio estimate the harm rule holds against the
// tolerance: the posterior mean of log rho under a prior of one half on
// "no harm" (rho = 1) and one half on the harm mixture. With few events
// it stays near 1, where the maximum-likelihood ratio of three events
// against one would claim a tripling; with many it is the
// maximum-likelihood estimate.
func (t EventTest) ShrunkRatio() float64 {
	if t.Events == 0 || len(t.LogLik) != len(RiskGrid) {
		return 1
	}
	one := NullIndex(1)
	prior := priors[t.null()]
	m := t.LogLik[one]
	for i, w := range prior {
		if w > 0 {
			m = math.Max(m, t.LogLik[i])
		}
	}
	z := 0.5 * math.Exp(t.LogLik[one]-m)
	num := z * math.Log(RiskGrid[one])
	for i, w := range prior {
		if w > 0 {
			p := 0.5 * w * math.Exp(t.LogLik[i]-m)
			z += p
			num += p * math.Log(RiskGrid[i])
		}
	}
	return math.Exp(num / z)
}

// UsersSRM is the always-valid p-value of "each user is on the canary
// with probability w", given canary users out of total: the likelihood
// ratio of a beta-binomial mixture against the binomial, whose prior is
// centred on w with a standard deviation of a quarter of the smaller
// share (a 2 % canary getting 2.5 % of the users is the mismatch it is
// tuned to). Users are the unit because routing is by user: counting
// requests would treat one heavy user's requests as independent coin
// flips and cry mismatch on every healthy rollout. The caller keeps the
// running minimum over looks.
func UsersSRM(canary, total int, w float64) float64 {
	if total <= 0 || !(w > 0 && w < 1) || canary < 0 || canary > total {
		return 1
	}
	m := math.Min(w, 1-w) / 4
	c := w*(1-w)/(m*m) - 1
	a, b := w*c, (1-w)*c
	x, n := float64(canary), float64(total)
	logLR := lbeta(a+x, b+n-x) - lbeta(a, b) - x*math.Log(w) - (n-x)*math.Log(1-w)
	return math.Min(1, math.Exp(-logLR))
}

func lbeta(a, b float64) float64 {
	la, _ := math.Lgamma(a)
	lb, _ := math.Lgamma(b)
	lab, _ := math.Lgamma(a + b)
	return la + lb - lab
}
