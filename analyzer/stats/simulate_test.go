package stats

import (
	"math"
	"math/rand/v2"
	"testing"
)

// binomialSlack is three standard errors of a rate alpha estimated from n
// rollouts: the margin a correct alpha-level procedure stays within.
func binomialSlack(alpha float64, n int) float64 {
	return 3 * math.Sqrt(alpha*(1-alpha)/float64(n))
}

func TestSimulateAAFalseAlarms(t *testing.T) {
	const alpha = 0.05
	latency := LogNormal(math.Log(400), 0.5) // ms; mean ~453, p99 ~1280
	tests := []struct {
		name    string
		stable  Sampler
		monitor func() (Monitor, error)
	}{
		{
			name:   "mean msprt on lognormal latency holds alpha over 20 looks",
			stable: latency,
			monitor: func() (Monitor, error) {
				return NewMeanMSPRT(SequentialOptions{Alpha: alpha, Tau: 50})
			},
		},
		{
			name:   "proportion msprt on a 3% bad-answer rate holds alpha over 20 looks",
			stable: Bernoulli(0.03),
			monitor: func() (Monitor, error) {
				return NewProportionMSPRT(SequentialOptions{Alpha: alpha, Tau: 0.05})
			},
		},
		{
			name:   "superiority monitor on lognormal latency holds alpha over 20 looks",
			stable: latency,
			monitor: func() (Monitor, error) {
				return NewSuperiorityMonitor(SequentialOptions{Alpha: alpha, Tau: 0.1})
			},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := SimulateAA(SimConfig{
				Rollouts: 1000, Looks: 20, PerLook: 1000, CanaryShare: 0.1,
				Alpha: alpha, Seed: uint64(100 + i), Stable: tc.stable, NewMonitor: tc.monitor,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("A/A false-rejection rate over %d rollouts x 20 looks: sequential %.3f, naive re-run z-test %.3f",
				res.Rollouts, res.SequentialRate, res.NaiveRate)
			if limit := alpha + binomialSlack(alpha, res.Rollouts); res.SequentialRate > limit {
				t.Errorf("sequential false-rejection rate %.3f exceeds %.3f", res.SequentialRate, limit)
			}
			if res.NaiveRate < 2*alpha {
				t.Errorf("naive re-run test rate %.3f, want clearly above alpha (>= %.2f): the simulation does not show the peeking problem", res.NaiveRate, 2*alpha)
			}
		})
	}
}

func TestSimulateDetectsRealShifts(t *testing.T) {
	const alpha = 0.05
	tests := []struct {
		name     string
		stable   Sampler
		canary   Sampler
		monitor  func() (Monitor, error)
		minPower float64
	}{
		{
			name:   "bad-answer rate 3% to 14% is detected by the proportion msprt",
			stable: Bernoulli(0.03),
			canary: Bernoulli(0.14),
			monitor: func() (Monitor, error) {
				return NewProportionMSPRT(SequentialOptions{Alpha: alpha, Tau: 0.05})
			},
			minPower: 0.95,
		},
		{
			name:   "lognormal latency scaled by 1.3 is detected by the mean msprt",
			stable: LogNormal(math.Log(400), 0.5),
			canary: LogNormal(math.Log(400*1.3), 0.5),
			monitor: func() (Monitor, error) {
				return NewMeanMSPRT(SequentialOptions{Alpha: alpha, Tau: 50})
			},
			minPower: 0.95,
		},
		{
			name:   "lognormal latency scaled by 1.3 is detected by the superiority monitor",
			stable: LogNormal(math.Log(400), 0.5),
			canary: LogNormal(math.Log(400*1.3), 0.5),
			monitor: func() (Monitor, error) {
				return NewSuperiorityMonitor(SequentialOptions{Alpha: alpha, Tau: 0.1})
			},
			minPower: 0.95,
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Simulate(SimConfig{
				Rollouts: 200, Looks: 20, PerLook: 200, CanaryShare: 0.1,
				Alpha: alpha, Seed: uint64(200 + i), Stable: tc.stable, Canary: tc.canary, NewMonitor: tc.monitor,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("detected in %.3f of %d rollouts, median %.0f canary samples at detection (10%% share)",
				res.SequentialRate, res.Rollouts, res.MedianCanarySamples)
			if res.SequentialRate < tc.minPower {
				t.Errorf("detection rate %.3f, want >= %.2f", res.SequentialRate, tc.minPower)
			}
		})
	}
}

func TestQuantileRatioCoverageAndTailShift(t *testing.T) {
	const conf = 0.95
	draw := func(r *rand.Rand, n int, scale float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = scale * 400 * math.Exp(0.5*r.NormFloat64())
		}
		return xs
	}
	t.Run("A/A intervals for the p50/p95/p99 ratio cover 1 at least at their level", func(t *testing.T) {
		const reps = 300
		r := rand.New(rand.NewPCG(31, 32))
		covered := make([]int, 3)
		for range reps {
			res, err := QuantileRatios(draw(r, 1000, 1), draw(r, 9000, 1), []float64{0.5, 0.95, 0.99}, conf)
			if err != nil {
				t.Fatal(err)
			}
			for i, q := range res {
				if q.CI.Contains(1) {
					covered[i]++
				}
			}
		}
		for i, p := range []string{"p50", "p95", "p99"} {
			rate := float64(covered[i]) / reps
			t.Logf("%s ratio interval covered 1 in %.3f of %d A/A samples", p, rate, reps)
			if rate < conf-binomialSlack(1-conf, reps) {
				t.Errorf("%s coverage %.3f below %.2f", p, rate, conf)
			}
		}
	})
	t.Run("a 30% slower lognormal tail is seen in the p99 ratio", func(t *testing.T) {
		r := rand.New(rand.NewPCG(41, 42))
		res, err := QuantileRatios(draw(r, 2000, 1.3), draw(r, 18000, 1), []float64{0.99}, conf)
		if err != nil {
			t.Fatal(err)
		}
		q := res[0]
		t.Logf("p99 canary %.0f ms vs stable %.0f ms: ratio %.3f [%.3f, %.3f]", q.Canary, q.Stable, q.Ratio, q.CI.Lo, q.CI.Hi)
		if q.CI.Lo <= 1 || !q.CI.Contains(1.3) {
			t.Errorf("p99 ratio interval %v, want above 1 and containing 1.3", q.CI)
		}
	})
}
