//go:build integration

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/analyzer"
	"github.com/llmcanary/llmcanary/sim"
)

// BenchmarkSoak runs the whole stack — ClickHouse, Envoy with both filters,
// the control plane, `llmcanary extproc` and `llmcanary analyzer` as their
// own processes, two simulated pools — at a steady open-loop load of
// streamed requests from 5000 users for LLMCANARY_SOAK_DURATION (default
// 10m) at LLMCANARY_SOAK_RATE requests per second (default 50), with one
// rollout advancing through its stages. It prints each process's memory
// at the start, the middle and the end, and the rows lost or duplicated.
// `make soak` runs it; it is a measurement, not a CI test.
func BenchmarkSoak(b *testing.B) {
	dur, rate := 10*time.Minute, 50.0
	if v, err := time.ParseDuration(os.Getenv("LLMCANARY_SOAK_DURATION")); err == nil {
		dur = v
	}
	if v, err := strconv.ParseFloat(os.Getenv("LLMCANARY_SOAK_RATE"), 64); err == nil {
		rate = v
	}
	profile := func(v string) sim.Profile {
		return sim.Profile{Version: v, Model: model, TTFT: sim.Uniform(15, 25), ITL: sim.Uniform(1, 3), OutputTokens: sim.FixedCount(16), Seed: uint64(len(v))}
	}
	f, ep := extprocFleet(b, profile("v1"), profile("v2"))
	stage := dur / 6
	a := startAnalyzerProcess(b, f, fmt.Sprintf(`
stages:
  - {weight: 2, min_duration: %[1]s, min_samples: 50}
  - {weight: 5, min_duration: %[1]s, min_samples: 50}
  - {weight: 10, min_duration: %[1]s, min_samples: 50}
  - {weight: 25, min_duration: %[1]s, min_samples: 50}
  - {weight: 50, min_duration: %[2]s, min_samples: 50}
  - {weight: 100}
max_stage_duration: %[2]s
min_test_samples: 50
`, stage, 3*stage))
	ctx := context.Background()
	ro, err := analyzerClient(a).Start(ctx, analyzer.StartRequest{Model: model, Canary: "v2"})
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("\nsoak: %s at %.0f streamed requests/s from 5000 users, rollout %s\n", dur, rate, ro.ID)

	var sent, ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	go func() {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		r := rand.New(rand.NewPCG(1, 1))
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			u := r.IntN(5000)
			wg.Add(1)
			sent.Add(1)
			go func() {
				defer wg.Done()
				ans, err := f.try(request{body: streamBody, headers: user(u)})
				if err != nil || ans.status != 200 || !strings.Contains(ans.body, "[DONE]") {
					failed.Add(1)
					return
				}
				ok.Add(1)
			}()
		}
	}()

	procs := []struct {
		name string
		pid  func() int
	}{
		{"envoy (wasm VM included)", func() int { return f.Envoys[0].Proc.Pid() }},
		{"llmcanary extproc", func() int { return ep.Proc.Pid() }},
		{"llmcanary analyzer", func() int { return a.Proc.Pid() }},
	}
	type sample struct {
		at   time.Duration
		rss  []float64
		heap float64
	}
	var samples []sample
	began := time.Now()
	take := func() {
		s := sample{at: time.Since(began).Round(time.Second)}
		for _, p := range procs {
			s.rss = append(s.rss, rssMiB(p.pid()))
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s.heap = float64(ms.HeapInuse) / (1 << 20)
		samples = append(samples, s)
		where := ""
		if st, err := analyzerClient(a).Get(ctx, ro.ID); err == nil {
			where = fmt.Sprintf("rollout %s at stage %d (%g %%)", st.Status, st.Stage+1, st.CanaryWeight())
		}
		fmt.Printf("  %6s  sent %d, ok %d, failed %d; %s\n", s.at, sent.Load(), ok.Load(), failed.Load(), where)
	}
	time.Sleep(15 * time.Second) // warm-up
	take()
	time.Sleep(dur/2 - 15*time.Second)
	take()
	time.Sleep(dur / 2)
	take()
	close(stop)
	wg.Wait()

	want := uint64(ok.Load())
	n, distinct := f.waitRows(b, want, 2*time.Minute)
	fmt.Printf("\n  %-42s %8s %8s %8s\n", "memory (MiB)", "start", "middle", "end")
	for i, p := range procs {
		fmt.Printf("  %-42s %8.1f %8.1f %8.1f\n", p.name+", RSS", samples[0].rss[i], samples[1].rss[i], samples[2].rss[i])
	}
	fmt.Printf("  %-42s %8.1f %8.1f %8.1f\n", "control plane + load generator, Go heap", samples[0].heap, samples[1].heap, samples[2].heap)
	fmt.Printf("\n  requests %d: %d answered, %d failed; rows %d (%d distinct): %d lost, %d duplicated\n",
		sent.Load(), ok.Load(), failed.Load(), n, distinct, int64(want)-int64(min(distinct, want)), n-distinct)
	for b.Loop() {
	}
}

// rssMiB reads a process's resident memory from /proc.
func rssMiB(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == "VmRSS" {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
