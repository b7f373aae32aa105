package analyzer

// The simulation of A/B/n experiments: sticky users of skewed activity
// with their own latency and answer quality, each in one arm by its
// bucket (stable first, then the candidates, each a contiguous range, as
// Envoy walks the clusters), judged by ABN at the runner's cadence with
// every candidate measured against stable over the same window (one Tally
// per candidate, each holding all of stable's requests). A dropped arm's
// range goes to stable, as ArmWeights gives it.

import (
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// ABNSimConfig describes simulated A/B/n experiments.
type ABNSimConfig struct {
	Runs          int
	Seed          uint64
	Policy        Policy
	Users         Population
	RatePerSecond float64
	LookEvery     time.Duration
	// Duration is how long each experiment runs at most.
	Duration   time.Duration
	Stable     ArmModel
	Candidates []ArmModel
	Split      float64 // percent per candidate
	Workers    int
}

// ABNSimResult counts, per candidate, the runs that dropped it.
type ABNSimResult struct {
	Runs int
	// Dropped[i] counts the runs that dropped candidate i; AnyDropped the
	// runs that dropped at least one; Status[i] the final statuses.
	Dropped    []int
	AnyDropped int
	Status     []map[ArmStatus]int
	// SRM counts the runs in which some arm showed a sample-ratio mismatch.
	SRM int
}

// SimulateABN runs cfg's experiments through ABN.
func SimulateABN(cfg ABNSimConfig) ABNSimResult {
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	type outcome struct {
		status []ArmStatus
		srm    bool
	}
	out := make([]outcome, cfg.Runs)
	parallel(cfg.Runs, cfg.Workers, func(i int) {
		st, srm := simulateABNOne(cfg, rand.New(rand.NewPCG(cfg.Seed, uint64(i))))
		out[i] = outcome{st, srm}
	})
	res := ABNSimResult{Runs: cfg.Runs, Dropped: make([]int, len(cfg.Candidates)), Status: make([]map[ArmStatus]int, len(cfg.Candidates))}
	for i := range res.Status {
		res.Status[i] = map[ArmStatus]int{}
	}
	for _, o := range out {
		any := false
		for i, s := range o.status {
			res.Status[i][s]++
			if s == ArmDropped {
				res.Dropped[i]++
				any = true
			}
		}
		if any {
			res.AnyDropped++
		}
		if o.srm {
			res.SRM++
		}
	}
	return res
}

func simulateABNOne(cfg ABNSimConfig, r *rand.Rand) ([]ArmStatus, bool) {
	p := cfg.Policy
	pop := cfg.Users
	users := make([]simUser, pop.Users)
	cum := make([]float64, pop.Users)
	var total float64
	for i := range users {
		users[i] = simUser{bucket: r.Float64(), latency: math.Exp(pop.LatencySigma * r.NormFloat64()), logit: pop.QualitySigma * r.NormFloat64()}
		total += math.Exp(pop.ActivitySigma * r.NormFloat64())
		cum[i] = total
	}
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	cands := make([]Candidate, len(cfg.Candidates))
	tallies := make([]*Tally, len(cfg.Candidates))
	for i, c := range cfg.Candidates {
		cands[i] = Candidate{Version: c.Version, Split: cfg.Split, Status: ArmRunning, State: NewStageState(0, start)}
		tallies[i] = NewTally(TallyOptions{TailQuantile: p.TailQuantile})
	}
	// arm returns the candidate index serving bucket b, -1 for stable.
	arm := func(b float64) int {
		w := ArmWeights(cfg.Stable.Version, cands)
		edge := w[cfg.Stable.Version] / 100
		if b < edge {
			return -1
		}
		for i, c := range cands {
			edge += w[c.Version] / 100
			if b < edge {
				return i
			}
		}
		return -1
	}
	now, end := start, start.Add(cfg.Duration)
	nextLook := start.Add(cfg.LookEvery)
	srm := false
	status := func() []ArmStatus {
		s := make([]ArmStatus, len(cands))
		for i, c := range cands {
			s[i] = c.Status
		}
		return s
	}
	for now.Before(end) {
		now = now.Add(time.Duration(r.ExpFloat64() / cfg.RatePerSecond * float64(time.Second)))
		for !now.Before(nextLook) {
			ms := make([]Measurements, len(cands))
			for i, c := range cands {
				if c.Status != ArmDropped {
					ms[i] = tallies[i].Measurements("m", cfg.Stable.Version, c.Version, nextLook)
				}
			}
			var rep ABNReport
			rep, cands = ABN(p, cands, ms, nextLook, end)
			for _, c := range cands {
				if c.Status == ArmRunning && c.Report != nil && c.Report.SRM != nil && c.Report.SRM.Mismatch {
					srm = true
				}
			}
			if rep.Done {
				return status(), srm
			}
			nextLook = nextLook.Add(cfg.LookEvery)
		}
		u := min(sort.SearchFloat64s(cum, r.Float64()*total), len(users)-1)
		a := arm(users[u].bucket)
		req := Request{At: now, User: uint64(u), SampleRate: 1}
		if a < 0 {
			drawRequest(&req, cfg.Stable, users[u], 1, r)
			for i, c := range cands {
				if c.Status != ArmDropped {
					tallies[i].Add(req)
				}
			}
			continue
		}
		req.Canary = true
		drawRequest(&req, cfg.Candidates[a], users[u], 1, r)
		tallies[a].Add(req)
	}
	return status(), srm
}

// abnSim is the experiment of the tests: 5000 users of skewed activity,
// 30 requests per second, a look every 30 s for at most 30 minutes,
// 20 % per candidate.
func abnSim(runs int, seed uint64, cands ...ArmModel) ABNSimConfig {
	return ABNSimConfig{
		Runs: runs, Seed: seed, Policy: SimPolicy(),
		Users:         Population{Users: 5000, ActivitySigma: 1.0, LatencySigma: 0.3, QualitySigma: 0.5},
		RatePerSecond: 30, LookEvery: 30 * time.Second, Duration: 30 * time.Minute,
		Stable: BaseArm(), Candidates: cands, Split: 20,
	}
}

func armAs(a ArmModel, version string) ArmModel {
	a.Version = version
	return a
}
