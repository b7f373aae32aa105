//go:build integration

package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/internal/health"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/mtls"
	"github.com/llmcanary/llmcanary/internal/procs"
)

// TestEveryServiceExportsMetricsAndSaysWhenItIsNotReady runs the real
// stack — Envoy, ClickHouse, the control plane, `llmcanary extproc` and
// `llmcanary analyzer` as processes — drives traffic and a rollout, and
// scrapes each service: the series a dashboard needs are there with the
// right values, Prometheus's linter finds nothing wrong with the names,
// and /readyz answers for each. Then ClickHouse stops: the analyzer is no
// longer ready (it cannot measure), the telemetry service stays ready in
// a degraded way (it spools), the control plane is unaffected.
func TestEveryServiceExportsMetricsAndSaysWhenItIsNotReady(t *testing.T) {
	f, ep := extprocFleet(t, analyzerProfile("v1", 0), analyzerProfile("v2", 0))
	a := startAnalyzerProcess(t, f, `
stages:
  - {weight: 20, min_duration: 10m, min_samples: 100000}
  - {weight: 100}
tolerances: {error_rate: 0.05, latency: 0.25}
required: [error_rate, latency]
`)
	ctx := context.Background()
	hc, err := mtls.HTTPClient(f.Certs.CA())
	if err != nil {
		t.Fatal(err)
	}
	control, telemetry, analyzerURL := f.CP.APIURL, "http://"+ep.MetricsAddr, "http://"+a.Addr

	const n = 200
	for i, ans := range f.parallel(t, n, func(i int) request { return request{body: streamBody, headers: user(i)} }) {
		if ans.status != 200 {
			t.Fatalf("request %d: %d %.100s", i, ans.status, ans.body)
		}
	}
	f.waitRows(t, n, 30*time.Second)
	ro, err := analyzerClient(a).Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := drive(t, f)
	// A decision that tested a metric (a hold: the stage wants far more
	// samples).
	waitFor(t, 60*time.Second, "decision that tested a metric", func() bool {
		v, err := analyzerClient(a).Get(ctx, ro.ID)
		if err != nil || v.Last == nil {
			return false
		}
		return slices.ContainsFunc(v.Last.Metrics, func(m analyzer.MetricResult) bool {
			return m.Status != analyzer.StatusTooFew && m.Status != analyzer.StatusNotMeasured
		})
	})
	stop()

	scrape := func(url string) health.Samples {
		t.Helper()
		ss, err := health.Scrape(ctx, hc, url+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		problems, err := health.Lint(ctx, hc, url+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: promlint: %s", url, p)
		}
		return ss
	}
	atLeast := func(ss health.Samples, want float64, name string, labels ...string) {
		t.Helper()
		got, ok := ss.Sum(name, labels...)
		if !ok || got < want {
			t.Errorf("%s%v = %v (exported %v), want at least %v", name, labels, got, ok, want)
		}
	}
	exactly := func(ss health.Samples, want float64, name string, labels ...string) {
		t.Helper()
		got, ok := ss.Sum(name, labels...)
		if !ok || got != want {
			t.Errorf("%s%v = %v (exported %v), want %v", name, labels, got, ok, want)
		}
	}

	cs := scrape(control)
	exactly(cs, 1, "llmcanary_control_envoys_connected")
	atLeast(cs, 1, "llmcanary_control_xds_acks_total", "type", "envoy.config.route.v3.RouteConfiguration")
	exactly(cs, 0, "llmcanary_control_envoy_revision_lag")
	atLeast(cs, 1, "llmcanary_control_api_requests_total", "route", "PUT /v1/models/{model}/weights", "code", "200")

	ts := scrape(telemetry)
	atLeast(ts, n, "llmcanary_extproc_requests_total", "model", model)
	atLeast(ts, n, "llmcanary_telemetry_written_total")

	as := scrape(analyzerURL)
	exactly(as, 1, "llmcanary_analyzer_rollouts", "state", "running")
	exactly(as, 20, "llmcanary_analyzer_canary_weight_percent", "model", model, "rollout", ro.ID)
	atLeast(as, 1, "llmcanary_analyzer_decisions_total", "model", model, "action", "hold")
	atLeast(as, 1, "llmcanary_analyzer_evaluation_seconds", "model", model, "outcome", "ok")
	atLeast(as, 1, "llmcanary_analyzer_api_requests_total", "route", "POST /v1/rollouts", "code", "201")

	checkDashboardSeries(t, cs, ts, as)

	for _, url := range []string{control, telemetry, analyzerURL} {
		if code, body := get(t, hc, url+"/readyz"); code != 200 || strings.Contains(body, "degraded") {
			t.Errorf("%s/readyz: %d %s", url, code, body)
		}
		if code, body := get(t, hc, url+"/healthz"); code != 200 {
			t.Errorf("%s/healthz: %d %s", url, code, body)
		}
	}

	// The rollout's report through the CLI, opened in headless Chromium.
	checkReportFromCLI(t, a, ro.ID)

	// ClickHouse goes away.
	if err := f.ClickHouse.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "analyzer /readyz failing without ClickHouse", func() bool {
		code, body := get(t, hc, analyzerURL+"/readyz")
		return code == 503 && strings.Contains(body, `"clickhouse"`) && strings.Contains(body, `"control_plane": "ok"`)
	})
	// The telemetry service finds out at its next insert.
	f.parallel(t, 20, func(i int) request { return request{body: streamBody, headers: user(i)} })
	waitFor(t, 30*time.Second, "telemetry /readyz ready but degraded (spooling)", func() bool {
		code, body := get(t, hc, telemetry+"/readyz")
		return code == 200 && strings.Contains(body, "degraded: ClickHouse unreachable")
	})
	if code, body := get(t, hc, control+"/readyz"); code != 200 {
		t.Errorf("control plane /readyz without ClickHouse: %d %s", code, body)
	}
}

func get(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// checkReportFromCLI runs `llmcanary rollout report <id> -o file` against
// the analyzer process and opens the page in headless Chromium.
func checkReportFromCLI(t *testing.T, a *procs.Analyzer, id string) {
	t.Helper()
	bin, err := procs.LlmcanaryBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "report.html")
	// The decision log reaches ClickHouse within a second of a look.
	waitFor(t, 15*time.Second, "report with the latency looks", func() bool {
		cmd := exec.Command(bin, "rollout", "report", id, "-o", path, "--analyzer", "http://"+a.Addr)
		cmd.Env = append(os.Environ(), "LLMCANARY_API_TOKEN="+local.DevToken)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), path) {
			t.Fatalf("rollout report: %v\n%s", err, out)
		}
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), "latency: effect and interval at each look")
	})
	page, err := procs.OpenPage(context.Background(), path, dir, 1100, 2000)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Rollout " + id, "Plan and why", "Canary weight over time", "Metrics over time",
		"latency: effect and interval at each look", "Total response time per version", "Decisions", "started by"} {
		if !strings.Contains(page.DOM, want) {
			t.Errorf("report from the CLI lacks %q", want)
		}
	}
	if ink, colours := procs.InkShare(page.Screenshot); ink < 0.03 || colours < 8 {
		t.Errorf("report screenshot looks blank: %.2f %% inked, %d colours", 100*ink, colours)
	}
}

// checkDashboardSeries checks that every series the Grafana dashboard's
// Prometheus panels query is one the services export.
func checkDashboardSeries(t *testing.T, scrapes ...health.Samples) {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/llmcanary.json")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, ss := range scrapes {
		for _, s := range ss {
			exported[s.Name] = true
		}
	}
	names := regexp.MustCompile(`llmcanary_[a-z0-9_]+`).FindAllString(string(b), -1)
	if len(names) < 5 {
		t.Fatalf("only %d llmcanary series in the dashboard", len(names))
	}
	for _, n := range names {
		n = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
		if !exported[n] {
			t.Errorf("the dashboard queries %s, which no service exports", n)
		}
	}
}
