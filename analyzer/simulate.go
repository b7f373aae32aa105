package analyzer

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/config"
)

// ArmModel draws one version's simulated requests.
type ArmModel struct {
	Version   string
	LatencyMs stats.Sampler // required
	ErrorRate float64
	// RefusalRate is the share of successful requests that are refusals.
	RefusalRate float64
	// Quality draws a judged score; QualityShare is the share of
	// successful requests that are judged. Nil Quality: none.
	Quality      stats.Sampler
	QualityShare float64
	// Tokens draws completion tokens; cost is tokens times PricePerToken.
	Tokens        stats.Sampler
	PricePerToken float64
}

// RolloutSimConfig describes simulated rollouts that run through Decide
// exactly as the runner does: one look per interval on the cumulative data
// of the stage, advancing, promoting, rolling back or pausing as decided.
type RolloutSimConfig struct {
	Rollouts int    // default 1000
	Seed     uint64 // rollout i uses PCG(Seed, i)
	Policy   Policy
	// Interval is the simulated time between looks; RequestsPerLook the
	// requests (both arms) of one interval.
	Interval        time.Duration
	RequestsPerLook int
	Stable, Canary  ArmModel
	// Workers run rollouts in parallel. Default 2.
	Workers int
	// NaiveAtTolerance makes the naive comparison test "worse by more than
	// the tolerance" (the null Decide uses) instead of "worse at all".
	NaiveAtTolerance bool
}

// RolloutSimResult summarises simulated rollouts.
type RolloutSimResult struct {
	Rollouts   int `json:"rollouts"`
	Promoted   int `json:"promoted"`
	RolledBack int `json:"rolled_back"`
	Paused     int `json:"paused"`
	// RollbackRate is RolledBack / Rollouts: a false-rollback rate in an
	// A/A simulation, a power otherwise.
	RollbackRate float64 `json:"rollback_rate"`
	// NaiveRollbacks counts rollouts in which a fixed-horizon one-sided
	// z-test of "canary worse" per metric (Bonferroni over metrics, at the
	// policy's alpha), re-run on the cumulative data at every look, would
	// have rolled back at some look: the anti-pattern, measured on the same
	// data and looks.
	NaiveRollbacks int     `json:"naive_rollbacks"`
	NaiveRate      float64 `json:"naive_rate"`
	// MedianCanaryAtRollback is the median of the canary requests served
	// (over the whole rollout) when the rollback was decided; NaN if none.
	MedianCanaryAtRollback float64 `json:"median_canary_at_rollback"`
	// MedianLooksToPromote is the median number of looks of promoted
	// rollouts; NaN if none.
	MedianLooksToPromote float64 `json:"median_looks_to_promote"`
	// RollbackMetrics counts, per metric, the rollbacks it was part of.
	RollbackMetrics map[Metric]int `json:"rollback_metrics"`
}

// String is a one-line summary for logs and the closing report.
func (r RolloutSimResult) String() string {
	return fmt.Sprintf("%d rollouts: %d promoted, %d rolled back (%.2f %%), %d paused; naive per-look test would roll back %.2f %%; median canary requests at rollback %.0f; median looks to promote %.0f",
		r.Rollouts, r.Promoted, r.RolledBack, 100*r.RollbackRate, r.Paused, 100*r.NaiveRate, r.MedianCanaryAtRollback, r.MedianLooksToPromote)
}

type simOutcome struct {
	action       Action
	naive        bool
	looks        int
	canaryServed int
	metrics      []Metric
}

// SimulateRollouts runs cfg's rollouts through Decide. Each look draws
// RequestsPerLook requests, each going to the canary with the stage's
// weight, and appends them to the stage's window.
func SimulateRollouts(cfg RolloutSimConfig) (RolloutSimResult, error) {
	if cfg.Rollouts == 0 {
		cfg.Rollouts = 1000
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Interval <= 0 || cfg.RequestsPerLook <= 0 {
		return RolloutSimResult{}, errors.New("simulate: interval and requests per look must be positive")
	}
	if cfg.Stable.LatencyMs == nil || cfg.Canary.LatencyMs == nil {
		return RolloutSimResult{}, errors.New("simulate: both arms need a latency sampler")
	}
	if err := cfg.Policy.Validate(); err != nil {
		return RolloutSimResult{}, err
	}
	out := make([]simOutcome, cfg.Rollouts)
	var wg sync.WaitGroup
	next := make(chan int)
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i] = simulateOne(cfg, rand.New(rand.NewPCG(cfg.Seed, uint64(i))))
			}
		}()
	}
	for i := range cfg.Rollouts {
		next <- i
	}
	close(next)
	wg.Wait()

	res := RolloutSimResult{Rollouts: cfg.Rollouts, RollbackMetrics: map[Metric]int{}}
	var atRollback, looks []float64
	for _, o := range out {
		switch o.action {
		case ActionPromote:
			res.Promoted++
			looks = append(looks, float64(o.looks))
		case ActionRollback:
			res.RolledBack++
			atRollback = append(atRollback, float64(o.canaryServed))
			for _, m := range o.metrics {
				res.RollbackMetrics[m]++
			}
		case ActionPause:
			res.Paused++
		}
		if o.naive {
			res.NaiveRollbacks++
		}
	}
	res.RollbackRate = float64(res.RolledBack) / float64(res.Rollouts)
	res.NaiveRate = float64(res.NaiveRollbacks) / float64(res.Rollouts)
	res.MedianCanaryAtRollback = median(atRollback)
	res.MedianLooksToPromote = median(looks)
	return res, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	return stats.QuantileSorted(xs, 0.5)
}

func simulateOne(cfg RolloutSimConfig, r *rand.Rand) simOutcome {
	p := cfg.Policy
	stages := p.EvaluatedStages()
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	st := NewStageState(0, now)
	var o simOutcome
	m := Measurements{Stable: Arm{Version: "stable"}, Canary: Arm{Version: "canary"}}
	// Bound the simulated time: every stage at its maximum, plus slack.
	maxLooks := len(stages) * (int(p.MaxStageDuration.D()/cfg.Interval) + 2)
	for o.looks < maxLooks {
		w := stages[st.Stage].Weight / 100
		for range cfg.RequestsPerLook {
			if r.Float64() < w {
				draw(&m.Canary, cfg.Canary, r)
				o.canaryServed++
			} else {
				draw(&m.Stable, cfg.Stable, r)
			}
		}
		now = now.Add(cfg.Interval)
		o.looks++
		var d Decision
		d, st = Decide(p, st, m, now)
		if !o.naive && naiveHarm(p, d, cfg.NaiveAtTolerance) {
			o.naive = true
		}
		switch d.Action {
		case ActionAdvance:
			st = NewStageState(st.Stage+1, now)
			m = Measurements{Stable: Arm{Version: "stable"}, Canary: Arm{Version: "canary"}}
		case ActionRollback:
			for _, mr := range d.Metrics {
				if mr.Status == StatusHarm {
					o.metrics = append(o.metrics, mr.Metric)
				}
			}
			o.action = d.Action
			return o
		case ActionPromote, ActionPause:
			o.action = d.Action
			return o
		}
	}
	o.action = ActionHold
	return o
}

func draw(a *Arm, model ArmModel, r *rand.Rand) {
	a.Requests++
	if r.Float64() < model.ErrorRate {
		a.Failures++
		return
	}
	a.Successes++
	if r.Float64() < model.RefusalRate {
		a.Refusals++
	}
	a.LatencyMs = append(a.LatencyMs, model.LatencyMs(r))
	if model.Tokens != nil {
		t := math.Max(1, math.Round(model.Tokens(r)))
		a.CompletionTokens = append(a.CompletionTokens, t)
		a.CostUSD = append(a.CostUSD, t*model.PricePerToken)
	}
	if model.Quality != nil && r.Float64() < model.QualityShare {
		a.Quality = append(a.Quality, model.Quality(r))
	}
}

// naiveHarm is the anti-pattern the simulation compares with: a
// fixed-horizon one-sided z-test of "canary worse than stable" for each
// metric on all data so far (the look's estimate over its standard error),
// Bonferroni over the metrics, at the policy's alpha, re-run at every look
// as if each look were the only one. atTolerance moves its null from "no
// difference" to "worse by exactly the tolerance".
func naiveHarm(p Policy, d Decision, atTolerance bool) bool {
	z := zQuantile(1 - p.Alpha/float64(len(p.Tolerances)))
	for _, r := range d.Metrics {
		if r.StdErr <= 0 || r.Status == StatusNotMeasured || r.Status == StatusTooFew {
			continue
		}
		harm := r.Estimate
		if r.Kind == KindScore {
			harm = -harm
		}
		if atTolerance {
			harm -= r.Tolerance
		}
		if harm/r.StdErr > z {
			return true
		}
	}
	return false
}

// zQuantile is the standard normal quantile by bisection on Erfc.
func zQuantile(p float64) float64 {
	lo, hi := -10.0, 10.0
	for range 100 {
		mid := (lo + hi) / 2
		if 0.5*math.Erfc(-mid/math.Sqrt2) < p {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// Scenario is a named simulation with what it is expected to show.
type Scenario struct {
	Name   string
	Config RolloutSimConfig
}

// SimPolicy is the policy the validation scenarios run: the default
// policy with each stage's minimum time one look long, so that the stages
// move as fast as their sample sizes allow, and a maximum of 60 looks.
func SimPolicy(interval time.Duration) Policy {
	p := DefaultPolicy()
	for i := range p.Stages {
		if p.Stages[i].Weight < 100 {
			p.Stages[i].MinDuration = 0
		}
	}
	p.MaxStageDuration = config.Duration(60 * interval)
	return p
}

// Scenarios returns the statistical validation of the decision rules:
//
//   - aa: stable against itself; every rollback is false;
//   - quality: the documented case, bad answers from 3 % to 14 %
//     (quality 0.97 to 0.86, every answer judged);
//   - p99: a canary whose p99 latency is 30 % higher (its slowest 5 %
//     of requests are 30 % slower) while its mean moves about 2 %;
//   - healthy: a canary 5 % faster and otherwise the same, to be promoted;
//   - boundary: a canary exactly at two tolerances (mean latency +10 %,
//     errors +1 point), the worst case of the harm tests' null: every
//     rollback is false, and the naive test here uses the same null. Its
//     stages are inconclusive by design, so they end after 20 looks.
//
// Traffic is 10,000 requests per one-minute look; latency is log-normal
// (median 800 ms, sigma 0.5), 1 % errors, 2 % refusals, about 250
// completion tokens, 20 % of answers judged.
func Scenarios(rollouts int, seed uint64) []Scenario {
	interval := time.Minute
	base := ArmModel{
		Version:       "v1",
		LatencyMs:     stats.LogNormal(math.Log(800), 0.5),
		ErrorRate:     0.01,
		RefusalRate:   0.02,
		Quality:       stats.Bernoulli(0.97),
		QualityShare:  0.2,
		Tokens:        stats.Normal(250, 60),
		PricePerToken: 2e-6,
	}
	mk := func(name string, canary ArmModel) Scenario {
		canary.Version = "v2"
		return Scenario{Name: name, Config: RolloutSimConfig{
			Rollouts: rollouts, Seed: seed, Policy: SimPolicy(interval), Interval: interval,
			RequestsPerLook: 10000, Stable: base, Canary: canary,
		}}
	}
	quality := base
	quality.Quality, quality.QualityShare = stats.Bernoulli(0.86), 1
	stableQ := base
	stableQ.QualityShare = 1
	qs := mk("quality", quality)
	qs.Config.Stable = stableQ
	slowTail := base
	q95 := math.Exp(math.Log(800) + 1.6448536269514722*0.5)
	slowTail.LatencyMs = func(r *rand.Rand) float64 {
		x := base.LatencyMs(r)
		if x > q95 {
			x *= 1.3
		}
		return x
	}
	healthy := base
	healthy.LatencyMs = stats.LogNormal(math.Log(760), 0.5)
	atTol := base
	atTol.LatencyMs = stats.LogNormal(math.Log(800*1.1), 0.5)
	atTol.ErrorRate = base.ErrorRate + 0.01
	boundary := mk("boundary", atTol)
	boundary.Config.NaiveAtTolerance = true
	boundary.Config.Policy.MaxStageDuration = config.Duration(20 * interval)
	return []Scenario{
		mk("aa", base),
		qs,
		mk("p99", slowTail),
		mk("healthy", healthy),
		boundary,
	}
}
