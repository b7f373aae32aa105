package stats

import "math"

// Clustered holds what a ratio-of-sums estimator and its cluster-robust
// (sandwich) variance need when observations come in clusters that are
// not independent inside: the users of a sticky rollout. Cluster u
// contributes n_u observations summing to s_u; the estimator is
// R = sum s_u / sum n_u and its variance
//
//	Var(R) ~ sum_u (s_u - R n_u)^2 / N^2 * G/(G-1)
//
// (the delta method over clusters, with the usual small-sample factor),
// which expands into the five sums kept here. A user who sends a hundred
// slow requests counts as one slow user, not as a hundred independent
// slow requests: that is what keeps the tests valid when one user's
// requests are correlated.
//
// Update replaces one cluster's contribution in O(1), so a simulation or a
// runner can keep an arm's sums current as requests arrive.
type Clustered struct {
	// Clusters counts the clusters with n_u > 0.
	Clusters int     `json:"clusters"`
	N        float64 `json:"n"`  // sum n_u
	S        float64 `json:"s"`  // sum s_u
	SS       float64 `json:"ss"` // sum s_u^2
	SN       float64 `json:"sn"` // sum s_u n_u
	NN       float64 `json:"nn"` // sum n_u^2
	// M and MM are the sums of the users' own means s_u/n_u and of their
	// squares, for the user-weighted mean (UserMean).
	M  float64 `json:"m"`
	MM float64 `json:"mm"`
}

// Update replaces a cluster's (n0, s0) by (n1, s1); n0 = 0 adds a new
// cluster.
func (c *Clustered) Update(n0, s0, n1, s1 float64) {
	if n0 > 0 {
		c.Clusters--
		c.N -= n0
		c.S -= s0
		c.SS -= s0 * s0
		c.SN -= s0 * n0
		c.NN -= n0 * n0
		c.M -= s0 / n0
		c.MM -= s0 * s0 / (n0 * n0)
	}
	if n1 > 0 {
		c.Clusters++
		c.N += n1
		c.S += s1
		c.SS += s1 * s1
		c.SN += s1 * n1
		c.NN += n1 * n1
		c.M += s1 / n1
		c.MM += s1 * s1 / (n1 * n1)
	}
}

// Add adds one cluster.
func (c *Clustered) Add(n, s float64) { c.Update(0, 0, n, s) }

// Mean returns R = sum s / sum n, NaN without observations.
func (c Clustered) Mean() float64 {
	if c.N <= 0 {
		return math.NaN()
	}
	return c.S / c.N
}

// MeanVariance returns the cluster-robust variance of Mean; NaN with fewer
// than two clusters.
func (c Clustered) MeanVariance() float64 {
	if c.Clusters < 2 || c.N <= 0 {
		return math.NaN()
	}
	r := c.S / c.N
	resid := c.SS - 2*r*c.SN + r*r*c.NN
	g := float64(c.Clusters)
	return math.Max(0, resid) / (c.N * c.N) * g / (g - 1)
}

// UserMean returns the mean over users of each user's own mean: every user
// counts once, however active. NaN without users.
func (c Clustered) UserMean() float64 {
	if c.Clusters == 0 {
		return math.NaN()
	}
	return c.M / float64(c.Clusters)
}

// UserMeanVariance returns the variance of UserMean, the users being
// independent draws; NaN with fewer than two users.
func (c Clustered) UserMeanVariance() float64 {
	if c.Clusters < 2 {
		return math.NaN()
	}
	g := float64(c.Clusters)
	mean := c.M / g
	return math.Max(0, c.MM-g*mean*mean) / (g - 1) / g
}

// Weighting selects how an arm's mean weighs its users.
type Weighting int

const (
	// PerUser averages the users' own means: the typical user's
	// experience, and the estimate with the most power when activity is
	// skewed (a few busy users cannot swamp it).
	PerUser Weighting = iota
	// PerObservation is the ratio of sums: every observation counts once,
	// so busy users weigh in proportion to their activity.
	PerObservation
)

// Estimate returns the arm's mean and its variance under w.
func (c Clustered) Estimate(w Weighting) (mean, variance float64) {
	if w == PerObservation {
		return c.Mean(), c.MeanVariance()
	}
	return c.UserMean(), c.UserMeanVariance()
}

// RelativeEffect returns canary mean / stable mean - 1 and its variance by
// the delta method, each arm's variance cluster-robust. ok is false when
// either arm has fewer than two clusters or stable's mean is not positive.
func RelativeEffect(canary, stable Clustered, w Weighting) (effect, variance float64, ok bool) {
	mc, vc := canary.Estimate(w)
	ms, vs := stable.Estimate(w)
	if math.IsNaN(vc) || math.IsNaN(vs) || !(ms > 0) || mc < 0 {
		return 0, 0, false
	}
	ratio := mc / ms
	return ratio - 1, (vc + ratio*ratio*vs) / (ms * ms), true
}

// DifferenceEffect returns canary mean - stable mean and its variance.
// For rates (s_u counts events among n_u) pass rate = true: each arm's
// variance is then at least the binomial variance of the smoothed rate
// (x+1)/(N+2), so that an arm without events does not claim certainty.
func DifferenceEffect(canary, stable Clustered, w Weighting, rate bool) (effect, variance float64, ok bool) {
	mc, vc := canary.Estimate(w)
	ms, vs := stable.Estimate(w)
	if math.IsNaN(vc) || math.IsNaN(vs) {
		return 0, 0, false
	}
	if rate {
		vc = math.Max(vc, smoothedBinomialVariance(canary, w))
		vs = math.Max(vs, smoothedBinomialVariance(stable, w))
	}
	return mc - ms, vc + vs, true
}

// smoothedBinomialVariance is the variance of a rate of (x+1)/(n+2) over
// the arm's users (PerUser) or observations.
func smoothedBinomialVariance(c Clustered, w Weighting) float64 {
	n := c.N
	if w == PerUser {
		n = float64(c.Clusters)
	}
	mean, _ := c.Estimate(w)
	p := (mean*n + 1) / (n + 2)
	return p * (1 - p) / n
}

// OneSidedMixtureLogLR returns the log of the one-sided mixture likelihood
// ratio of an estimate est ~ N(theta, v) for "theta > theta0" against
// "theta = theta0", the mixing distribution a half-normal of scale tau on
// theta - theta0 > 0:
//
//	Lambda = 2 sqrt(v/(v+tau2)) exp(tau2 d^2 / (2 v (v+tau2))) Phi(d tau / sqrt(v (v+tau2)))
//
// with d = est - theta0. It is the two-sided mixture times 2 Phi(.): up to
// twice the evidence for effects in the tested direction, none for the
// other. For "theta < theta0" pass the estimate and null negated.
func OneSidedMixtureLogLR(est, theta0, v, tau2 float64) float64 {
	d := est - theta0
	z := d * math.Sqrt(tau2) / math.Sqrt(v*(v+tau2))
	return math.Ln2 + MixtureLogLR(est, theta0, v, tau2) + logPhi(z)
}

// logPhi is log of the standard normal CDF, accurate in the far left tail.
func logPhi(z float64) float64 {
	if z > -30 {
		return math.Log(0.5 * math.Erfc(-z/math.Sqrt2))
	}
	// Mills ratio asymptotics.
	return -z*z/2 - math.Log(-z) - 0.5*math.Log(2*math.Pi)
}
