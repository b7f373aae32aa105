package monitor

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/stats"
	"github.com/llmcanary/llmcanary/internal/health"
)

var t0 = time.Date(2026, 3, 1, 3, 0, 0, 0, time.UTC)

// fakeSource is a hand-written MetricsSource: the timing wrapper is pure
// plumbing around whatever source it wraps.
type fakeSource struct {
	err  error
	mark string
}

func (f fakeSource) Measure(context.Context, analyzer.Window) (analyzer.Measurements, error) {
	return analyzer.Measurements{}, f.err
}

func (f fakeSource) Watermark(context.Context, analyzer.Window) (string, error) { return f.mark, nil }

type noMarks struct{}

func (noMarks) Measure(context.Context, analyzer.Window) (analyzer.Measurements, error) {
	return analyzer.Measurements{}, nil
}

func newRollout(id, model string, status analyzer.Status, created time.Time) *analyzer.Rollout {
	return &analyzer.Rollout{ID: id, Model: model, Stable: "v1", Canary: "v2", Mode: analyzer.ModeCanary,
		Plan: analyzer.Plan{Policy: analyzer.DefaultPolicy()}, Status: status, Created: created, Updated: created}
}

func TestAnalyzerMetricsShowRolloutsWeightsEffectsDecisionsAndLookTimes(t *testing.T) {
	st, err := analyzer.OpenRolloutStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := health.NewRegistry()
	m, err := New(st, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.OnChange(m.Changed)()

	// llama: an old rolled-back rollout, then a running one at stage 2.
	for _, r := range []*analyzer.Rollout{
		newRollout("r-old", "llama", analyzer.RolloutRolledBack, t0),
		newRollout("r-new", "llama", analyzer.RolloutRunning, t0.Add(time.Hour)),
		newRollout("r-mis", "mistral", analyzer.RolloutPromoted, t0),
	} {
		if err := st.Create(r); err != nil {
			t.Fatal(err)
		}
	}
	decide := func(at time.Duration, a analyzer.Action, code analyzer.Code) {
		t.Helper()
		if _, err := st.Update("r-new", func(x *analyzer.Rollout) error {
			x.Stage = 1
			x.Last = &analyzer.Decision{At: t0.Add(at), Action: a, Code: code, Metrics: []analyzer.MetricResult{
				{Metric: analyzer.MetricLatency, Kind: analyzer.KindRelative, Status: analyzer.StatusUndecided, Estimate: 0.04, Tolerance: 0.1,
					CI: &stats.Interval{Lo: -0.02, Hi: 0.11}},
				{Metric: analyzer.MetricErrorRate, Kind: analyzer.KindPoints, Status: analyzer.StatusUndecided, Estimate: 0.001, Tolerance: 0.01,
					CI: &stats.Interval{Lo: -0.003, Hi: 0.004}},
				{Metric: analyzer.MetricQuality, Kind: analyzer.KindScore, Status: analyzer.StatusNotMeasured},
			}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	decide(time.Minute, analyzer.ActionHold, analyzer.CodeMinSamples)
	decide(2*time.Minute, analyzer.ActionHold, analyzer.CodeMinSamples)
	decide(3*time.Minute, analyzer.ActionAdvance, analyzer.CodeGuarded)
	if _, err := st.Update("r-new", func(x *analyzer.Rollout) error { x.Updated = t0.Add(4 * time.Minute); return nil }); err != nil {
		t.Fatal(err) // a change without a new decision counts nothing
	}

	ctx := context.Background()
	src := m.Source(fakeSource{mark: "m1"})
	_, _ = src.Measure(ctx, analyzer.Window{Model: "llama"})
	_, _ = m.Source(fakeSource{err: analyzer.ErrNoData}).Measure(ctx, analyzer.Window{Model: "llama"})
	_, _ = m.Source(fakeSource{err: errors.New("clickhouse away")}).Measure(ctx, analyzer.Window{Model: "llama"})

	srv := httptest.NewServer(health.Beside(http.NotFoundHandler(), reg, nil, true))
	defer srv.Close()
	ss, err := health.Scrape(ctx, nil, srv.URL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"llmcanary_analyzer_rollouts", []string{"state", "running"}, 1},
		{"llmcanary_analyzer_rollouts", []string{"state", "rolled_back"}, 1},
		{"llmcanary_analyzer_rollouts", []string{"state", "paused"}, 0},
		{"llmcanary_analyzer_canary_weight_percent", []string{"model", "llama", "rollout", "r-new", "state", "running"}, analyzer.DefaultPolicy().EvaluatedStages()[1].Weight},
		{"llmcanary_analyzer_canary_weight_percent", []string{"model", "mistral", "state", "promoted"}, 100},
		{"llmcanary_analyzer_decisions_total", []string{"model", "llama", "action", "hold", "code", "min_samples"}, 2},
		{"llmcanary_analyzer_decisions_total", []string{"model", "llama", "action", "advance"}, 1},
		{"llmcanary_analyzer_metric_effect", []string{"rollout", "r-new", "metric", "latency", "kind", "relative", "status", "undecided"}, 0.04},
		{"llmcanary_analyzer_metric_interval_lower", []string{"metric", "latency"}, -0.02},
		{"llmcanary_analyzer_metric_interval_upper", []string{"metric", "latency"}, 0.11},
		{"llmcanary_analyzer_metric_interval_upper", []string{"metric", "error_rate"}, 0.004},
		{"llmcanary_analyzer_metric_tolerance", []string{"metric", "error_rate"}, 0.01},
		{"llmcanary_analyzer_evaluation_seconds", []string{"model", "llama", "outcome", "ok"}, 1},
		{"llmcanary_analyzer_evaluation_seconds", []string{"outcome", "no_data"}, 1},
		{"llmcanary_analyzer_evaluation_seconds", []string{"outcome", "error"}, 1},
	} {
		got, ok := ss.Sum(c.name, c.labels...)
		if !ok || math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s%v = %v (exported %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, absent := range []struct{ name, metric string }{
		{"llmcanary_analyzer_metric_effect", "quality"}, // not measured
	} {
		if _, ok := ss.Sum(absent.name, "metric", absent.metric); ok {
			t.Errorf("%s{metric=%s} exported", absent.name, absent.metric)
		}
	}
	if got := len(ss.Find("llmcanary_analyzer_canary_weight_percent", "model", "llama")); got != 1 {
		t.Errorf("%d weight series for llama, want only its latest rollout's", got)
	}
	problems, err := health.Lint(ctx, nil, srv.URL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s", p)
	}

	// The wrapper keeps the source's watermark, and says it has none
	// for a source without one (the runner then looks every time).
	if w, ok := src.(analyzer.Watermarker); !ok {
		t.Fatal("timed source is not a Watermarker")
	} else if mark, err := w.Watermark(ctx, analyzer.Window{}); mark != "m1" || err != nil {
		t.Fatalf("watermark %q %v", mark, err)
	}
	if _, err := m.Source(noMarks{}).(analyzer.Watermarker).Watermark(ctx, analyzer.Window{}); err == nil {
		t.Fatal("a source without watermarks must make the runner look every time")
	}
}

func TestReadyzNamesTheCheckThatFailedAndLivenessDoesNotCare(t *testing.T) {
	reg := health.NewRegistry()
	srv := httptest.NewServer(health.Beside(http.NotFoundHandler(), reg, nil, true,
		health.Check{Name: "clickhouse", Fn: func(context.Context) error { return errors.New("dial tcp 127.0.0.1:9000: connection refused") }},
		health.Check{Name: "control_plane", Fn: func(context.Context) error { return nil }}))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String()
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, `"clickhouse": "dial tcp 127.0.0.1:9000: connection refused"`) || !strings.Contains(body, `"control_plane": "ok"`) {
		t.Fatalf("readyz %d %s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d while ClickHouse is down; liveness must not restart the service for it", code)
	}
}
