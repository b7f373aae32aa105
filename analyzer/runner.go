package analyzer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// ModelReader reads a model's versions and their metadata from the control
// plane, for starting rollouts and planning them.
type ModelReader interface {
	Model(ctx context.Context, name string) (*xds.Model, error)
}

// Store keeps the rollouts for the runner and the rollout API.
// RolloutStore (files, one analyzer) and EtcdStore (shared by analyzers
// that elect one leader) implement it. Get and List return copies; Update
// applies change to a copy of the stored rollout and stores the result
// atomically, or changes nothing when change or the write fails; Create
// fails with ErrConflict when the id exists or the model has an active
// rollout; Reserve claims a model while a Start sets up its traffic;
// OnChange registers a watcher of the changes the store writes.
type Store interface {
	OnChange(f func(before, after *Rollout)) (remove func())
	Get(id string) (*Rollout, error)
	List() ([]*Rollout, error)
	Create(r *Rollout) error
	Update(id string, change func(*Rollout) error) (*Rollout, error)
	Reserve(model string) (release func(), err error)
}

var (
	_ Store = (*RolloutStore)(nil)
	_ Store = (*EtcdStore)(nil)
)

// ControlPlaneClient adapts the management API client to TrafficSetter and
// ModelReader.
type ControlPlaneClient struct {
	Client *xds.Client
}

var (
	_ TrafficSetter       = ControlPlaneClient{}
	_ CausedTrafficSetter = ControlPlaneClient{}
	_ TrafficApplier      = ControlPlaneClient{}
	_ ModelReader         = ControlPlaneClient{}
)

// SetWeights sets the model's weights through the management API, which
// applies them atomically.
func (c ControlPlaneClient) SetWeights(ctx context.Context, model string, weights map[string]float64, stable string) error {
	_, err := c.Client.SetWeights(ctx, model, weights, stable)
	return err
}

// SetWeightsBecause sets the model's weights and says why.
func (c ControlPlaneClient) SetWeightsBecause(ctx context.Context, model string, weights map[string]float64, stable string, cause xds.Cause) error {
	_, err := c.Client.SetWeightsBecause(ctx, model, weights, stable, cause)
	return err
}

// WaitApplied waits until every connected Envoy runs the weights just set.
func (c ControlPlaneClient) WaitApplied(ctx context.Context) error { return c.Client.WaitApplied(ctx) }

// Model returns the model as the control plane holds it.
func (c ControlPlaneClient) Model(ctx context.Context, name string) (*xds.Model, error) {
	return c.Client.Model(ctx, name)
}

// Runner looks at every running rollout once per Interval (every few
// seconds, so that evidence is acted on as it arrives): it measures the
// rollout from its start and the stage's window (both versions over the
// same window), decides with Decide (or Experiment in A/B mode), moves
// traffic through the TrafficSetter and records the outcome. A failed query or a failed
// weight change is recorded and retried at the next look; neither ever
// promotes. Operators act on rollouts through Start and Operate.
type Runner struct {
	Store   Store
	Source  MetricsSource
	Traffic TrafficSetter
	Models  ModelReader
	// Policy is the base policy; per-model overrides and the planner shape
	// it for each rollout.
	Policy   Policy
	Interval time.Duration
	// QueryTimeout bounds one Measure call. Default: Interval.
	QueryTimeout time.Duration
	Now          func() time.Time
	Log          *slog.Logger
	// Stages, if set, records every stage's window (see StageLog) from
	// the moment Run starts.
	Stages StageLog
	// Pairs reads the shadow stages' pairs; a rollout with a shadow stage
	// holds without it.
	Pairs ShadowSource
	// Gateway sends the pre-flight stages' forced requests and Judge
	// grades their answers; a rollout with a pre-flight holds without a
	// Gateway, and its suite pairs stay unjudged without a Judge.
	Gateway *PreflightGateway
	Judge   PairJudge

	// Refresh is the longest the runner goes without a look at a running
	// rollout when the source reports no new data (time alone moves a
	// stage past its minimum or maximum duration). Default 30 s.
	Refresh time.Duration

	// Leading, if set, tells whether this analyzer may act: Start and
	// Operate call it first and return its error (ErrNotLeader naming the
	// leader) without touching traffic or the store. Nil: always.
	Leading func(ctx context.Context) error

	mu     sync.Mutex
	locks  map[string]*sync.Mutex
	synced map[string]bool
	marks  map[string]watermark
	// preflights are the pre-flight runs of this term, by rollout id.
	preflights map[string]*preflightRun
}

// Watermarker is implemented by a MetricsSource that can tell cheaply
// whether a window has new data since a previous look: the runner then
// looks every Interval at the rollouts whose data changed and every
// Refresh at the others, so that evidence is acted on as it arrives
// without re-reading unchanged windows.
type Watermarker interface {
	Watermark(ctx context.Context, w Window) (string, error)
}

type watermark struct {
	stage time.Time // the stage window the mark was taken for
	mark  string
	at    time.Time
}

// changed reports whether the rollout needs a look now: always without a
// Watermarker, after a failed watermark query, once Refresh has passed
// since the last look, or when the source's watermark moved.
func (r *Runner) changed(ctx context.Context, ro *Rollout, w Window, now time.Time) bool {
	wm, ok := r.Source.(Watermarker)
	if !ok {
		return true
	}
	mark, err := wm.Watermark(ctx, w)
	if err != nil {
		return true
	}
	refresh := r.Refresh
	if refresh <= 0 {
		refresh = 30 * time.Second
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.marks == nil {
		r.marks = map[string]watermark{}
	}
	last, seen := r.marks[ro.ID]
	if seen && last.stage.Equal(ro.StageStarted) && last.mark == mark && now.Sub(last.at) < refresh {
		return false
	}
	r.marks[ro.ID] = watermark{stage: ro.StageStarted, mark: mark, at: now}
	return true
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

// lock serialises the runner's look and operators' actions on one rollout.
func (r *Runner) lock(id string) func() {
	r.mu.Lock()
	if r.locks == nil {
		r.locks = map[string]*sync.Mutex{}
	}
	l, ok := r.locks[id]
	if !ok {
		l = &sync.Mutex{}
		r.locks[id] = l
	}
	r.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (r *Runner) isSynced(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.synced[id]
}

func (r *Runner) setSynced(id string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.synced == nil {
		r.synced = map[string]bool{}
	}
	r.synced[id] = ok
}

// Run looks at every running rollout now and then every Interval until ctx
// ends. The first look at each rollout sets the control plane's weights to
// the rollout's stage, so that a restarted analyzer resumes where it stood
// even if the weights were changed meanwhile.
func (r *Runner) Run(ctx context.Context) error {
	if r.Interval <= 0 {
		return errors.New("runner: interval must be positive")
	}
	// A new term (a restart, or leadership regained) re-asserts every
	// rollout's weights at its first look: another analyzer may have
	// moved them meanwhile.
	r.mu.Lock()
	r.synced, r.marks = nil, nil
	r.mu.Unlock()
	if r.Stages != nil {
		rec := newStageRecorder(ctx, r.Stages, r.log())
		defer r.Store.OnChange(rec.changed)()
	}
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		r.Tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Tick takes one look at every running rollout.
func (r *Runner) Tick(ctx context.Context) {
	all, err := r.Store.List()
	if err != nil {
		r.log().Error("list rollouts", "error", err)
		return
	}
	for _, ro := range all {
		if ro.Status != RolloutRunning {
			continue
		}
		if _, err := r.Step(ctx, ro.ID); err != nil && ctx.Err() == nil {
			r.log().Warn("rollout look failed", "rollout", ro.ID, "model", ro.Model, "error", err)
		}
	}
}

// Step takes one look at one running rollout and returns it as stored
// afterwards. The returned error reports what failed (a query, a weight
// change, the store); the rollout records it and holds.
func (r *Runner) Step(ctx context.Context, id string) (*Rollout, error) {
	defer r.lock(id)()
	ro, err := r.Store.Get(id)
	if err != nil {
		return nil, err
	}
	if ro.Status != RolloutRunning {
		return ro, nil
	}
	now := r.now()
	// A decided traffic change that has not reached the control plane
	// goes first, without deciding again.
	if ro.Pending != "" {
		return r.act(ctx, ro, ro.Pending, now, nil)
	}
	if !r.isSynced(id) {
		w := ro.CanaryWeight()
		if err := r.setWeights(ctx, ro.Model, ro.Weights(w), ro.Stable, xds.Cause{Rollout: ro.ID, Reason: fmt.Sprintf("stage %d's weights re-applied", ro.Stage+1)}); err != nil {
			return r.recordError(ro, now, CodeTrafficFailed, fmt.Sprintf("hold: could not set the stage's weights (canary %g %%) on the control plane: %v; retrying at the next look", w, err), err)
		}
		r.setSynced(id, true)
	}
	if ro.Preflight.Running() {
		return r.stepPreflight(ctx, ro, now)
	}
	if ro.Shadow.Running() {
		return r.stepShadow(ctx, ro, now)
	}
	if len(ro.Candidates) > 0 {
		return r.stepABN(ctx, ro, now)
	}
	w := armWindow(ro, ro.Canary, now)
	if !r.changed(ctx, ro, w, now) {
		return ro, nil
	}
	m, err := r.measure(ctx, w)
	if err != nil {
		// A failed query holds. Partial measurements are not decided on:
		// a half-read window could show harm that is not there.
		return r.recordError(ro, now, CodeQueryFailed, fmt.Sprintf("hold: the measurement query failed: %v; retrying at the next look", err), err)
	}
	m.Stable.Version, m.Canary.Version = ro.Stable, ro.Canary

	if ro.Mode == ModeABTest {
		rep, ns := Experiment(ro.Plan.Policy, ro.State, m, ro.Split, now)
		return r.update(ro, func(x *Rollout) {
			x.State, x.Experiment, x.Updated, x.LastError = ns, &rep, now, ""
			x.record(Event{At: now, Kind: "decision", Action: ActionHold, Code: CodeUndecided, Reason: rep.Summary})
		})
	}

	d, ns := Decide(ro.Plan.Policy, ro.State, m, now)
	ro.State = ns
	switch d.Action {
	case ActionRollback, ActionAdvance, ActionPromote:
		return r.act(ctx, ro, d.Action, now, &d)
	}
	return r.update(ro, func(x *Rollout) {
		x.State, x.Last, x.Updated, x.LastError = ns, &d, now, ""
		if d.Action == ActionPause {
			x.Status = RolloutPaused
		}
		x.record(Event{At: now, Kind: "decision", Action: d.Action, Code: d.Code, Reason: d.Reason, Decision: &d})
	})
}

// armWindow is the window of a look at ro comparing canary with stable.
func armWindow(ro *Rollout, canary string, now time.Time) Window {
	return Window{Model: ro.Model, Stable: ro.Stable, Canary: canary, RolloutFrom: ro.Created, From: ro.StageStarted, To: now,
		TailQuantile: ro.Plan.Policy.TailQuantile, BaselineFrom: ro.Created.Add(-ro.Plan.Policy.Baseline.D())}
}

// measure reads one window within the query timeout. Nothing at all since
// the rollout began is not an error: Measure says so with whatever it
// measured (nothing), and the decision holds on it. A stage with one empty
// arm is not this: the sample-ratio check sees it.
func (r *Runner) measure(ctx context.Context, w Window) (Measurements, error) {
	qctx, cancel := context.WithTimeout(ctx, r.queryTimeout())
	m, err := r.Source.Measure(qctx, w)
	cancel()
	if errors.Is(err, ErrNoData) {
		m.Model, m.From, m.To = w.Model, w.From, w.To
		return m, nil
	}
	return m, err
}

// update stores the outcome of a look taken at ro: it fails with
// ErrConflict, changing nothing, when the stored rollout is no longer the
// one looked at (its Seq moved: an operator acted, or another analyzer
// wrote), and otherwise applies change with Seq advanced by one. So a
// decision is written once, as the successor of the state it was taken
// on, whatever store and however many analyzers.
func (r *Runner) update(ro *Rollout, change func(*Rollout)) (*Rollout, error) {
	return r.Store.Update(ro.ID, func(x *Rollout) error {
		if x.Seq != ro.Seq {
			return fmt.Errorf("%w: rollout %s changed since the look (sequence %d, now %d); the next look decides again", ErrConflict, ro.ID, ro.Seq, x.Seq)
		}
		x.Seq++
		change(x)
		return nil
	})
}

func (r *Runner) queryTimeout() time.Duration {
	if r.QueryTimeout > 0 {
		return r.QueryTimeout
	}
	return r.Interval
}

// act moves traffic for a rollback, advance or promotion and records the
// outcome, in three durable steps so that no crash can undo a decision:
//
//  1. the intent (Pending, with the decision) is saved before traffic
//     moves: write-ahead;
//  2. the control plane gets the new weights, unless it has them already
//     (a restarted runner finishing a move does not publish a second
//     revision);
//  3. the outcome is saved: the new stage, promoted or rolled back.
//
// A runner killed after step 1 finds Pending at its next look and finishes
// the move; one killed after step 2 finds the weights in place and only
// saves. If the control plane refuses, the action stays pending and is
// retried at the next look, before anything else.
func (r *Runner) act(ctx context.Context, ro *Rollout, a Action, now time.Time, d *Decision) (*Rollout, error) {
	t, err := transition(ro, a)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	if !t.Moves {
		return nil, fmt.Errorf("runner: %q is not a traffic action", a)
	}
	w := t.Weight
	if ro.Pending != a {
		state := ro.State
		id := ro.ID
		var err error
		ro, err = r.update(ro, func(x *Rollout) {
			x.State, x.Pending, x.PendingAt, x.Updated = state, a, now, now
			if d != nil {
				x.Last = d
				x.record(Event{At: now, Kind: "decision", Action: d.Action, Code: d.Code, Reason: d.Reason, Decision: d})
			}
		})
		if err != nil {
			return nil, fmt.Errorf("runner: save the intent to %s %s: %w", a, id, err)
		}
	}
	why := fmt.Sprintf("%s decided by rollout %s", a, ro.ID)
	if d != nil {
		why = d.Reason
	} else if ro.Last != nil && ro.Last.Action == a {
		why = ro.Last.Reason
	}
	if err := r.setWeights(ctx, ro.Model, ro.Weights(w), t.Stable, xds.Cause{Rollout: ro.ID, Reason: why}); err != nil {
		r.setSynced(ro.ID, false)
		reason := fmt.Sprintf("%s decided but the control plane did not accept canary %g %%: %v; retrying at the next look", a, w, err)
		out, serr := r.update(ro, func(x *Rollout) {
			x.Updated, x.LastError = now, reason
			x.record(Event{At: now, Kind: "error", Action: a, Code: CodeTrafficFailed, Reason: reason})
		})
		return out, errors.Join(fmt.Errorf("runner: %s of %s: %w", a, ro.ID, err), serr)
	}
	r.setSynced(ro.ID, true)
	r.endShadow(ctx, ro)
	r.log().Info("rollout traffic moved", "rollout", ro.ID, "model", ro.Model, "action", a, "canary_weight", w)
	started := now
	if a == ActionAdvance {
		// The next stage's window opens when the fleet serves its weights,
		// not when they were asked for: an Envoy still reconnecting to a
		// restarted control plane would otherwise fill the window with the
		// old split.
		started = r.waitApplied(ctx, ro.ID, now)
	}
	return r.update(ro, func(x *Rollout) {
		decided := x.PendingAt
		if decided.IsZero() {
			decided = now
		}
		x.Pending, x.PendingAt, x.Updated, x.LastError = "", time.Time{}, started, ""
		x.record(Event{At: started, Kind: "action", Action: a, Reason: fmt.Sprintf("traffic moved: %s %g %%, %s %g %%", x.Stable, 100-w, x.Canary, w)})
		x.Status = t.Status
		x.Shadow.end(ShadowEnded, started)
		x.Preflight.end(PreflightEnded, started)
		if t.Stage != x.Stage {
			x.Stage, x.StageStarted = t.Stage, started
			x.State = NextStageState(x.State, decided, started)
		}
	})
}

// setWeights sets a model's weights unless the control plane already has
// exactly them: a look that only re-asserts the current split publishes
// no new revision.
func (r *Runner) setWeights(ctx context.Context, model string, weights map[string]float64, stable string, cause xds.Cause) error {
	if r.Models != nil {
		if cur, err := r.Models.Model(ctx, model); err == nil && cur.Stable == stable && sameWeights(cur.Weights, weights) {
			return nil
		}
	}
	return r.moveTraffic(ctx, model, weights, stable, cause)
}

// moveTraffic sets a model's weights with their cause when the
// TrafficSetter can record it.
func (r *Runner) moveTraffic(ctx context.Context, model string, weights map[string]float64, stable string, cause xds.Cause) error {
	if c, ok := r.Traffic.(CausedTrafficSetter); ok {
		return c.SetWeightsBecause(ctx, model, weights, stable, cause)
	}
	return r.Traffic.SetWeights(ctx, model, weights, stable)
}

func sameWeights(a, b map[string]float64) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	for k, v := range a {
		if v != 0 && b[k] != v {
			return false
		}
	}
	return true
}

// TrafficApplier is implemented by a TrafficSetter that can tell when a
// change is in force everywhere (ControlPlane asks the control plane which
// revision each Envoy has accepted).
type TrafficApplier interface {
	WaitApplied(ctx context.Context) error
}

// waitApplied waits, up to a minute, for the traffic change to be in force
// and returns the time it was; without a TrafficApplier it returns now.
func (r *Runner) waitApplied(ctx context.Context, id string, now time.Time) time.Time {
	ta, ok := r.Traffic.(TrafficApplier)
	if !ok {
		return now
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := ta.WaitApplied(wctx); err != nil {
		r.log().Warn("traffic change not confirmed by every Envoy; the stage starts anyway", "rollout", id, "error", err)
	}
	return r.now()
}

func (r *Runner) recordError(ro *Rollout, now time.Time, code Code, reason string, cause error) (*Rollout, error) {
	out, err := r.update(ro, func(x *Rollout) {
		x.Updated, x.LastError = now, reason
		x.record(Event{At: now, Kind: "decision", Action: ActionHold, Code: code, Reason: reason})
	})
	return out, errors.Join(cause, err)
}

// StartRequest starts a rollout or an A/B test.
type StartRequest struct {
	Model  string `json:"model"`
	Canary string `json:"canary"`
	// Stable defaults to the model's stable version on the control plane.
	Stable string `json:"stable,omitempty"`
	// Mode is canary (default) or abtest.
	Mode Mode `json:"mode,omitempty"`
	// Revert starts a canary rollout back to the version that was stable
	// before the current one (the model's history on the control plane
	// says which); Canary and Stable are then left empty.
	Revert bool `json:"revert,omitempty"`
	// Split is the canary's fixed percentage in A/B mode (default 50); in
	// an A/B/n experiment each candidate's (default: an equal share with
	// stable).
	Split float64 `json:"split,omitempty"`
	// Candidates are the versions of an A/B/n experiment (mode abtest, at
	// most MaxCandidates), each against stable; Canary is then empty.
	// Splits gives candidates their own percentages instead of Split.
	Candidates []string           `json:"candidates,omitempty"`
	Splits     map[string]float64 `json:"splits,omitempty"`
	// Policy overrides fields of the planned policy, as a model override
	// in the policy file does (e.g. {"stages": [...], "tolerances": {...}}).
	Policy json.RawMessage `json:"policy,omitempty"`
	// Shadow, when set, runs a shadow stage before the first user stage
	// (zero fields take DefaultShadowPolicy's values).
	Shadow *ShadowPolicy `json:"shadow,omitempty"`
	// Preflight, when set, runs a pre-flight stage first (zero fields
	// take DefaultPreflightPolicy's values). High and critical risk plans
	// get one by default when the analyzer has a gateway, unless
	// NoPreflight is set.
	Preflight   *PreflightPolicy `json:"preflight,omitempty"`
	NoPreflight bool             `json:"no_preflight,omitempty"`
	Actor       string           `json:"-"`
}

// Start validates a request against the control plane's model, plans the
// rollout from the versions' metadata, moves the first stage's traffic and
// stores the rollout. Nothing is stored when any step fails; a request
// that is invalid changes nothing anywhere.
func (r *Runner) Start(ctx context.Context, req StartRequest) (*Rollout, error) {
	if req.Mode == "" {
		req.Mode = ModeCanary
	}
	var errs []error
	if req.Model == "" {
		errs = append(errs, errors.New("model is required"))
	}
	switch {
	case req.Revert && (req.Canary != "" || req.Stable != ""):
		errs = append(errs, errors.New("a revert names neither canary nor stable: it returns to the version that was stable before the current one"))
	case req.Revert && req.Mode != ModeCanary:
		errs = append(errs, errors.New("a revert is a canary rollout, not an A/B test"))
	case len(req.Candidates) > 0 && req.Canary != "":
		errs = append(errs, errors.New("name the versions in candidates or in canary, not both"))
	case len(req.Candidates) == 1:
		req.Canary, req.Candidates = req.Candidates[0], nil
		if s, ok := req.Splits[req.Canary]; ok && len(req.Splits) == 1 && req.Split == 0 {
			req.Split, req.Splits = s, nil
		}
	case !req.Revert && req.Canary == "" && len(req.Candidates) == 0:
		errs = append(errs, errors.New("canary is required"))
	}
	if len(req.Candidates) > 1 {
		errs = append(errs, validateCandidates(&req)...)
	} else if len(req.Splits) > 0 {
		errs = append(errs, errors.New("splits is for an experiment with several candidates"))
	}
	switch req.Mode {
	case ModeCanary:
		if req.Split != 0 {
			errs = append(errs, errors.New("split is for mode abtest; a canary rollout follows its plan's stages"))
		}
	case ModeABTest:
		if len(req.Candidates) > 1 {
			break
		}
		if req.Split == 0 {
			req.Split = 50
		}
		if !(req.Split > 0 && req.Split < 100) {
			errs = append(errs, fmt.Errorf("split %v must be in (0, 100)", req.Split))
		}
	default:
		errs = append(errs, fmt.Errorf("mode %q must be canary or abtest", req.Mode))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := r.leading(ctx); err != nil {
		return nil, err
	}
	model, err := r.Models.Model(ctx, req.Model)
	if err != nil {
		var apiErr *xds.APIError
		if errors.As(err, &apiErr) && apiErr.Status == 404 {
			return nil, fmt.Errorf("%w: model %q does not exist on the control plane", ErrNotFound, req.Model)
		}
		return nil, fmt.Errorf("%w: read model %q: %w", ErrControlPlane, req.Model, err)
	}
	var revert *xds.StableChange
	if req.Revert {
		prev, err := revertTarget(model)
		if err != nil {
			return nil, err
		}
		revert = &prev
		req.Canary, req.Stable = prev.Previous, model.Stable
	}
	if req.Stable == "" {
		req.Stable = model.Stable
	}
	if len(req.Candidates) > 1 {
		for _, c := range req.Candidates {
			if _, ok := model.Version(c); !ok {
				return nil, fmt.Errorf("%w: model %q has no version %q; add it to the control plane first", ErrInvalid, req.Model, c)
			}
			if c == req.Stable {
				return nil, fmt.Errorf("%w: candidate %q is the stable version", ErrInvalid, c)
			}
		}
		// The arms follow the model's version order: the order of its
		// clusters, so of the bucket ranges Envoy gives them.
		order := map[string]int{}
		for i, v := range model.Versions {
			order[v.Name] = i
		}
		sort.SliceStable(req.Candidates, func(a, b int) bool { return order[req.Candidates[a]] < order[req.Candidates[b]] })
		req.Canary = req.Candidates[0]
	}
	sv, okS := model.Version(req.Stable)
	cv, okC := model.Version(req.Canary)
	switch {
	case !okS:
		return nil, fmt.Errorf("%w: model %q has no version %q", ErrInvalid, req.Model, req.Stable)
	case !okC:
		return nil, fmt.Errorf("%w: model %q has no version %q; add it to the control plane first", ErrInvalid, req.Model, req.Canary)
	case req.Stable == req.Canary:
		return nil, fmt.Errorf("%w: canary and stable are both %q", ErrInvalid, req.Canary)
	}
	base, err := r.Policy.For(req.Model)
	if err != nil {
		return nil, err
	}
	plan := PlanFor(base, sv.Metadata, cv.Metadata)
	if len(req.Policy) > 0 {
		dec := json.NewDecoder(bytes.NewReader(req.Policy))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&plan.Policy); err != nil {
			return nil, fmt.Errorf("%w: policy: %w", ErrInvalid, err)
		}
		plan.Policy.Models = nil
		if err := plan.Policy.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		plan.Strategy = StrategyCanary
	}
	now := r.now()
	ro := &Rollout{
		ID: NewID(now), Model: req.Model, Stable: req.Stable, Canary: req.Canary, Mode: req.Mode, Split: req.Split,
		Plan: plan, Status: RolloutRunning, StageStarted: now, State: NewStageState(0, now), Created: now, Updated: now,
		Reverts: revert,
	}
	if req.Mode == ModeABTest {
		ro.Plan.Strategy = "abtest"
	}
	if req.Shadow != nil {
		if ro.Shadow, err = newShadowStage(*req.Shadow, req.Mode, now); err != nil {
			return nil, err
		}
	}
	preflightNote, err := r.planPreflight(ro, req, now)
	if err != nil {
		return nil, err
	}
	if len(req.Candidates) > 1 {
		ro.Plan.Strategy = "abn"
		ro.Split = 0
		for _, c := range req.Candidates {
			ro.Candidates = append(ro.Candidates, Candidate{Version: c, Split: req.Splits[c], Status: ArmRunning, State: NewStageState(0, now)})
			ro.Split += req.Splits[c]
		}
	}
	if req.Mode == ModeCanary {
		rps, source := r.requestRate(ctx, model)
		cost := PlanCost(ro.Plan, cv.Metadata, rps, source)
		ro.Plan.Cost = &cost
	}
	// Reserve the model before touching traffic: a second Start of the
	// same model (or one while a rollout of it is active) fails here and
	// never moves weights this rollout has set.
	release, err := r.Store.Reserve(ro.Model)
	if err != nil {
		return nil, err
	}
	defer release()
	w := ro.CanaryWeight()
	if err := r.moveTraffic(ctx, ro.Model, ro.Weights(w), ro.Stable, xds.Cause{Rollout: ro.ID, Reason: "rollout " + ro.ID + " started", Actor: req.Actor}); err != nil {
		return nil, fmt.Errorf("%w: set the first stage's weights: %w", ErrControlPlane, err)
	}
	if ro.Shadow.Running() && !ro.Preflight.Running() {
		if err := r.setShadow(ctx, ro.Model, ro.Shadow.Policy.Mirror(ro.Canary)); err != nil {
			return nil, fmt.Errorf("%w: mirror requests to the canary: %w", ErrControlPlane, err)
		}
	}
	// The first window opens when the fleet serves the first stage.
	if applied := r.waitApplied(ctx, ro.ID, now); applied.After(now) {
		ro.StageStarted, ro.State = applied, NewStageState(0, applied)
		if ro.Shadow != nil {
			ro.Shadow.Started = applied
		}
		if ro.Preflight != nil {
			ro.Preflight.Started = applied
		}
		for i := range ro.Candidates {
			ro.Candidates[i].State = NewStageState(0, applied)
		}
	}
	weights := fmt.Sprintf("canary %s at %g %%, stable %s at %g %%", ro.Canary, w, ro.Stable, 100-w)
	if len(ro.Candidates) > 0 {
		weights = "weights " + fmtWeights(ro.Stable, ro.Candidates, ArmWeights(ro.Stable, ro.Candidates))
	}
	reason := fmt.Sprintf("started by %s: %s risk (%s), %s plan; %s", actor(req.Actor), plan.Risk, plan.RiskReason, ro.Plan.Strategy, weights)
	if ro.Shadow.Running() {
		reason += fmt.Sprintf("; shadow stage first: %g %% of user requests mirrored to %s, at most %d in flight", ro.Shadow.Policy.Percent, ro.Canary, ro.Shadow.Policy.MaxConcurrent)
	}
	reason += preflightNote
	if revert != nil {
		reason += fmt.Sprintf("; a revert to %s, stable until %s", revert.Previous, revert.At.Format(time.RFC3339))
		if revert.Rollout != "" {
			reason += " when rollout " + revert.Rollout + " promoted " + revert.Version
		}
	}
	ro.record(Event{At: now, Kind: "operator", Code: CodeOperator, Actor: actor(req.Actor), Reason: reason})
	if err := r.Store.Create(ro); err != nil {
		r.endShadow(ctx, ro)
		// Put the traffic back as it was; the reservation kept every other
		// start of this model away from it meanwhile.
		if rerr := r.moveTraffic(ctx, ro.Model, model.Weights, model.Stable, xds.Cause{Rollout: ro.ID, Reason: "weights restored: rollout " + ro.ID + " could not be saved"}); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore weights: %w", rerr))
		}
		return nil, err
	}
	r.setSynced(ro.ID, true)
	r.log().Info("rollout started", "rollout", ro.ID, "model", ro.Model, "canary", ro.Canary, "risk", plan.Risk, "mode", ro.Mode)
	return r.Store.Get(ro.ID)
}

// revertTarget returns the history entry a revert undoes: its Previous
// is the version to return to. It is ErrConflict when the history names
// none, or names a version the model no longer has: a revert is measured
// like any rollout, so the version must still be deployed with endpoints.
func revertTarget(m *xds.Model) (xds.StableChange, error) {
	prev, err := m.PreviousStable()
	if err != nil {
		return prev, fmt.Errorf("%w: cannot revert model %q: %w", ErrConflict, m.Name, err)
	}
	if _, ok := m.Version(prev.Previous); !ok {
		return prev, fmt.Errorf("%w: cannot revert model %q to %s, stable until %s: the version was removed from the model; put it back with its endpoints (PUT /v1/models/%s/versions/%s) and revert again",
			ErrConflict, m.Name, prev.Previous, prev.At.Format(time.RFC3339), m.Name, prev.Previous)
	}
	return prev, nil
}

// leading returns nil when this analyzer may act (see Leading).
func (r *Runner) leading(ctx context.Context) error {
	if r.Leading == nil {
		return nil
	}
	return r.Leading(ctx)
}

func actor(a string) string {
	if a == "" {
		return "api"
	}
	return a
}

// Operation is an operator's action on a rollout.
type Operation string

const (
	OpPause    Operation = "pause"
	OpResume   Operation = "resume"
	OpPromote  Operation = "promote"
	OpRollback Operation = "rollback"
	OpAbort    Operation = "abort"
)

// Operate applies an operator's action. Pause stops the looks and keeps
// traffic; resume restarts the current stage's window (the data that made
// it pause is not reused) and re-applies its weights at the next look;
// promote sends all traffic to the canary and makes it stable; rollback
// and abort send all traffic to stable (rollback judges the canary bad,
// abort only ends the rollout). Finished rollouts cannot be changed
// (ErrConflict). If the control plane refuses, nothing changes.
func (r *Runner) Operate(ctx context.Context, id string, op Operation, actorName, note string) (*Rollout, error) {
	if err := r.leading(ctx); err != nil {
		return nil, err
	}
	defer r.lock(id)()
	ro, err := r.Store.Get(id)
	if err != nil {
		return nil, err
	}
	switch op {
	case OpPause, OpResume, OpPromote, OpRollback, OpAbort:
	default:
		return nil, fmt.Errorf("%w: unknown operation %q (pause, resume, promote, rollback, abort)", ErrInvalid, op)
	}
	t, err := transition(ro, Action(op))
	if err != nil {
		return nil, err
	}
	now := r.now()
	w, move := t.Weight, t.Moves
	reason := fmt.Sprintf("%s by %s", op, actor(actorName))
	if move {
		reason += fmt.Sprintf(": %s %g %%, %s %g %%", ro.Stable, 100-w, ro.Canary, w)
	}
	if op == OpResume {
		reason += "; the stage's window restarts now"
	}
	if note != "" {
		reason += " (" + note + ")"
	}
	if move {
		if err := r.moveTraffic(ctx, ro.Model, ro.Weights(w), t.Stable, xds.Cause{Rollout: ro.ID, Reason: reason, Actor: actorName}); err != nil {
			return nil, fmt.Errorf("%w: %s: set weights: %w", ErrControlPlane, op, err)
		}
		r.endShadow(ctx, ro)
	}
	if op != OpResume {
		r.forgetPreflight(id)
	}
	out, err := r.Store.Update(id, func(x *Rollout) error {
		x.Seq++
		x.Status, x.Updated, x.Pending = t.Status, now, ""
		if move {
			x.Shadow.end(ShadowEnded, now)
			x.Preflight.end(PreflightEnded, now)
		}
		if op == OpResume {
			x.StageStarted = now
			x.State = RestartStageState(x.State, now)
		}
		x.record(Event{At: now, Kind: "operator", Action: Action(op), Code: CodeOperator, Actor: actor(actorName), Reason: reason})
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.setSynced(id, move || op != OpResume)
	return out, nil
}
