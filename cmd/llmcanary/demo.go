package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/llmcanary/llmcanary/internal/chart"
	"github.com/llmcanary/llmcanary/internal/local"
	"github.com/llmcanary/llmcanary/internal/wire"
)

func init() {
	register(command{
		Name:    "demo",
		Summary: "run a real local rollout with Envoy, ClickHouse and simulated pools, and show it",
		Run:     runDemo,
	})
}

type demoOptions struct {
	dir, out string
	rate     float64
	step     time.Duration
}

func runDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", `Starts a whole local stack (see 'llmcanary up'), sends live traffic from
simulated users and moves a canary through its stages, printing the split
Envoy actually serves at each step. Pictures of weight over time and of the
latency distributions per version are written to --out.`)
	var o demoOptions
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary one)")
	fs.StringVar(&o.out, "out", "demo-output", "where the pictures go")
	fs.Float64Var(&o.rate, "rate", 40, "requests per second of simulated traffic")
	fs.DurationVar(&o.step, "step", 6*time.Second, "how long each stage runs")
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
	say("starting ClickHouse, Envoy (wasm + ext_proc filters), the control plane, telemetry and two simulated versions")
	s, err := startUp(ctx, upOptions{dir: o.dir, stableProfile: "stable", canaryProfile: "canary-healthy", capture: 0.2, log: log})
	if err != nil {
		return err
	}
	defer s.Stop()
	say("gateway http://%s, model %q: stable=%s canary=%s", s.Gateway[0], s.Model, s.Stable.Profile.Version, s.Canary.Profile.Version)

	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	traffic := &local.Traffic{Gateway: s.Gateway[0], Model: s.Model, Users: 5000, Rate: o.rate}
	go traffic.Run(tctx)
	say("sending %.0f streamed requests per second from 5000 simulated users", o.rate)

	start := time.Now()
	weights := chart.Series{Name: s.Canary.Profile.Version + " weight %", Step: true}
	served := chart.Series{Name: s.Canary.Profile.Version + " share served %"}
	stable, canary := s.Stable.Profile.Version, s.Canary.Profile.Version
	fmt.Printf("\n%10s %12s %12s %10s %8s\n", "stage", "stable", "canary", "served %", "failed")
	for _, w := range []float64{0, 2, 5, 10, 25, 50, 100} {
		if _, err := s.API.SetWeights(ctx, s.Model, map[string]float64{stable: 100 - w, canary: w}, ""); err != nil {
			return err
		}
		weights.X, weights.Y = append(weights.X, time.Since(start).Seconds()), append(weights.Y, w)
		traffic.Served() // count only what this stage serves
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.step):
		}
		counts, failed := traffic.Served()
		total := counts[stable] + counts[canary]
		share := 0.0
		if total > 0 {
			share = 100 * float64(counts[canary]) / float64(total)
		}
		served.X, served.Y = append(served.X, time.Since(start).Seconds()), append(served.Y, share)
		fmt.Printf("%9.0f%% %12d %12d %9.1f%% %8d\n", w, counts[stable], counts[canary], share, failed)
	}
	weights.X, weights.Y = append(weights.X, time.Since(start).Seconds()), append(weights.Y, 100)
	stopTraffic()

	if err := writeChart(filepath.Join(o.out, "weight-over-time.svg"), chart.Chart{
		Title: "Canary weight and the share Envoy served", XLabel: "seconds", YLabel: "percent",
		Series: []chart.Series{weights, served}, YMin: 0, YMax: 100,
	}); err != nil {
		return err
	}
	if err := latencyChart(ctx, s, filepath.Join(o.out, "ttft-by-version.svg")); err != nil {
		return err
	}
	say("pictures: %s/weight-over-time.svg, %s/ttft-by-version.svg", o.out, o.out)
	return nil
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

// latencyChart draws the TTFT distribution of each version from ClickHouse.
func latencyChart(ctx context.Context, s *upStack, path string) error {
	conn, err := s.ClickHouse.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var series []chart.Series
	var summary []string
	byVersion := map[string][]float64{}
	rows, err := conn.Query(ctx, fmt.Sprintf(
		"SELECT version, ttft_ms FROM %s.%s WHERE model = ? AND failure = '' AND forced = 0 AND streamed = 1",
		wire.Database, wire.TableRequests), s.Model)
	if err != nil {
		return err
	}
	for rows.Next() {
		var v string
		var ttft float64
		if err := rows.Scan(&v, &ttft); err != nil {
			return err
		}
		byVersion[v] = append(byVersion[v], ttft)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	names := make([]string, 0, len(byVersion))
	for v := range byVersion {
		names = append(names, v)
	}
	sort.Strings(names)
	for _, v := range names {
		series = append(series, chart.CDF(v, byVersion[v]))
		summary = append(summary, fmt.Sprintf("%s: %d rows", v, len(byVersion[v])))
	}
	say("telemetry in ClickHouse: %s", strings.Join(summary, ", "))
	return writeChart(path, chart.Chart{Title: "Time to first token per version (from ClickHouse)", XLabel: "ms", YLabel: "% of requests at or below", Series: series, YMin: 0, YMax: 100})
}
