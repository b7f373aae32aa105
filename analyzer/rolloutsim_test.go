package analyzer

// The simulation of rollouts that validates the decision rules: sticky
// users of skewed activity with their own latency and answer quality,
// routed at the stages' weights and decided by Decide at the runner's
// cadence. It is test support, not API: the decision tests draw their
// windows from it (decide_test.go), the slow tier checks false-alarm and
// detection rates with it (simulate_test.go), and `make bench` prints
// every scenario (rolloutsim_bench_test.go).

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/xds"
)

// ArmModel draws one version's simulated answers for one user. Latencies
// are multiplied by the user's persistent latency factor and by the
// time-of-day drift; the bad-answer probability is shifted per user on the
// logit scale.
type ArmModel struct {
	Version string
	// LatencyMs, TTFTMs and ITLMs draw a request's values for a user whose
	// factor is 1, before drift. LatencyMs is required.
	LatencyMs stats.Sampler
	TTFTMs    stats.Sampler
	ITLMs     stats.Sampler
	ErrorRate float64
	// RefusalRate is the share of successful requests that are refusals.
	RefusalRate float64
	// BadRate is the chance that an answer is bad (judged 0, else 1) for
	// a user of median propensity.
	BadRate float64
	// JudgeRate is the share of this arm's answers the judge grades.
	JudgeRate float64
	// Tokens draws completion tokens; cost is tokens times PricePerToken.
	Tokens        stats.Sampler
	PricePerToken float64
}

// Population is the simulated model's users.
type Population struct {
	Users int
	// ActivitySigma is the log-normal spread of users' activity: 0 makes
	// every user equally active; 1.5 gives a few users most requests.
	ActivitySigma float64
	// LatencySigma is the spread of each user's persistent log-latency
	// factor (long prompts, big contexts).
	LatencySigma float64
	// QualitySigma is the spread of each user's persistent logit shift of
	// the bad-answer probability (hard users).
	QualitySigma float64
}

// RolloutSimConfig describes simulated rollouts that run through Decide
// exactly as the runner does, with the runner's cadence: requests arrive
// from users, routed by their sticky bucket at the stage's weight, and
// every LookEvery the stage is decided on the tally of everything so far.
type RolloutSimConfig struct {
	Rollouts int    // default 1000
	Seed     uint64 // rollout i uses PCG(Seed, i)
	Policy   Policy
	Users    Population
	// RatePerSecond is the model's mean request rate; Drift is the
	// relative amplitude of its time-of-day cycle (period DriftPeriod),
	// which moves the latencies of both arms by Drift/3 as well.
	RatePerSecond float64
	Drift         float64
	DriftPeriod   time.Duration
	// LookEvery is the runner's cadence. Default 2 s.
	LookEvery time.Duration
	// Baseline is how long the model served stable alone before the
	// rollout: its requests give each user's usual latency (see
	// Tally.AddBaseline). 0: no baseline.
	Baseline       time.Duration
	Stable, Canary ArmModel
	// Workers run rollouts in parallel. Default 2.
	Workers int
	// NaiveAtTolerance makes the naive comparison test "worse by more than
	// the tolerance" instead of "worse at all".
	NaiveAtTolerance bool
	// Sampling measures as the gateway does by need (xds.SamplingOf): a
	// stable user's requests are measured only while the user's sample
	// key is under the stable rate of the stage's weight, and only users
	// under the background rate have a TTFT and inter-token baseline
	// (every user has a latency baseline: Envoy's access log records
	// every request). Nil: every request is measured.
	Sampling *xds.Measure
}

// RolloutSimResult summarises simulated rollouts.
type RolloutSimResult struct {
	Rollouts   int `json:"rollouts"`
	Promoted   int `json:"promoted"`
	RolledBack int `json:"rolled_back"`
	Paused     int `json:"paused"`
	// SRMPaused counts the pauses caused by a sample-ratio mismatch.
	SRMPaused int `json:"srm_paused"`
	// RollbackRate is RolledBack / Rollouts: a false-rollback rate in an
	// A/A simulation, a power otherwise.
	RollbackRate float64 `json:"rollback_rate"`
	// NaiveRollbacks counts rollouts in which a fixed-horizon one-sided
	// z-test of "canary worse" per metric (Bonferroni over metrics, at the
	// policy's alpha, request-level variances), re-run on the stage's data
	// at every look, would have rolled back at some look: the
	// anti-pattern, on the same data and looks.
	NaiveRollbacks int     `json:"naive_rollbacks"`
	NaiveRate      float64 `json:"naive_rate"`
	// CanaryAtRollback: the median and 95th percentile of the canary
	// requests served over the rollout when the rollback was decided;
	// NaN if none.
	MedianCanaryAtRollback float64 `json:"median_canary_at_rollback"`
	P95CanaryAtRollback    float64 `json:"p95_canary_at_rollback"`
	// MedianCanaryToPromote is the median of the canary requests served
	// over promoted rollouts; NaN if none.
	MedianCanaryToPromote float64 `json:"median_canary_to_promote"`
	MaxCanaryToPromote    float64 `json:"max_canary_to_promote"`
	// RollbackMetrics counts, per metric, the rollbacks it was part of;
	// PauseMetrics the pauses at which it was not yet decided.
	RollbackMetrics map[Metric]int `json:"rollback_metrics"`
	PauseMetrics    map[Metric]int `json:"pause_metrics"`
}

// String is a one-line summary for logs and the closing report.
func (r RolloutSimResult) String() string {
	return fmt.Sprintf("%d rollouts: %d promoted, %d rolled back (%.1f %%), %d paused (%d SRM); naive per-look test %.1f %%; canary requests at rollback median %.0f p95 %.0f; to promote median %.0f max %.0f",
		r.Rollouts, r.Promoted, r.RolledBack, 100*r.RollbackRate, r.Paused, r.SRMPaused, 100*r.NaiveRate,
		r.MedianCanaryAtRollback, r.P95CanaryAtRollback, r.MedianCanaryToPromote, r.MaxCanaryToPromote)
}

type simOutcome struct {
	action       Action
	code         Code
	naive        bool
	canaryServed int
	metrics      []Metric
}

// SimulateRollouts runs cfg's rollouts through Decide.
func SimulateRollouts(cfg RolloutSimConfig) (RolloutSimResult, error) {
	if cfg.Rollouts == 0 {
		cfg.Rollouts = 1000
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.LookEvery == 0 {
		cfg.LookEvery = 2 * time.Second
	}
	if cfg.DriftPeriod == 0 {
		cfg.DriftPeriod = time.Hour
	}
	if !(cfg.RatePerSecond > 0) || cfg.Users.Users <= 0 {
		return RolloutSimResult{}, errors.New("simulate: the request rate and the number of users must be positive")
	}
	if cfg.Stable.LatencyMs == nil || cfg.Canary.LatencyMs == nil {
		return RolloutSimResult{}, errors.New("simulate: both arms need a latency sampler")
	}
	if err := cfg.Policy.Validate(); err != nil {
		return RolloutSimResult{}, err
	}
	out := make([]simOutcome, cfg.Rollouts)
	parallel(cfg.Rollouts, cfg.Workers, func(i int) {
		out[i] = simulateOne(cfg, rand.New(rand.NewPCG(cfg.Seed, uint64(i))))
	})

	res := RolloutSimResult{Rollouts: cfg.Rollouts, RollbackMetrics: map[Metric]int{}, PauseMetrics: map[Metric]int{}}
	var atRollback, toPromote []float64
	for _, o := range out {
		switch o.action {
		case ActionPromote:
			res.Promoted++
			toPromote = append(toPromote, float64(o.canaryServed))
		case ActionRollback:
			res.RolledBack++
			atRollback = append(atRollback, float64(o.canaryServed))
			for _, m := range o.metrics {
				res.RollbackMetrics[m]++
			}
		case ActionPause:
			res.Paused++
			if o.code == CodeSRM {
				res.SRMPaused++
			}
			for _, m := range o.metrics {
				res.PauseMetrics[m]++
			}
		}
		if o.naive {
			res.NaiveRollbacks++
		}
	}
	res.RollbackRate = float64(res.RolledBack) / float64(res.Rollouts)
	res.NaiveRate = float64(res.NaiveRollbacks) / float64(res.Rollouts)
	res.MedianCanaryAtRollback = quantileOf(atRollback, 0.5)
	res.P95CanaryAtRollback = quantileOf(atRollback, 0.95)
	res.MedianCanaryToPromote = quantileOf(toPromote, 0.5)
	res.MaxCanaryToPromote = quantileOf(toPromote, 1)
	return res, nil
}

// parallel runs f(0) … f(n-1) on workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func quantileOf(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	return stats.QuantileSorted(xs, q)
}

// simUser is one simulated user.
type simUser struct {
	bucket float64 // uniform: on the canary while bucket < weight
	// Uniform sampling keys, independent of the bucket (wire.HeaderSample,
	// wire.HeaderBackground).
	sample, background float64
	latency            float64 // persistent latency factor
	logit              float64 // persistent shift of the bad-answer logit
}

func simulateOne(cfg RolloutSimConfig, r *rand.Rand) simOutcome {
	p := cfg.Policy
	stages := p.EvaluatedStages()
	pop := cfg.Users
	users := make([]simUser, pop.Users)
	cum := make([]float64, pop.Users)
	var total float64
	for i := range users {
		users[i] = simUser{
			bucket:     r.Float64(),
			sample:     r.Float64(),
			background: r.Float64(),
			latency:    math.Exp(pop.LatencySigma * r.NormFloat64()),
			logit:      pop.QualitySigma * r.NormFloat64(),
		}
		total += math.Exp(pop.ActivitySigma * r.NormFloat64())
		cum[i] = total
	}
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	st := NewStageState(0, now)
	tally := NewTally(TallyOptions{TailQuantile: p.TailQuantile})
	if cfg.Baseline > 0 {
		// Before the rollout every request goes to stable; only the users'
		// levels are kept.
		n := int(cfg.RatePerSecond * cfg.Baseline.Seconds())
		background := 1.0
		if cfg.Sampling != nil {
			background = stableRate(*cfg.Sampling, 0)
		}
		for range n {
			u := min(sort.SearchFloat64s(cum, r.Float64()*total), len(users)-1)
			req := Request{User: uint64(u)}
			drawRequest(&req, cfg.Stable, users[u], 1, r)
			if req.Outcome != OutcomeSuccess {
				continue
			}
			// Envoy's access log records every request's duration; only
			// the background sample's TTFT and inter-token latency are
			// measured.
			for k, v := range rawTailValues(req) {
				if !math.IsNaN(v) && (k == 0 || users[u].background < background) {
					tally.AddBaseline(uint64(u), k, 1, math.Log(v))
				}
			}
		}
	}
	// Each stage's stable sample rate, as the control plane sets it.
	stableRates := make([]float64, len(stages))
	for i, sg := range stages {
		stableRates[i] = 1
		if cfg.Sampling != nil {
			stableRates[i] = stableRate(*cfg.Sampling, sg.Weight)
		}
	}
	nextLook := now.Add(cfg.LookEvery)
	// Bound the simulated time: every stage at its maximum, plus slack.
	end := start.Add(time.Duration(len(stages)+1) * p.MaxStageDuration.D())
	var o simOutcome
	phase := r.Float64() * 2 * math.Pi
	drift := func(t time.Time) float64 {
		return math.Sin(phase + 2*math.Pi*t.Sub(start).Seconds()/cfg.DriftPeriod.Seconds())
	}
	for now.Before(end) {
		// Arrivals: a Poisson process whose rate follows the drift.
		rate := cfg.RatePerSecond * (1 + cfg.Drift*drift(now))
		now = now.Add(time.Duration(r.ExpFloat64() / rate * float64(time.Second)))
		for !now.Before(nextLook) {
			m := tally.Measurements("m", "stable", "canary", nextLook)
			var d Decision
			d, st = Decide(p, st, m, nextLook)
			if !o.naive && naiveHarm(p, m, cfg.NaiveAtTolerance) {
				o.naive = true
			}
			switch d.Action {
			case ActionAdvance:
				st = NextStageState(st, nextLook, nextLook)
				tally.StartStage(nextLook)
			case ActionRollback:
				for _, mr := range d.Metrics {
					if mr.Status == StatusHarm {
						o.metrics = append(o.metrics, mr.Metric)
					}
				}
				o.action, o.code = d.Action, d.Code
				return o
			case ActionPause:
				for _, mr := range d.Metrics {
					if mr.Status != StatusWithin {
						o.metrics = append(o.metrics, mr.Metric)
					}
				}
				o.action, o.code = d.Action, d.Code
				return o
			case ActionPromote:
				o.action, o.code = d.Action, d.Code
				return o
			}
			nextLook = nextLook.Add(cfg.LookEvery)
		}
		u := sort.SearchFloat64s(cum, r.Float64()*total)
		u = min(u, len(users)-1)
		user := users[u]
		w := stages[st.Stage].Weight / 100
		req := Request{At: now, User: uint64(u), Canary: user.bucket < w, SampleRate: 1}
		model := cfg.Stable
		if req.Canary {
			model = cfg.Canary
			o.canaryServed++
		} else if cfg.Sampling != nil {
			req.SampleRate = stableRates[st.Stage]
			if user.sample >= req.SampleRate {
				continue // served, not measured
			}
		}
		drawRequest(&req, model, user, 1+cfg.Drift/3*drift(now), r)
		tally.Add(req)
	}
	o.action = ActionHold
	return o
}

// stableRate is the stable sample's rate at a canary weight in percent, as
// the control plane sets it.
func stableRate(p xds.Measure, weight float64) float64 {
	m := &xds.Model{Stable: "stable", Versions: []xds.Version{{Name: "stable"}, {Name: "canary"}},
		Weights: map[string]float64{"stable": 100 - weight, "canary": weight}}
	return xds.SamplingOf(m, p, true).StableRate
}

func drawRequest(req *Request, model ArmModel, u simUser, drift float64, r *rand.Rand) {
	if r.Float64() < model.ErrorRate {
		req.Outcome = OutcomeFailure
		return
	}
	req.Outcome = OutcomeSuccess
	req.Refusal = r.Float64() < model.RefusalRate
	f := u.latency * drift
	req.LatencyMs = model.LatencyMs(r) * f
	if model.TTFTMs != nil {
		req.Streamed = true
		req.TTFTMs = model.TTFTMs(r) * f
		if model.ITLMs != nil {
			req.ITLMs = model.ITLMs(r) * f
		}
	}
	if model.Tokens != nil {
		req.Tokens = math.Max(1, math.Round(model.Tokens(r)))
		req.CostUSD = req.Tokens * model.PricePerToken
	}
	if r.Float64() < model.JudgeRate {
		req.Judged = true
		bad := 1 / (1 + math.Exp(-(logit(model.BadRate) + u.logit)))
		req.Quality = 1
		if r.Float64() < bad {
			req.Quality = 0
		}
	}
}

func logit(p float64) float64 {
	p = math.Min(math.Max(p, 1e-9), 1-1e-9)
	return math.Log(p / (1 - p))
}

// naiveHarm is the anti-pattern the simulation compares with: for each
// metric, a fixed-horizon one-sided z-test of "canary worse than stable"
// on the stage's data so far, with the variance of independent requests,
// Bonferroni over the metrics, at the policy's alpha, re-run at every look
// as if each look were the only one. atTolerance moves its null from "no
// difference" to "worse by exactly the tolerance".
func naiveHarm(p Policy, m Measurements, atTolerance bool) bool {
	z := zQuantile(1 - p.Alpha/float64(len(p.Tolerances)))
	for metric, tol := range p.Tolerances {
		c, s := m.Canary.Sums[metric], m.Stable.Sums[metric]
		if c.N < float64(p.MinTestSamples) || s.N < float64(p.MinTestSamples) {
			continue
		}
		kind, _ := MetricKind(metric)
		// Request-level variance: every request its own cluster.
		v := requestVariance(c)/c.N + requestVariance(s)/s.N
		harm := c.Mean() - s.Mean()
		if kind == KindRelative {
			harm, v = harm/s.Mean(), v/(s.Mean()*s.Mean())
		}
		if kind == KindScore {
			harm = -harm
		}
		if atTolerance {
			harm -= tol
		}
		if v > 0 && harm/math.Sqrt(v) > z {
			return true
		}
	}
	return false
}

// requestVariance approximates the per-request variance from per-user
// sums: exact for 0/1 outcomes, the between-user variance of user means
// otherwise (a lower bound that errs, as the naive test does, towards
// too little variance).
func requestVariance(c stats.Clustered) float64 {
	mean := c.Mean()
	if c.SS <= c.S && mean <= 1 && mean >= 0 {
		return mean * (1 - mean)
	}
	return math.Max(0, c.SS/c.NN-mean*mean)
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
	Target string
	Config RolloutSimConfig
}

// SimPolicy is the policy the validation scenarios run: the default
// policy with no minimum stage time, so that stages move as fast as their
// sample sizes allow, and at most an hour per stage.
func SimPolicy() Policy {
	p := DefaultPolicy()
	for i := range p.Stages {
		if p.Stages[i].Weight < 100 {
			p.Stages[i].MinDuration = 0
		}
	}
	p.MaxStageDuration = config.Duration(time.Hour)
	return p
}

// BaseArm is the stable version of the scenarios: log-normal latency
// (median 800 ms, sigma 0.5), TTFT (median 150 ms) and ITL (median 20 ms,
// both sigma 0.5), 0.5 % errors, 2 % refusals, 3 % bad answers of which
// 20 % are judged, about 250 completion tokens.
func BaseArm() ArmModel {
	return ArmModel{
		Version:       "v1",
		LatencyMs:     stats.LogNormal(math.Log(800), 0.5),
		TTFTMs:        stats.LogNormal(math.Log(150), 0.5),
		ITLMs:         stats.LogNormal(math.Log(20), 0.3),
		ErrorRate:     0.005,
		RefusalRate:   0.02,
		BadRate:       0.03,
		JudgeRate:     0.2,
		Tokens:        stats.Normal(250, 60),
		PricePerToken: 2e-6,
	}
}

// slowTail returns s with its slowest 5 % of draws (beyond the log-normal's
// 95th percentile) f times slower.
func slowTail(s stats.Sampler, median, sigma, f float64) stats.Sampler {
	q95 := math.Exp(math.Log(median) + 1.6448536269514722*sigma)
	return func(r *rand.Rand) float64 {
		x := s(r)
		if x > q95 {
			x *= f
		}
		return x
	}
}

// Scenarios returns the statistical validation of the decision rules, each
// with its target. Users are 5000 sticky users of log-normal activity
// (sigma 1: the busiest 1 % send about a tenth of the requests), each
// with a persistent latency factor (log-sd 0.5) and bad-answer propensity
// (logit-sd 1); traffic is 20 requests per second with a ±30 % daily
// cycle shared by both arms; the runner looks every 2 s, and has the hour
// before the rollout as each user's latency baseline. Requests are
// measured as the gateway measures them by default (xds.Measure: every
// canary request, a stable sample twice the canaries' traffic, 1 % of
// users before the rollout); two scenarios repeat with every request
// timed.
func Scenarios(rollouts int, seed uint64) []Scenario {
	base := BaseArm()
	pop := Population{Users: 5000, ActivitySigma: 1, LatencySigma: 0.5, QualitySigma: 1}
	mk := func(name, target string, canary ArmModel) Scenario {
		canary.Version = "v2"
		return Scenario{Name: name, Target: target, Config: RolloutSimConfig{
			Rollouts: rollouts, Seed: seed, Policy: SimPolicy(), Users: pop,
			RatePerSecond: 20, Drift: 0.3, LookEvery: 2 * time.Second, Baseline: time.Hour,
			Stable: base, Canary: canary, Sampling: &xds.Measure{},
		}}
	}
	// against is mk with a stable of the scenario's own.
	against := func(stable ArmModel, name, target string, canary ArmModel) Scenario {
		sc := mk(name, target, canary)
		sc.Config.Stable = stable
		return sc
	}
	// everyRequest measures all of stable too, the opt-in that costs the
	// gateway most: what sampling stable gives up, side by side.
	everyRequest := func(sc Scenario) Scenario {
		sc.Name += " (all timed)"
		sc.Config.Sampling = nil
		return sc
	}
	aa := mk("aa", "false rollback <= 5 %, false SRM pause <= 1 %", base)
	small := mk("aa-50-users", "false rollback <= 5 %, false SRM pause <= 1 %", base)
	small.Config.Users.Users = 50
	small.Config.RatePerSecond = 2

	judgedStable := base
	judgedStable.JudgeRate = 1
	bad := judgedStable
	bad.BadRate = 0.14
	quality := against(judgedStable, "quality-3-to-14", "median <= 40 canary requests, p95 <= 100", bad)

	errs := base
	errs.ErrorRate = 0.05
	// A stable that never fails: its rate is a guess from its request
	// count, and the events' risk ratio alone cannot size the canary's.
	flawless := base
	flawless.ErrorRate = 0
	fails, failsLess := flawless, flawless
	fails.ErrorRate, failsLess.ErrorRate = 0.03, 0.005
	p99 := base
	p99.LatencyMs = slowTail(base.LatencyMs, 800, 0.5, 1.3)
	ttft := base
	ttft.TTFTMs = slowTail(base.TTFTMs, 150, 0.5, 1.3)
	healthy := base
	healthy.LatencyMs = stats.LogNormal(math.Log(760), 0.5)
	half := base
	half.ErrorRate = base.ErrorRate + 0.005
	half.LatencyMs = stats.LogNormal(math.Log(800*1.05), 0.5)
	over := base
	over.ErrorRate = base.ErrorRate + 0.015
	return []Scenario{
		aa,
		everyRequest(aa),
		small,
		quality,
		everyRequest(quality),
		mk("errors-0.5-to-5", "median <= 60 canary requests", errs),
		against(flawless, "errors-0-to-3", "median <= 400 canary requests", fails),
		mk("p99-latency+30%", "median <= 300 canary requests", p99),
		mk("ttft-p99+30%", "median <= 300 canary requests", ttft),
		mk("healthy", "promoted with <= 10k canary requests; rolled back <= 5 %", healthy),
		mk("half-tolerance", "rolled back <= 10 %", half),
		against(flawless, "half-tol-from-0", "rolled back <= 10 %", failsLess),
		mk("1.5x-tolerance", "promoted <= 5 %", over),
	}
}
