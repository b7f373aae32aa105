package analyzer

import (
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// Status is where a rollout stands.
type Status string

const (
	RolloutRunning    Status = "running"
	RolloutPaused     Status = "paused"
	RolloutPromoted   Status = "promoted"
	RolloutRolledBack Status = "rolled_back"
	RolloutAborted    Status = "aborted"
)

// Active reports whether the rollout still owns its model's traffic split
// (running or paused).
func (s Status) Active() bool { return s == RolloutRunning || s == RolloutPaused }

// Mode is how a rollout uses its statistics.
type Mode string

const (
	// ModeCanary moves the canary through the plan's stages, deciding at
	// every look.
	ModeCanary Mode = "canary"
	// ModeABTest holds a fixed split and reports significance, effect
	// sizes, win rates and the samples still needed; it never moves
	// traffic on its own.
	ModeABTest Mode = "abtest"
)

// Rollout is one canary rollout or A/B test of a model: what is compared,
// under which plan, where it stands, and everything it decided.
type Rollout struct {
	ID     string `json:"id"`
	Model  string `json:"model"`
	Stable string `json:"stable"`
	Canary string `json:"canary"`
	Mode   Mode   `json:"mode"`
	// Split is the canary's fixed percentage in A/B mode; in an A/B/n
	// experiment the candidates' total.
	Split float64 `json:"split,omitempty"`
	// Candidates are the arms of an A/B/n experiment (A/B mode with more
	// than one candidate; Canary is then the first); nil otherwise.
	Candidates []Candidate `json:"candidates,omitempty"`
	// ABN is the latest look at an A/B/n experiment.
	ABN *ABNReport `json:"abn,omitempty"`
	// Reverts is the stable change a revert undoes (its Previous is this
	// rollout's canary); nil for any other rollout.
	Reverts *xds.StableChange `json:"reverts,omitempty"`
	Plan    Plan              `json:"plan"`
	Status  Status            `json:"status"`
	// Stage indexes Plan.Policy.EvaluatedStages; StageStarted is when its
	// window began. Both survive a restart of the analyzer.
	Stage        int        `json:"stage"`
	StageStarted time.Time  `json:"stage_started"`
	State        StageState `json:"state"`
	// Pending is a decided traffic change (rollback, advance, promote)
	// that the control plane has not yet accepted; the runner retries it
	// before anything else.
	Pending Action `json:"pending,omitempty"`
	// Seq counts the changes the runner and the operators made to the
	// rollout: each look's outcome is written only onto the Seq it was
	// taken at, and advances it by one, so no decision is stored twice
	// or on top of a state it did not see.
	Seq uint64 `json:"seq,omitempty"`
	// PendingAt is when the pending change was decided.
	PendingAt  time.Time         `json:"pending_at,omitzero"`
	Created    time.Time         `json:"created"`
	Updated    time.Time         `json:"updated"`
	Last       *Decision         `json:"last,omitempty"`
	Experiment *ExperimentReport `json:"experiment,omitempty"`
	// Shadow is the rollout's shadow stage, if it has one.
	Shadow *ShadowStage `json:"shadow,omitempty"`
	// Preflight is the rollout's pre-flight stage, if it has one: it runs
	// before the shadow stage and the user stages.
	Preflight *PreflightStage `json:"preflight,omitempty"`
	LastError string          `json:"last_error,omitempty"`
	History   []Event         `json:"history"`
}

// Event is one entry of a rollout's history.
type Event struct {
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"` // decision, action, error, operator
	Action Action    `json:"action,omitempty"`
	Code   Code      `json:"code,omitempty"`
	Reason string    `json:"reason"`
	Actor  string    `json:"actor,omitempty"`
	// Repeats counts later looks folded into this entry: consecutive holds
	// with the same code keep one entry, updated to the latest numbers.
	Repeats  int       `json:"repeats,omitempty"`
	Decision *Decision `json:"decision,omitempty"`
	// Seq is the rollout's Seq the entry was written with: a decision is
	// identified by its rollout, stage and Seq.
	Seq uint64 `json:"seq,omitempty"`
}

// MaxHistory bounds a rollout's history; the oldest entries go first.
const MaxHistory = 2000

// record appends an event, folding a hold into the previous entry when it
// has the same kind and code.
func (r *Rollout) record(e Event) {
	e.Seq = r.Seq
	if n := len(r.History); n > 0 && e.Kind == "decision" && e.Action == ActionHold {
		last := &r.History[n-1]
		if last.Kind == e.Kind && last.Action == e.Action && last.Code == e.Code {
			e.Repeats = last.Repeats + 1
			*last = e
			return
		}
	}
	r.History = append(r.History, e)
	if len(r.History) > MaxHistory {
		r.History = append(r.History[:0:0], r.History[len(r.History)-MaxHistory:]...)
	}
}

// CanaryWeight is the canary's share of traffic the rollout wants now.
func (r *Rollout) CanaryWeight() float64 {
	switch r.Status {
	case RolloutPromoted:
		return 100
	case RolloutRolledBack, RolloutAborted:
		return 0
	}
	if r.Mode == ModeABTest && len(r.Candidates) > 0 {
		w := 0.0
		for _, c := range r.Candidates {
			if c.Status != ArmDropped {
				w += c.Split
			}
		}
		return w
	}
	if r.Mode == ModeABTest {
		return r.Split
	}
	if r.Preflight.Running() || r.Shadow.Running() {
		return 0 // users stay on stable; the canary sees forced requests or mirrored copies
	}
	stages := r.Plan.Policy.EvaluatedStages()
	if r.Stage >= 0 && r.Stage < len(stages) {
		return stages[r.Stage].Weight
	}
	return 0
}

// Weights returns the split for a canary weight w, stable taking the rest.
// In an A/B/n experiment every candidate keeps its own split while w > 0
// (ArmWeights); w = 0 gives everything back to stable.
func (r *Rollout) Weights(w float64) map[string]float64 {
	if len(r.Candidates) > 0 {
		if w == 0 {
			out := map[string]float64{r.Stable: 100}
			for _, c := range r.Candidates {
				out[c.Version] = 0
			}
			return out
		}
		return ArmWeights(r.Stable, r.Candidates)
	}
	return map[string]float64{r.Stable: 100 - w, r.Canary: w}
}

// Progress is how far the current stage is, for humans and the CLI.
type Progress struct {
	Stage       int           `json:"stage"`  // 1-based
	Stages      int           `json:"stages"` // evaluated stages
	Weight      float64       `json:"weight"`
	InStage     time.Duration `json:"in_stage"`
	MinDuration time.Duration `json:"min_duration"`
	MaxDuration time.Duration `json:"max_duration"`
	Samples     int           `json:"samples"`
	MinSamples  int           `json:"min_samples"`
	// Within counts the metrics shown within tolerance, of Tested.
	Within int `json:"within"`
	Tested int `json:"tested"`
}

// ProgressAt returns the rollout's progress at now.
func (r *Rollout) ProgressAt(now time.Time) Progress {
	p := r.Plan.Policy
	stages := p.EvaluatedStages()
	pr := Progress{Stage: r.Stage + 1, Stages: len(stages), Weight: r.CanaryWeight(), MaxDuration: p.MaxStageDuration.D()}
	if r.Status.Active() {
		pr.InStage = now.Sub(r.StageStarted)
	}
	if r.Stage >= 0 && r.Stage < len(stages) {
		pr.MinDuration, pr.MinSamples = stages[r.Stage].MinDuration.D(), stages[r.Stage].MinSamples
	}
	if r.Last != nil && r.Last.Stage == r.Stage {
		pr.Samples = r.Last.CanaryRequests
		for _, m := range r.Last.Metrics {
			if m.Status == StatusNotMeasured || m.Status == StatusTooFew {
				continue
			}
			pr.Tested++
			if m.Status == StatusWithin {
				pr.Within++
			}
		}
	}
	return pr
}
