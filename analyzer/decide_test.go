package analyzer

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/config"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// testArm is the simulated version the decision tests draw from.
func testArm() ArmModel { return BaseArm() }

// window draws a stage's window from t0: nStable and nCanary requests,
// interleaved in time ten milliseconds apart, from users who send two
// requests each, counted through a Tally as the ClickHouse source does.
func window(seed uint64, nStable, nCanary int, stable, canary ArmModel) Measurements {
	r := rand.New(rand.NewPCG(seed, 99))
	t := NewTally(TallyOptions{KeepValues: true})
	t.StartStage(t0)
	total := nStable + nCanary
	s, c := 0, 0
	for i := range total {
		req := Request{At: t0.Add(time.Duration(i) * 10 * time.Millisecond)}
		model := stable
		if c*total < (i+1)*nCanary {
			req.Canary, req.User, model = true, uint64(1_000_000+c/2), canary
			c++
		} else {
			req.User = uint64(s / 2)
			s++
		}
		drawRequest(&req, model, simUser{latency: 1}, 1, r)
		t.Add(req)
	}
	m := t.Measurements("m", "v1", "v2", t0.Add(time.Duration(total)*10*time.Millisecond))
	return m
}

// testPolicy has stages of 20 % and 50 %, ten minutes and 2000 canary
// requests each, at most an hour.
func testPolicy() Policy {
	p := DefaultPolicy()
	p.Stages = []Stage{
		{Weight: 20, MinDuration: config.Duration(10 * time.Minute), MinSamples: 2000},
		{Weight: 50, MinDuration: config.Duration(10 * time.Minute), MinSamples: 2000},
		{Weight: 100},
	}
	p.MaxStageDuration = config.Duration(time.Hour)
	return p
}

func TestDecide(t *testing.T) {
	healthy := testArm()
	erroring := healthy
	erroring.ErrorRate = 0.10
	slow := healthy
	slow.LatencyMs = func(r *rand.Rand) float64 { return 1.5 * healthy.LatencyMs(r) }
	noQuality := healthy
	noQuality.JudgeRate = 0
	requireQuality := testPolicy()
	requireQuality.Required = append(requireQuality.Required, MetricQuality)
	extend, rollback := testPolicy(), testPolicy()
	extend.OnInconclusive, rollback.OnInconclusive = InconclusiveExtend, InconclusiveRollback

	flawless := healthy
	flawless.ErrorRate = 0
	failing := flawless
	failing.ErrorRate = 0.4
	judged := healthy
	judged.JudgeRate = 1
	worseQuality := judged
	worseQuality.BadRate = 0.14
	big := window(1, 40000, 10000, healthy, healthy)
	tests := []struct {
		name     string
		policy   Policy
		stage    int
		m        Measurements
		elapsed  time.Duration
		action   Action
		code     Code
		contains []string
	}{
		{"no data at all holds", testPolicy(), 0, window(1, 0, 0, healthy, healthy), 20 * time.Minute, ActionHold, CodeNoData, []string{"neither version"}},
		{"a canary without requests among a few users holds", testPolicy(), 0, window(1, 20, 0, healthy, healthy), 20 * time.Minute, ActionHold, CodeNoData, []string{"canary v2"}},
		{"a canary without requests among many users pauses on the split", testPolicy(), 0, window(1, 500, 0, healthy, healthy), 20 * time.Minute, ActionPause, CodeSRM, []string{"0.00 % of 250 users"}},
		{"a stable without requests among many users pauses on the split", testPolicy(), 0, window(1, 0, 500, healthy, healthy), 20 * time.Minute, ActionPause, CodeSRM, []string{"100.00 % of 250 users"}},
		{"too few requests to test holds", testPolicy(), 0, window(1, 300, 76, healthy, healthy), 20 * time.Minute, ActionHold, CodeMinSamples, []string{"required metrics without enough data: error_rate, latency", "76 of 2000"}},
		{"sample-ratio mismatch pauses instead of rolling back", testPolicy(), 0, window(1, 8000, 4000, healthy, erroring), 20 * time.Minute, ActionPause, CodeSRM, []string{"33.33 %", "20 % is configured"}},
		{"error rate beyond tolerance rolls back", testPolicy(), 0, window(1, 8000, 2000, healthy, erroring), 2 * time.Minute, ActionRollback, CodeHarm, []string{"error_rate", "pts", "risk ratio", "p="}},
		{"errors against a stable that never fails roll back however much stable traffic there is", testPolicy(), 0, window(1, 8000, 2000, flawless, failing), 2 * time.Minute, ActionRollback, CodeHarm, []string{"error_rate +3", "risk ratio at least 64"}},
		{"worse answers roll back on quality", testPolicy(), 0, window(1, 8000, 2000, judged, worseQuality), 2 * time.Minute, ActionRollback, CodeHarm, []string{"quality"}},
		{"slower canary rolls back on latency", testPolicy(), 0, window(1, 8000, 2000, healthy, slow), 2 * time.Minute, ActionRollback, CodeHarm, []string{"latency +5"}},
		{"healthy canary advances after the minimum time and samples", testPolicy(), 0, big, 11 * time.Minute, ActionAdvance, CodeGuarded, []string{"20 % to 50 %", "no harm shown"}},
		{"healthy canary is promoted after the last stage", testPolicy(), 1, window(2, 10000, 10000, healthy, healthy), 11 * time.Minute, ActionPromote, CodeWithinTolerance, []string{"last stage (50 %)"}},
		{"before the minimum time holds", testPolicy(), 0, big, 5 * time.Minute, ActionHold, CodeMinDuration, []string{"of the stage's minimum 10m0s"}},
		{"before the minimum samples holds", testPolicy(), 0, window(3, 6000, 1500, healthy, healthy), 11 * time.Minute, ActionHold, CodeMinSamples, []string{"1500 of 2000 canary requests"}},
		{"the last stage holds until every metric is shown within tolerance", testPolicy(), 1, window(3, 2200, 2200, healthy, healthy), 11 * time.Minute, ActionHold, CodeUndecided, []string{"not yet shown within tolerance"}},
		{"an early stage advances without showing non-inferiority", testPolicy(), 0, window(3, 8800, 2200, healthy, healthy), 11 * time.Minute, ActionAdvance, CodeGuarded, nil},
		{"a required metric without data holds", requireQuality, 0, window(1, 40000, 10000, noQuality, noQuality), 11 * time.Minute, ActionHold, CodeRequiredMissing, []string{"quality"}},
		{"an inconclusive stage pauses by default", testPolicy(), 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionPause, CodeInconclusive, []string{"inconclusive", "a human decides"}},
		{"an inconclusive stage extends when the policy says so", extend, 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionHold, CodeInconclusive, []string{"extends"}},
		{"an inconclusive stage rolls back when the policy says so", rollback, 0, window(3, 800, 200, healthy, healthy), 2 * time.Hour, ActionRollback, CodeInconclusive, []string{"rolls back inconclusive"}},
		{"a stage outside the policy holds", testPolicy(), 5, big, 11 * time.Minute, ActionHold, CodeInvalidStage, []string{"does not exist"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.policy.Validate(); err != nil {
				t.Fatal(err)
			}
			d, _ := Decide(tc.policy, NewStageState(tc.stage, t0), tc.m, t0.Add(tc.elapsed))
			if d.Action != tc.action || d.Code != tc.code {
				t.Fatalf("got %s/%s, want %s/%s: %s", d.Action, d.Code, tc.action, tc.code, d.Reason)
			}
			for _, s := range tc.contains {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q does not mention %q", d.Reason, s)
				}
			}
			if !strings.HasPrefix(d.Reason, string(d.Action)+": ") {
				t.Errorf("reason %q does not start with the action", d.Reason)
			}
		})
	}
}

func TestDecideRollbackNamesEffectIntervalAndPValue(t *testing.T) {
	erroring := testArm()
	erroring.ErrorRate = 0.10
	d, _ := Decide(testPolicy(), NewStageState(0, t0), window(1, 8000, 2000, testArm(), erroring), t0.Add(time.Minute))
	var er *MetricResult
	for i := range d.Metrics {
		if d.Metrics[i].Metric == MetricErrorRate {
			er = &d.Metrics[i]
		}
	}
	if er == nil || er.Status != StatusHarm || er.HarmP > er.HarmAlpha || er.Estimate <= er.Tolerance || er.RiskRatio < 5 || er.CanaryEvents == 0 || er.NCanary != 2000 {
		t.Fatalf("error_rate result %+v does not show significant harm with its risk ratio", er)
	}
	if !strings.Contains(d.Reason, "first events") {
		t.Errorf("reason %q does not say what the events test counted", d.Reason)
	}
	if d.SRM == nil || d.SRM.Mismatch {
		t.Fatalf("SRM %+v: want a passed check", d.SRM)
	}
}

func TestDecideIsPureAndPValuesNeverRise(t *testing.T) {
	p := testPolicy()
	healthy := testArm()
	st := NewStageState(0, t0)
	before := st.clone()
	m := window(5, 4000, 1000, healthy, healthy)
	d1, s1 := Decide(p, st, m, t0.Add(time.Minute))
	d2, _ := Decide(p, st, m, t0.Add(time.Minute))
	if !reflect.DeepEqual(d1, d2) {
		t.Fatal("the same inputs gave different decisions")
	}
	if !reflect.DeepEqual(st, before) {
		t.Fatal("Decide changed its input state")
	}
	// A later look with less favourable data must not raise the p-values
	// or widen the intervals.
	worse := window(6, 4400, 1100, healthy, func() ArmModel { a := healthy; a.ErrorRate = 0.018; return a }())
	_, s2 := Decide(p, s1, worse, t0.Add(2*time.Minute))
	for metric, a := range s1.Metrics {
		b := s2.Metrics[metric]
		if b.HarmP > a.HarmP || b.SafeP > a.SafeP {
			t.Errorf("%s: p-values rose from %v/%v to %v/%v", metric, a.HarmP, a.SafeP, b.HarmP, b.SafeP)
		}
		if a.CI != nil && (b.CI.Lo < a.CI.Lo || b.CI.Hi > a.CI.Hi) {
			t.Errorf("%s: interval widened from %v to %v", metric, *a.CI, *b.CI)
		}
	}
	if s2.Looks != 2 {
		t.Errorf("looks %d, want 2", s2.Looks)
	}
}

func TestEventTestsSpanStagesAndTheScheduleClosesEachStage(t *testing.T) {
	p := testPolicy()
	healthy := testArm()
	_, s1 := Decide(p, NewStageState(0, t0), window(5, 4000, 1000, healthy, healthy), t0.Add(time.Minute))
	if len(s1.Schedule) != 1 || s1.Schedule[0].Weight != 20 || !s1.Schedule[0].To.IsZero() {
		t.Fatalf("schedule %+v, want one open span at 20 %%", s1.Schedule)
	}
	decided, started := t0.Add(2*time.Minute), t0.Add(2*time.Minute+300*time.Millisecond)
	s2 := NextStageState(s1, decided, started)
	if s2.Stage != 1 || len(s2.Metrics) != 0 || s2.Looks != 0 {
		t.Fatalf("next stage %+v: want stage 1 with a fresh window", s2)
	}
	if !s2.Schedule[0].To.Equal(decided) {
		t.Errorf("first span ends %v, want the decision time %v", s2.Schedule[0].To, decided)
	}
	if !reflect.DeepEqual(s2.Events, s1.Events) {
		t.Error("the event tests did not carry over to the next stage")
	}
	if w, ok := weightAt(s2.Schedule, decided.Add(100*time.Millisecond)); ok {
		t.Errorf("an event while the fleet changed weights counts at weight %v, want it not counted", w)
	}
	_, s3 := Decide(p, s2, window(5, 4000, 1000, healthy, healthy), started.Add(time.Minute))
	if n := len(s3.Schedule); n != 2 || s3.Schedule[1].Weight != 50 || !s3.Schedule[1].From.Equal(started) {
		t.Errorf("schedule %+v, want a second span at 50 %% from %v", s3.Schedule, started)
	}
}

func TestFoldEventsReplaysWhenALateEventChangesThePrefix(t *testing.T) {
	schedule := []Span{{Weight: 10, From: t0}}
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	mk := func(events ...UserEvent) []UserEvent {
		var print int64
		for i := range events {
			print += eventPrint(events[i])
			events[i].Print = print
		}
		return events
	}
	first := mk(UserEvent{At: at(1), Canary: true}, UserEvent{At: at(3), Canary: true})
	st := foldEvents(EventState{}, schedule, first)
	if st.Count != 2 || st.Canary != 2 {
		t.Fatalf("folded %+v, want 2 canary events", st)
	}
	grown := mk(UserEvent{At: at(1), Canary: true}, UserEvent{At: at(3), Canary: true}, UserEvent{At: at(5)})
	incremental := foldEvents(st, schedule, grown)
	replayed := foldEvents(EventState{}, schedule, grown)
	if !reflect.DeepEqual(incremental, replayed) {
		t.Errorf("folding new events gave %+v, replaying all gave %+v", incremental, replayed)
	}
	if incremental.PValue() > st.PValue() {
		t.Errorf("a stable event raised the p-value from %v to %v; it is a running minimum", st.PValue(), incremental.PValue())
	}
	late := mk(UserEvent{At: at(1), Canary: true}, UserEvent{At: at(2)}, UserEvent{At: at(3), Canary: true}, UserEvent{At: at(5)})
	got := foldEvents(incremental, schedule, late)
	if got.Events != 4 || got.Canary != 2 {
		t.Errorf("after a late event the test has %d events, %d on the canary; want all 4 replayed, 2 on the canary", got.Events, got.Canary)
	}
}
