package stats

import (
	"math"

	"gonum.org/v1/gonum/stat/distuv"
)

// Power and sample size for planning a rollout stage: how many requests per
// group a fixed-horizon two-sided test needs to detect a given effect. They
// follow R's power.t.test and power.prop.test (two-sample, two-sided,
// strict = FALSE: only the tail in the direction of the effect counts), and
// sample sizes are real numbers as R reports them; round up to plan. The
// sequential monitors need more samples than these fixed-horizon numbers
// (the price of looking every interval); Simulate measures how many.

func checkPowerArgs(alpha, power float64) error {
	if err := checkAlpha(alpha); err != nil {
		return err
	}
	if !(power > 0 && power < 1) {
		return errorf(ErrInvalidParameter, "power %v outside (0,1)", power)
	}
	return nil
}

// PowerMeans returns the power of the two-sample t-test with n observations
// per group to detect a difference of means mde when each group has standard
// deviation sd (both in the metric's units, e.g. ms), at two-sided level
// alpha. Exact under normality via the noncentral t distribution:
// df = 2(n-1), ncp = sqrt(n/2) * mde/sd, as R's power.t.test.
func PowerMeans(n, sd, mde, alpha float64) (float64, error) {
	if err := checkAlpha(alpha); err != nil {
		return 0, err
	}
	if !(n >= 2) || !(sd > 0) || mde == 0 || math.IsInf(n, 0) || math.IsInf(mde, 0) {
		return 0, errorf(ErrInvalidParameter, "power of means: n %v, sd %v, mde %v", n, sd, mde)
	}
	return powerMeans(n, sd, math.Abs(mde), alpha), nil
}

func powerMeans(n, sd, mde, alpha float64) float64 {
	df := 2 * (n - 1)
	q := distuv.StudentsT{Mu: 0, Sigma: 1, Nu: df}.Quantile(1 - alpha/2)
	ncp := math.Sqrt(n/2) * mde / sd
	return 1 - distuv.NoncentralT{Nu: df, Mu: ncp}.CDF(q)
}

// SampleSizeMeans returns the number of observations per group for which
// PowerMeans reaches power (solved to 1e-9 relative precision).
func SampleSizeMeans(sd, mde, alpha, power float64) (float64, error) {
	if err := checkPowerArgs(alpha, power); err != nil {
		return 0, err
	}
	if !(sd > 0) || mde == 0 || math.IsInf(mde, 0) || math.IsNaN(mde) {
		return 0, errorf(ErrInvalidParameter, "sample size of means: sd %v, mde %v", sd, mde)
	}
	mde = math.Abs(mde)
	// The normal approximation is a slight underestimate; bracket around it.
	z := distuv.UnitNormal.Quantile(1-alpha/2) + distuv.UnitNormal.Quantile(power)
	guess := 2 * z * z * sd * sd / (mde * mde)
	lo, hi := 2.0, math.Max(4, 2*guess+10)
	if powerMeans(lo, sd, mde, alpha) >= power {
		return lo, nil
	}
	for powerMeans(hi, sd, mde, alpha) < power {
		hi *= 2
		if hi > 1e12 {
			return 0, errorf(ErrInvalidParameter, "sample size of means exceeds 1e12 (sd %v, mde %v)", sd, mde)
		}
	}
	for hi-lo > 1e-9*hi {
		mid := (lo + hi) / 2
		if powerMeans(mid, sd, mde, alpha) >= power {
			hi = mid
		} else {
			lo = mid
		}
	}
	return (lo + hi) / 2, nil
}

func checkRates(baseline, mde float64) (p1, p2 float64, err error) {
	p1, p2 = baseline, baseline+mde
	if !(p1 > 0 && p1 < 1) || !(p2 > 0 && p2 < 1) || mde == 0 {
		return 0, 0, errorf(ErrInvalidParameter, "rates: baseline %v and baseline+mde %v must lie in (0,1) and differ", p1, p2)
	}
	return p1, p2, nil
}

// PowerProportions returns the power of the two-sided pooled two-proportion
// test with n observations per group when the stable rate is baseline and
// the canary's is baseline+mde (absolute points: 0.03 and 0.02 mean 3% vs 5%),
// at level alpha, with R's power.prop.test normal approximation.
func PowerProportions(n, baseline, mde, alpha float64) (float64, error) {
	if err := checkAlpha(alpha); err != nil {
		return 0, err
	}
	p1, p2, err := checkRates(baseline, mde)
	if err != nil {
		return 0, err
	}
	if !(n > 0) || math.IsInf(n, 0) {
		return 0, errorf(ErrInvalidParameter, "power of proportions: n %v", n)
	}
	za := distuv.UnitNormal.Quantile(1 - alpha/2)
	q1, q2 := 1-p1, 1-p2
	num := math.Sqrt(n)*math.Abs(p1-p2) - za*math.Sqrt((p1+p2)*(q1+q2)/2)
	return distuv.UnitNormal.CDF(num / math.Sqrt(p1*q1+p2*q2)), nil
}

// SampleSizeProportions returns the observations per group at which
// PowerProportions reaches power (closed form of the same approximation).
func SampleSizeProportions(baseline, mde, alpha, power float64) (float64, error) {
	if err := checkPowerArgs(alpha, power); err != nil {
		return 0, err
	}
	p1, p2, err := checkRates(baseline, mde)
	if err != nil {
		return 0, err
	}
	za := distuv.UnitNormal.Quantile(1 - alpha/2)
	zb := distuv.UnitNormal.Quantile(power)
	q1, q2 := 1-p1, 1-p2
	s := (za*math.Sqrt((p1+p2)*(q1+q2)/2) + zb*math.Sqrt(p1*q1+p2*q2)) / math.Abs(p1-p2)
	return s * s, nil
}
