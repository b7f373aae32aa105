package analyzer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// ShadowStage is a rollout's shadow stage as it runs: before the first
// user stage, the canary receives only mirrored copies of user requests
// (xds.Shadow) and is judged on the pairs (DecideShadow).
type ShadowStage struct {
	Policy ShadowPolicy `json:"policy"`
	// Status is running, passed, failed (rolled back on shadow evidence),
	// or ended (the rollout ended otherwise: an operator's action).
	Status  string    `json:"status"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Last is the latest look, with the pairs, tests and mirrored load.
	Last *ShadowDecision `json:"last,omitempty"`
}

// Shadow stage statuses.
const (
	ShadowRunning = "running"
	ShadowPassed  = "passed"
	ShadowFailed  = "failed"
	ShadowEnded   = "ended"
)

// Running reports whether the shadow stage owns the rollout's looks.
func (s *ShadowStage) Running() bool { return s != nil && s.Status == ShadowRunning }

func (s *ShadowStage) end(status string, at time.Time) {
	if s.Running() {
		s.Status, s.Ended = status, at
	}
}

// ShadowSetter is implemented by a TrafficSetter that can mirror a
// model's traffic (ControlPlaneClient).
type ShadowSetter interface {
	SetShadow(ctx context.Context, model string, s *xds.Shadow) error
}

var _ ShadowSetter = ControlPlaneClient{}

// SetShadow sets the model's mirror through the management API, unless it
// is set exactly so already.
func (c ControlPlaneClient) SetShadow(ctx context.Context, model string, s *xds.Shadow) error {
	m, err := c.Client.Model(ctx, model)
	if err != nil {
		return err
	}
	if sameShadow(m.Shadow, s) {
		return nil
	}
	m.Shadow, m.Sampling = s, nil
	_, err = c.Client.PutModel(ctx, m)
	return err
}

func sameShadow(a, b *xds.Shadow) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Version == b.Version && a.Percent == b.Percent && a.Concurrency() == b.Concurrency()
}

// stopMirror is the setting that ends a stage's mirror: 0 % to the same
// version with the same cap, so the shadow cluster stays as it is while
// mirrored requests finish (see xds.Shadow.Percent).
func stopMirror(p ShadowPolicy, canary string) *xds.Shadow {
	m := p.Mirror(canary)
	m.Percent = 0
	return m
}

func (r *Runner) setShadow(ctx context.Context, model string, s *xds.Shadow) error {
	ss, ok := r.Traffic.(ShadowSetter)
	if !ok {
		return errors.New("the traffic setter cannot mirror requests")
	}
	return ss.SetShadow(ctx, model, s)
}

// endShadow stops a running shadow stage's mirror when the rollout's
// traffic moves for another reason; a failure is logged (the control
// plane keeps mirroring until the next change of the model).
func (r *Runner) endShadow(ctx context.Context, ro *Rollout) {
	if ro.Shadow.Running() {
		if err := r.setShadow(ctx, ro.Model, stopMirror(ro.Shadow.Policy, ro.Canary)); err != nil {
			r.log().Warn("shadow mirror not removed", "rollout", ro.ID, "model", ro.Model, "error", err)
		}
	}
}

// stepShadow takes one look at a rollout in its shadow stage: it keeps
// the mirror set, reads the pairs since the stage started, decides with
// DecideShadow and acts. A rollback removes the mirror and keeps every
// user on stable; a pass removes the mirror and moves the first user
// stage's traffic, whose window opens then.
func (r *Runner) stepShadow(ctx context.Context, ro *Rollout, now time.Time) (*Rollout, error) {
	sh := ro.Shadow
	mirror := sh.Policy.Mirror(ro.Canary)
	if err := r.setShadow(ctx, ro.Model, mirror); err != nil {
		return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("hold: could not mirror %g %% of %s's requests to %s: %v; retrying at the next look", mirror.Percent, ro.Model, ro.Canary, err), err)
	}
	if r.Pairs == nil {
		err := errors.New("no shadow source")
		return r.recordError(ro, now, CodeQueryFailed, "hold: the analyzer has no source of shadow pairs", err)
	}
	qctx, cancel := context.WithTimeout(ctx, r.queryTimeout())
	pairs, err := r.Pairs.ShadowPairs(qctx, ShadowWindow{Model: ro.Model, Stable: ro.Stable, Canary: ro.Canary, From: sh.Started, To: now})
	cancel()
	if err != nil {
		return r.recordError(ro, now, CodeQueryFailed, fmt.Sprintf("hold: the shadow pairs query failed: %v; retrying at the next look", err), err)
	}
	p := ro.Plan.Policy
	d := DecideShadow(sh.Policy, p.Alpha, p.HarmMargin, sh.Started, pairs, now)
	dec := &Decision{At: now, Action: d.Action, Code: d.Code, Reason: d.Reason, Alpha: d.Alpha, InStage: now.Sub(sh.Started)}
	started := now
	switch d.Action {
	case ActionRollback, ActionProceed:
		if err := r.setShadow(ctx, ro.Model, stopMirror(sh.Policy, ro.Canary)); err != nil {
			return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("%s decided but the mirror could not be removed: %v; retrying at the next look", d.Action, err), err)
		}
		w := 0.0
		if d.Action == ActionProceed {
			w = p.EvaluatedStages()[0].Weight
		}
		if err := r.setWeights(ctx, ro.Model, ro.Weights(w), ro.Stable, xds.Cause{Rollout: ro.ID, Reason: d.Reason}); err != nil {
			r.setSynced(ro.ID, false)
			return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("%s decided but the control plane did not accept canary %g %%: %v; retrying at the next look", d.Action, w, err), err)
		}
		if d.Action == ActionProceed {
			started = r.waitApplied(ctx, ro.ID, now)
		}
	}
	return r.Store.Update(ro.ID, func(x *Rollout) error {
		x.Shadow.Last, x.Last, x.Updated, x.LastError = &d, dec, now, ""
		x.record(Event{At: now, Kind: "decision", Action: d.Action, Code: d.Code, Reason: d.Reason, Decision: dec})
		switch d.Action {
		case ActionRollback:
			x.Shadow.end(ShadowFailed, now)
			x.Status = RolloutRolledBack
			x.record(Event{At: now, Kind: "action", Action: ActionRollback, Reason: fmt.Sprintf("mirror stopped; traffic: %s 100 %%, %s 0 %% (no user was served by it)", x.Stable, x.Canary)})
		case ActionProceed:
			x.Shadow.end(ShadowPassed, started)
			x.StageStarted, x.State = started, NewStageState(0, started)
			x.record(Event{At: started, Kind: "action", Action: ActionProceed, Reason: fmt.Sprintf("mirror stopped; first user stage: %s %g %%, %s %g %%", x.Stable, 100-x.CanaryWeight(), x.Canary, x.CanaryWeight())})
		case ActionPause:
			x.Status = RolloutPaused
		}
		return nil
	})
}

// newShadowStage validates a start request's shadow policy and returns the
// running stage.
func newShadowStage(p ShadowPolicy, mode Mode, now time.Time) (*ShadowStage, error) {
	if mode != ModeCanary {
		return nil, fmt.Errorf("%w: a shadow stage runs before a canary rollout's user stages, not in mode %s", ErrInvalid, mode)
	}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return &ShadowStage{Policy: p, Status: ShadowRunning, Started: now}, nil
}
