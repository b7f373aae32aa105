package analyzer

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// stepABN takes one look at an A/B/n experiment: every candidate still in
// it is measured against stable over the same window, ABN judges them
// together, and a dropped candidate's share goes to stable in one weight
// change. A concluded experiment is not looked at again: it holds its
// split until an operator ends it (an A/B/n experiment is decided by
// people, never promoted by the runner).
func (r *Runner) stepABN(ctx context.Context, ro *Rollout, now time.Time) (*Rollout, error) {
	if ro.ABN != nil && ro.ABN.Done {
		return ro, nil
	}
	ms := make([]Measurements, len(ro.Candidates))
	for i, c := range ro.Candidates {
		if c.Status == ArmDropped {
			continue
		}
		m, err := r.measure(ctx, armWindow(ro, c.Version, now))
		if err != nil {
			return r.recordError(ro, now, CodeQueryFailed, fmt.Sprintf("hold: the measurement query of candidate %s failed: %v; retrying at the next look", c.Version, err), err)
		}
		m.Stable.Version, m.Canary.Version = ro.Stable, c.Version
		ms[i] = m
	}
	var deadline time.Time
	if d := ro.Plan.Policy.MaxStageDuration.D(); d > 0 {
		deadline = ro.StageStarted.Add(d)
	}
	rep, cands := ABN(ro.Plan.Policy, ro.Candidates, ms, now, deadline)
	if len(rep.Dropped) == 0 {
		return r.update(ro, func(x *Rollout) {
			x.Candidates, x.ABN, x.Updated, x.LastError = cands, &rep, now, ""
			x.record(Event{At: now, Kind: "decision", Action: ActionHold, Code: CodeUndecided, Reason: rep.Summary})
		})
	}
	// A drop is saved before the weights move: if the control plane
	// refuses, the rollout is not in sync and the next look re-applies
	// its weights (the dropped arm at 0) before anything else.
	after := ArmWeights(ro.Stable, cands)
	why := dropReason(ro, cands, rep.Dropped)
	if moves := r.armMoves(ctx, ro, after); len(moves) > 0 {
		why += "; " + moves
	}
	saved, err := r.update(ro, func(x *Rollout) {
		x.Candidates, x.ABN, x.Updated, x.LastError = cands, &rep, now, ""
		x.record(Event{At: now, Kind: "decision", Action: ActionHold, Code: CodeUndecided, Reason: rep.Summary})
	})
	if err != nil {
		return nil, fmt.Errorf("runner: save the drop of %s in %s: %w", strings.Join(rep.Dropped, ", "), ro.ID, err)
	}
	if err := r.setWeights(ctx, ro.Model, after, ro.Stable, xds.Cause{Rollout: ro.ID, Reason: why}); err != nil {
		r.setSynced(ro.ID, false)
		return r.recordError(saved, now, CodeTrafficFailed, fmt.Sprintf("%s decided but the control plane did not accept the weights: %v; retrying at the next look", why, err), err)
	}
	r.setSynced(ro.ID, true)
	r.log().Info("experiment arm dropped", "rollout", ro.ID, "model", ro.Model, "dropped", strings.Join(rep.Dropped, ","))
	return r.update(saved, func(x *Rollout) {
		x.record(Event{At: now, Kind: "action", Reason: "traffic moved: " + why + "; weights " + fmtWeights(ro.Stable, cands, after)})
	})
}

func dropReason(ro *Rollout, cands []Candidate, dropped []string) string {
	var rs []string
	for _, c := range cands {
		if contains(dropped, c.Version) {
			rs = append(rs, c.Reason+fmt.Sprintf("; its %g %% goes to stable %s", c.Split, ro.Stable))
		}
	}
	return strings.Join(rs, "; ")
}

// armMoves says which surviving arms lose users to a weight change, from
// where the model's versions serve on the control plane now and would
// after it; "" when none (or when the model cannot be read). Lanes make a
// drop move no one; a model laid out before them may still.
func (r *Runner) armMoves(ctx context.Context, ro *Rollout, after map[string]float64) string {
	if r.Models == nil {
		return ""
	}
	model, err := r.Models.Model(ctx, ro.Model)
	if err != nil {
		return ""
	}
	var out []string
	for v, f := range xds.UsersMoved(model, xds.Reweighted(model, after)) {
		if v != ro.Stable {
			out = append(out, fmt.Sprintf("%s (%.0f %% of its users change arm)", v, 100*f))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func fmtWeights(stable string, cands []Candidate, w map[string]float64) string {
	parts := []string{fmt.Sprintf("%s %g %%", stable, w[stable])}
	for _, c := range cands {
		parts = append(parts, fmt.Sprintf("%s %g %%", c.Version, w[c.Version]))
	}
	return strings.Join(parts, ", ")
}
