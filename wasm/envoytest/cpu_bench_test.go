//go:build integration

package envoytest

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/llmcanary/llmcanary/internal/procs"
	"github.com/llmcanary/llmcanary/internal/wire"
)

// procCPU returns process pid's CPU time (procs.ProcCPU: clock ticks,
// exited threads included).
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	d, err := procs.ProcCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// threadsCPU returns the CPU time of process pid's live threads
// (procs.ThreadsCPU: nanoseconds). Envoy's threads live as long as it
// does, so between two readings in steady state this is the process's CPU,
// with a precision procCPU's clock ticks lack.
func threadsCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	d, err := procs.ThreadsCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// cpuPhase sends n requests through url with c in flight and returns Envoy's
// CPU per request in µs.
func cpuPhase(b *testing.B, e *envoy, url string, hdr func(i int) map[string]string, body string, n, c int) float64 {
	b.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad error
	c0 := threadsCPU(b, e.proc.Pid())
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				r, err := doErr("POST", url+"/v1/chat/completions", hdr(i), body)
				if err == nil && r.status != http.StatusOK {
					err = fmt.Errorf("status %d: %s", r.status, r.body)
				}
				if err != nil {
					mu.Lock()
					bad = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if bad != nil {
		b.Fatal(bad)
	}
	return float64(threadsCPU(b, e.proc.Pid())-c0) / float64(time.Microsecond) / float64(n)
}

// BenchmarkFilterCPU measures Envoy's own CPU (from /proc, so the load
// generator and upstreams in this process do not count) per body-routed
// chat request through five listeners of one Envoy with one worker: no
// filter, the no-op proxy-wasm module (noopwasm.Module), the holding no-op
// module (noopwasm.HoldingModule: what Envoy spends holding a request until its
// body is in, which any filter that routes by the body pays), the Go no-op
// module (wasm/cmd/noop: the Go runtime and ABI binding alone) and the
// llmcanary filter. The phases are interleaved, rotating their order, for 5 rounds.
// A module's added CPU is taken within each round (its phase minus the
// plain phase of the same round, so that the machine's drift between
// rounds cancels) and reported as the median and the minimum over the
// rounds; the filter's added CPU is reported as a multiple of each no-op
// module's: over what any wasm filter costs, and over what any Go module
// costs.
//
//	go test -run '^$' -bench FilterCPU -benchtime 1x ./wasm/envoytest/
func BenchmarkFilterCPU(b *testing.B) {
	const (
		rounds   = 5
		perPhase = 3000
		inFlight = 4
	)
	e := startEnvoyWith(b, testConfig(), "filtered", "plain", "noop", "holdnoop", "gonoop")
	body := chatBody(model, "")
	routed := func(int) map[string]string { // what the filter would set
		return map[string]string{wire.HeaderModel: model, wire.HeaderBucket: "1"}
	}
	user := func(i int) map[string]string { return map[string]string{wire.HeaderUserID: fmt.Sprintf("u%d", i)} }
	phases := []struct {
		name string
		url  string
		hdr  func(int) map[string]string
	}{
		{"plain", e.plainURL, routed},
		{"noop", e.noopURL, routed},
		{"holdnoop", e.holdURL, routed},
		{"gonoop", e.goNoopURL, routed},
		{"filter", e.url, user},
	}
	for _, p := range phases { // warm the connection pools and the VMs
		cpuPhase(b, e, p.url, p.hdr, body, 300, inFlight)
	}
	for range b.N {
		got := map[string][]float64{}
		for r := 0; r < rounds; r++ {
			for i := range phases {
				p := phases[(i+r)%len(phases)]
				got[p.name] = append(got[p.name], cpuPhase(b, e, p.url, p.hdr, body, perPhase, inFlight))
			}
		}
		added := func(name string) []float64 {
			d := make([]float64, rounds)
			for r := range d {
				d[r] = got[name][r] - got["plain"][r]
			}
			return d
		}
		noop, hold, goNoop, filter := added("noop"), added("holdnoop"), added("gonoop"), added("filter")
		b.ReportMetric(median(got["plain"]), "envoy-µs/req")
		b.ReportMetric(median(noop), "noop-added-µs/req")
		b.ReportMetric(median(hold), "holdnoop-added-µs/req")
		b.ReportMetric(median(goNoop), "gonoop-added-µs/req")
		b.ReportMetric(median(filter), "filter-added-µs/req")
		b.ReportMetric(slices.Min(filter), "filter-added-min-µs/req")
		b.ReportMetric(median(filter)/median(noop), "filter/noop")
		b.ReportMetric(median(filter)/median(hold), "filter/holdnoop")
		b.ReportMetric(median(filter)/median(goNoop), "filter/gonoop")
		b.Logf("Envoy CPU per request, µs, %d rounds: plain %.1f, noop %.1f, holdnoop %.1f, gonoop %.1f, filter %.1f",
			rounds, got["plain"], got["noop"], got["holdnoop"], got["gonoop"], got["filter"])
		b.Logf("added to plain, µs per request, median (min): noop %.1f (%.1f), holdnoop %.1f (%.1f), gonoop %.1f (%.1f), filter %.1f (%.1f); filter/noop %.2f, filter/holdnoop %.2f, filter/gonoop %.2f",
			median(noop), slices.Min(noop), median(hold), slices.Min(hold), median(goNoop), slices.Min(goNoop), median(filter), slices.Min(filter),
			median(filter)/median(noop), median(filter)/median(hold), median(filter)/median(goNoop))
	}
}

// BenchmarkEnvoyReady measures how long Envoy (one worker) takes to serve
// its first request, and the CPU it used until then, with a listener
// without a wasm filter, with the no-op module, the Go no-op module and
// with the llmcanary filter: V8 compiles a whole module (TurboFan, no lazy
// tier) before the listener serves, so a large module delays every start
// and every autoscaled replica. 3 interleaved rounds; it reports the
// medians, the ratios of the filter's to Envoy without a module and to the
// Go no-op module (the Go runtime's share, which no filter written in Go
// can go below), and both modules' sizes.
//
//	go test -run '^$' -bench EnvoyReady -benchtime 1x ./wasm/envoytest/
func BenchmarkEnvoyReady(b *testing.B) {
	const rounds = 3
	kinds := []struct{ listener, name string }{{"plain", "none"}, {"noop", "noop"}, {"gonoop", "gonoop"}, {"filtered", "filter"}}
	for range b.N {
		wall, cpu := map[string][]float64{}, map[string][]float64{}
		for r := 0; r < rounds; r++ {
			for i := range kinds {
				k := kinds[(i+r)%len(kinds)]
				w, c := readyOnce(b, k.listener)
				wall[k.name] = append(wall[k.name], w.Seconds())
				cpu[k.name] = append(cpu[k.name], c.Seconds())
			}
		}
		for _, k := range kinds {
			b.ReportMetric(median(wall[k.name]), "ready-s-"+k.name)
			b.ReportMetric(median(cpu[k.name]), "cpu-s-"+k.name)
		}
		b.ReportMetric(median(wall["filter"])/median(wall["none"]), "ready-ratio-filter")
		b.ReportMetric(median(cpu["filter"])/median(cpu["none"]), "cpu-ratio-filter")
		b.ReportMetric(median(wall["filter"])/median(wall["gonoop"]), "ready-ratio-filter/gonoop")
		b.ReportMetric(median(cpu["filter"])/median(cpu["gonoop"]), "cpu-ratio-filter/gonoop")
		b.ReportMetric(fileMB(b, buildModule(b)), "filter-MB")
		b.ReportMetric(fileMB(b, goNoopModule(b)), "gonoop-MB")
		b.Logf("ready wall s: %v; CPU s: %v", wall, cpu)
	}
}

// fileMB returns the size of the file at path in MB (10⁶ bytes).
func fileMB(b *testing.B, path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return float64(fi.Size()) / 1e6
}

// readyOnce starts an Envoy serving only the named listener and returns
// the time from its start to its first 200 and the CPU it used until then.
func readyOnce(b *testing.B, only string) (time.Duration, time.Duration) {
	b.Helper()
	e := startEnvoyWith(b, testConfig(), only)
	defer e.proc.Stop(5 * time.Second)
	url := map[string]string{"plain": e.plainURL, "noop": e.noopURL, "gonoop": e.goNoopURL, "filtered": e.url}[only]
	hdr := map[string]string{wire.HeaderModel: model, wire.HeaderBucket: "1", wire.HeaderUserID: "u"}
	deadline := time.Now().Add(90 * time.Second)
	for {
		r, err := doErr("POST", url+"/v1/chat/completions", hdr, chatBody(model, ""))
		if err == nil && r.status == http.StatusOK {
			return time.Since(e.started), procCPU(b, e.proc.Pid())
		}
		if time.Now().After(deadline) {
			b.Fatalf("envoy (%s) not serving after 90 s: %v %+v\n%s", only, err, r, e.proc.Tail(20))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
