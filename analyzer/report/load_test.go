//go:build integration

package report

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/quality"
	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/extproc"
	"github.com/llmcanary/llmcanary/extproc/chwriter/chwritertest"
	"github.com/llmcanary/llmcanary/internal/procs/chtest"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// TestLoadReadsTheRolloutsNumbersFromClickHouse writes telemetry, captures,
// judge scores and the decision log of one rollout into a real ClickHouse
// with the production writers, and reads them back for the report.
func TestLoadReadsTheRolloutsNumbersFromClickHouse(t *testing.T) {
	ch := chtest.Shared(t)
	db := chtest.NewDatabase()
	ctx := context.Background()
	start := time.Now().UTC().Truncate(time.Second).Add(-10 * time.Minute)
	ro := fixture().Rollout
	ro.Created, ro.Updated = start, start.Add(5*time.Minute)

	var recs []extproc.Record
	for i := range 400 {
		v, slow := "v1", 1.0
		if i%4 == 0 {
			v, slow = "v2-ft", 1.5
		}
		r := extproc.Record{Time: start.Add(time.Duration(i) * 500 * time.Millisecond), RequestID: fmt.Sprintf("req-%03d", i), Model: ro.Model, Version: v,
			Bucket: uint64(i), Streamed: true, Status: 200, TTFTMs: slow * float64(50+i%50), TotalMs: slow * float64(300+i%100), CompletionTokens: 20}
		if v == "v2-ft" {
			r.Captured, r.Prompt, r.Completion = true, fmt.Sprintf("question %d from bob@example.org", i), fmt.Sprintf("answer %d", i)
		}
		recs = append(recs, r)
	}
	// Left out: another model, a forced request, a failure, one after the rollout.
	recs = append(recs,
		extproc.Record{Time: start.Add(time.Second), RequestID: "other", Model: "mistral", Version: "v1", Status: 200, TotalMs: 1e6, Streamed: true},
		extproc.Record{Time: start.Add(time.Second), RequestID: "forced", Model: ro.Model, Version: "v1", Forced: true, Status: 200, TotalMs: 1e6, Streamed: true},
		extproc.Record{Time: start.Add(time.Second), RequestID: "failed", Model: ro.Model, Version: "v1", Status: 500, Failure: "http_5xx", TotalMs: 1e6, Streamed: true},
		extproc.Record{Time: start.Add(6 * time.Minute), RequestID: "late", Model: ro.Model, Version: "v1", Status: 200, TotalMs: 1e6, Streamed: true},
	)
	// Cohort-routed requests: reported on their own, never in the
	// distributions.
	recs = append(recs,
		extproc.Record{Time: start.Add(time.Second), RequestID: "optin-1", Model: ro.Model, Version: "v2-ft", Cohort: "opt_in", Bucket: 9001, Status: 200, TotalMs: 4000, TTFTMs: 800, Streamed: true},
		extproc.Record{Time: start.Add(2 * time.Second), RequestID: "optin-2", Model: ro.Model, Version: "v2-ft", Cohort: "opt_in", Bucket: 9001, Status: 500, Failure: "http_5xx", Streamed: true},
		extproc.Record{Time: start.Add(3 * time.Second), RequestID: "excluded-1", Model: ro.Model, Version: "v1", Cohort: "excluded", Bucket: 9002, Status: 200, TotalMs: 2500},
	)
	chwritertest.WriteRecords(t, ch, db, recs)
	conn := chtest.Connect(t, ch)

	qs, err := quality.OpenScoreStore(ctx, conn, db)
	if err != nil {
		t.Fatal(err)
	}
	var scores []quality.Score
	for _, r := range recs {
		if r.Captured {
			// Answer 8 is the worst; user feedback never counts here.
			s := 0.9
			if r.RequestID == "req-008" {
				s = 0.01
			}
			scores = append(scores, quality.Score{Time: r.Time, RequestID: r.RequestID, Model: r.Model, Version: r.Version, Score: s, Source: quality.SourceJudge})
		}
	}
	scores = append(scores, quality.Score{Time: recs[4].Time, RequestID: recs[4].RequestID, Model: ro.Model, Version: "v2-ft", Score: 0, Source: quality.SourceFeedback})
	if err := qs.Write(ctx, scores); err != nil {
		t.Fatal(err)
	}

	dl, err := chsource.NewDecisionLog(ctx, conn, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := *ro
	before.Last, before.History = nil, nil
	for i := range 3 {
		after := before
		after.Last = &analyzer.Decision{At: start.Add(time.Duration(i+1) * time.Minute), Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples,
			Metrics: []analyzer.MetricResult{
				{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusUndecided, Estimate: 0.5, Tolerance: 0.2, CI: &stats.Interval{Lo: 0.1 * float64(i), Hi: 0.9}},
				{Metric: analyzer.MetricQuality, Kind: analyzer.KindScore, Status: analyzer.StatusNotMeasured},
			}}
		after.History = []analyzer.Event{{At: after.Last.At, Kind: "decision", Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples, Reason: fmt.Sprintf("hold %d", i)}}
		dl.Changed(&before, &after)
		before = after
	}
	dl.Flush(ctx)

	d, err := Load(ctx, conn, db, ro, start.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Missing) > 0 {
		t.Fatalf("missing: %v", d.Missing)
	}
	if len(d.Looks) != 3 || d.Looks[2].Lower != 0.2 || d.Looks[0].Metric != analyzer.MetricLatency || d.Looks[1].At.Sub(start) != 2*time.Minute {
		t.Fatalf("looks %+v (the quality metric was not measured and is not logged)", d.Looks)
	}
	for name, dists := range map[string]map[string]Distribution{"latency": d.Latency, "ttft": d.TTFT} {
		v1, v2 := dists["v1"], dists["v2-ft"]
		if v1.Count != 300 || v2.Count != 100 || len(v1.Values) != len(Levels) {
			t.Fatalf("%s: counts %d/%d, %d quantiles: only the rollout's successful, unforced requests of this model count", name, v1.Count, v2.Count, len(v1.Values))
		}
		median := func(d Distribution) float64 { return d.Values[49] }
		if r := median(v2) / median(v1); math.Abs(r-1.5) > 0.1 {
			t.Errorf("%s: canary median / stable median = %.2f, want about 1.5", name, r)
		}
	}
	wantCohorts := []CohortTraffic{
		{Cohort: "excluded", Version: "v1", Requests: 1, Users: 1, LatencyP50Ms: 2500},
		{Cohort: "opt_in", Version: "v2-ft", Requests: 2, Users: 1, Failures: 1, LatencyP50Ms: 4000, TTFTP50Ms: 800},
	}
	if fmt.Sprint(d.Cohorts) != fmt.Sprint(wantCohorts) {
		t.Fatalf("cohort traffic %+v, want %+v", d.Cohorts, wantCohorts)
	}
	if len(d.Worst) != WorstAnswers || d.Worst[0].RequestID != "req-008" || d.Worst[0].Score != 0.01 {
		t.Fatalf("worst answers %+v", d.Worst)
	}
	if !strings.Contains(d.Worst[0].Prompt, "[email]") || strings.Contains(d.Worst[0].Prompt, "bob@") || d.Worst[0].Completion != "answer 8" {
		t.Fatalf("worst answer not redacted or not joined: %+v", d.Worst[0])
	}

	// A database without the quality and decision tables still gives a
	// report, which says what it could not read.
	empty := chtest.NewDatabase()
	chwritertest.WriteRecords(t, ch, empty, recs[:10])
	d, err = Load(ctx, conn, empty, ro, start.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Missing) != 2 || !strings.Contains(d.Missing[0], "metrics over time") || !strings.Contains(d.Missing[1], "judge") || len(d.Latency) == 0 {
		t.Fatalf("missing %q, latency %v", d.Missing, d.Latency)
	}
}
