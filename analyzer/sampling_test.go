package analyzer

import (
	"math"
	"testing"
	"time"
)

// With stable sampled, a canary event is less surprising than the canary's
// share of traffic says: the canary's users are all measured, stable's
// only in part. The event's ratio carries that; before both arms have
// been seen it is unknown and the event carries no evidence.
func TestEventsCountStablesSampleRate(t *testing.T) {
	tl := NewTally(TallyOptions{})
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tl.Add(Request{At: at(1), User: 1, Canary: true, Outcome: OutcomeFailure, SampleRate: 1})
	tl.Add(Request{At: at(2), User: 2, Outcome: OutcomeSuccess, SampleRate: 0.25})
	tl.Add(Request{At: at(3), User: 3, Canary: true, Outcome: OutcomeFailure, SampleRate: 1})
	tl.Add(Request{At: at(4), User: 4, Outcome: OutcomeFailure, SampleRate: 0.25})
	ev := tl.Measurements("m", "v1", "v2", at(5)).Events[MetricErrorRate]
	if len(ev) != 3 {
		t.Fatalf("%d error events, want 3", len(ev))
	}
	if !math.IsNaN(ev[0].Ratio) {
		t.Errorf("an event before stable was seen has ratio %v, want unknown", ev[0].Ratio)
	}
	if ev[1].Ratio != 4 || ev[2].Ratio != 4 {
		t.Errorf("ratios %v, %v; want 4 (every canary user measured, a quarter of stable's)", ev[1].Ratio, ev[2].Ratio)
	}
	sched := []Span{{Stage: 0, Weight: 2, From: t0}}
	st := foldEvents(EventState{}, sched, ev)
	if st.Count != 3 {
		t.Fatalf("folded %d events, want 3", st.Count)
	}
}

// The split check expects the canary's share of measured users, not of
// traffic: at 2 % with a fifth of stable's users measured, about 9 % of
// the measured users are the canary's.
func TestSplitCheckExpectsTheMeasuredShare(t *testing.T) {
	p := testPolicy()
	p.Stages[0].Weight = 2
	mk := func(stableRate float64) Measurements {
		m := Measurements{Model: "m", From: t0, To: t0.Add(time.Minute)}
		m.Canary = Arm{Version: "v2", Users: 100, Requests: 100, SampleRate: 1}
		m.Stable = Arm{Version: "v1", Users: 980, Requests: 980, SampleRate: stableRate}
		return m
	}
	d, _ := Decide(p, NewStageState(0, t0), mk(0.2), t0.Add(time.Minute))
	if d.Code == CodeSRM || d.SRM == nil || math.Abs(d.SRM.ExpectedShare-9.26) > 0.01 {
		t.Fatalf("sampled split: code %s, SRM %+v; want no mismatch and 9.26 %% expected", d.Code, d.SRM)
	}
	d, _ = Decide(p, NewStageState(0, t0), mk(1), t0.Add(time.Minute))
	if d.Code != CodeSRM {
		t.Fatalf("the same users with every stable user measured: code %s, want a sample-ratio mismatch", d.Code)
	}
}

// A user measured before the rollout only through Envoy's access log has a
// latency baseline and no TTFT one: their latency's distance from
// everyone's stands in for it, so a user who is slow everywhere is not a
// TTFT tail event on either version.
func TestTailLevelFallsBackToTheUsersLatency(t *testing.T) {
	tl := NewTally(TallyOptions{})
	for i := range 100 {
		tl.AddBaseline(uint64(i), 0, 1, math.Log(1000))
		tl.AddBaseline(uint64(i), 1, 1, math.Log(100))
	}
	tl.AddBaseline(7777, 0, 50, 50*math.Log(4000)) // four times slower than most, no TTFT baseline
	v := tl.tailValues(Request{User: 7777, Streamed: true, LatencyMs: 4000, TTFTMs: 400})
	// Everyone's mean log latency, and the user's shrunk by two
	// pseudo-requests towards it.
	pop := (100*math.Log(1000) + 50*math.Log(4000)) / 150
	own := (50*math.Log(4000) + 2*pop) / 52
	wantLatency := 4000 / math.Exp(own)
	wantTTFT := 400 / math.Exp(math.Log(100)+own-pop)
	if math.Abs(v[0]-wantLatency) > 1e-9 || math.Abs(v[1]-wantTTFT) > 1e-9 {
		t.Fatalf("relative latency %v and TTFT %v, want %v and %v", v[0], v[1], wantLatency, wantTTFT)
	}
	// Without the stand-in the user's TTFT would be judged against
	// everyone's: four times the usual, a tail event on either version.
	if plain := 400.0 / 100; !(wantTTFT < plain/2) {
		t.Fatalf("the stand-in level barely moves the TTFT: %v vs %v", wantTTFT, plain)
	}
}
