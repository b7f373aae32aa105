package analyzer

import (
	"fmt"
	"time"
)

// Operator-only actions (see Operate); the runner never decides them.
const (
	ActionResume Action = "resume"
	ActionAbort  Action = "abort"
)

// Transition is what an action does to a rollout: whether traffic moves
// and to which split, and where the rollout stands afterwards.
type Transition struct {
	// Moves says the action changes the model's traffic; Weight is then
	// the canary's weight and Stable the stable version to set.
	Moves  bool
	Weight float64
	Stable string
	// Status and Stage are the rollout's afterwards.
	Status Status
	Stage  int
}

// transition returns what action a does to ro, or why it cannot: a
// finished rollout does not change (ErrConflict), an advance needs a next
// stage (ErrConflict), pause and resume need a rollout that is not already
// paused or running (ErrConflict), anything else is not an action
// (ErrInvalid). Pure: the runner's traffic moves (Runner.act), the
// operators' actions (Runner.Operate) and the weight history
// (Rollout.WeightSteps) all go through it, so the mapping from an action
// to weights, stable and status is written once.
func transition(ro *Rollout, a Action) (Transition, error) {
	t := Transition{Weight: ro.CanaryWeight(), Stable: ro.Stable, Status: ro.Status, Stage: ro.Stage}
	if !ro.Status.Active() {
		return t, fmt.Errorf("%w: rollout %s is %s", ErrConflict, ro.ID, ro.Status)
	}
	switch a {
	case ActionAdvance:
		stages := ro.Plan.Policy.EvaluatedStages()
		if ro.Stage+1 >= len(stages) {
			return t, fmt.Errorf("%w: rollout %s cannot advance past its last stage", ErrConflict, ro.ID)
		}
		t.Moves, t.Stage, t.Weight = true, ro.Stage+1, stages[ro.Stage+1].Weight
	case ActionPromote:
		if len(ro.Candidates) > 0 {
			return t, fmt.Errorf("%w: rollout %s is an A/B/n experiment of %d candidates: it is not promoted; end it and start a rollout of the chosen candidate", ErrInvalid, ro.ID, len(ro.Candidates))
		}
		t.Moves, t.Weight, t.Stable, t.Status = true, 100, ro.Canary, RolloutPromoted
	case ActionRollback:
		t.Moves, t.Weight, t.Status = true, 0, RolloutRolledBack
	case ActionAbort:
		t.Moves, t.Weight, t.Status = true, 0, RolloutAborted
	case ActionPause:
		if ro.Status == RolloutPaused {
			return t, fmt.Errorf("%w: rollout %s is already paused", ErrConflict, ro.ID)
		}
		t.Status = RolloutPaused
	case ActionResume:
		if ro.Status == RolloutRunning {
			return t, fmt.Errorf("%w: rollout %s is already running", ErrConflict, ro.ID)
		}
		t.Status = RolloutRunning
	default:
		return t, fmt.Errorf("%w: unknown action %q", ErrInvalid, a)
	}
	return t, nil
}

// WeightStep is the canary's weight from At on.
type WeightStep struct {
	At     time.Time
	Weight float64
}

// WeightSteps returns the canary's weight over the rollout's life as its
// history tells it: the first stage's weight from Created, then one step
// per traffic move (the runner's and the operators'), and the weight held
// at Updated. Pure.
func (r *Rollout) WeightSteps() []WeightStep {
	cur := &Rollout{ID: r.ID, Stable: r.Stable, Canary: r.Canary, Mode: r.Mode, Split: r.Split, Plan: r.Plan, Status: RolloutRunning}
	if len(r.Candidates) > 0 {
		cur.Candidates = make([]Candidate, len(r.Candidates))
		for i, c := range r.Candidates {
			cur.Candidates[i] = Candidate{Version: c.Version, Split: c.Split, Status: ArmRunning}
		}
	}
	steps := []WeightStep{{At: r.Created, Weight: cur.CanaryWeight()}}
	for _, e := range r.History {
		if e.Kind != "action" && e.Kind != "operator" {
			continue
		}
		t, err := transition(cur, e.Action)
		if err != nil {
			continue // an event that changes nothing: a start, a pause's reason
		}
		cur.Status, cur.Stage, cur.Stable = t.Status, t.Stage, t.Stable
		if t.Moves {
			steps = append(steps, WeightStep{At: e.At, Weight: t.Weight})
		}
	}
	return append(steps, WeightStep{At: r.Updated, Weight: steps[len(steps)-1].Weight})
}
