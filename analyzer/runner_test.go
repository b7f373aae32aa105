package analyzer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/xds"
)

// fakeSource returns a fixed window, or an error.
type fakeSource struct {
	mu      sync.Mutex
	m       Measurements
	err     error
	windows []Window
}

func (f *fakeSource) Measure(_ context.Context, w Window) (Measurements, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.windows = append(f.windows, w)
	return f.m, f.err
}

// fakeTraffic records weight changes, failing while err is set.
type fakeTraffic struct {
	mu    sync.Mutex
	err   error
	calls []weightCall
	// crash, if set, runs after a change is recorded: a test panics in it
	// to kill the runner right after traffic moved.
	crash func()
}

type weightCall struct {
	model   string
	weights map[string]float64
	stable  string
}

func (f *fakeTraffic) SetWeights(_ context.Context, model string, w map[string]float64, stable string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.calls = append(f.calls, weightCall{model, w, stable})
	if f.crash != nil {
		crash := f.crash
		f.crash = nil
		f.mu.Unlock()
		defer f.mu.Lock()
		crash()
	}
	return nil
}

func (f *fakeTraffic) last() weightCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return weightCall{}
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeTraffic) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// fakeModels serves the models as the fake control plane holds them: the
// weights and stable of the last change that reached it.
type fakeModels struct {
	models  map[string]*xds.Model
	traffic *fakeTraffic
}

func (f fakeModels) Model(_ context.Context, name string) (*xds.Model, error) {
	m, ok := f.models[name]
	if !ok {
		return nil, &xds.APIError{Status: 404, Code: "not_found", Message: "no model"}
	}
	out := *m
	if f.traffic != nil {
		f.traffic.mu.Lock()
		for _, c := range f.traffic.calls {
			if c.model == name {
				out.Weights, out.Stable = c.weights, c.stable
			}
		}
		f.traffic.mu.Unlock()
	}
	return &out, nil
}

var _ MetricsSource = (*fakeSource)(nil)
var _ TrafficSetter = (*fakeTraffic)(nil)
var _ ModelReader = fakeModels{}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type rig struct {
	runner  *Runner
	source  *fakeSource
	traffic *fakeTraffic
	clock   *clock
	dir     string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	st, err := OpenRolloutStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{source: &fakeSource{}, traffic: &fakeTraffic{}, clock: &clock{t: t0}, dir: dir}
	r.runner = r.newRunner(st)
	return r
}

func (r *rig) newRunner(st Store) *Runner {
	models := fakeModels{traffic: r.traffic, models: map[string]*xds.Model{"m": {
		Name: "m", Stable: "v1",
		Versions: []xds.Version{
			{Name: "v1", Metadata: xds.VersionMetadata{BaseModel: "b", WeightsHash: "w1"}},
			{Name: "v2", Metadata: xds.VersionMetadata{BaseModel: "b", WeightsHash: "w2"}},
		},
		Weights: map[string]float64{"v1": 100},
	}}}
	return &Runner{Store: st, Source: r.source, Traffic: r.traffic, Models: models, Policy: testPolicy(), Interval: time.Minute, Now: r.clock.now}
}

// killAfterTrafficMoves takes a look with runner that is killed (a panic)
// right after the control plane took its weights.
func (r *rig) killAfterTrafficMoves(t *testing.T, runner *Runner, id string) {
	t.Helper()
	r.traffic.crash = func() { panic("killed") }
	defer func() {
		if recover() == nil {
			t.Fatal("the runner was not killed")
		}
	}()
	runner.Step(context.Background(), id)
}

func (r *rig) start(t *testing.T) *Rollout {
	t.Helper()
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Actor: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return ro
}

func TestRunnerStartSetsFirstStageAndPlansFromMetadata(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	if got := r.traffic.last(); got.weights["v2"] != 20 || got.weights["v1"] != 80 || got.stable != "v1" {
		t.Fatalf("first weights %+v, want v2 20 %%", got)
	}
	if ro.Plan.Risk != RiskMedium || ro.Status != RolloutRunning || ro.Stable != "v1" || len(ro.History) != 1 {
		t.Fatalf("rollout %+v", ro)
	}
}

func TestRunnerActs(t *testing.T) {
	healthy := testArm()
	erroring := healthy
	erroring.ErrorRate = 0.1
	tests := []struct {
		name       string
		stage      int
		m          Measurements
		err        error
		elapsed    time.Duration
		wantStatus Status
		wantStage  int
		wantWeight float64 // canary weight of the last SetWeights call; -1: no call after start
		wantStable string
		wantCode   Code
	}{
		{"harm rolls back to stable at once", 0, window(1, 8000, 2000, healthy, erroring), nil, 2 * time.Minute, RolloutRolledBack, 0, 0, "v1", CodeHarm},
		{"a healthy stage advances to the next weight", 0, window(1, 40000, 10000, healthy, healthy), nil, 11 * time.Minute, RolloutRunning, 1, 50, "v1", CodeGuarded},
		{"the last stage promotes the canary to stable", 1, window(2, 10000, 10000, healthy, healthy), nil, 11 * time.Minute, RolloutPromoted, 1, 100, "v2", CodeWithinTolerance},
		{"a failed query holds and moves nothing", 0, Measurements{}, errors.New("clickhouse: connection refused"), 11 * time.Minute, RolloutRunning, 0, -1, "", CodeQueryFailed},
		{"no data holds", 0, Measurements{}, fmt.Errorf("window: %w", ErrNoData), 11 * time.Minute, RolloutRunning, 0, -1, "", CodeNoData},
		{"a sample-ratio mismatch pauses and keeps traffic", 0, window(1, 8000, 4000, healthy, healthy), nil, 11 * time.Minute, RolloutPaused, 0, -1, "", CodeSRM},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			ro := r.start(t)
			if tc.stage > 0 {
				if _, err := r.runner.Store.Update(ro.ID, func(x *Rollout) error {
					x.Stage, x.State = tc.stage, NewStageState(tc.stage, x.StageStarted)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			r.source.m, r.source.err = tc.m, tc.err
			calls := r.traffic.count()
			r.clock.add(tc.elapsed)
			got, _ := r.runner.Step(context.Background(), ro.ID)
			if got == nil {
				t.Fatal("no rollout returned")
			}
			if got.Status != tc.wantStatus || got.Stage != tc.wantStage {
				t.Fatalf("status %s stage %d, want %s %d; history %+v", got.Status, got.Stage, tc.wantStatus, tc.wantStage, got.History)
			}
			if tc.wantWeight < 0 {
				if r.traffic.count() != calls {
					t.Errorf("traffic moved: %+v", r.traffic.last())
				}
			} else if c := r.traffic.last(); c.weights["v2"] != tc.wantWeight || c.weights["v1"] != 100-tc.wantWeight || c.stable != tc.wantStable {
				t.Errorf("weights %+v, want canary %v stable %s", c, tc.wantWeight, tc.wantStable)
			}
			var codes []Code
			for _, e := range got.History {
				codes = append(codes, e.Code)
			}
			found := false
			for _, c := range codes {
				found = found || c == tc.wantCode
			}
			if !found {
				t.Errorf("history codes %v lack %s", codes, tc.wantCode)
			}
			w := r.source.windows[len(r.source.windows)-1]
			if !w.From.Equal(ro.StageStarted) || !w.To.Equal(r.clock.now()) || w.Stable != "v1" || w.Canary != "v2" {
				t.Errorf("window %+v is not stage start to now", w)
			}
			if tc.wantStage > tc.stage && !got.StageStarted.Equal(r.clock.now()) {
				t.Errorf("advanced stage starts %v, want now", got.StageStarted)
			}
		})
	}
}

func TestRunnerRetriesARefusedRollbackBeforeAnythingElse(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	erroring := testArm()
	erroring.ErrorRate = 0.1
	r.source.m = window(1, 8000, 2000, testArm(), erroring)
	r.traffic.err = errors.New("control plane down")
	r.clock.add(2 * time.Minute)
	got, err := r.runner.Step(context.Background(), ro.ID)
	if err == nil || got.Status != RolloutRunning || got.Pending != ActionRollback || got.LastError == "" {
		t.Fatalf("refused rollback: err %v, rollout %+v", err, got)
	}
	// The next look retries the rollback without measuring again.
	r.traffic.err = nil
	queries := len(r.source.windows)
	r.source.m = Measurements{}
	got, err = r.runner.Step(context.Background(), ro.ID)
	if err != nil || got.Status != RolloutRolledBack || got.Pending != "" {
		t.Fatalf("retry: err %v, rollout %+v", err, got)
	}
	if len(r.source.windows) != queries {
		t.Error("the retry measured again")
	}
	if c := r.traffic.last(); c.weights["v2"] != 0 {
		t.Errorf("weights %+v", c)
	}
}

func TestRunnerResumesAfterRestart(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	r.source.m = window(1, 40000, 10000, testArm(), testArm())
	r.clock.add(11 * time.Minute)
	adv, err := r.runner.Step(context.Background(), ro.ID)
	if err != nil || adv.Stage != 1 {
		t.Fatalf("advance: %v %+v", err, adv)
	}
	// Someone changes the weights behind the analyzer's back; then the
	// analyzer restarts from its data directory.
	r.traffic.calls = append(r.traffic.calls, weightCall{"m", map[string]float64{"v1": 100, "v2": 0}, "v1"})
	st, err := OpenRolloutStore(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	r.runner = r.newRunner(st)
	back, err := st.Get(ro.ID)
	if err != nil || back.Stage != 1 || !back.StageStarted.Equal(adv.StageStarted) || back.Status != RolloutRunning {
		t.Fatalf("reloaded %+v, %v", back, err)
	}
	r.source.m = window(3, 800, 800, testArm(), testArm())
	r.clock.add(time.Minute)
	if _, err := r.runner.Step(context.Background(), ro.ID); err != nil {
		t.Fatal(err)
	}
	if c := r.traffic.last(); c.weights["v2"] != 50 {
		t.Errorf("after restart the weights are %+v, want the stage's 50 %%", c)
	}
	w := r.source.windows[len(r.source.windows)-1]
	if !w.From.Equal(adv.StageStarted) {
		t.Errorf("window starts %v, want the stage start %v", w.From, adv.StageStarted)
	}
}

// TestRunnerKilledAtAStageChangeFinishesTheMoveAndNeverReverts kills the
// runner right after the control plane took the next stage's weights and
// before the outcome was saved, then restarts it from its data directory.
func TestRunnerKilledAtAStageChangeFinishesTheMoveAndNeverReverts(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	r.source.m = window(1, 40000, 10000, testArm(), testArm())
	r.clock.add(11 * time.Minute)
	r.killAfterTrafficMoves(t, r.runner, ro.ID)
	st, err := OpenRolloutStore(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	killed, err := st.Get(ro.ID)
	if err != nil || killed.Pending != ActionAdvance || killed.Stage != 0 {
		t.Fatalf("after the kill the store holds %+v (%v); want the intent to advance, saved before traffic moved", killed, err)
	}
	moves := r.traffic.count()
	r.runner = r.newRunner(st)
	r.clock.add(30 * time.Second)
	got, err := r.runner.Step(context.Background(), ro.ID)
	if err != nil || got.Stage != 1 || got.Pending != "" || got.Status != RolloutRunning {
		t.Fatalf("after the restart: %v %+v", err, got)
	}
	for _, c := range r.traffic.calls[moves:] {
		if c.weights["v2"] != 50 {
			t.Errorf("the restarted runner set canary %v %%: a reversal of the advance to 50 %%", c.weights["v2"])
		}
	}
	if n := r.traffic.count() - moves; n != 0 {
		t.Errorf("the restarted runner published %d changes for weights already in place, want none", n)
	}
	advances := 0
	for _, e := range got.History {
		if e.Kind == "action" && e.Action == ActionAdvance {
			advances++
		}
	}
	if advances != 1 {
		t.Errorf("%d advances recorded, want exactly one", advances)
	}
}

func TestRunnerTickSkipsPausedAndFinished(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpPause, "bob", ""); err != nil {
		t.Fatal(err)
	}
	r.runner.Tick(context.Background())
	if len(r.source.windows) != 0 {
		t.Fatal("a paused rollout was measured")
	}
}

func TestOperate(t *testing.T) {
	tests := []struct {
		name       string
		ops        []Operation
		wantStatus Status
		wantWeight float64
		wantErr    error
	}{
		{"pause keeps traffic", []Operation{OpPause}, RolloutPaused, 20, nil},
		{"resume restarts the stage window", []Operation{OpPause, OpResume}, RolloutRunning, 20, nil},
		{"promote gives the canary all traffic", []Operation{OpPromote}, RolloutPromoted, 100, nil},
		{"rollback gives stable all traffic", []Operation{OpRollback}, RolloutRolledBack, 0, nil},
		{"abort gives stable all traffic", []Operation{OpAbort}, RolloutAborted, 0, nil},
		{"a finished rollout cannot change", []Operation{OpRollback, OpPromote}, RolloutRolledBack, 0, ErrConflict},
		{"pausing twice conflicts", []Operation{OpPause, OpPause}, RolloutPaused, 20, ErrConflict},
		{"an unknown operation is invalid", []Operation{"explode"}, RolloutRunning, 20, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			ro := r.start(t)
			var err error
			for _, op := range tc.ops {
				r.clock.add(time.Minute)
				_, err = r.runner.Operate(context.Background(), ro.ID, op, "bob", "")
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			got, _ := r.runner.Store.Get(ro.ID)
			if got.Status != tc.wantStatus || r.traffic.last().weights["v2"] != tc.wantWeight {
				t.Fatalf("status %s weight %v", got.Status, r.traffic.last().weights["v2"])
			}
			if tc.name == "resume restarts the stage window" && !got.StageStarted.Equal(r.clock.now()) {
				t.Error("resume kept the old window")
			}
		})
	}
}

func TestOperateChangesNothingWhenTheControlPlaneRefuses(t *testing.T) {
	r := newRig(t)
	ro := r.start(t)
	r.traffic.err = errors.New("down")
	if _, err := r.runner.Operate(context.Background(), ro.ID, OpRollback, "bob", ""); !errors.Is(err, ErrControlPlane) {
		t.Fatalf("error %v", err)
	}
	got, _ := r.runner.Store.Get(ro.ID)
	if got.Status != RolloutRunning || len(got.History) != 1 {
		t.Fatalf("rollout changed: %+v", got)
	}
}

func TestStartRejectsInvalidRequestsWithoutTouchingTraffic(t *testing.T) {
	tests := []struct {
		name string
		req  StartRequest
		want error
	}{
		{"missing canary", StartRequest{Model: "m"}, ErrInvalid},
		{"unknown model", StartRequest{Model: "nope", Canary: "v2"}, ErrNotFound},
		{"unknown canary version", StartRequest{Model: "m", Canary: "v9"}, ErrInvalid},
		{"canary equal to stable", StartRequest{Model: "m", Canary: "v1"}, ErrInvalid},
		{"split outside (0, 100)", StartRequest{Model: "m", Canary: "v2", Mode: ModeABTest, Split: 100}, ErrInvalid},
		{"split in canary mode", StartRequest{Model: "m", Canary: "v2", Split: 10}, ErrInvalid},
		{"an invalid policy override", StartRequest{Model: "m", Canary: "v2", Policy: []byte(`{"alpha": 3}`)}, ErrInvalid},
		{"a policy override with a typo", StartRequest{Model: "m", Canary: "v2", Policy: []byte(`{"alpah": 0.1}`)}, ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			_, err := r.runner.Start(context.Background(), tc.req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if r.traffic.count() != 0 {
				t.Error("traffic moved")
			}
			if all, _ := r.runner.Store.List(); len(all) != 0 {
				t.Error("a rollout was stored")
			}
		})
	}
	t.Run("a second active rollout of a model conflicts", func(t *testing.T) {
		r := newRig(t)
		r.start(t)
		n := r.traffic.count()
		if _, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2"}); !errors.Is(err, ErrConflict) {
			t.Fatalf("error %v", err)
		}
		if r.traffic.count() != n {
			t.Error("traffic moved")
		}
	})
}

func TestABTestHoldsItsSplitAndReports(t *testing.T) {
	r := newRig(t)
	ro, err := r.runner.Start(context.Background(), StartRequest{Model: "m", Canary: "v2", Mode: ModeABTest, Split: 50})
	if err != nil {
		t.Fatal(err)
	}
	slow := testArm()
	slow.LatencyMs = func(rr *rand.Rand) float64 { return 1.3 * testArm().LatencyMs(rr) }
	r.source.m = window(4, 5000, 5000, testArm(), slow)
	r.clock.add(3 * time.Hour)
	got, err := r.runner.Step(context.Background(), ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != RolloutRunning || r.traffic.last().weights["v2"] != 50 || got.Experiment == nil {
		t.Fatalf("A/B rollout %+v", got)
	}
	var lat *ExperimentMetric
	for i := range got.Experiment.Metrics {
		if got.Experiment.Metrics[i].Metric == MetricLatency {
			lat = &got.Experiment.Metrics[i]
		}
	}
	if lat == nil || !lat.Significant || lat.Better != "v1" || lat.WinRate == nil || *lat.WinRate > 0.45 || lat.NeededPerArm == 0 {
		t.Fatalf("latency %+v", lat)
	}
}
