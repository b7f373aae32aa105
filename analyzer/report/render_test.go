//go:build integration

package report

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/xds"
)

var t0 = time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)

// fixture is a rolled-back rollout of three stages with looks, both
// versions' distributions and graded answers.
func fixture() Data {
	p := analyzer.DefaultPolicy()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ro := &analyzer.Rollout{
		ID: "r-20260301-030000-abcd", Model: "llama-3-8b", Stable: "v1", Canary: "v2-ft", Mode: analyzer.ModeCanary,
		Plan:   analyzer.Plan{Risk: analyzer.RiskMedium, RiskReason: "same base model llama-3-8b: a fine-tune or adapter", Strategy: analyzer.StrategyCanary, Policy: p},
		Status: analyzer.RolloutRolledBack, Stage: 2, Created: at(0), Updated: at(95), StageStarted: at(60),
		State: analyzer.StageState{Stage: 2, Schedule: []analyzer.Span{
			{Stage: 0, Weight: 2, From: at(1), To: at(30)}, {Stage: 1, Weight: 5, From: at(31), To: at(59)}, {Stage: 2, Weight: 10, From: at(60), To: at(94)},
		}},
		Last: &analyzer.Decision{At: at(94), Action: analyzer.ActionRollback, Code: analyzer.CodeHarm, Reason: "rollback: the canary v2-ft is worse than stable v1 beyond tolerance on quality -0.104",
			Metrics: []analyzer.MetricResult{{Metric: analyzer.MetricQuality, Kind: analyzer.KindScore, Status: analyzer.StatusHarm, Estimate: -0.104,
				CI: &stats.Interval{Lo: -0.16, Hi: -0.06}, Tolerance: 0.05, CanaryValue: 0.86, StableValue: 0.964, NCanary: 212, NStable: 4000}}},
		History: []analyzer.Event{
			{At: at(0), Kind: "operator", Code: analyzer.CodeOperator, Actor: "demo", Reason: "started by demo: medium risk"},
			{At: at(29), Kind: "decision", Action: analyzer.ActionAdvance, Code: analyzer.CodeGuarded, Reason: "advance: 2 % to 5 %, no harm shown"},
			{At: at(40), Kind: "decision", Action: analyzer.ActionHold, Code: analyzer.CodeMinSamples, Reason: "hold: 120 of 300 canary requests", Repeats: 7},
			{At: at(94), Kind: "decision", Action: analyzer.ActionRollback, Code: analyzer.CodeHarm, Reason: "rollback: the canary v2-ft is worse than stable v1 beyond tolerance on quality -0.104"},
			{At: at(95), Kind: "action", Action: analyzer.ActionRollback, Reason: "traffic moved: v1 100 %, v2-ft 0 %"},
		},
	}
	var looks []chsource.Look
	for i := range 30 {
		s := 3 + 3*i
		w := math.Exp(-float64(i) / 10)
		looks = append(looks,
			chsource.Look{At: at(s), Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusUndecided, Estimate: 0.02, Lower: 0.02 - w, Upper: 0.02 + w, Tolerance: 0.2},
			chsource.Look{At: at(s), Metric: analyzer.MetricQuality, Kind: analyzer.KindScore, Status: analyzer.StatusUndecided, Estimate: -0.1, Lower: -0.1 - w/2, Upper: -0.1 + w/2, Tolerance: 0.05},
		)
	}
	dist := func(scale float64) Distribution {
		d := Distribution{Count: 1000, Levels: Levels}
		for _, l := range Levels {
			d.Values = append(d.Values, scale*math.Exp(1.2*(l-0.5)))
		}
		return d
	}
	return Data{
		Rollout: ro, Now: at(100), Looks: looks,
		Latency: map[string]Distribution{"v1": dist(300), "v2-ft": dist(390)},
		TTFT:    map[string]Distribution{"v1": dist(60), "v2-ft": dist(78)},
		Cohorts: []CohortTraffic{{Cohort: "opt_in", Version: "v2-ft", Requests: 431, Users: 17, Failures: 2, LatencyP50Ms: 402, TTFTP50Ms: 81}},
		Worst: []Answer{{RequestID: "req-1", At: at(70), Score: 0.02, Prompt: Redact("my mail is jane@example.com, card 4111 1111 1111 1111"),
			Completion: "The capital of Australia is Sydney."}},
	}
}

func TestReportRendersInChromiumWithEverySectionAndNoBlankPage(t *testing.T) {
	dir := t.TempDir()
	d1 := fixture()
	d2 := fixture()
	d2.Rollout.ID, d2.Rollout.Canary, d2.Rollout.Status = "r-20260301-031000-beef", "v3-ft", analyzer.RolloutPromoted
	d2.Worst, d2.Cohorts = nil, nil
	cost := analyzer.PlanCost(analyzer.Plan{MinEvaluation: config.Duration(2 * time.Hour), Policy: d1.Rollout.Plan.Policy},
		xds.VersionMetadata{Replicas: 2, GPUsPerReplica: 4, PricePerGPUHour: 3, CapacityRPS: 5}, 40, analyzer.RateObserved)
	d1.Rollout.Plan.Cost = &cost
	var buf bytes.Buffer
	if err := Write(&buf, "llmcanary rollouts: llama-3-8b", []Data{d1, d2}); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	for _, leak := range []string{"jane@example.com", "4111 1111", "<script", "<link", "src=", "url(", "@import"} {
		if strings.Contains(html, leak) {
			t.Errorf("report contains %q: it must be redacted and self-contained", leak)
		}
	}
	path := filepath.Join(dir, "report.html")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	page, err := procs.OpenPage(context.Background(), path, dir, 1100, 2600)
	if err != nil {
		t.Fatalf("open the report in headless Chromium: %v", err)
	}
	for _, want := range []string{
		"llmcanary rollouts: llama-3-8b",
		"Rollout r-20260301-030000-abcd: llama-3-8b v1 → v2-ft", "Rolled back",
		"Rollout r-20260301-031000-beef", "Promoted",
		"Plan and why", "Medium risk", "same base model llama-3-8b",
		"Stages", "Canary weight over time", "Metrics over time",
		"latency: effect and interval at each look", "quality: effect and interval at each look",
		"Latency and time to first token per version", "Total response time per version", "Time to first token per version",
		"Decisions", "advance: 2 % to 5 %, no harm shown", "seen at 8 looks",
		"GPU cost", "adds 16.0 GPU-hours, $48.00 at $3.00 per GPU-hour", "above its pool's capacity of 5.0/s",
		"Cohort traffic", "not part of the comparison", "opt_in", "431",
		"No request was routed by a cohort rule during the rollout",
		"Worst canary answers", "[email]", "[number]", "The capital of Australia is Sydney.",
		"The judge graded no captured answer of v3-ft",
	} {
		if !strings.Contains(page.DOM, want) {
			t.Errorf("rendered DOM lacks %q", want)
		}
	}
	if n := strings.Count(page.DOM, "<svg"); n != 2*(1+2+2) {
		t.Errorf("%d charts rendered, want 10 (weight, two metrics, two distributions per rollout)", n)
	}
	if keep := os.Getenv("LLMCANARY_KEEP_SCREENSHOTS"); keep != "" {
		// For a human to look at: the page and what Chromium showed.
		for _, f := range []string{path, page.PNG} {
			if b, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(keep, "report-fixture-"+filepath.Base(f)), b, 0o644)
			}
		}
	}
	ink, colours := procs.InkShare(page.Screenshot)
	t.Logf("screenshot %s: %.1f %% of pixels inked, %d colours", page.PNG, 100*ink, colours)
	if ink < 0.03 || colours < 8 {
		t.Fatalf("screenshot looks blank: %.2f %% inked, %d colours", 100*ink, colours)
	}
}

func TestReportOfARolloutWithoutLooksSaysWhatIsMissing(t *testing.T) {
	d := fixture()
	d.Looks, d.Latency, d.TTFT, d.Worst = nil, nil, nil, nil
	d.Rollout.State.Schedule = nil
	d.Missing = []string{"the judge's grades could not be read (table llmcanary.quality does not exist)"}
	var buf bytes.Buffer
	if err := Write(&buf, "r", []Data{d}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no look has been recorded", "the judge&#39;s grades could not be read", "No successful request of either version"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if err := Write(&buf, "none", nil); err != ErrNoRollouts {
		t.Fatalf("no rollouts: %v", err)
	}
}

func TestReportShowsThePreflightVerdictAndItsForcedRequests(t *testing.T) {
	d := fixture()
	warm := analyzer.WarmupResult{Requests: 7, Settled: true, TTFTMedian: 24 * time.Millisecond}
	good, bad := analyzer.PreflightAnswer{Score: 1, Scored: true, Latency: time.Second}, analyzer.PreflightAnswer{Score: 0, Scored: true, Latency: time.Second}
	v := analyzer.GatePreflight(analyzer.DefaultPreflightPolicy().Gates, warm,
		[]analyzer.PromptResult{{Stable: good, Canary: bad}, {Stable: good, Canary: bad}, {Stable: good, Canary: good}}, 0.05)
	d.Rollout.Preflight = &analyzer.PreflightStage{Status: analyzer.PreflightFailed, Verdict: &v}
	d.Preflight = []PreflightTraffic{{Version: "v1", Requests: 3, LatencyP50Ms: 310, TTFTP50Ms: 52}, {Version: "v2-ft", Requests: 10, Failures: 1, LatencyP50Ms: 333, TTFTP50Ms: 61}}
	var buf bytes.Buffer
	if err := Write(&buf, "r", []Data{d}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<h3>Pre-flight</h3>", "<strong>Failed</strong>: rollback: the pre-flight failed", "net loss share (3 judged: 0 won, 2 lost, 1 tied)", "0.6667",
		"request ids preflight:" + d.Rollout.ID, "<td>v2-ft</td><td class=\"num\">10</td><td class=\"num\">1</td>"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	d.Rollout.Preflight, d.Preflight = nil, nil
	buf.Reset()
	if err := Write(&buf, "r", []Data{d}); err != nil || strings.Contains(buf.String(), "Pre-flight") {
		t.Fatalf("a rollout without a pre-flight shows none: %v", err)
	}
}

func TestReportOfAnABNExperimentShowsEveryArm(t *testing.T) {
	d := fixture()
	d.Rollout.Mode = analyzer.ModeABTest
	d.Rollout.Candidates = []analyzer.Candidate{
		{Version: "v2", Split: 20, Status: analyzer.ArmDropped, Reason: "v2 dropped: quality -0.11 worse than stable",
			Report: &analyzer.ExperimentReport{Metrics: []analyzer.ExperimentMetric{{Metric: analyzer.MetricQuality, Effect: -0.11, Adjusted: 0.001}}}},
		{Version: "v3", Split: 20, Status: analyzer.ArmRunning},
	}
	d.Rollout.ABN = &analyzer.ABNReport{Summary: "v2 dropped; v3 running"}
	var buf bytes.Buffer
	if err := Write(&buf, "r", []Data{d}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Arms of the A/B/n experiment", "v2 dropped: quality -0.11 worse than stable", ">v3<", "Running", "v2 dropped; v3 running"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
