//go:build integration

package chsource

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
	"github.com/llmcanary/llmcanary/sim"
)

// TestMeasureReadsWhatTheJudgeScored runs the whole quality path: captured
// responses, the real judge (the simulated pool in judge mode) and the
// window's query, with a canary whose answers are bad half the time.
func TestMeasureReadsWhatTheJudgeScored(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	now := time.Now().UTC().Truncate(time.Second)
	w := analyzer.Window{Model: "m", Stable: "v1", Canary: "v2", From: now.Add(-time.Minute), To: now}
	var recs []extproc.Record
	for i := range 10 {
		for _, v := range []string{"v1", "v2"} {
			answer := "It is in Paris, France."
			if v == "v2" && i%2 == 0 {
				answer = "Sure! " + sim.BadAnswerMarker
			}
			r := ok(fmt.Sprintf("%s-%d", v, i), v, w.From.Add(time.Duration(i)*time.Second), true, 100, 10, 5, 20, 0.001)
			r.Captured, r.Prompt, r.Completion = true, "Where is the Eiffel Tower?", answer
			recs = append(recs, r)
		}
	}
	forced := recs[1] // a canary request, pinned: judged but not counted
	forced.RequestID, forced.Forced, forced.Completion = "forced", true, "Sure! "+sim.BadAnswerMarker
	recs = append(recs, forced)
	chwritertest.WriteRecords(t, ch, db, recs)

	conn := chtest.Connect(t, ch)
	store, err := quality.OpenScoreStore(context.Background(), conn, db)
	if err != nil {
		t.Fatal(err)
	}
	judgeSim, err := sim.New(sim.Profile{Version: "judge", Judge: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(judgeSim)
	defer srv.Close()
	judge, err := quality.NewJudge(quality.JudgeOptions{Conn: conn, Store: store, Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := judge.RunOnce(context.Background()); err != nil || n != len(recs) {
		t.Fatalf("judged %d (%v), want %d", n, err, len(recs))
	}

	m, err := newSource(conn, db).Measure(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	wantStable := slices.Repeat([]float64{1}, 10)
	wantCanary := append(slices.Repeat([]float64{0}, 5), slices.Repeat([]float64{1}, 5)...)
	if got := sorted(m.Stable.Quality); !slices.Equal(got, wantStable) {
		t.Errorf("stable quality %v, want %v", got, wantStable)
	}
	if got := sorted(m.Canary.Quality); !slices.Equal(got, wantCanary) {
		t.Errorf("canary quality %v, want %v (the forced request left out)", got, wantCanary)
	}
}
