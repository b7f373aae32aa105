//go:build integration

package bench

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

var nan = math.NaN()

// medMin returns the median and the minimum of the values that are not
// NaN; NaN when there are none.
func medMin(v []float64) (med, lo float64) {
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) == 0 {
		return nan, nan
	}
	slices.Sort(s)
	return s[len(s)/2], s[0]
}

// costRow is one configuration's figures for one body, each the median or
// the minimum over the rounds.
type costRow struct {
	rps, p50, p99 float64 // p50, p99 in ms
	cpu           [nCPU]float64
	timed, canary float64
}

func (r costRow) cpuSum() float64 {
	var s float64
	for _, c := range r.cpu {
		if !math.IsNaN(c) {
			s += c
		}
	}
	return s
}

// summarize returns the rows of the medians and of the minima.
func summarize(runs []costRun) (med, lo costRow) {
	field := func(get func(costRun) float64, m, l *float64) {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		*m, *l = medMin(v)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	field(func(r costRun) float64 { return r.rps }, &med.rps, &lo.rps)
	field(func(r costRun) float64 { return ms(r.p50) }, &med.p50, &lo.p50)
	field(func(r costRun) float64 { return ms(r.p99) }, &med.p99, &lo.p99)
	field(func(r costRun) float64 { return r.timed }, &med.timed, &lo.timed)
	field(func(r costRun) float64 { return r.canary }, &med.canary, &lo.canary)
	for i := range nCPU {
		field(func(r costRun) float64 { return r.cpu[i] }, &med.cpu[i], &lo.cpu[i])
	}
	return med, lo
}

// num formats v without decimals, "-" for NaN.
func num(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.0f", v)
}

// pct formats a share as a percentage, "-" for NaN.
func pct(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.1f %%", 100*v)
}

// printCostReport prints BenchmarkGatewayCost's tables and reports its key
// figures as benchmark metrics.
func printCostReport(b *testing.B, gws []*gateway, runs [][][]costRun, ready []readiness, scale float64, took phaseTimes) {
	var sb strings.Builder
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && len(strings.Fields(string(b))) >= 3 {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	fmt.Fprintf(&sb, "\ngateway cost: Envoy %s with 1 worker thread (--concurrency 1) in front of the zero-latency pool\n", envoyVersion())
	fmt.Fprintf(&sb, "  processes of their own: the pool (`llmcanary sim`, v1 and v2, %d tokens per answer), the telemetry service\n", costTokens)
	fmt.Fprintf(&sb, "  (`llmcanary extproc`, one per configuration, Envoy ↔ service over mTLS), one ClickHouse server; users: x-user-id of %d\n", costUsers)
	fmt.Fprintf(&sb, "  %d interleaved rounds; each round per configuration: a throughput phase at %d concurrent (req/s and CPU),\n", costRounds, costInFlight)
	fmt.Fprintf(&sb, "  then a latency phase one request at a time (p50, p99); request counts × %.2g ($LLMCANARY_BENCH_SCALE)\n", scale)
	fmt.Fprintf(&sb, "  CPU µs per request: Envoy, extproc, pool from /proc/<pid>/task/*/schedstat; ClickHouse from /proc/<pid>/stat (10 ms ticks);\n")
	fmt.Fprintf(&sb, "  loadgen is this process (getrusage: the HTTP client and the configurations' idle control planes)\n")
	fmt.Fprintf(&sb, "  machine: %d CPUs, load average at the end %s; took %v to start, %v for the rounds, %v for the start-up times",
		runtime.NumCPU(), load,
		took.startup.Round(time.Second), took.rounds.Round(time.Second), took.ready.Round(time.Second))

	head := fmt.Sprintf("  %-30s %7s %6s  %7s %7s %8s %6s  %7s %8s %10s %6s %8s %7s  %7s %7s\n",
		"configuration", "req/s", "×", "p50 ms", "p99 ms", "+p50 ms", "p99 ×",
		cpuNames[cpuEnvoy], cpuNames[cpuExtproc], cpuNames[cpuClickHouse], cpuNames[cpuPool], cpuNames[cpuLoadgen], "sum", "timed", "canary")
	meds := make([][]costRow, len(costBodies)) // body, gateway
	for bi, body := range costBodies {
		rows := [2][]costRow{}
		for gi := range gws {
			m, l := summarize(runs[gi][bi])
			rows[0], rows[1] = append(rows[0], m), append(rows[1], l)
		}
		meds[bi] = rows[0]
		for k, stat := range []string{"median", "minimum"} {
			fmt.Fprintf(&sb, "\n\n%s, %s of %d rounds of %d requests at %d concurrent and %d one at a time (ratios to Envoy alone's %s)\n%s",
				body.name, stat, costRounds, scaled(body.perRound, scale), costInFlight, scaled(body.latencyN, scale), stat, head)
			base := rows[k][0]
			for gi, g := range gws {
				r := rows[k][gi]
				fmt.Fprintf(&sb, "  %-30s %7.0f %6.2f  %7.3f %7.3f %+8.3f %6.2f  %7s %8s %10s %6s %8s %7s  %7s %7s\n",
					g.name, r.rps, r.rps/base.rps, r.p50, r.p99, r.p50-base.p50, r.p99/base.p99,
					num(r.cpu[cpuEnvoy]), num(r.cpu[cpuExtproc]), num(r.cpu[cpuClickHouse]),
					num(r.cpu[cpuPool]), num(r.cpu[cpuLoadgen]), num(r.cpuSum()), pct(r.timed), pct(r.canary))
			}
		}
	}

	idx := map[string]int{}
	for i, g := range gws {
		idx[g.key] = i
	}
	fmt.Fprintf(&sb, "\n\nthe filter's added Envoy CPU over a no-op module's, ((3)-(1))/((2)-(1)), medians\n")
	for bi, body := range costBodies {
		envoy := func(key string) float64 { return meds[bi][idx[key]].cpu[cpuEnvoy] }
		alone := envoy("alone")
		filter, noop, goNoop := envoy("filter")-alone, envoy("noop")-alone, envoy("gonoop")-alone
		fmt.Fprintf(&sb, "  %-20s filter %+6.0f µs, no-op module %+6.0f µs: %5.2f×   (Go no-op module %+6.0f µs: %5.2f×)\n",
			body.name+":", filter, noop, filter/noop, goNoop, filter/goNoop)
		if bi == 0 {
			b.ReportMetric(filter/noop, "filter/noop-cpu")
		}
	}

	fmt.Fprintf(&sb, "\nEnvoy's time from its start to its first answered request, %d rounds, median (minimum)\n", costRounds)
	wall0, _ := medMin(ready[0].wall)
	cpu0, _ := medMin(ready[0].cpu)
	for _, r := range ready {
		wm, wl := medMin(r.wall)
		cm, cl := medMin(r.cpu)
		fmt.Fprintf(&sb, "  %-30s wall %6.2f s (%6.2f)   CPU %6.2f s (%6.2f)   %5.1f× the wall time, %5.1f× the CPU of Envoy alone\n",
			r.name, wm, wl, cm, cl, wm/wall0, cm/cpu0)
	}
	wf, _ := medMin(ready[len(ready)-1].wall)
	b.ReportMetric(wf/wall0, "ready-filter/alone")

	for _, key := range []string{"idle", "rollout", "all"} {
		r, base := meds[0][idx[key]], meds[0][0]
		b.ReportMetric(r.rps/base.rps, key+"-rps-ratio")
		b.ReportMetric(r.p50-base.p50, key+"-added-p50-ms")
	}
	fmt.Println(sb.String())
}
