package analyzer

import (
	"maps"
	"math"
	"slices"
	"time"

	"github.com/llmcanary/llmcanary/analyzer/stats"
)

// Outcome is how a request ended, as the analyzer counts it.
type Outcome uint8

const (
	OutcomeSuccess   Outcome = iota // an answer
	OutcomeFailure                  // the version's fault: 5xx, 429, reset, truncated or empty
	OutcomeCancelled                // the client went away: nobody's fault, not counted as a failure
)

// Request is one request of a rollout as the analyzer sees it.
type Request struct {
	At time.Time
	// User is the request's sticky bucket: the unit of randomisation.
	// Anonymous requests get a random bucket each, so each is its own user.
	User     uint64
	Canary   bool
	Outcome  Outcome
	Refusal  bool
	Streamed bool
	// Values of a successful request. TTFT and ITL count for streamed
	// answers only; ITL only with two tokens or more and a measured gap.
	LatencyMs, TTFTMs, ITLMs, CostUSD, Tokens float64
	// Judged says the answer has a quality score in [0, 1].
	Judged  bool
	Quality float64
	// SampleRate is the share of its arm's users whose requests were
	// measured when it was (see xds.Measure): 1 for the canary, the
	// stable sample's rate for stable. 0 means 1 (rows from before
	// sampling existed).
	SampleRate float64
}

// TallyOptions says how requests become measurements.
type TallyOptions struct {
	// TailQuantile is the quantile of the tail thresholds. Default 0.99.
	TailQuantile float64
	// BadBelow is the quality score under which an answer is bad: a
	// quality event. Default 0.5.
	BadBelow float64
	// KeepValues keeps each arm's raw values (A/B reports use them).
	KeepValues bool
}

// CalibrationSize is how many successful requests of a rollout, both arms
// pooled, fix a tail threshold: enough for ten above the quantile.
func CalibrationSize(q float64) int { return int(math.Ceil(10 / (1 - q))) }

// metricIndex numbers the metrics for per-user arrays.
var metricIndex = func() map[Metric]int {
	m := make(map[Metric]int, len(AllMetrics))
	for i, k := range AllMetrics {
		m[k] = i
	}
	return m
}()

// tailMetrics maps each tail metric to the value it thresholds.
var tailMetrics = []Metric{MetricLatencyP99, MetricTTFTP99, MetricITLP99}

// userAgg is one user's contribution to one arm in the stage window: per
// metric, n (observations) and s (their sum).
type userAgg struct {
	canary bool
	n, s   [numMetrics]float64
}

const numMetrics = 11

// The per-user arrays hold every metric.
var _ = [1]struct{}{}[len(AllMetrics)-numMetrics]

// Tally turns a rollout's requests, fed in time order, into Measurements:
// the stage window's per-user sums for every metric, each user's first
// event of every event metric since the rollout began, and the tail
// thresholds. The ClickHouse source and the simulator both use it, so
// what is tested in simulation is what runs. Not safe for concurrent use.
type Tally struct {
	o TallyOptions

	// Baseline: each user's log tail values before the rollout, and
	// everyone's.
	levels map[uint64]*[3]logSums
	pop    [3]logSums

	// Calibration: the pooled values of the first successes.
	calib      [3][]float64
	calibrated bool
	thresholds [3]float64
	calibAt    time.Time

	// Rollout-wide: which event metrics each user has had, and stable's
	// observations and events of each.
	seen   map[uint64]uint16
	events map[Metric][]UserEvent
	base   map[Metric]Rate

	// The arms' sample rates as the latest requests of each carried
	// them (stable, canary); NaN until an arm's first request.
	rates [2]float64

	// Stage window.
	stageFrom time.Time
	users     map[uint64]*userAgg
	arms      [2]Arm // stable, canary
}

// NewTally returns an empty tally whose stage window starts at the
// beginning of time.
func NewTally(o TallyOptions) *Tally {
	if o.TailQuantile == 0 {
		o.TailQuantile = 0.99
	}
	if o.BadBelow == 0 {
		o.BadBelow = 0.5
	}
	t := &Tally{o: o, seen: map[uint64]uint16{}, events: map[Metric][]UserEvent{}, base: map[Metric]Rate{}, rates: [2]float64{math.NaN(), math.NaN()}}
	t.StartStage(time.Time{})
	return t
}

// StartStage empties the stage window, which from now on holds the
// requests at or after from. The rollout-wide events and thresholds stay.
func (t *Tally) StartStage(from time.Time) {
	t.stageFrom = from
	t.users = map[uint64]*userAgg{}
	for i := range t.arms {
		t.arms[i] = Arm{Sums: map[Metric]stats.Clustered{}}
	}
}

// Add counts one request; requests must come in time order.
func (t *Tally) Add(r Request) {
	t.rates[b2i(r.Canary)] = knownRate(r.SampleRate)
	t.calibrate(r)
	t.event(r)
	if r.At.Before(t.stageFrom) {
		return
	}
	arm := &t.arms[0]
	if r.Canary {
		arm = &t.arms[1]
	}
	u := t.users[r.User]
	if u == nil {
		u = &userAgg{canary: r.Canary}
		t.users[r.User] = u
		arm.Users++
	}
	if u.canary != r.Canary {
		// A user cannot change arms within a stage; a row that says so
		// was forced or mislabelled and would corrupt the user's sums.
		return
	}
	old := *u
	obs := func(m Metric, n, s float64) {
		i := metricIndex[m]
		u.n[i] += n
		u.s[i] += s
	}
	arm.Requests++
	switch r.Outcome {
	case OutcomeFailure:
		arm.Failures++
		obs(MetricErrorRate, 1, 1)
	case OutcomeCancelled:
		obs(MetricErrorRate, 1, 0)
	case OutcomeSuccess:
		arm.Successes++
		obs(MetricErrorRate, 1, 0)
		obs(MetricRefusalRate, 1, b2f(r.Refusal))
		if r.Refusal {
			arm.Refusals++
		}
		obs(MetricLatency, 1, r.LatencyMs)
		obs(MetricCostPerRequest, 1, r.CostUSD)
		obs(MetricTokensPerAnswer, 1, r.Tokens)
		if r.Streamed {
			obs(MetricTTFT, 1, r.TTFTMs)
			if r.ITLMs > 0 {
				obs(MetricITL, 1, r.ITLMs)
			}
		}
		if t.calibrated && r.At.After(t.calibAt) {
			v := t.tailValues(r)
			for k, m := range tailMetrics {
				if !math.IsNaN(v[k]) && !math.IsNaN(t.thresholds[k]) {
					obs(m, 1, b2f(v[k] > t.thresholds[k]))
				}
			}
		}
		if r.Judged {
			arm.Judged++
			obs(MetricQuality, 1, r.Quality)
		}
		if t.o.KeepValues {
			arm.LatencyMs = append(arm.LatencyMs, r.LatencyMs)
			arm.CostUSD = append(arm.CostUSD, r.CostUSD)
			arm.CompletionTokens = append(arm.CompletionTokens, r.Tokens)
			if r.Streamed {
				arm.TTFTMs = append(arm.TTFTMs, r.TTFTMs)
				if r.ITLMs > 0 {
					arm.ITLMs = append(arm.ITLMs, r.ITLMs)
				}
			}
			if r.Judged {
				arm.Quality = append(arm.Quality, r.Quality)
			}
		}
	}
	for i, m := range AllMetrics {
		if u.n[i] != old.n[i] {
			c := arm.Sums[m]
			c.Update(old.n[i], old.s[i], u.n[i], u.s[i])
			arm.Sums[m] = c
		}
	}
}

// rawTailValues returns the values the tail metrics threshold, NaN where
// a request has none.
func rawTailValues(r Request) [3]float64 {
	v := [3]float64{r.LatencyMs, math.NaN(), math.NaN()}
	if r.Streamed {
		v[1] = r.TTFTMs
		if r.ITLMs > 0 {
			v[2] = r.ITLMs
		}
	}
	return v
}

// tailValues returns r's tail values relative to its user's usual level
// when the tally has a baseline (see AddBaseline), else as they are.
func (t *Tally) tailValues(r Request) [3]float64 {
	v := rawTailValues(r)
	if t.levels == nil {
		return v
	}
	u := t.levels[r.User]
	// The user's mean log value, shrunk towards everyone's by
	// baselineShrink pseudo-requests: a user seen once is mostly taken as
	// typical, a user seen often as themselves.
	level := func(k int) float64 {
		n, s := 0.0, 0.0
		if u != nil {
			n, s = u[k].n, u[k].s
		}
		return (s + baselineShrink*t.pop[k].s/t.pop[k].n) / (n + baselineShrink)
	}
	for k := range v {
		if math.IsNaN(v[k]) || t.pop[k].n == 0 {
			continue
		}
		l := level(k)
		if k > 0 && (u == nil || u[k].n == 0) && t.pop[0].n > 0 {
			// No TTFT or inter-token baseline for this user (only a
			// sample is measured before a rollout, while Envoy's access
			// log gives everyone's latency): their latency's distance
			// from everyone's stands in for it.
			l += level(0) - t.pop[0].s/t.pop[0].n
		}
		v[k] /= math.Exp(l)
	}
	return v
}

// baselineShrink is how many typical requests a user's own baseline is
// blended with. Users' persistent latency differs about as much as one
// user's requests do (log-sd 0.5 both, in the simulation's model), which
// makes two a plain empirical-Bayes weight.
const baselineShrink = 2

// logSums sums observations of a log value.
type logSums struct{ n, s float64 }

// AddBaseline records a user's requests from before the rollout, when
// every user was on stable: n successful requests whose tail value k (0
// latency, 1 TTFT, 2 inter-token latency) has logarithms summing to
// sumLog. With a baseline, the tail metrics compare each request with its
// user's usual level instead of with everyone's: a user with long prompts
// is slow on both versions, and only the change in their own latency is
// the canary's doing. The baseline predates the split, so it is the same
// whichever arm a user is on, and the event tests stay exact. Call it
// before Add.
func (t *Tally) AddBaseline(user uint64, k int, n, sumLog float64) {
	if n <= 0 || k < 0 || k >= 3 || math.IsNaN(sumLog) || math.IsInf(sumLog, 0) {
		return
	}
	if t.levels == nil {
		t.levels = map[uint64]*[3]logSums{}
	}
	u := t.levels[user]
	if u == nil {
		u = &[3]logSums{}
		t.levels[user] = u
	}
	u[k].n += n
	u[k].s += sumLog
	t.pop[k].n += n
	t.pop[k].s += sumLog
}

// calibrate collects the first successes' values until each tail metric
// has CalibrationSize of them, then fixes the thresholds at their pooled
// quantile. Pooling both arms' first requests makes the thresholds the
// same whichever users the canary got, so exceedances after calibration
// are events the conditional test can count exactly.
func (t *Tally) calibrate(r Request) {
	if t.calibrated || r.Outcome != OutcomeSuccess {
		return
	}
	need := CalibrationSize(t.o.TailQuantile)
	v := t.tailValues(r)
	for k := range v {
		if !math.IsNaN(v[k]) && len(t.calib[k]) < need {
			t.calib[k] = append(t.calib[k], v[k])
		}
	}
	// Latency calibrates alone: streamed metrics may never fill up when
	// no answer streams.
	if len(t.calib[0]) < need {
		return
	}
	t.calibrated, t.calibAt = true, r.At
	for k := range t.calib {
		if len(t.calib[k]) < need/2 {
			t.thresholds[k] = math.NaN()
			continue
		}
		s := slices.Clone(t.calib[k])
		slices.Sort(s)
		t.thresholds[k] = stats.QuantileSorted(s, t.o.TailQuantile)
	}
	t.calib = [3][]float64{}
}

// event records r's events that are the first of their metric for r's
// user since the rollout began, and counts stable's rates.
func (t *Tally) event(r Request) {
	var kinds []Metric
	count := func(m Metric, event bool) {
		if event {
			kinds = append(kinds, m)
		}
		if !r.Canary {
			b := t.base[m]
			b.N++
			if event {
				b.Events++
			}
			t.base[m] = b
		}
	}
	switch r.Outcome {
	case OutcomeFailure:
		count(MetricErrorRate, true)
	case OutcomeCancelled:
		count(MetricErrorRate, false)
	case OutcomeSuccess:
		count(MetricErrorRate, false)
		count(MetricRefusalRate, r.Refusal)
		if t.calibrated && r.At.After(t.calibAt) {
			v := t.tailValues(r)
			for k, m := range tailMetrics {
				if !math.IsNaN(v[k]) && !math.IsNaN(t.thresholds[k]) {
					count(m, v[k] > t.thresholds[k])
				}
			}
		}
		if r.Judged {
			count(MetricQuality, r.Quality < t.o.BadBelow)
		}
	}
	for _, m := range kinds {
		bit := uint16(1) << metricIndex[m]
		if t.seen[r.User]&bit != 0 {
			continue
		}
		t.seen[r.User] |= bit
		// The canary's share of measured exposure over its share of
		// traffic: every canary user is measured and a sample of stable's.
		// Until both arms have been seen the rates are unknown, and so is
		// the event's evidence (NaN: it counts for neither side).
		e := UserEvent{Metric: m, At: r.At, Canary: r.Canary, Ratio: t.rates[1] / t.rates[0]}
		if m == MetricQuality {
			e.Ratio *= t.judgeRatio()
		}
		prev := t.events[m]
		e.Print = eventPrint(e)
		if n := len(prev); n > 0 {
			e.Print += prev[n-1].Print
		}
		t.events[m] = append(prev, e)
	}
}

// judgeRatio is the canary's judging rate over stable's in the stage
// window so far (smoothed): a quality event can only happen to a judged
// answer, so it lands on the canary in proportion to its judged exposure.
func (t *Tally) judgeRatio() float64 {
	s, c := t.arms[0], t.arms[1]
	jc := float64(c.Judged+1) / float64(c.Successes+1)
	js := float64(s.Judged+1) / float64(s.Successes+1)
	return jc / js
}

// Measurements returns the stage window's arms (sums copied), the events
// so far and the thresholds.
func (t *Tally) Measurements(model, stable, canary string, to time.Time) Measurements {
	m := Measurements{Model: model, From: t.stageFrom, To: to, Events: make(map[Metric][]UserEvent, len(t.events)), Baseline: maps.Clone(t.base)}
	for k, v := range t.events {
		m.Events[k] = v[:len(v):len(v)]
	}
	m.Stable, m.Canary = t.arms[0].clone(), t.arms[1].clone()
	m.Stable.Version, m.Canary.Version = stable, canary
	m.Stable.SampleRate, m.Canary.SampleRate = t.rates[0], t.rates[1]
	m.TailPerUser = t.levels != nil
	if t.calibrated {
		m.Thresholds = map[Metric]float64{}
		for k, mt := range tailMetrics {
			if !math.IsNaN(t.thresholds[k]) {
				m.Thresholds[mt] = t.thresholds[k]
			}
		}
	}
	return m
}

func (a Arm) clone() Arm {
	out := a
	out.Sums = make(map[Metric]stats.Clustered, len(a.Sums))
	for k, v := range a.Sums {
		out.Sums[k] = v
	}
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
