package stats

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestEventTestFalseAlarmsStayBelowAlphaWithHeterogeneousUsers draws users
// with their own event rates (log-normal, a hundredfold spread) and their
// own activity, routes them by a sticky hash at a weight that changes
// midway, and feeds each user's first event to the test, checked at every
// event. The false alarms must stay at or below alpha.
func TestEventTestFalseAlarmsStayBelowAlphaWithHeterogeneousUsers(t *testing.T) {
	const runs, alpha = 2000, 0.05
	alarms := 0
	for i := range runs {
		r := rand.New(rand.NewPCG(3, uint64(i)))
		var test EventTest
		seen := map[int]bool{}
		users := 300
		rate := make([]float64, users)
		bucket := make([]float64, users)
		for u := range users {
			rate[u] = 0.02 * math.Exp(1.2*r.NormFloat64())
			bucket[u] = r.Float64()
		}
		for n := range 6000 {
			w := 0.05
			if n > 3000 {
				w = 0.25
			}
			u := int(math.Min(float64(users-1), math.Abs(r.NormFloat64())*float64(users)/3))
			if seen[u] || r.Float64() >= math.Min(1, rate[u]) {
				continue
			}
			seen[u] = true
			test.Observe(bucket[u] < w, w)
		}
		if test.PValue() <= alpha {
			alarms++
		}
	}
	if rate := float64(alarms) / runs; rate > alpha {
		t.Errorf("false alarm rate %.4f above alpha %v", rate, alpha)
	}
}

func TestEventTestDetectsARiskRatioOfFourInTensOfEvents(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	const pi, rho = 0.1, 4.0
	p := rho * pi / (rho*pi + 1 - pi)
	var test EventTest
	n := 0
	for test.PValue() > 0.01 && n < 1000 {
		test.Observe(r.Float64() < p, pi)
		n++
	}
	if n >= 200 {
		t.Errorf("a fourfold event rate on a 10 %% canary took %d events to reach p <= 0.01", n)
	}
	if rr := test.RiskRatio(); rr < 2 || rr > 8 {
		t.Errorf("risk ratio estimate %.2f, want near 4", rr)
	}
}

func TestEventTestNullAboveOneToleratesASmallerHarm(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	const runs, alpha = 500, 0.05
	alarms := 0
	for range runs {
		var test EventTest
		test.SetNull(2) // the canary may cause up to twice stable's events
		const pi = 0.2
		p := 2 * pi / (2*pi + 1 - pi) // and it does
		for range 400 {
			test.Observe(r.Float64() < p, pi)
		}
		if test.PValue() <= alpha {
			alarms++
		}
	}
	if rate := float64(alarms) / runs; rate > alpha {
		t.Errorf("a canary exactly at the null's risk ratio was flagged in %.3f of runs, above alpha", rate)
	}
}

func TestEventTestWithANullBeyondTheGridStillTestsAndNeverPanics(t *testing.T) {
	for _, rho0 := range []float64{RiskGrid[len(RiskGrid)-2] + 1, 64, 1e6} {
		if i := NullIndex(rho0); i != len(RiskGrid)-2 {
			t.Errorf("null %g: index %d, want the second-to-last point %d", rho0, i, len(RiskGrid)-2)
		}
		var test EventTest
		test.SetNull(rho0)
		for range 200 {
			test.Observe(true, 0.1)
		}
		if p := test.PValue(); !(p < 1) {
			t.Errorf("null %g: 200 events all on a 10 %% canary left p at %v", rho0, p)
		}
	}
}

func TestShrunkRatioStaysNearOneOnFewEvents(t *testing.T) {
	var few EventTest
	few.Observe(true, 0.05)
	few.Observe(false, 0.05)
	if s, m := few.ShrunkRatio(), few.RiskRatio(); !(s < m) || s > 4 {
		t.Errorf("after one canary event of two, shrunk %.2f, maximum likelihood %.2f: want the shrunk one smaller and modest", s, m)
	}
}

func TestUsersSRMIsValidAndCatchesAMismatch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const runs, alpha = 1000, 0.01
	alarms := 0
	for range runs {
		canary, minP := 0, 1.0
		for n := 1; n <= 5000; n++ {
			if r.Float64() < 0.02 {
				canary++
			}
			if n%50 == 0 {
				minP = math.Min(minP, UsersSRM(canary, n, 0.02))
			}
		}
		if minP <= alpha {
			alarms++
		}
	}
	if rate := float64(alarms) / runs; rate > alpha {
		t.Errorf("users drawn at the configured 2 %% were flagged in %.4f of runs, above alpha %v", rate, alpha)
	}
	if p := UsersSRM(80, 2000, 0.02); p > 0.001 {
		t.Errorf("4 %% of 2000 users on a 2 %% canary: p %v, want a mismatch", p)
	}
}

func TestClusteredMatchesDirectComputation(t *testing.T) {
	users := [][]float64{{1, 2, 3}, {10}, {4, 4}, {7, 1, 1, 1}}
	var c Clustered
	var n, s float64
	for _, u := range users {
		var su float64
		for _, x := range u {
			su += x
		}
		c.Add(float64(len(u)), su)
		n += float64(len(u))
		s += su
	}
	r := s / n
	var resid, m, mm float64
	for _, u := range users {
		var su float64
		for _, x := range u {
			su += x
		}
		d := su - r*float64(len(u))
		resid += d * d
		mu := su / float64(len(u))
		m += mu
		mm += mu * mu
	}
	g := float64(len(users))
	if got, want := c.MeanVariance(), resid/(n*n)*g/(g-1); math.Abs(got-want) > 1e-12 {
		t.Errorf("cluster-robust variance %v, want %v", got, want)
	}
	um := m / g
	if got, want := c.UserMeanVariance(), (mm-g*um*um)/(g-1)/g; math.Abs(got-want) > 1e-12 || math.Abs(c.UserMean()-um) > 1e-12 {
		t.Errorf("per-user mean %v ± %v, want %v ± %v", c.UserMean(), got, um, want)
	}
	// Replacing a user's contribution equals building without it.
	c.Update(1, 10, 2, 3)
	var d Clustered
	for _, nu := range [][2]float64{{3, 6}, {2, 3}, {2, 8}, {4, 10}} {
		d.Add(nu[0], nu[1])
	}
	if math.Abs(c.MeanVariance()-d.MeanVariance()) > 1e-12 || c.Clusters != d.Clusters {
		t.Errorf("after Update: %+v, built afresh: %+v", c, d)
	}
}

func TestOneSidedMixtureMatchesNumericalIntegration(t *testing.T) {
	for _, tc := range []struct{ est, v, tau2 float64 }{{0.1, 0.01, 0.04}, {-0.05, 0.002, 0.01}, {0.3, 0.05, 0.09}} {
		// Integrate the likelihood ratio over a half-normal on theta > 0.
		var sum float64
		const steps = 200000
		hi := 12 * math.Sqrt(tc.tau2)
		h := hi / steps
		for i := range steps {
			th := (float64(i) + 0.5) * h
			prior := 2 / math.Sqrt(2*math.Pi*tc.tau2) * math.Exp(-th*th/(2*tc.tau2))
			lr := math.Exp((tc.est*th - th*th/2) / tc.v)
			sum += prior * lr * h
		}
		if got := OneSidedMixtureLogLR(tc.est, 0, tc.v, tc.tau2); math.Abs(got-math.Log(sum)) > 1e-6 {
			t.Errorf("est %v: closed form %v, integral %v", tc.est, got, math.Log(sum))
		}
	}
}
