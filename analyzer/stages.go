package analyzer

import (
	"context"
	"log/slog"
	"time"
)

// StageWindow is one stage of a rollout as it ran: the canary's weight and
// the time it held. Recorded next to the telemetry, it lets anyone ask
// ClickHouse for any metric per rollout stage.
type StageWindow struct {
	RolloutID string
	Model     string
	Stable    string
	Canary    string
	Stage     int // index into the plan's evaluated stages
	Weight    float64
	Started   time.Time
	// Ended is zero while the stage runs.
	Ended time.Time
	// Outcome is "running", or how the stage ended: advanced, promoted,
	// rolled_back, aborted, paused.
	Outcome string
	// Updated orders the records of one stage: the latest wins.
	Updated time.Time
}

// StageLog receives stage windows as stages open and close. The ClickHouse
// implementation is chsource.StageLog. Writes must be idempotent by
// (RolloutID, Stage): a later record of a stage replaces an earlier one.
type StageLog interface {
	RecordStage(ctx context.Context, w StageWindow) error
}

// stageChanges compares a rollout before and after a change (before is nil
// for a new rollout) and returns the stage windows that opened or closed.
// Pure.
func stageChanges(before, after *Rollout) []StageWindow {
	if after == nil || after.Mode == ModeABTest && before != nil && before.Status == after.Status {
		return nil
	}
	window := func(ro *Rollout, stage int, started, ended time.Time, outcome string) StageWindow {
		w := StageWindow{RolloutID: ro.ID, Model: ro.Model, Stable: ro.Stable, Canary: ro.Canary, Stage: stage,
			Started: started, Ended: ended, Outcome: outcome, Updated: after.Updated}
		if ro.Mode == ModeABTest {
			w.Weight = ro.Split
		} else if st := ro.Plan.Policy.EvaluatedStages(); stage < len(st) {
			w.Weight = st[stage].Weight
		}
		return w
	}
	running := func(ro *Rollout) bool { return ro.Status == RolloutRunning }
	switch {
	case before == nil:
		if running(after) {
			return []StageWindow{window(after, after.Stage, after.StageStarted, time.Time{}, "running")}
		}
	case after.Stage != before.Stage:
		out := []StageWindow{window(before, before.Stage, before.StageStarted, after.StageStarted, "advanced")}
		if running(after) {
			out = append(out, window(after, after.Stage, after.StageStarted, time.Time{}, "running"))
		}
		return out
	case running(before) && !running(after):
		return []StageWindow{window(after, after.Stage, after.StageStarted, after.Updated, string(after.Status))}
	case running(after) && (!running(before) || !after.StageStarted.Equal(before.StageStarted)):
		// Resumed: the stage's window starts again.
		return []StageWindow{window(after, after.Stage, after.StageStarted, time.Time{}, "running")}
	}
	return nil
}

// stageRecorder writes stage windows in the background so that a slow or
// absent ClickHouse never delays a decision; what cannot be queued is
// logged and dropped (the rollout's own history keeps everything).
type stageRecorder struct {
	log   StageLog
	queue chan StageWindow
	l     *slog.Logger
}

func newStageRecorder(ctx context.Context, log StageLog, l *slog.Logger) *stageRecorder {
	r := &stageRecorder{log: log, queue: make(chan StageWindow, 256), l: l}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case w := <-r.queue:
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := r.log.RecordStage(wctx, w); err != nil {
					r.l.Warn("stage window not recorded", "rollout", w.RolloutID, "stage", w.Stage, "error", err)
				}
				cancel()
			}
		}
	}()
	return r
}

func (r *stageRecorder) changed(before, after *Rollout) {
	for _, w := range stageChanges(before, after) {
		select {
		case r.queue <- w:
		default:
			r.l.Warn("stage window dropped: the stage log is behind", "rollout", w.RolloutID, "stage", w.Stage)
		}
	}
}
