package stats

import (
	"math"
	"math/rand/v2"
	"slices"
)

// Sampler draws one observation of a metric.
type Sampler func(r *rand.Rand) float64

// Normal returns a Sampler of N(mean, sd^2).
func Normal(mean, sd float64) Sampler {
	return func(r *rand.Rand) float64 { return mean + sd*r.NormFloat64() }
}

// LogNormal returns a Sampler whose logarithm is N(mu, sigma^2), the usual
// shape of request latencies. Scaling exp(mu) scales every quantile and the
// mean by the same factor.
func LogNormal(mu, sigma float64) Sampler {
	return func(r *rand.Rand) float64 { return math.Exp(mu + sigma*r.NormFloat64()) }
}

// Bernoulli returns a Sampler of 1 with probability p, else 0.
func Bernoulli(p float64) Sampler {
	return func(r *rand.Rand) float64 {
		if r.Float64() < p {
			return 1
		}
		return 0
	}
}

// SimConfig describes simulated rollouts: each has Looks intervals of
// PerLook requests, each request going to the canary with probability
// CanaryShare, and is judged by a fresh sequential monitor and by the naive
// fixed-horizon test re-run at every look.
type SimConfig struct {
	// Rollouts is the number of simulated rollouts. Default 1000.
	Rollouts int
	// Looks is the number of looks per rollout. Default 20.
	Looks int
	// PerLook is the number of requests per interval, both arms. Default 1000.
	PerLook int
	// CanaryShare is the probability a request goes to the canary. Default 0.1.
	CanaryShare float64
	// Alpha is the level of both the monitor and the naive test. Default 0.05.
	Alpha float64
	// Seed makes the simulation reproducible; rollout i uses PCG(Seed, i).
	Seed uint64
	// Stable draws the stable version's metric. Required.
	Stable Sampler
	// Canary draws the canary's metric; nil means Stable (an A/A test).
	Canary Sampler
	// NewMonitor builds the sequential monitor for one rollout. Required;
	// its alpha should equal Alpha.
	NewMonitor func() (Monitor, error)
}

// SimResult summarises simulated rollouts.
type SimResult struct {
	Rollouts int `json:"rollouts"`
	// SequentialRejections counts rollouts the monitor rejected at some look.
	SequentialRejections int     `json:"sequential_rejections"`
	SequentialRate       float64 `json:"sequential_rate"`
	// NaiveRejections counts rollouts where the two-sided Welch z-test on
	// all data so far rejected at some look: the re-run fixed-horizon
	// anti-pattern.
	NaiveRejections int     `json:"naive_rejections"`
	NaiveRate       float64 `json:"naive_rate"`
	// MedianCanarySamples is the median number of canary observations at
	// the monitor's first rejection, over rejecting rollouts (NaN if none).
	MedianCanarySamples float64 `json:"median_canary_samples"`
}

func (c SimConfig) withDefaults() (SimConfig, error) {
	if c.Rollouts == 0 {
		c.Rollouts = 1000
	}
	if c.Looks == 0 {
		c.Looks = 20
	}
	if c.PerLook == 0 {
		c.PerLook = 1000
	}
	if c.CanaryShare == 0 {
		c.CanaryShare = 0.1
	}
	if c.Alpha == 0 {
		c.Alpha = 0.05
	}
	if c.Canary == nil {
		c.Canary = c.Stable
	}
	switch {
	case c.Stable == nil || c.NewMonitor == nil:
		return c, errorf(ErrInvalidParameter, "simulate: Stable and NewMonitor are required")
	case c.Rollouts < 0 || c.Looks < 0 || c.PerLook < 0:
		return c, errorf(ErrInvalidParameter, "simulate: negative size")
	case !(c.CanaryShare > 0 && c.CanaryShare < 1):
		return c, errorf(ErrInvalidParameter, "simulate: canary share %v outside (0,1)", c.CanaryShare)
	}
	return c, checkAlpha(c.Alpha)
}

// Simulate runs the rollouts of cfg and counts rejections by the sequential
// monitor and by the naive re-run test. With Canary nil (A/A) the rates are
// false-alarm rates; with a real difference they are powers.
func Simulate(cfg SimConfig) (SimResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return SimResult{}, err
	}
	res := SimResult{Rollouts: cfg.Rollouts}
	var detected []float64
	canary := make([]float64, 0, cfg.PerLook)
	stable := make([]float64, 0, cfg.PerLook)
	zCrit := normalQuantile(1 - cfg.Alpha/2)
	for i := range cfg.Rollouts {
		r := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		mon, err := cfg.NewMonitor()
		if err != nil {
			return SimResult{}, err
		}
		var sc, ss Summary
		seqDone, naiveDone := false, false
		for range cfg.Looks {
			canary, stable = canary[:0], stable[:0]
			for range cfg.PerLook {
				if r.Float64() < cfg.CanaryShare {
					canary = append(canary, cfg.Canary(r))
				} else {
					stable = append(stable, cfg.Stable(r))
				}
			}
			if !seqDone {
				out, _ := mon.Look(canary, stable) // ErrTooFewSamples only delays the first valid look
				if out.Reject {
					seqDone = true
					res.SequentialRejections++
					detected = append(detected, float64(out.NCanary))
				}
			}
			sc, ss = sc.Merge(Summarize(canary)), ss.Merge(Summarize(stable))
			if !naiveDone && sc.N >= 2 && ss.N >= 2 {
				se := math.Sqrt(sc.Variance()/float64(sc.N) + ss.Variance()/float64(ss.N))
				if se > 0 && math.Abs(sc.Mean-ss.Mean)/se > zCrit {
					naiveDone = true
					res.NaiveRejections++
				}
			}
		}
	}
	if res.Rollouts > 0 {
		res.SequentialRate = float64(res.SequentialRejections) / float64(res.Rollouts)
		res.NaiveRate = float64(res.NaiveRejections) / float64(res.Rollouts)
	}
	res.MedianCanarySamples = math.NaN()
	if len(detected) > 0 {
		slices.Sort(detected)
		res.MedianCanarySamples = QuantileSorted(detected, 0.5)
	}
	return res, nil
}

// SimulateAA runs cfg as an A/A test (the canary draws from Stable), so the
// rates in the result are false-alarm rates over repeated looks.
func SimulateAA(cfg SimConfig) (SimResult, error) {
	cfg.Canary = nil
	return Simulate(cfg)
}

func normalQuantile(p float64) float64 { return math.Sqrt2 * math.Erfinv(2*p-1) }
