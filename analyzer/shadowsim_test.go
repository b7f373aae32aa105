package analyzer

// The simulation of shadow stages that validates DecideShadow and
// measures what pairing buys: users of skewed activity and their own
// answer quality and latency send prompts of their own difficulty; each
// prompt mirrored to the canary is answered by both versions, the judge
// grades both answers and the pair's verdict is the comparison. It is
// test support, like rolloutsim_test.go, whose user-stage simulation it
// is compared with.

import (
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"
)

// ShadowSimConfig describes simulated shadow stages.
type ShadowSimConfig struct {
	Runs int
	Seed uint64
	// Users: count, log-normal activity spread, per-user logit spread of
	// the bad-answer chance and log-latency spread.
	Users                                     int
	ActivitySigma, QualitySigma, LatencySigma float64
	// PromptSigma is the logit spread of a prompt's difficulty: a hard
	// prompt is more likely to get a bad answer from either version. It
	// is what pairing removes.
	PromptSigma float64
	// StableBad and CanaryBad are the versions' bad-answer shares over
	// all users and prompts (calibrated to the logit scale).
	StableBad, CanaryBad float64
	// CanarySlower multiplies the canary's latency.
	CanarySlower float64
	// MirroredUsers, when in (0, 1), is the share of users whose
	// requests are mirrored, every one of them (the gateway mirrors its
	// measured users, drawn by user); 0 mirrors requests of all users.
	MirroredUsers float64
	// LookEvery is how many new pairs each look sees (the runner's
	// cadence: 2 s at 2 mirrored requests a second is 4).
	LookEvery int
	MaxPairs  int
	Policy    ShadowPolicy
	Alpha     float64
}

// ShadowSimResult summarises simulated shadow stages.
type ShadowSimResult struct {
	Runs, RolledBack, Passed, Undecided int
	// Median and 95th percentile of the judged pairs at rollback, and the
	// median at a pass; NaN without any.
	MedianPairsAtRollback, P95PairsAtRollback, MedianPairsToPass float64
}

// badBase returns the logit b at which a version's bad-answer chance
// logistic(b + x), x ~ N(0, sigma), averages share.
func badBase(share, sigma float64) float64 {
	mean := func(b float64) float64 {
		// Midpoint rule over ±8 sd.
		const k = 4000
		var s float64
		for i := range k {
			x := -8 + 16*(float64(i)+0.5)/k
			s += math.Exp(-x*x/2) / math.Sqrt(2*math.Pi) * 16 / k / (1 + math.Exp(-(b + sigma*x)))
		}
		return s
	}
	lo, hi := -30.0, 30.0
	for range 100 {
		mid := (lo + hi) / 2
		if mean(mid) < share {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// SimulateShadow runs cfg's shadow stages through DecideShadow.
func SimulateShadow(cfg ShadowSimConfig) ShadowSimResult {
	sigma := math.Hypot(cfg.QualitySigma, cfg.PromptSigma)
	bs, bc := badBase(cfg.StableBad, sigma), badBase(cfg.CanaryBad, sigma)
	type outcome struct {
		action Action
		pairs  int
	}
	out := make([]outcome, cfg.Runs)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 2 {
		wg.Go(func() {
			for i := range next {
				r := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
				a, n := shadowRun(cfg, bs, bc, r)
				out[i] = outcome{a, n}
			}
		})
	}
	for i := range cfg.Runs {
		next <- i
	}
	close(next)
	wg.Wait()
	res := ShadowSimResult{Runs: cfg.Runs}
	var atRollback, toPass []float64
	for _, o := range out {
		switch o.action {
		case ActionRollback:
			res.RolledBack++
			atRollback = append(atRollback, float64(o.pairs))
		case ActionProceed:
			res.Passed++
			toPass = append(toPass, float64(o.pairs))
		default:
			res.Undecided++
		}
	}
	sort.Float64s(atRollback)
	sort.Float64s(toPass)
	res.MedianPairsAtRollback, res.P95PairsAtRollback = quantileOf(atRollback, 0.5), quantileOf(atRollback, 0.95)
	res.MedianPairsToPass = quantileOf(toPass, 0.5)
	return res
}

func shadowRun(cfg ShadowSimConfig, bs, bc float64, r *rand.Rand) (Action, int) {
	type user struct{ logit, latency float64 }
	users := make([]user, cfg.Users)
	cum := make([]float64, cfg.Users)
	var total float64
	for i := range users {
		users[i] = user{logit: cfg.QualitySigma * r.NormFloat64(), latency: math.Exp(cfg.LatencySigma * r.NormFloat64())}
		activity := math.Exp(cfg.ActivitySigma * r.NormFloat64())
		if cfg.MirroredUsers > 0 && r.Float64() >= cfg.MirroredUsers {
			activity = 0 // never mirrored
		}
		total += activity
		cum[i] = total
	}
	bad := func(base, x float64) bool { return r.Float64() < 1/(1+math.Exp(-(base+x))) }
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var p ShadowPairs
	var sum, sumSq, dSum, dSq float64
	for n := 1; n <= cfg.MaxPairs; n++ {
		u := users[min(sort.SearchFloat64s(cum, r.Float64()*total), len(users)-1)]
		x := u.logit + cfg.PromptSigma*r.NormFloat64()
		sBad, cBad := bad(bs, x), bad(bc, x)
		p.Mirrored++
		p.Paired++
		// A perfect 0/1 judge: stable's score minus the canary's.
		diff := 0.0
		switch {
		case sBad == cBad:
			p.Ties++
		case cBad:
			p.Losses++
			diff = 1
		default:
			p.Wins++
			diff = -1
		}
		dSum, dSq = dSum+diff, dSq+diff*diff
		p.ScoreN = n
		p.ScoreDiffMean = dSum / float64(n)
		if n > 1 {
			p.ScoreDiffVar = (dSq - dSum*dSum/float64(n)) / float64(n-1)
		}
		// The prompt's length and the user's level are shared by both
		// answers; each version adds its own noise.
		length := u.latency * math.Exp(0.5*r.NormFloat64())
		st := length * math.Exp(0.2*r.NormFloat64())
		ct := length * cfg.CanarySlower * math.Exp(0.2*r.NormFloat64())
		lr := math.Log(ct / st)
		sum, sumSq = sum+lr, sumSq+lr*lr
		p.LatencyN = n
		p.LogRatioMean = sum / float64(n)
		if n > 1 {
			p.LogRatioVar = (sumSq - sum*sum/float64(n)) / float64(n-1)
		}
		if n%cfg.LookEvery != 0 {
			continue
		}
		d := DecideShadow(cfg.Policy, cfg.Alpha, 0.15, start, p, start.Add(time.Duration(n)*500*time.Millisecond))
		if d.Action == ActionRollback || d.Action == ActionProceed {
			return d.Action, n
		}
	}
	return ActionHold, cfg.MaxPairs
}

// incidentShadow is the documented incident (bad answers 3 % → 14 %) in
// shadow: the users of Scenarios (5000, activity sd 1, quality logit sd
// 1) with prompts of logit difficulty sd 1.5, a perfect judge, the
// runner looking every 4 pairs.
func incidentShadow(runs int) ShadowSimConfig {
	return ShadowSimConfig{
		Runs: runs, Seed: 17, Users: 5000, ActivitySigma: 1, QualitySigma: 1, LatencySigma: 0.5, PromptSigma: 1.5,
		StableBad: 0.03, CanaryBad: 0.14, CanarySlower: 1, LookEvery: 4, MaxPairs: 5000,
		Policy: DefaultShadowPolicy(), Alpha: DefaultPolicy().Alpha,
	}
}

// TestShadowCatchesTheIncidentWithoutExposingAUser measures the closing
// note of the shadow stage: judged pairs needed to catch 3 % → 14 % bad
// answers in shadow, against the unpaired judged answers the user stages
// need (the "quality-3-to-14" scenario of Scenarios, through Decide, with
// the same shares of bad answers over all users), and checks the shadow
// stage's false rollbacks and passes on a healthy canary.
func TestShadowCatchesTheIncidentWithoutExposingAUser(t *testing.T) {
	runs, userRuns := 1000, 100
	if testing.Short() {
		runs, userRuns = 200, 30
	}
	compareShadow(t, runs, userRuns)
}

// BenchmarkShadowStage prints the comparison with 1000 runs of each
// (`make bench`).
func BenchmarkShadowStage(b *testing.B) {
	compareShadow(b, 1000, 1000)
	for b.Loop() {
	}
}

func compareShadow(t testing.TB, runs, userRuns int) {
	inc := SimulateShadow(incidentShadow(runs))
	t.Logf("shadow, 3 %% → 14 %%: %d runs, rolled back %d, passed %d, undecided %d; judged pairs at rollback median %.0f, p95 %.0f; user requests served by the canary 0",
		inc.Runs, inc.RolledBack, inc.Passed, inc.Undecided, inc.MedianPairsAtRollback, inc.P95PairsAtRollback)
	if inc.RolledBack < runs*99/100 {
		t.Errorf("shadow caught the incident in %d of %d runs, want 99 %%", inc.RolledBack, runs)
	}

	aa := incidentShadow(runs)
	aa.CanaryBad, aa.Seed = aa.StableBad, 19
	same := SimulateShadow(aa)
	t.Logf("shadow, A/A: rolled back %d of %d (alpha %v), passed %d after a median of %.0f judged pairs", same.RolledBack, same.Runs, aa.Alpha, same.Passed, same.MedianPairsToPass)
	if lo := wilsonLower(same.RolledBack, same.Runs); lo > aa.Alpha {
		t.Errorf("shadow A/A false rollbacks %d of %d: the 99 %% interval starts at %.3f, above alpha %v", same.RolledBack, same.Runs, lo, aa.Alpha)
	}
	if same.Passed < runs*9/10 {
		t.Errorf("a canary as good as stable passed the shadow stage in %d of %d runs", same.Passed, runs)
	}

	// Mirroring by user, as the gateway does: a tenth of the users (the
	// measured ones), each with all of their requests.
	byUser := incidentShadow(runs)
	byUser.MirroredUsers, byUser.Seed = 0.1, 29
	bu := SimulateShadow(byUser)
	byUserAA := byUser
	byUserAA.CanaryBad, byUserAA.Seed = byUserAA.StableBad, 31
	buAA := SimulateShadow(byUserAA)
	t.Logf("shadow mirroring a tenth of the users: 3 %% → 14 %% rolled back %d of %d, judged pairs at rollback median %.0f, p95 %.0f; A/A rolled back %d, passed %d",
		bu.RolledBack, bu.Runs, bu.MedianPairsAtRollback, bu.P95PairsAtRollback, buAA.RolledBack, buAA.Passed)
	if bu.RolledBack < runs*99/100 {
		t.Errorf("mirroring by user caught the incident in %d of %d runs, want 99 %%", bu.RolledBack, runs)
	}
	if lo := wilsonLower(buAA.RolledBack, buAA.Runs); lo > byUserAA.Alpha {
		t.Errorf("mirroring by user, A/A false rollbacks %d of %d: the 99 %% interval starts at %.3f, above alpha %v", buAA.RolledBack, buAA.Runs, lo, byUserAA.Alpha)
	}

	slow := incidentShadow(runs / 4)
	slow.CanaryBad, slow.CanarySlower, slow.Seed = slow.StableBad, 1.5, 23
	sl := SimulateShadow(slow)
	t.Logf("shadow, 1.5× slower: rolled back %d of %d after a median of %.0f pairs", sl.RolledBack, sl.Runs, sl.MedianPairsAtRollback)
	if sl.RolledBack < sl.Runs*99/100 {
		t.Errorf("a canary 1.5× slower was rolled back in %d of %d runs", sl.RolledBack, sl.Runs)
	}

	// The user stages on the same shares of bad answers over all users.
	var sc Scenario
	for _, s := range Scenarios(userRuns, 17) {
		if s.Name == "quality-3-to-14" {
			sc = s
		}
	}
	cfg := sc.Config
	cfg.Stable.BadRate = logistic(badBase(0.03, cfg.Users.QualitySigma))
	cfg.Canary.BadRate = logistic(badBase(0.14, cfg.Users.QualitySigma))
	user, err := SimulateRollouts(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := cfg.Policy.EvaluatedStages()[0].Weight
	stableJudged := stableRate(*cfg.Sampling, first) * (100 - first) / first
	t.Logf("user stages, 3 %% → 14 %%: %v; judged answers at rollback: the canary's median %.0f (each one a user served by it), with about %.1f of stable's per canary answer at the first stage (%g %%): median %.0f judged answers in all",
		user, user.MedianCanaryAtRollback, stableJudged, first, user.MedianCanaryAtRollback*(1+stableJudged))
}

func logistic(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
