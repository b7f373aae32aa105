package stats

import (
	"math"

	"gonum.org/v1/gonum/mathext"
)

// Paired comparisons: two versions answer the same prompt (a mirrored
// request and the user's), so the prompt's own difficulty, length and
// user cancel out of each pair's difference, and the variance that
// dominates unpaired quality and latency comparisons is gone.

// SignResult is an always-valid sign test of judged pairs: each pair is a
// win (the canary's answer preferred), a loss (stable's preferred) or a
// tie. Ties are dropped.
type SignResult struct {
	Wins   int `json:"wins"`
	Losses int `json:"losses"`
	Ties   int `json:"ties"`
	// LossShare is Losses / (Wins + Losses), NaN without a decided pair.
	LossShare float64 `json:"loss_share"`
	// PValue is the always-valid p-value of "the canary loses at most half
	// of the decided pairs": 1/E for the e-value E of the mixture
	// martingale (SignTest), capped at 1.
	PValue float64 `json:"p_value"`
	// CI is the time-uniform 1-alpha confidence sequence of the loss
	// share: valid at every number of pairs at once.
	CI Interval `json:"ci"`
	// Harm reports PValue <= alpha: the canary's answers are shown to lose
	// more often than they win.
	Harm bool `json:"harm"`
}

// SignTest tests judged pairs sequentially. Under the null the canary
// loses a decided pair with probability q <= 1/2, independently of the
// others given everything before it (true when the two answers to a
// prompt are exchangeable, whatever the prompt or the user: pairs from one
// heavy user stay valid evidence). The statistic is the mixture
// martingale
//
//	E_n = ∫ (q/½)^L ((1-q)/½)^W dπ(q),  π uniform on [½, 1],
//	    = 2^(n+1) B(L+1, W+1) I_½(W+1, L+1)
//
// with n = W + L decided pairs: for each q' in [½, 1] the likelihood
// ratio against ½ is a nonnegative supermartingale under every null q
// (E[2(q q' + (1-q)(1-q'))] <= 1), so their mixture is one and, by
// Ville's inequality, P(sup_n E_n >= 1/alpha) <= alpha however often the
// pairs are looked at. The confidence sequence is the set of q whose
// likelihood reaches alpha times the uniform-prior marginal likelihood
// (Robbins' mixture), valid uniformly over n.
func SignTest(wins, losses, ties int, alpha float64) (SignResult, error) {
	if err := checkAlpha(alpha); err != nil {
		return SignResult{}, err
	}
	if wins < 0 || losses < 0 || ties < 0 {
		return SignResult{}, errorf(ErrInvalidParameter, "negative pair counts %d, %d, %d", wins, losses, ties)
	}
	res := SignResult{Wins: wins, Losses: losses, Ties: ties, LossShare: math.NaN(), PValue: 1, CI: Interval{Lo: 0, Hi: 1}}
	n := wins + losses
	if n == 0 {
		return res, nil
	}
	L, W := float64(losses), float64(wins)
	res.LossShare = L / float64(n)
	lb := lbeta(L+1, W+1)
	logE := float64(n+1)*math.Ln2 + lb + math.Log(mathext.RegIncBeta(W+1, L+1, 0.5))
	res.PValue = math.Min(1, math.Exp(-logE))
	res.Harm = res.PValue <= alpha
	// q^L (1-q)^W >= alpha B(L+1, W+1), on each side of the mode L/n.
	thr := math.Log(alpha) + lb
	f := func(q float64) float64 { return xlogy(L, q) + xlogy(W, 1-q) - thr }
	mode := res.LossShare
	if f(0) < 0 {
		res.CI.Lo = bisect(f, 0, mode)
	}
	if f(1) < 0 {
		res.CI.Hi = bisect(func(q float64) float64 { return -f(q) }, mode, 1)
	}
	return res, nil
}

// xlogy is x·log(y) with 0·log(0) = 0.
func xlogy(x, y float64) float64 {
	if x == 0 {
		return 0
	}
	return x * math.Log(y)
}

// bisect finds where f, negative at lo and not at hi, changes sign.
func bisect(f func(float64) float64, lo, hi float64) float64 {
	for range 60 {
		mid := (lo + hi) / 2
		if f(mid) < 0 {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// MeanResult is an always-valid look at the mean of paired differences
// (a judge's score of stable's answer minus the canary's, or the log of
// the canary's latency over stable's, for the same prompt).
type MeanResult struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	// CI is the 1-alpha confidence sequence of the mean at this look.
	CI Interval `json:"ci"`
	// PValue is the always-valid p-value of "the mean is at most Null"
	// (one look; a caller that looks again keeps the running minimum).
	PValue float64 `json:"p_value"`
	Harm   bool    `json:"harm"`
}

// PairedMeanTest tests the mean of n paired differences (their mean and
// sample variance given) against the null that it is at most null, with
// the normal mixture of the package's sequential section (mixing sd tau)
// and a plug-in variance, which needs minN pairs. Pairing is what makes
// the differences close to independent: the prompt's difficulty and
// length and the user's level are in both answers and cancel.
func PairedMeanTest(n int, mean, variance, null, tau, alpha float64, minN int) (MeanResult, error) {
	if err := checkAlpha(alpha); err != nil {
		return MeanResult{}, err
	}
	if !(tau > 0) || math.IsInf(tau, 0) || math.IsNaN(null) {
		return MeanResult{}, errorf(ErrInvalidParameter, "tau %v must be positive and null %v a number", tau, null)
	}
	res := MeanResult{N: n, Mean: mean, CI: unbounded, PValue: 1}
	if n < max(minN, 2) || math.IsNaN(mean) {
		return res, errorf(ErrTooFewSamples, "%d pairs, %d needed", n, max(minN, 2))
	}
	v := math.Max(variance, 1e-12) / float64(n)
	tau2 := tau * tau
	r := MixtureRadius(v, tau2, alpha)
	res.CI = Interval{Lo: mean - r, Hi: mean + r}
	if mean > null {
		res.PValue = math.Min(1, math.Exp(-MixtureLogLR(mean, null, v, tau2)))
	}
	res.Harm = res.PValue <= alpha
	return res, nil
}
