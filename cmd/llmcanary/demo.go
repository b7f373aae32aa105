package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/analyzer/analyzersvc"
	"github.com/llmcanary/llmcanary/analyzer/chsource"
	"github.com/llmcanary/llmcanary/analyzer/report"
	"github.com/llmcanary/llmcanary/internal/chart"
	"github.com/llmcanary/llmcanary/internal/config"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
	"github.com/llmcanary/llmcanary/sim"
	"github.com/llmcanary/llmcanary/xds"
)

func init() {
	register(command{
		Name:    "demo",
		Summary: "run real rollouts on a local stack (Envoy, ClickHouse, simulated pools) and show them",
		Run:     runDemo,
	})
}

type demoOptions struct {
	dir, out string
	rate     float64
	timeout  time.Duration
}

// Demo pools: short answers so a stage fills in seconds. The regressed
// checkpoint is the documented case: 30 % slower and 14 % bad answers
// instead of 3 %.
func demoProfile(version string, seed uint64, slower, bad float64) sim.Profile {
	return sim.Profile{
		Version: version, Model: "llama-3-8b", Seed: seed,
		TTFT:         sim.LogNormalMedianP99(60*slower, 150*slower),
		ITL:          sim.LogNormalMedianP99(6*slower, 15*slower),
		OutputTokens: sim.UniformCount(16, 40),
		ErrorRate:    0.005, RefusalRate: 0.01, BadAnswerRate: bad,
	}
}

// demoPolicy compresses the default stages into seconds.
func demoPolicy() analyzer.Policy {
	p := analyzer.DefaultPolicy()
	d := func(s time.Duration) config.Duration { return config.Duration(s) }
	p.Stages = []analyzer.Stage{
		{Weight: 10, MinDuration: d(5 * time.Second), MinSamples: 250},
		{Weight: 25, MinDuration: d(5 * time.Second), MinSamples: 300},
		{Weight: 50, MinDuration: d(5 * time.Second), MinSamples: 300},
		{Weight: 100},
	}
	p.MaxStageDuration = d(90 * time.Second)
	p.MinTestSamples = 60
	p.Tolerances = map[analyzer.Metric]float64{
		analyzer.MetricErrorRate: 0.03,
		analyzer.MetricLatency:   0.20,
		analyzer.MetricTTFT:      0.20,
		analyzer.MetricQuality:   0.05,
	}
	p.Required = []analyzer.Metric{analyzer.MetricErrorRate, analyzer.MetricLatency}
	return p
}

func runDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", `Starts a whole local stack (see 'llmcanary up') plus the analyzer and an LLM
judge, sends live traffic from simulated users, and runs two rollouts with
stage times compressed to seconds: a fine-tuned checkpoint that is 30 %
slower and hallucinates on 14 % of answers (3 % before), rolled back
automatically, then a healthy one, promoted to 100 %. Each rollout begins
with a pre-flight (warm-up and a prompt suite judged in pairs) and a shadow
stage (user requests mirrored to the canary, judged in pairs) before any
user is routed to the canary. Progress shows live;
pictures of weight over time and latency per version, and an HTML report of
both rollouts, go to --out.`)
	var o demoOptions
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary one)")
	fs.StringVar(&o.out, "out", "demo-output", "where the pictures go")
	fs.Float64Var(&o.rate, "rate", 80, "requests per second of simulated traffic")
	fs.DurationVar(&o.timeout, "rollout-timeout", 4*time.Minute, "give up on a rollout that has not finished by then")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("", "llmcanary-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	begin := time.Now()

	say("starting ClickHouse, Envoy (wasm + ext_proc filters), the control plane, telemetry (both reached over mTLS), the analyzer, the pools and a judge")
	stablePool, badPool := demoProfile("v1", 1, 1, 0.03), demoProfile("v2-ft", 2, 1.3, 0.14)
	policy := demoPolicy()
	s, err := startUp(ctx, upOptions{dir: o.dir, stable: &stablePool, canary: &badPool, capture: 1, log: log,
		analyzer: func(ao *analyzersvc.Options) {
			ao.Interval = config.Duration(500 * time.Millisecond)
			ao.Policy = &policy
			ao.JudgeInterval, ao.JudgeBatchSize, ao.JudgeConcurrency = config.Duration(250*time.Millisecond), 200, 8
		}})
	if err != nil {
		return err
	}
	defer s.Stop()
	say("gateway http://%s  model %q  stable %s, canary %s at 0 %%", s.Gateway[0], s.Model, stablePool.Version, badPool.Version)
	an := s.Analyzer
	runner := an.Runner

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopBG(); wg.Wait() }()
	traffic := &local.Traffic{Gateway: s.Gateway[0], Model: s.Model, Users: 5000, Rate: o.rate}
	served := &chart.Series{Name: "canary share served, %"}
	var servedMu sync.Mutex
	canaryName := badPool.Version
	for _, f := range []func(){
		func() { traffic.Run(bg) },
		func() { // the share Envoy actually served, each second
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-bg.Done():
					return
				case <-t.C:
				}
				counts, _ := traffic.Served()
				total := 0
				for _, n := range counts {
					total += n
				}
				if total > 0 {
					servedMu.Lock()
					served.X = append(served.X, time.Since(begin).Seconds())
					served.Y = append(served.Y, 100*float64(counts[canaryName])/float64(total))
					servedMu.Unlock()
				}
			}
		},
	} {
		wg.Add(1)
		go func(f func()) { defer wg.Done(); f() }(f)
	}
	say("sending %.0f streamed requests per second from 5000 simulated users; every answer is graded by the judge", o.rate)

	// Rollout 1: the regressed fine-tune.
	bad, err := watchRollout(ctx, runner, demoStart(s.Model, badPool.Version), o.timeout)
	if err != nil {
		return err
	}
	allStable := checkAllStable(ctx, s, stablePool.Version)

	// Rollout 2: a healthy checkpoint on a new pool.
	goodPool := demoProfile("v3-ft", 3, 0.95, 0.03)
	good, err := local.StartSim(goodPool)
	if err != nil {
		return err
	}
	s.OnStop(good.Stop)
	if _, err := s.API.PutVersion(ctx, s.Model, xds.Version{Name: goodPool.Version, Endpoints: []string{good.Addr},
		Metadata: xds.VersionMetadata{BaseModel: s.Model, Family: "llama-3", ParametersB: 8, WeightsHash: "sha256:fine-tuned-2",
			PriceInputPer1K: 0.0005, PriceOutputPer1K: 0.0015}}); err != nil {
		return err
	}
	if err := s.WaitReady(ctx); err != nil {
		return err
	}
	servedMu.Lock()
	canaryName = goodPool.Version
	servedMu.Unlock()
	healthy, err := watchRollout(ctx, runner, demoStart(s.Model, goodPool.Version), o.timeout)
	if err != nil {
		return err
	}
	stopBG()
	wg.Wait()

	// Pictures.
	servedMu.Lock()
	weights := []chart.Series{weightSeries(bad, begin), weightSeries(healthy, begin), *served}
	servedMu.Unlock()
	var marks []chart.Mark
	for _, ro := range []*analyzer.Rollout{bad, healthy} {
		marks = append(marks, chart.Mark{X: ro.Updated.Sub(begin).Seconds(), Label: string(ro.Status) + " " + ro.Canary})
	}
	if err := writeChart(filepath.Join(o.out, "weight-over-time.svg"), chart.Chart{
		Title: "Canary weight over time, and the share Envoy served", XLabel: "seconds since start", YLabel: "percent of traffic",
		Series: weights, Marks: marks, YMin: 0, YMax: 100,
	}); err != nil {
		return err
	}
	if err := latencyCharts(ctx, s, o.out); err != nil {
		return err
	}
	if err := printStageErrorRates(ctx, s); err != nil {
		return err
	}
	an.Stop() // the decision log's last rows go in before the report reads them
	reportPath, err := writeReport(ctx, s, filepath.Join(o.out, "report.html"), bad, healthy)
	if err != nil {
		return err
	}

	userRows, err := canaryUserRequests(ctx, s, bad)
	if err != nil {
		return err
	}

	fmt.Println()
	for _, ro := range []*analyzer.Rollout{bad, healthy} {
		for _, l := range beforeUsers(ro) {
			say("%s %s", ro.Canary, l)
		}
	}
	say("user requests %s answered during its rollout: %d", bad.Canary, userRows)
	say("result: %s %s — %s", bad.Canary, bad.Status, lastReason(bad))
	say("        Envoy after the rollback: %s", allStable)
	say("result: %s %s — %s", healthy.Canary, healthy.Status, lastReason(healthy))
	say("pictures: %s", strings.Join([]string{
		filepath.Join(o.out, "weight-over-time.svg"), filepath.Join(o.out, "ttft-by-version.svg"), filepath.Join(o.out, "latency-by-version.svg")}, ", "))
	say("report of both rollouts: %s", reportPath)
	if bad.Status != analyzer.RolloutRolledBack || healthy.Status != analyzer.RolloutPromoted {
		return fmt.Errorf("the regressed canary ended %s and the healthy one %s; expected rolled_back and promoted", bad.Status, healthy.Status)
	}
	return nil
}

// watchRollout starts a rollout and prints its progress until it ends.
func watchRollout(ctx context.Context, r *analyzer.Runner, req analyzer.StartRequest, timeout time.Duration) (*analyzer.Rollout, error) {
	ro, err := r.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	fmt.Println()
	say("rollout %s: %s → %s, %s risk (%s), stages %s", ro.ID, ro.Stable, ro.Canary, ro.Plan.Risk, ro.Plan.RiskReason, stageList(ro.Plan.Policy))
	deadline := time.Now().Add(timeout)
	lastLine, lastPrint := "", time.Time{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		ro, err = r.Store.Get(ro.ID)
		if err != nil {
			return nil, err
		}
		p := ro.ProgressAt(time.Now())
		reason := lastReason(ro)
		line := fmt.Sprintf("stage %d/%d at %3.0f%% %s  canary requests %4d/%-4d  %4.0fs  %s",
			p.Stage, p.Stages, p.Weight, bar(ratio(float64(p.Samples), float64(max(p.MinSamples, 1)))), p.Samples, p.MinSamples,
			p.InStage.Seconds(), clip(reason, 150))
		if l := beforeUsersProgress(ro); l != "" {
			line = l
		}
		if line != lastLine && time.Since(lastPrint) > 2*time.Second || !ro.Status.Active() {
			say("%s", line)
			lastLine, lastPrint = line, time.Now()
		}
		if !ro.Status.Active() || ro.Status == analyzer.RolloutPaused {
			say("rollout %s %s", ro.ID, strings.ToUpper(strings.ReplaceAll(string(ro.Status), "_", " ")))
			return ro, nil
		}
		if time.Now().After(deadline) {
			return ro, errors.New("rollout did not finish in time: " + reason)
		}
	}
}

func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func lastReason(ro *analyzer.Rollout) string {
	if ro.Last != nil {
		return ro.Last.Reason
	}
	if ro.LastError != "" {
		return "error: " + ro.LastError
	}
	return "waiting for the first look"
}

func stageList(p analyzer.Policy) string {
	var parts []string
	for _, st := range p.Stages {
		parts = append(parts, fmt.Sprintf("%g%%", st.Weight))
	}
	return strings.Join(parts, " → ")
}

// weightSeries is a rollout's canary weight over time, from the traffic
// moves in its history.
func weightSeries(ro *analyzer.Rollout, begin time.Time) chart.Series {
	s := chart.Series{Name: ro.Canary + " weight, %", Step: true}
	for _, st := range ro.WeightSteps() {
		s.X, s.Y = append(s.X, st.At.Sub(begin).Seconds()), append(s.Y, st.Weight)
	}
	return s
}

// checkAllStable sends 200 requests from new users right after a rollback
// and reports where they went.
func checkAllStable(ctx context.Context, s *upStack, stable string) string {
	t := &local.Traffic{Gateway: s.Gateway[0], Model: s.Model, Users: 1 << 30, Rate: 400}
	c, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	t.Run(c)
	cancel()
	counts, failed := t.Served()
	total := 0
	var parts []string
	for v, n := range counts {
		total += n
		parts = append(parts, fmt.Sprintf("%s=%d", v, n))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%d of %d answers from %s (%s, %d failed)", counts[stable], total, stable, strings.Join(parts, " "), failed)
}

func say(format string, a ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func writeChart(path string, c chart.Chart) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := c.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// latencyCharts draws the TTFT and total latency distributions of each
// version from ClickHouse.
func latencyCharts(ctx context.Context, s *upStack, out string) error {
	conn, err := s.ClickHouse.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	ttft, total, err := readLatencies(ctx, conn, wire.Database, s.Model)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(ttft))
	for v := range ttft {
		names = append(names, v)
	}
	sort.Strings(names)
	var ts, ls []chart.Series
	var summary []string
	for _, v := range names {
		ts = append(ts, chart.CDF(v, ttft[v]))
		ls = append(ls, chart.CDF(v, total[v]))
		summary = append(summary, fmt.Sprintf("%s %d", v, len(ttft[v])))
	}
	say("telemetry rows in ClickHouse: %s", strings.Join(summary, ", "))
	if err := writeChart(filepath.Join(out, "ttft-by-version.svg"), chart.Chart{Title: "Time to first token per version (from ClickHouse)",
		XLabel: "ms", YLabel: "% of requests at or below", Series: ts, YMin: 0, YMax: 100}); err != nil {
		return err
	}
	return writeChart(filepath.Join(out, "latency-by-version.svg"), chart.Chart{Title: "Total response time per version (from ClickHouse)",
		XLabel: "ms", YLabel: "% of requests at or below", Series: ls, YMin: 0, YMax: 100})
}

// readLatencies reads the TTFT and total latency of every successful,
// streamed, unforced request of model in database db, per version, in no
// particular order.
func readLatencies(ctx context.Context, conn driver.Conn, db, model string) (ttft, total map[string][]float64, err error) {
	rows, err := conn.Query(ctx, fmt.Sprintf(
		"SELECT version, ttft_ms, total_ms FROM %s.%s WHERE model = ? AND failure = '' AND forced = 0 AND streamed = 1",
		db, wire.TableRequests), model)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	ttft, total = map[string][]float64{}, map[string][]float64{}
	for rows.Next() {
		var v string
		var a, b float64
		if err := rows.Scan(&v, &a, &b); err != nil {
			return nil, nil, err
		}
		ttft[v], total[v] = append(ttft[v], a), append(total[v], b)
	}
	return ttft, total, rows.Err()
}

// printStageErrorRates runs the README's "error rate per rollout stage"
// query against the demo's ClickHouse.
func printStageErrorRates(ctx context.Context, s *upStack) error {
	conn, err := s.ClickHouse.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	rows, err := conn.Query(ctx, chsource.QueryErrorRateByStage)
	if err != nil {
		return fmt.Errorf("error rate per stage: %w", err)
	}
	defer rows.Close()
	fmt.Printf("\nerror rate per rollout stage (ClickHouse, query in README)\n%-34s %6s %7s %-8s %9s %11s\n", "rollout", "stage", "weight", "version", "requests", "error rate")
	for rows.Next() {
		var id, version string
		var stage uint16
		var weight, rate float64
		var n uint64
		if err := rows.Scan(&id, &stage, &weight, &version, &n, &rate); err != nil {
			return err
		}
		fmt.Printf("%-34s %6d %6.0f%% %-8s %9d %10.2f%%\n", id, stage+1, weight, version, n, 100*rate)
	}
	return rows.Err()
}

// writeReport writes one HTML report of the rollouts and returns its
// absolute path.
func writeReport(ctx context.Context, s *upStack, path string, rollouts ...*analyzer.Rollout) (string, error) {
	conn, err := s.ClickHouse.Conn(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var data []report.Data
	for _, ro := range rollouts {
		d, err := report.Load(ctx, conn, wire.Database, ro, time.Now())
		if err != nil {
			return "", err
		}
		for _, m := range d.Missing {
			say("report of %s: %s", ro.ID, m)
		}
		data = append(data, d)
	}
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := report.Write(f, "llmcanary demo: two rollouts of "+rollouts[0].Model, data); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return filepath.Abs(path)
}
